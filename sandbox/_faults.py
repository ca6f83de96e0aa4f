"""Error bodies and the misbehaviours a client must survive: one reply builder per fault kind."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

STATUS_FAULTS = ("400", "401", "403", "404", "408", "409", "422", "429", "500", "502", "503", "504")
FAULT_KINDS: tuple[str, ...] = (
    *STATUS_FAULTS,
    "openai_error",
    "string_error",
    "drop",
    "malformed",
    "hang",
    "stream_cut",
)

_MESSAGES = {
    400: "Bad request",
    401: "Invalid API key",
    402: "Commit exceeded",
    403: "API key does not exist or is inactive",
    404: "Not found",
    408: "Request timeout",
    409: "Conflict",
    422: "Unprocessable entity",
    429: "Too many requests",
    500: "Internal server error",
    502: "Failed to forward request",
    503: "Service unavailable",
    504: "Gateway timeout",
}
_HTML = {502: "502 Bad Gateway", 504: "504 Gateway Time-out"}


def request_id(request: Request) -> str:
    """The id the middleware gave this request (also sent as `x-request-id`)."""
    return str(request.scope["state"]["request_id"])


def ig1_error(request: Request, status: int, message: str | None = None) -> JSONResponse:
    """IG1's own error body: `{"message", "code", "request_id"}`."""
    body = {
        "message": message or _MESSAGES.get(status, "Error"),
        "code": status,
        "request_id": request_id(request),
    }
    return JSONResponse(body, status_code=status)


def too_many_requests(request: Request, retry_after: float,
                      why: str = "in-flight limit reached") -> JSONResponse:
    """429 with both spellings of the wait that clients honour."""
    response = ig1_error(request, 429, f"Too many requests: {why}")
    response.headers["Retry-After"] = str(math.ceil(retry_after))
    response.headers["retry-after-ms"] = str(round(retry_after * 1000))
    return response


def html_error(status: int) -> Response:
    """What an nginx gateway sends: HTML, not JSON."""
    title = _HTML.get(status, f"{status} Error")
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Response(page, status_code=status, media_type="text/html")


class DroppedResponse(Response):
    """Promise a body with Content-Length, send part of it, then let the server close the socket.

    Returning from an ASGI app mid-body makes uvicorn close the transport: the client
    sees a transport error (httpx.RemoteProtocolError), never an HTTP status.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["dropped"] = True
        partial = b'{"id": "resp_dropped", "object": "response", "output": ['
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(partial) + 4096).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": partial, "more_body": True})


class HangingResponse(Response):
    """Say nothing for `seconds` (or until the client gives up), then a gateway 504."""

    def __init__(self, seconds: float, stopping: threading.Event) -> None:
        super().__init__(status_code=504)
        self.seconds = seconds
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(disconnected())
        deadline = time.monotonic() + self.seconds
        try:
            while not watcher.done() and not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.wait({watcher}, timeout=min(left, 0.05))
        finally:
            watcher.cancel()
        if not watcher.done() or watcher.cancelled():
            await html_error(504)(scope, receive, send)


def malformed(request: Request) -> Response:
    """A 200 that claims JSON but is cut short, as a misbehaving gateway may send."""
    body = f'{{"id": "resp_malformed", "request_id": "{request_id(request)}", "output": [{{"te'
    return Response(body, status_code=200, media_type="application/json")


def fault_response(
    kind: str,
    request: Request,
    retry_after: float,
    hang_seconds: float,
    stopping: threading.Event,
) -> Response:
    """The reply for a queued fault (except "stream_cut" on a stream, built by the caller)."""
    if kind == "429":
        return too_many_requests(request, retry_after)
    if kind in ("502", "504"):
        return html_error(int(kind))
    if kind in STATUS_FAULTS:
        return ig1_error(request, int(kind), f"{_MESSAGES[int(kind)]} (emulated fault)")
    if kind == "openai_error":
        error = {
            "message": "Invalid parameter (emulated OpenAI-style error)",
            "type": "invalid_request_error",
            "param": None,
            "code": "bad_param",
        }
        return JSONResponse({"error": error}, status_code=400)
    if kind == "string_error":
        return JSONResponse({"error": "Unauthorized"}, status_code=401)
    if kind == "malformed":
        return malformed(request)
    if kind == "hang":
        return HangingResponse(hang_seconds, stopping)
    if kind in ("drop", "stream_cut"):
        return DroppedResponse()
    raise ValueError(f"unknown fault kind {kind!r}")


def sse_response(
    frames: list[bytes],
    pause: Callable[[], Awaitable[bool]] | None,
    on_done: Callable[[], None] | None = None,
) -> StreamingResponse:
    """Stream `frames` after `pause` (the latency); `on_done` runs only if every frame was sent."""

    async def body() -> AsyncIterator[bytes]:
        if pause is not None:
            await pause()
        for frame in frames:
            yield frame
        if on_done is not None:
            on_done()

    headers = {"cache-control": "no-cache"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
