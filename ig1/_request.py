"""The body of ``POST /v1/responses``: every field of IG1's page, validated before sending.

Validation happens here, not on the wire, so a typo or an out-of-range value
costs nothing and the error names the field and the fix.
"""

from __future__ import annotations

import base64
import mimetypes
from io import BytesIO
from pathlib import Path
from typing import Annotated, Any, Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._exceptions import RequestValidationError

__all__ = [
    "SAMPLING_PARAMETERS",
    "InputImage",
    "InputMessage",
    "InputText",
    "JsonSchemaFormat",
    "OutputTextPart",
    "ResponsesRequest",
    "TextConfig",
    "build_request",
]

Detail = Literal["auto", "low", "high"]
NonNegativeInt = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class InputText(_Strict):
    """A text part of a message."""

    type: Literal["input_text"] = "input_text"
    text: str


class InputImage(_Strict):
    """An image part: a ``data:`` URL (what IG1 accepts inline) or an https URL."""

    type: Literal["input_image"] = "input_image"
    image_url: str
    detail: Detail = "auto"

    @field_validator("image_url")
    @classmethod
    def _is_url(cls, value: str) -> str:
        if not value.startswith(("data:", "https://", "http://")):
            raise ValueError("image_url must be a data: URL or an http(s) URL; "
                             "build one with InputImage.from_bytes() or InputImage.from_path()")
        return value

    @classmethod
    def from_bytes(cls, data: bytes, *, mime_type: str | None = None,
                   detail: Detail = "auto") -> InputImage:
        """Inline image bytes as a base64 data URL, detecting the MIME type with Pillow."""
        if not data:
            raise RequestValidationError("image is empty (0 bytes): nothing to send")
        mime = mime_type or _sniff_mime_type(data)
        encoded = base64.b64encode(data).decode("ascii")
        return cls(image_url=f"data:{mime};base64,{encoded}", detail=detail)

    @classmethod
    def from_path(cls, path: str | Path, *, detail: Detail = "auto") -> InputImage:
        """Inline an image file; the MIME type comes from its content, else its name."""
        path = Path(path)
        data = path.read_bytes()
        try:
            mime = _sniff_mime_type(data)
        except RequestValidationError:
            guessed = mimetypes.guess_type(path.name)[0]
            if not guessed or not guessed.startswith("image/"):
                raise RequestValidationError(
                    f"{path} is not an image Pillow can read; convert it to PNG or JPEG"
                ) from None
            mime = guessed
        return cls.from_bytes(data, mime_type=mime, detail=detail)

    def __repr__(self) -> str:
        # Never print megabytes of base64 into logs or tracebacks.
        head = self.image_url[:40] + ("…" if len(self.image_url) > 40 else "")
        return f"InputImage(image_url={head!r}, detail={self.detail!r})"

    __str__ = __repr__


def _sniff_mime_type(data: bytes) -> str:
    try:
        with Image.open(BytesIO(data)) as image:
            fmt = image.format
    except (UnidentifiedImageError, OSError):
        raise RequestValidationError(
            "bytes are not an image Pillow can read; send PNG, JPEG, GIF or WebP"
        ) from None
    return Image.MIME.get(fmt or "", "application/octet-stream")


class OutputTextPart(_Strict):
    """An assistant's earlier answer, resent as history (IG1 keeps no state)."""

    type: Literal["output_text"] = "output_text"
    text: str


ContentPart = Annotated[InputText | InputImage | OutputTextPart, Field(discriminator="type")]


class InputMessage(_Strict):
    """One message of the input: a role and either a string or a list of parts."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    type: Literal["message"] | None = None


class JsonSchemaFormat(_Strict):
    """``text.format`` for structured output."""

    type: Literal["json_schema"] = "json_schema"
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = True
    description: str | None = None

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


class _PlainFormat(_Strict):
    type: Literal["text", "json_object"]


class TextConfig(_Strict):
    """The ``text`` field: how the answer is formatted."""

    format: Annotated[JsonSchemaFormat | _PlainFormat, Field(discriminator="type")]


# Fields refused because IG1 keeps nothing (zero retention): say why, not just "unknown".
_STATEFUL = {
    "previous_response_id": "IG1 keeps no responses (zero retention): resend the history in "
                            "`input` instead",
    "store": "IG1 stores nothing (zero retention); drop `store`",
    "background": "IG1 has no background responses (nothing can be retrieved later)",
    "conversation": "IG1 keeps no conversations: resend the history in `input`",
}


class ResponsesRequest(_Strict):
    """A validated request; ``payload()`` is exactly what goes on the wire."""

    model: str = Field(min_length=1)
    input: str | list[InputMessage]
    instructions: str | None = None
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    text: TextConfig | None = None
    # vLLM extras, as listed on IG1's page (sent at the top level of the body).
    use_beam_search: bool | None = None
    top_k: int | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, ge=1)
    length_penalty: float | None = Field(default=None, ge=0)
    stop_token_ids: list[NonNegativeInt] | None = None
    include_stop_str_in_output: bool | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)
    prompt_logprobs: int | None = Field(default=None, ge=0)
    allowed_token_ids: list[NonNegativeInt] | None = None
    bad_words: list[str] | None = None
    # Anything IG1 accepts that this model does not know, sent as given.
    extra_body: dict[str, Any] | None = None

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int | None) -> int | None:
        if value is not None and value != -1 and value < 1:
            raise ValueError("top_k must be >= 1, or -1 to disable it")
        return value

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, value: str | list[InputMessage]) -> str | list[InputMessage]:
        if not value:
            raise ValueError("input is empty: give a prompt string or at least one message")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ResponsesRequest:
        if self.max_tokens is not None and self.max_output_tokens is not None:
            raise ValueError("set max_tokens or max_output_tokens, not both "
                             "(they are the same limit under two names)")
        limit = self.max_output_tokens or self.max_tokens
        if self.min_tokens is not None and limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds the output limit ({limit})")
        clashes = set(self.extra_body or {}) & (set(type(self).model_fields) | set(_STATEFUL))
        if clashes:
            raise ValueError(f"extra_body must not carry {sorted(clashes)}: set them as "
                             "parameters so they are validated")
        return self

    def payload(self) -> dict[str, Any]:
        """The JSON body: only what was set (no nulls), extras merged at the top level."""
        body = self.model_dump(mode="json", by_alias=True, exclude_none=True,
                               exclude={"extra_body"})
        body.update(self.extra_body or {})
        return body

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self if v is not None and k != "input")
        kind = "str" if isinstance(self.input, str) else f"{len(self.input)} messages"
        return f"ResponsesRequest(input=<{kind}>, {fields})"


SAMPLING_PARAMETERS: frozenset[str] = frozenset(ResponsesRequest.model_fields) - {
    "model", "input", "instructions", "stream", "text", "extra_body"
}


def build_request(**fields: Any) -> ResponsesRequest:
    """Validate keyword arguments into a request, naming any bad field and its fix."""
    unknown = [name for name in fields if name not in ResponsesRequest.model_fields]
    for name in unknown:
        if name in _STATEFUL:
            raise RequestValidationError(f"parameter {name!r} is not supported: {_STATEFUL[name]}")
    if unknown:
        raise RequestValidationError(
            f"unknown parameter(s) {', '.join(map(repr, sorted(unknown)))} for IG1 Responses; "
            f"check the spelling, or pass it explicitly with extra_body={{{unknown[0]!r}: ...}} "
            "if IG1 accepts it"
        )
    try:
        return ResponsesRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise RequestValidationError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        if not error["loc"]:  # a whole-request rule: the message says it all
            problems.append(error["msg"].removeprefix("Value error, "))
            continue
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        problems.append(f"{where}: {error['msg']} (got {shown})")
    return "invalid IG1 request: " + "; ".join(problems)
