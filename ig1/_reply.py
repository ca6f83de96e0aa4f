"""Reading what a server sent back, whatever it is: a response, an error body, or neither.

Pure functions shared by the sync and async clients and the stream fold. The
rule: a 200 has been billed, so JSON is read as leniently as OpenAI's SDK does
and only a body that is not JSON at all (cut off in transit) is worth retrying.
Excerpts of bodies go into errors, the API key never does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import ValidationError

from ._exceptions import (
    APIStatusError,
    MalformedResponseError,
    ResponseFailedError,
    TruncatedResponseError,
    status_error_class,
)
from ._response import Response
from ._retry import parse_retry_after

__all__: list[str] = []


def response_from_http(http: httpx.Response, secret: str) -> Response:
    """The Response in a reply, or the typed error that says why there is none."""
    if http.status_code >= 300:
        raise status_error(http, secret)
    request_id = http.headers.get("x-request-id")
    try:
        data = json.loads(http.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TruncatedResponseError(
            f"{http.status_code} reply is not JSON (cut off in transit?): "
            f"{excerpt(http.text, secret)!r}",
            status=http.status_code, request_id=request_id, body=redact(http.text[:2000], secret),
        ) from None
    return response_from_json(data, request_id=request_id, secret=secret,
                              status=http.status_code)


def response_from_json(data: Any, *, request_id: str | None, secret: str,
                       status: int = 200) -> Response:
    """Validate decoded JSON leniently; a failed response becomes ``ResponseFailedError``."""
    if not isinstance(data, dict):
        raise _malformed(f"a JSON {type(data).__name__}", data, request_id, secret, status)
    data = {**data, "request_id": data.get("request_id") or request_id}
    try:
        response = Response.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise _malformed(f"{where}: {first['msg']}", data, data["request_id"], secret,
                         status) from None
    failure = response.failure
    if failure is not None:
        message, code = failure
        raise ResponseFailedError(
            f"the response failed: {redact(message, secret)}", status=status, code=code,
            request_id=response.request_id, body=redact(_dump(data)[:2000], secret),
        )
    return response


def _malformed(why: str, data: Any, request_id: str | None, secret: str,
               status: int) -> MalformedResponseError:
    text = _dump(data)
    return MalformedResponseError(
        f"{status} reply is JSON but not a Responses object ({why}): {excerpt(text, secret)!r}",
        status=status, request_id=request_id, body=redact(text[:2000], secret),
    )


def _dump(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


def error_details(details: Any) -> tuple[str, str | int | None]:
    """(message, code) of an error object from a failed response or an error event."""
    if isinstance(details, Mapping):
        nested = details.get("error")
        if isinstance(nested, Mapping):
            return error_details(nested)
        message = details.get("message") or nested or "the server reported an error"
        return str(message), details.get("code") or details.get("type")
    return (str(details) if details else "the server reported an error"), None


def status_error(http: httpx.Response, secret: str) -> APIStatusError:
    """Map a non-2xx reply, whatever its body shape, to its typed error."""
    message, code, request_id = error_fields(http.text)
    request_id = request_id or http.headers.get("x-request-id")
    cls = status_error_class(http.status_code)
    return cls(
        redact(message or f"HTTP {http.status_code} {http.reason_phrase}", secret),
        status=http.status_code, code=code, request_id=request_id,
        body=redact(http.text[:2000], secret), retry_after=parse_retry_after(http.headers),
    )


def error_fields(text: str) -> tuple[str | None, str | int | None, str | None]:
    """(message, code, request_id) from IG1's, OpenAI's, FastAPI's, a bare-string or any body."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return (summarise_body(text) or None), None, None
    if not isinstance(body, Mapping):
        return str(body)[:300], None, None
    error = body.get("error")
    request_id = body.get("request_id")
    if isinstance(error, Mapping):
        code = error.get("code") or error.get("type")
        return error.get("message"), code, request_id or error.get("request_id")
    if isinstance(error, str):
        return error, body.get("code"), request_id
    message = body.get("message") or body.get("detail")
    if isinstance(message, list):
        message = validation_lines(message)
    return (str(message) if message is not None else None), body.get("code"), request_id


def validation_lines(problems: list[Any]) -> str:
    """FastAPI/pydantic's 422 ``detail`` list as "field: problem" lines."""
    lines = []
    for problem in problems:
        if not isinstance(problem, Mapping):
            lines.append(str(problem))
            continue
        loc = [str(part) for part in problem.get("loc") or []]
        if loc[:1] == ["body"] and len(loc) > 1:
            loc = loc[1:]
        lines.append(f"{'.'.join(loc) or 'request'}: {problem.get('msg', 'invalid')}")
    return "\n".join(lines)


def summarise_body(text: str) -> str:
    """A short plain-text view of a body (HTML tags dropped) for error messages."""
    plain = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", plain).strip()[:200]


def excerpt(text: str, secret: str) -> str:
    """``summarise_body`` with the key masked, should a server echo it."""
    return summarise_body(redact(text, secret))


def redact(text: str, secret: str) -> str:
    """Mask the API key wherever it appears."""
    return text.replace(secret, "[secure]") if secret else text
