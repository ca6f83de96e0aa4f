"""The model profile block: which IG1 model, with which default sampling parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, ValidationError, model_validator

from prefect_ig1.client import (
    SAMPLING_PARAMETERS,
    RequestValidationError,
    ResponsesRequest,
    TextConfig,
    build_request,
    json_schema_text_config,
)

from .credentials import IG1Credentials


@dataclass(frozen=True)
class Prices:
    """Price per million input and output tokens, in the IG1 account's currency."""

    input_per_million: float
    output_per_million: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million
                + output_tokens * self.output_per_million) / 1_000_000

__all__ = ["DEFAULT_MODEL", "Prices", "ResponsesModel"]

DEFAULT_MODEL = "qwen35-397b-a17b-instruct-general"


class ResponsesModel(Block):
    """A model and its default sampling parameters; per-call arguments override them.

    Example:
        Use a saved profile in a flow:
        ```python
        from prefect_ig1.blocks import ResponsesModel
        from prefect_ig1.tasks import create_response
        model = ResponsesModel.load("BLOCK_NAME")
        answer = create_response("Write a haiku about DevOps.", model=model)
        ```
    """

    _block_type_name = "IG1 Responses Model"
    _block_type_slug = "ig1-responses-model"
    _description = "An IG1 model id with default instructions and sampling parameters."

    credentials: IG1Credentials | None = Field(
        default=None,
        description="IG1 credentials; when empty, IG1AI_API_KEY / IG1AI_BASE_URL are used.",
    )
    model: str = Field(default=DEFAULT_MODEL, min_length=1, description="IG1 model id.")
    instructions: str | None = Field(
        default=None, description="Default system instructions sent with every call."
    )
    temperature: float | None = Field(default=None, ge=0, le=2,
                                      description="Default sampling temperature.")
    top_p: float | None = Field(default=None, ge=0, le=1, description="Default nucleus sampling.")
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="Default cap on generated tokens."
    )
    input_price_per_million: float | None = Field(
        default=None, ge=0,
        description="Price of a million input tokens, in the IG1 account's currency; with "
                    "the output price, runs report their cost and may be capped by max_spend.")
    output_price_per_million: float | None = Field(
        default=None, ge=0, description="Price of a million output tokens.")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Other default sampling parameters by their IG1 names "
                    "(top_k, min_p, repetition_penalty, ...), validated on creation.",
    )

    @model_validator(mode="after")
    def _parameters_are_valid(self) -> ResponsesModel:
        unknown = set(self.parameters) - SAMPLING_PARAMETERS
        if unknown:
            raise ValueError(f"parameters {sorted(unknown)} are not IG1 sampling parameters; "
                             f"known: {sorted(SAMPLING_PARAMETERS)}")
        build_request(model=self.model, input="validation", **self.defaults())
        return self

    def defaults(self) -> dict[str, Any]:
        """The profile's sampling defaults (only those set)."""
        named = {"temperature": self.temperature, "top_p": self.top_p,
                 "max_output_tokens": self.max_output_tokens}
        return {**{k: v for k, v in named.items() if v is not None}, **self.parameters}

    @property
    def prices(self) -> Prices | None:
        """Token prices when both are set; else spend is reported in tokens only."""
        if self.input_price_per_million is None or self.output_price_per_million is None:
            return None
        return Prices(self.input_price_per_million, self.output_price_per_million)

    def get_credentials(self) -> IG1Credentials:
        """This profile's credentials, else the environment's."""
        return self.credentials or IG1Credentials.from_env()

    def build_request(
        self,
        input: Any,
        *,
        instructions: str | None = None,
        response_format: type[BaseModel] | dict[str, Any] | None = None,
        **params: Any,
    ) -> ResponsesRequest:
        """A validated request: call arguments over the profile's defaults."""
        merged = {**self.defaults(), **params}
        # max_tokens given per call replaces the profile's max_output_tokens (never both).
        if "max_tokens" in params and "max_output_tokens" not in params:
            merged.pop("max_output_tokens", None)
        return build_request(
            model=self.model, input=input,
            instructions=instructions if instructions is not None else self.instructions,
            text=_text_config(response_format), **merged,
        )


def _text_config(response_format: type[BaseModel] | dict[str, Any] | None) -> TextConfig | None:
    if response_format is None:
        return None
    if isinstance(response_format, type) and issubclass(response_format, BaseModel):
        return json_schema_text_config(response_format)
    if isinstance(response_format, dict):
        fmt = response_format.get("format", response_format)
        try:
            return TextConfig.model_validate({"format": fmt})
        except ValidationError as exc:
            raise RequestValidationError(f"response_format is not a valid text.format: {exc}"
                                         ) from None
    raise RequestValidationError(
        "response_format must be a pydantic model class or a text.format dict "
        f"({{'type': 'json_schema', 'name': ..., 'schema': {{...}}}}), "
        f"not {type(response_format).__name__}"
    )
