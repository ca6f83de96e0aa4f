"""HTTP clients for IG1's Responses API: a base doing everything but I/O, sync and async senders.

Pooled keep-alive connections (one httpx client per instance), typed errors,
the one retry policy, streaming folded into the same ``Response``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from httpx_sse import EventSource, aconnect_sse, connect_sse
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from ._exceptions import (
    APIStatusError,
    IG1ConnectionError,
    IG1Error,
    IG1TimeoutError,
    MalformedResponseError,
    status_error_class,
)
from ._request import ResponsesRequest
from ._response import Response
from ._retry import RetryPolicy, parse_retry_after
from ._stream import StreamAccumulator, StreamEvent
from ._structured import parse_structured

__all__ = ["DEFAULT_BASE_URL", "AccountUsage", "AsyncIG1Client", "IG1Client"]

DEFAULT_BASE_URL = "https://api.ig1.ai/v1"
logger = logging.getLogger("ig1")


class AccountUsage(BaseModel):
    """``GET /usage``: spend this month, the monthly commit, max concurrent requests."""

    model_config = ConfigDict(extra="allow")

    current: float
    commit: float
    max_throughput: int | None = None

    @property
    def remaining(self) -> float:
        """Budget left this month."""
        return self.commit - self.current


class _BaseClient:
    """Configuration, request building and response/error parsing: no I/O."""

    def __init__(
        self,
        *,
        api_key: str | SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 120.0,
        max_retries: int = 2,
        max_connections: int = 64,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not self._api_key.get_secret_value():
            raise IG1Error("IG1 API key is empty: set it on IG1Credentials or in IG1AI_API_KEY")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections)

    def _http_options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "timeout": httpx.Timeout(self.timeout, connect=min(self.timeout, 15.0)),
            "limits": self._limits,
            "headers": {"Authorization": f"Bearer {self._api_key.get_secret_value()}",
                        "User-Agent": "prefect-ig1/0.1"},
        }

    @property
    def usage_url(self) -> str:
        """``/usage`` lives at the host's root, not under ``/v1``."""
        return str(httpx.URL(self.base_url).copy_with(path="/usage", query=None))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key=[secure])"

    @staticmethod
    def _response(http: httpx.Response, text_format: type[BaseModel] | None) -> Response:
        if http.status_code >= 300:
            raise _status_error(http)
        request_id = http.headers.get("x-request-id")
        try:
            data = http.json()
            if isinstance(data, dict):
                data.setdefault("request_id", request_id)
            response = Response.model_validate(data)
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError):
            raise MalformedResponseError(
                f"{http.status_code} reply is not a Responses object: "
                f"{_summarise_body(http.text)!r}",
                status=http.status_code, request_id=request_id, body=http.text[:2000],
            ) from None
        return _with_parsed(response, text_format)

    @staticmethod
    def _usage(http: httpx.Response) -> AccountUsage:
        if http.status_code >= 300:
            raise _status_error(http)
        try:
            return AccountUsage.model_validate_json(http.content)
        except ValidationError:
            raise MalformedResponseError(
                f"/usage reply is not usage: {_summarise_body(http.text)!r}",
                status=http.status_code, request_id=http.headers.get("x-request-id"),
            ) from None


class IG1Client(_BaseClient):
    """Synchronous client; thread-safe, one connection pool per instance."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._http = httpx.Client(**self._http_options())

    def send(self, request: ResponsesRequest, *,
             text_format: type[BaseModel] | None = None) -> Response:
        """One Responses call, retried on transient failures; streams are folded."""
        for attempt in self.retry_policy.attempts():
            with attempt:
                if request.stream:
                    with self.stream(request) as events:
                        for _ in events:
                            pass
                        return _with_parsed(events.result(), text_format)
                with _transport_errors():
                    http = self._http.post("/responses", json=request.payload())
                return self._response(http, text_format)
        raise AssertionError("unreachable: retry loop always returns or raises")

    @contextmanager
    def stream(self, request: ResponsesRequest) -> Iterator[ResponseStream]:
        """Iterate events as they arrive; ``.result()`` afterwards is the full Response."""
        payload = {**request.payload(), "stream": True}
        with _transport_errors(), connect_sse(self._http, "POST", "/responses",
                                              json=payload) as source:
            if source.response.status_code >= 300:
                source.response.read()
                raise _status_error(source.response)
            yield ResponseStream(source)

    def usage(self) -> AccountUsage:
        """Spend, commit and max throughput of this key's account."""
        for attempt in self.retry_policy.attempts():
            with attempt, _transport_errors():
                return self._usage(self._http.get(self.usage_url))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()


class AsyncIG1Client(_BaseClient):
    """Asynchronous client; bound to the event loop it is first used on."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._http = httpx.AsyncClient(**self._http_options())

    async def send(self, request: ResponsesRequest, *,
                   text_format: type[BaseModel] | None = None) -> Response:
        """One Responses call, retried on transient failures; streams are folded."""
        async for attempt in self.retry_policy.async_attempts():
            with attempt:
                if request.stream:
                    async with self.stream(request) as events:
                        async for _ in events:
                            pass
                        return _with_parsed(events.result(), text_format)
                with _transport_errors():
                    http = await self._http.post("/responses", json=request.payload())
                return self._response(http, text_format)
        raise AssertionError("unreachable: retry loop always returns or raises")

    @asynccontextmanager
    async def stream(self, request: ResponsesRequest) -> AsyncIterator[AsyncResponseStream]:
        """Iterate events as they arrive; ``.result()`` afterwards is the full Response."""
        payload = {**request.payload(), "stream": True}
        with _transport_errors():
            async with aconnect_sse(self._http, "POST", "/responses", json=payload) as source:
                if source.response.status_code >= 300:
                    await source.response.aread()
                    raise _status_error(source.response)
                yield AsyncResponseStream(source)

    async def usage(self) -> AccountUsage:
        """Spend, commit and max throughput of this key's account."""
        async for attempt in self.retry_policy.async_attempts():
            with attempt, _transport_errors():
                return self._usage(await self._http.get(self.usage_url))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()


class ResponseStream:
    """Events of one streamed response; iterate, then call ``result()``."""

    def __init__(self, source: EventSource) -> None:
        self._source = source
        self._fold = StreamAccumulator(request_id=source.response.headers.get("x-request-id"))

    def __iter__(self) -> Iterator[StreamEvent]:
        with _transport_errors():
            for sse in self._source.iter_sse():
                yield self._fold.event(sse.event, sse.data)

    def text_deltas(self) -> Iterator[str]:
        """Only the text, as it arrives."""
        return (event.delta for event in self if event.delta is not None)

    def result(self) -> Response:
        """The complete Response; raises IncompleteStreamError if the stream was cut."""
        return self._fold.result()


class AsyncResponseStream:
    """Async twin of ``ResponseStream``."""

    def __init__(self, source: EventSource) -> None:
        self._source = source
        self._fold = StreamAccumulator(request_id=source.response.headers.get("x-request-id"))

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        with _transport_errors():
            async for sse in self._source.aiter_sse():
                yield self._fold.event(sse.event, sse.data)

    async def text_deltas(self) -> AsyncIterator[str]:
        """Only the text, as it arrives."""
        async for event in self:
            if event.delta is not None:
                yield event.delta

    def result(self) -> Response:
        """The complete Response; raises IncompleteStreamError if the stream was cut."""
        return self._fold.result()


def _with_parsed(response: Response, text_format: type[BaseModel] | None) -> Response:
    if text_format is None:
        return response
    return response.model_copy(update={"parsed": parse_structured(response, text_format)})


@contextmanager
def _transport_errors() -> Iterator[None]:
    """Translate httpx's transport failures into the package's transient errors."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise IG1TimeoutError(f"IG1 did not answer in time ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise IG1ConnectionError(
            f"connection to IG1 failed: {type(exc).__name__}: {exc}"
        ) from None


def _status_error(http: httpx.Response) -> APIStatusError:
    """Map a non-2xx reply, whatever its body shape, to its typed error."""
    message, code, request_id = _error_fields(http.text)
    request_id = request_id or http.headers.get("x-request-id")
    cls = status_error_class(http.status_code)
    return cls(
        message or f"HTTP {http.status_code} {http.reason_phrase}",
        status=http.status_code, code=code, request_id=request_id,
        body=http.text[:2000], retry_after=parse_retry_after(http.headers),
    )


def _error_fields(text: str) -> tuple[str | None, str | int | None, str | None]:
    """(message, code, request_id) from IG1's, OpenAI's, a bare-string or a non-JSON body."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return (_summarise_body(text) or None), None, None
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
    return (str(message) if message is not None else None), body.get("code"), request_id


def _summarise_body(text: str) -> str:
    """A short plain-text view of a body (HTML tags dropped) for error messages."""
    plain = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", plain).strip()[:200]
