"""What a batch asks and how each answer is judged: rows and request lines become calls,
answers become result rows.

Everything a whole run depends on (the template's columns, the schema) is checked here
before any call; what only one row gets wrong (a bad request line, a missing image, an
answer that does not fit the schema) is that row's error, and the run goes on.
"""

from __future__ import annotations

import importlib
import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
from pydantic import BaseModel, ValidationError

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import (
    InputImage,
    InputMessage,
    InputText,
    Response,
    build_request,
    json_schema_text_config,
    json_schema_violation,
)
from prefect_ig1.tasks import NotAttempted, PreparedCall, prepare_call, prepare_image
from prefect_ig1.tasks.cache import answer_schema
from prefect_ig1.tasks.engine import CallResult
from prefect_ig1.tasks.images import DEFAULT_MAX_IMAGE_SIDE

from .batch_io import BatchInputError

__all__ = [
    "BATCH_STATUSES",
    "ResponseFormat",
    "RowOutcome",
    "RowRequests",
    "check_template",
    "judge",
    "load_response_format",
    "request_line_call",
]

BATCH_STATUSES = ("completed", "cached", "invalid_output", "failed", "not_attempted")
_JSON_TYPES: dict[str, pa.DataType] = {"string": pa.string(), "integer": pa.int64(),
                                       "number": pa.float64(), "boolean": pa.bool_()}


@dataclass(frozen=True)
class ResponseFormat:
    """The answer's shape: the ``text.format`` sent, and the pydantic class, if one was named."""

    text_format: dict[str, Any]
    model: type[BaseModel] | None = None

    @property
    def properties(self) -> dict[str, Any]:
        props = self.text_format["schema"].get("properties")
        return props if isinstance(props, dict) else {}

    def columns(self) -> list[tuple[str, pa.DataType]]:
        """One ``ig1_<name>`` column per top-level property, typed when it is a JSON scalar."""
        return [(f"ig1_{name}", _JSON_TYPES.get(_scalar_type(spec), pa.string()))
                for name, spec in self.properties.items()]

    def scalar_columns(self) -> dict[str, bool]:
        """``ig1_<name>`` -> whether its values are JSON scalars (else stored as JSON text)."""
        return {f"ig1_{name}": _scalar_type(spec) in _JSON_TYPES
                for name, spec in self.properties.items()}


def _scalar_type(spec: Any) -> str:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    return kind if isinstance(kind, str) else "json"


def load_response_format(value: dict[str, Any] | str | None,
                         read_text: Callable[[str], str]) -> ResponseFormat | None:
    """A JSON Schema (dict, or a ``.json`` path/URI read with ``read_text``) or a pydantic class
    named ``"module:Class"``; an invalid one is an error before any call."""
    if value is None:
        return None
    if isinstance(value, str) and not value.lower().endswith(".json"):
        module, _, name = value.partition(":")
        try:
            model = getattr(importlib.import_module(module), name) if name else None
        except ImportError as exc:
            raise BatchInputError(f"response_format {value!r}: {exc}") from None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise BatchInputError(
                f"response_format {value!r} is neither a .json schema file nor a pydantic "
                "class as 'module:Class'")
        fmt = json_schema_text_config(model).format.model_dump(by_alias=True, exclude_none=True)
        return ResponseFormat(fmt, model)
    if isinstance(value, str):
        try:
            value = json.loads(read_text(value))
        except (OSError, ValueError) as exc:
            raise BatchInputError(f"cannot read the schema {value!r}: {exc}") from None
    if not isinstance(value, dict):
        raise BatchInputError("response_format must be a JSON Schema object")
    if value.get("type") == "json_schema" and "schema" in value:
        fmt = dict(value)
    else:
        fmt = {"type": "json_schema", "name": "batch_output", "schema": value, "strict": True}
    schema = fmt["schema"]
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise BatchInputError(f"response_format is not a valid JSON Schema: {exc.message}"
                              ) from None
    return ResponseFormat(fmt)


def check_template(prompt: str, columns: list[str]) -> None:
    """Every ``{column}`` of the template is a column of the input (else: which, and the list)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(prompt) if name is not None]
    except ValueError as exc:
        raise BatchInputError(f"prompt is not a valid template: {exc} (write a literal brace "
                              "as {{ or }})") from None
    roots = [re.split(r"[.\[]", name, maxsplit=1)[0] for name in fields]
    if any(not root or root.isdigit() for root in roots):
        raise BatchInputError("prompt placeholders must name columns, as {column}; "
                              "positional {} or {0} have nothing to fill them")
    missing = sorted(set(roots) - set(columns))
    if missing:
        raise BatchInputError(f"prompt names column(s) {missing} that the input does not have; "
                              f"its columns are {columns}")


@dataclass
class RowRequests:
    """Builds each table row's call: the template filled in, plus the row's image, if any."""

    profile: ResponsesModel
    credentials: IG1Credentials
    prompt: str
    instructions: str | None
    response_format: ResponseFormat | None
    params: dict[str, Any]
    image_column: str | None = None
    read_image: Callable[[str], bytes] | None = None
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE

    def call(self, row: dict[str, Any]) -> PreparedCall:
        text = self.prompt.format_map({k: "" if v is None else v for k, v in row.items()})
        source = row.get(self.image_column) if self.image_column else None
        payload: Any = text
        if source:
            assert self.read_image is not None
            prepared = prepare_image(self.read_image(str(source)),
                                     max_image_side=self.max_image_side)
            payload = [InputMessage(role="user", content=[
                InputText(text=text),
                InputImage.from_bytes(prepared.data, mime_type=prepared.mime_type)])]
        fmt = self.response_format.text_format if self.response_format else None
        return prepare_call(payload, model=self.profile, credentials=self.credentials,
                            instructions=self.instructions, response_format=fmt,
                            params=self.params)


def request_line_call(line: dict[str, Any], profile: ResponsesModel,
                      credentials: IG1Credentials) -> PreparedCall:
    """A Batch request line as a call: its body validated by the client's request model."""
    if line.get("method", "POST") != "POST" or line.get("url", "/v1/responses") not in (
            "/v1/responses", "/responses"):
        raise ValueError(f"this batch sends POST /v1/responses only, not {line.get('method')} "
                         f"{line.get('url')}")
    body = line.get("body")
    if not isinstance(body, dict):
        raise ValueError("'body' must be a JSON object: the Responses request")
    fields = {"model": profile.model, **body}
    fields.pop("stream", None)  # a batch keeps whole answers; streamed or not is the same
    return PreparedCall(credentials, build_request(**fields), None)


@dataclass
class RowOutcome:
    """One row's result, as results.jsonl and the results table show it."""

    custom_id: str
    status: str
    response: Response | None = None
    error: dict[str, str] | None = None
    values: dict[str, Any] | None = field(default=None, repr=False)
    input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def failed(cls, custom_id: str, exc: BaseException, code: str | None = None) -> RowOutcome:
        if isinstance(exc, NotAttempted):
            return cls(custom_id, "not_attempted", error={"code": "not_attempted",
                                                          "message": str(exc)})
        code = (code or getattr(exc, "code", None) or getattr(exc, "reason", None)
                or type(exc).__name__)
        return cls(custom_id, "failed", error={"code": str(code), "message": _message(exc)})


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)[:2000]


def judge(custom_id: str, call: PreparedCall, result: CallResult,
          response_format: ResponseFormat | None) -> RowOutcome:
    """Whether an answer settles its row: completed with text, and valid for its schema."""
    if result.response is None:
        return RowOutcome.failed(custom_id, result.error or RuntimeError("no answer"))
    response = result.response
    outcome = RowOutcome(custom_id, "cached" if result.from_cache else "completed",
                         response=response, input_tokens=result.input_tokens,
                         output_tokens=result.output_tokens)
    problem = _answer_problem(response)
    if problem is not None:
        outcome.status, outcome.error = "failed", problem
        return outcome
    schema = answer_schema(call.request)
    if schema is None:
        return outcome
    violation = json_schema_violation(response.output_text, schema)
    if violation is None and response_format is not None and response_format.model is not None:
        try:
            response_format.model.model_validate_json(response.output_text)
        except ValidationError as exc:
            violation = f"reply is not valid for {response_format.model.__name__}: {exc}"
    if violation is not None:
        outcome.status = "invalid_output"
        outcome.error = {"code": "invalid_output", "message": violation[:2000]}
        return outcome
    value = json.loads(response.output_text)
    outcome.values = value if isinstance(value, dict) else None
    return outcome


def _answer_problem(response: Response) -> dict[str, str] | None:
    if response.refusal:
        return {"code": "refused", "message": f"the model refused: {response.refusal[:500]}"}
    if response.status == "incomplete":
        return {"code": "incomplete", "message": f"IG1 stopped the answer early "
                f"({response.incomplete_reason}); raise max_output_tokens"}
    if response.status != "completed":
        return {"code": f"status_{response.status}",
                "message": f"IG1 answered with status {response.status!r}"}
    if not response.output_text.strip():
        return {"code": "empty_answer", "message": "IG1 answered with no text"}
    return None


def read_local_image(path: str, max_bytes: int = 50 * 1024 * 1024) -> bytes:
    """A local image's bytes, refused past ``max_bytes`` before reading."""
    file = Path(path)
    size = file.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path} is {size:,} bytes, over {max_bytes:,}")
    return file.read_bytes()
