"""A response from ``POST /v1/responses``, whichever of IG1's two shapes it came in.

IG1 documents a "text" shape (``created_at``, list content, ``output_text``)
and an "image" shape (``object: "responses"``, ``created``, one content
object, ``finish_reason``, no ``output_text``). Both normalise to one model
so callers never branch on the shape.

Parsing is as lenient as OpenAI's own SDK: unknown fields are kept, and a
null where OpenAI's types allow one reads as the field's default. A 200 has
been paid for, so a body is only refused when nothing usable is left.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["OutputContent", "OutputItem", "Response", "TokenUsage"]


class _Lenient(BaseModel):
    # Unknown fields are kept: IG1 may add some, and callers may want them.
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _nulls_as_defaults(cls, data: Any) -> Any:
        return _without_nulls(cls, data)


def _without_nulls(model: type[BaseModel], data: Any) -> Any:
    """Drop declared fields sent as null, so their defaults apply (``annotations: null``)."""
    if not isinstance(data, dict):
        return data
    fields = _field_names(model)
    return {k: v for k, v in data.items() if v is not None or k not in fields}


@functools.cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """Declared fields, once per class (``model_fields`` is a deprecated-aware descriptor,
    slow enough to show in a profile of reading cached answers)."""
    return frozenset(model.model_fields)


class TokenUsage(_Lenient):
    """Token counts of one call (details kept as sent)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict[str, Any] | None = None
    output_tokens_details: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _total(self) -> TokenUsage:
        if not self.total_tokens:
            self.total_tokens = self.input_tokens + self.output_tokens
        return self


class OutputContent(_Lenient):
    """One content part of an output message."""

    type: str
    text: str | None = None
    refusal: str | None = None
    annotations: list[Any] = Field(default_factory=list)


class OutputItem(_Lenient):
    """One output item; ``content`` is always a list, whatever the shape."""

    type: str
    id: str | None = None
    role: str | None = None
    status: str | None = None
    content: list[OutputContent] = Field(default_factory=list)
    finish_reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _content_as_list(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        content = data.get("content")
        if isinstance(content, (dict, str)):
            content = [content]
        if isinstance(content, list):  # a bare string is text; a null part is nothing
            content = [{"type": "output_text", "text": part} if isinstance(part, str) else part
                       for part in content if part is not None]
            data = {**data, "content": content}
        return _without_nulls(cls, data)


class Response(_Lenient):
    """A model response; ``output_text`` is always set, ``parsed`` holds structured output."""

    id: str
    object: str = "response"
    created_at: float | None = None
    model: str | None = None
    status: str = "completed"
    incomplete_details: dict[str, Any] | None = None
    output: list[OutputItem] = Field(default_factory=list)
    output_text: str = ""
    usage: TokenUsage | None = None
    error: Any = None
    request_id: str | None = None
    parsed: Any = None

    @model_validator(mode="before")
    @classmethod
    def _normalise_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(_without_nulls(cls, data))
        if data.get("created_at") is None and data.get("created") is not None:
            data["created_at"] = data["created"]
        output = data.get("output") or []
        if not isinstance(output, list):
            raise ValueError(f"output must be a list, not {type(output).__name__}")
        items = [OutputItem.model_validate(item) for item in output if item is not None]
        data["output"] = items
        if data.get("output_text") is None:
            data["output_text"] = "".join(
                part.text or "" for item in items for part in item.content
                if part.type == "output_text"
            )
        if data.get("status") is None:
            length_cut = any(item.finish_reason == "length" for item in items)
            data["status"] = "incomplete" if length_cut else "completed"
            if length_cut and data.get("incomplete_details") is None:
                data["incomplete_details"] = {"reason": "max_output_tokens"}
        return data

    @property
    def incomplete_reason(self) -> str | None:
        """Why the answer was cut short (e.g. ``max_output_tokens``), else None."""
        if self.status != "incomplete":
            return None
        return str((self.incomplete_details or {}).get("reason") or "unknown")

    @property
    def refusal(self) -> str | None:
        """The model's refusal, when it declined to answer (``output_text`` is then empty)."""
        parts = [part.refusal or part.text or "" for item in self.output
                 for part in item.content if part.type == "refusal"]
        return "".join(parts) if parts else None

    @property
    def failure(self) -> tuple[str, str | int | None] | None:
        """(message, code) when the server says this response failed, else None."""
        error = self.error
        if self.status != "failed" and not (error and not self.output):
            return None
        if isinstance(error, dict):
            message = error.get("message") or "the response failed"
            return str(message), error.get("code") or error.get("type")
        return (str(error) if error else "the response failed"), None

    @property
    def finish_reason(self) -> str | None:
        """The image shape's ``finish_reason`` of the first output item, when sent."""
        return next((item.finish_reason for item in self.output if item.finish_reason), None)

    def __repr__(self) -> str:
        text = self.output_text if len(self.output_text) <= 60 else self.output_text[:57] + "..."
        return (f"Response(id={self.id!r}, model={self.model!r}, status={self.status!r}, "
                f"output_text={text!r}, request_id={self.request_id!r})")
