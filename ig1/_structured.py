"""Structured output: a pydantic model in, a strict ``json_schema`` format out, an instance back."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._exceptions import StructuredOutputError
from ._request import JsonSchemaFormat, TextConfig
from ._response import Response

__all__ = ["json_schema_text_config", "json_schema_violation", "parse_structured",
           "strict_json_schema"]

ModelT = TypeVar("ModelT", bound=BaseModel)


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema made strict: closed objects, every property required."""
    schema: dict[str, Any] = _strictify(model.model_json_schema())
    return schema


def _strictify(node: Any) -> Any:
    if isinstance(node, list):
        return [_strictify(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _strictify(value) for key, value in node.items()}
    if node.get("type") == "object" and "properties" in node:
        node["additionalProperties"] = False
        node["required"] = list(node["properties"])
    return node


def json_schema_text_config(model: type[BaseModel]) -> TextConfig:
    """The ``text`` field asking IG1 to answer with JSON valid for ``model``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64]
    return TextConfig(format=JsonSchemaFormat(
        name=name, schema_=strict_json_schema(model), strict=True,
        description=(model.__doc__ or "").strip()[:500] or None,
    ))


def parse_structured(response: Response, model: type[ModelT]) -> ModelT:
    """Validate the reply's text into ``model``; a clear error keeps the raw text."""
    if response.incomplete_reason:
        raise StructuredOutputError(
            f"structured reply for {model.__name__} was cut short "
            f"({response.incomplete_reason}); raise max_output_tokens",
            raw_text=response.output_text, request_id=response.request_id,
        )
    try:
        return model.model_validate_json(response.output_text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "reply"
        raise StructuredOutputError(
            f"reply is not valid JSON for {model.__name__}: {where}: {first['msg']}",
            raw_text=response.output_text, request_id=response.request_id,
        ) from None


def json_schema_violation(text: str, schema: dict[str, Any]) -> str | None:
    """Why ``text`` is not JSON valid for ``schema`` (a JSON Schema dict), or None when it is.

    For formats given as a schema rather than a pydantic model: the client cannot parse
    those, so callers (the cache, the batch flow) check the answer with this."""
    import jsonschema  # a Prefect dependency; imported here, where it is needed

    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"reply is not JSON: {exc}"
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "reply"
    return f"reply is not valid JSON for the schema: {where}: {error.message[:300]}"
