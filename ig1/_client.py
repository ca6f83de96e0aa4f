"""HTTP clients for IG1's Responses API: a base doing everything but I/O, sync and async senders.

Pooled keep-alive connections (one httpx client per instance), typed errors,
the one retry policy, streaming folded into the same ``Response``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from httpx_sse import EventSource, aconnect_sse, connect_sse
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from ._exceptions import (
    IG1ConnectionError,
    IG1Error,
    IG1TimeoutError,
    MalformedResponseError,
    RateLimitError,
    TruncatedResponseError,
)
from ._reply import excerpt, response_from_http, status_error
from ._request import ResponsesRequest
from ._response import Response
from ._retry import RetryPolicy, Throttle
from ._stream import StreamAccumulator, StreamEvent
from ._structured import parse_structured

__all__ = ["DEFAULT_BASE_URL", "AccountUsage", "AsyncIG1Client", "AsyncResponseStream",
           "IG1Client", "ResponseStream", "UsageDay"]

DEFAULT_BASE_URL = "https://api.ig1.ai/v1"


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


class UsageDay(BaseModel):
    """One line of ``GET /usage/history``: a model's use on one day."""

    model_config = ConfigDict(extra="allow")

    date: str
    model: str
    requests: int = 0
    cost: float = 0.0


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
        self.throttle = Throttle(max_pause=self.retry_policy.max_retry_after)
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

    def _history(self, http: httpx.Response) -> list[UsageDay]:
        data = self._json(http, "/usage/history")
        rows = data.get("data") if isinstance(data, dict) else data
        try:
            return [UsageDay.model_validate(row) for row in rows or []]
        except (ValidationError, TypeError):
            raise MalformedResponseError(
                f"/usage/history reply is not a history: {excerpt(http.text, self._secret)!r}",
                status=http.status_code, request_id=http.headers.get("x-request-id"),
            ) from None

    def _json(self, http: httpx.Response, what: str) -> Any:
        if http.status_code >= 300:
            raise status_error(http, self._secret)
        try:
            return json.loads(http.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TruncatedResponseError(
                f"{what} reply is not JSON: {excerpt(http.text, self._secret)!r}",
                status=http.status_code, request_id=http.headers.get("x-request-id")) from None

    @contextmanager
    def _throttled(self) -> Iterator[None]:
        """A 429 with a wait holds every send of this client (one per process and key),
        not only the retry of the request that got it."""
        try:
            yield
        except RateLimitError as exc:
            self.throttle.hold(exc.retry_after)
            raise
        self.throttle.succeeded()

    def _response(self, http: httpx.Response, text_format: type[BaseModel] | None) -> Response:
        return _with_parsed(response_from_http(http, self._secret), text_format)

    @property
    def _secret(self) -> str:
        return self._api_key.get_secret_value()

    def _usage(self, http: httpx.Response) -> AccountUsage:
        if http.status_code >= 300:
            raise status_error(http, self._secret)
        request_id = http.headers.get("x-request-id")
        try:
            data = json.loads(http.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TruncatedResponseError(
                f"/usage reply is not JSON: {excerpt(http.text, self._secret)!r}",
                status=http.status_code, request_id=request_id) from None
        try:
            return AccountUsage.model_validate(data)
        except ValidationError:
            raise MalformedResponseError(
                f"/usage reply is not usage: {excerpt(http.text, self._secret)!r}",
                status=http.status_code, request_id=request_id,
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
            with attempt, self._throttled():
                self.throttle.wait()
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
                raise status_error(source.response, self._secret)
            yield ResponseStream(source, self._secret)

    def usage(self) -> AccountUsage:
        """Spend, commit and max throughput of this key's account."""
        for attempt in self.retry_policy.attempts():
            with attempt, _transport_errors():
                return self._usage(self._http.get(self.usage_url))
        raise AssertionError("unreachable")

    def usage_history(self) -> list[UsageDay]:
        """``GET /usage/history``: use per model and day."""
        for attempt in self.retry_policy.attempts():
            with attempt, _transport_errors():
                return self._history(self._http.get(self.usage_url + "/history"))
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
            with attempt, self._throttled():
                await self.throttle.await_turn()
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
                    raise status_error(source.response, self._secret)
                yield AsyncResponseStream(source, self._secret)

    async def usage(self) -> AccountUsage:
        """Spend, commit and max throughput of this key's account."""
        async for attempt in self.retry_policy.async_attempts():
            with attempt, _transport_errors():
                return self._usage(await self._http.get(self.usage_url))
        raise AssertionError("unreachable")

    async def usage_history(self) -> list[UsageDay]:
        """``GET /usage/history``: use per model and day."""
        async for attempt in self.retry_policy.async_attempts():
            with attempt, _transport_errors():
                return self._history(await self._http.get(self.usage_url + "/history"))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()


class ResponseStream:
    """Events of one streamed response; iterate, then call ``result()``."""

    def __init__(self, source: EventSource, secret: str = "") -> None:
        self._source = source
        self._secret = secret
        self._fold = StreamAccumulator(request_id=source.response.headers.get("x-request-id"),
                                       secret=secret)

    def __iter__(self) -> Iterator[StreamEvent]:
        with _transport_errors():
            if not _is_event_stream(self._source.response):
                self._source.response.read()
                yield from self._fold.whole(response_from_http(self._source.response,
                                                               self._secret))
                return
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

    def __init__(self, source: EventSource, secret: str = "") -> None:
        self._source = source
        self._secret = secret
        self._fold = StreamAccumulator(request_id=source.response.headers.get("x-request-id"),
                                       secret=secret)

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        with _transport_errors():
            if not _is_event_stream(self._source.response):
                await self._source.response.aread()
                for event in self._fold.whole(response_from_http(self._source.response,
                                                                 self._secret)):
                    yield event
                return
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


def _is_event_stream(http: httpx.Response) -> bool:
    """A stream request answered with plain JSON (some proxies do) is read as one reply."""
    content_type = str(http.headers.get("content-type", ""))
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"
