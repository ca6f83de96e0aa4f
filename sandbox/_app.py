"""The emulator's ASGI app: IG1's endpoints plus the /_emulator control endpoints."""

from __future__ import annotations

import asyncio
import datetime
import secrets
import time
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import _faults
from ._dialect import DONE_FRAME, dress_body, dress_events, failed_body, failed_events, frame
from ._image_tokens import image_tokens
from ._replies import ReplyIds, image_shape, make_reply, sse_events, sse_frame, text_shape
from ._request import (
    ParsedRequest,
    RequestRefused,
    describe_image,
    load_json_body,
    parse_request,
)
from ._settings import RECEIVED_LIMIT, EmulatorSettings, EmulatorState, body_digest, dialect_of


class RequestIdMiddleware:
    """Give every request an id, put it on every reply, and count /v1 statuses."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = f"req_{secrets.token_hex(12)}"
        scope.setdefault("state", {})["request_id"] = rid
        counted = scope["path"].startswith("/v1/")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
                if counted and not scope["state"].get("dropped"):
                    with self.state.lock:
                        self.state.stats.by_status[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, send_with_id)


def _authorized(request: Request, state: EmulatorState) -> bool:
    return request.headers.get("authorization") == f"Bearer {state.api_key}"


class ResponsesEndpoint:
    """POST /v1/responses: auth, in-flight cap, faults, budget, then a deterministic reply."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        state = self.state
        raw = await request.body()
        body: dict[str, Any] | None
        try:
            body = load_json_body(raw)
        except RequestRefused:
            body = None
        settings = state.snapshot_settings()
        with state.lock:
            stats = state.stats
            stats.requests += 1
            stats.arrived_at.append(time.time())
            del stats.arrived_at[:-RECEIVED_LIMIT]
            if body is not None:
                stats.received.append(body)
                del stats.received[:-RECEIVED_LIMIT]
            authorized = _authorized(request, state) and (
                settings.revoke_key_after is None or stats.requests <= settings.revoke_key_after
            )
            capped = (
                settings.max_in_flight is not None and stats.in_flight >= settings.max_in_flight
            )
            rate_wait = (state.rate_limit_wait(settings.rate_limit_rps,
                                                 settings.rate_limit_window)
                         if authorized and not capped else 0.0)
            if rate_wait:
                stats.rate_limited += 1
            if authorized and not capped and not rate_wait:
                stats.in_flight += 1
                stats.max_in_flight_seen = max(stats.max_in_flight_seen, stats.in_flight)
        if not authorized:
            await _faults.ig1_error(request, 401, "Invalid API key")(scope, receive, send)
            return
        if capped:
            await _faults.too_many_requests(request, settings.retry_after)(scope, receive, send)
            return
        if rate_wait:
            await _faults.too_many_requests(request, rate_wait, "rate limit reached")(
                scope, receive, send)
            return
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                with state.lock:
                    state.stats.in_flight -= 1

        async def send_then_finish(message: Message) -> None:
            # Leave the gauge before the last byte goes out: a client that has its reply
            # must never read this request as still in flight.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()
            await send(message)

        try:
            response = await self.respond(request, raw, body, settings)
            await response(scope, receive, send_then_finish)
        finally:
            finish()

    async def respond(
        self, request: Request, raw: bytes, body: dict[str, Any] | None, settings: EmulatorSettings
    ) -> Response:
        state = self.state
        fault = state.next_fault(body_digest(body, raw), settings)
        if fault is not None:
            with state.lock:
                state.stats.faults_served[fault] += 1
            if fault == "stream_cut" and body is not None and body.get("stream") is True:
                return self.cut_stream(body, len(raw), settings)
            return _faults.fault_response(
                fault, request, settings.retry_after, settings.hang_seconds, state.stopping
            )
        with state.lock:
            over_budget = (
                settings.budget_requests is not None
                and state.budget_reserved >= settings.budget_requests
            )
            if not over_budget:
                state.budget_reserved += 1
        if over_budget:
            return _faults.ig1_error(request, 402, "Commit exceeded")
        try:
            return await self.reply(request, raw, body, settings)
        except RequestRefused as refused:
            with state.lock:
                state.budget_reserved = max(0, state.budget_reserved - 1)
            return _faults.ig1_error(request, refused.status, refused.message)

    async def reply(
        self, request: Request, raw: bytes, body: dict[str, Any] | None, settings: EmulatorSettings
    ) -> Response:
        parsed = parse_request(load_json_body(raw) if body is None else body)
        seen = [await asyncio.to_thread(describe_image, image) for image in parsed.images]
        tokens = sum(image_tokens(image.width, image.height, patch=settings.image_patch_size,
                                  max_tokens=settings.max_image_tokens) for image in seen)
        reply = make_reply(parsed, [image.line for image in seen], len(raw),
                           settings.json_invalid, image_tokens=tokens)
        ids = ReplyIds.new()
        dialect = dialect_of(settings)

        def success() -> None:
            self.count_success(parsed, reply.input_tokens, reply.output_tokens)

        if parsed.stream and not settings.json_for_stream:
            events = sse_events(parsed, reply, ids)
            if dialect.failed_code:
                events = failed_events(events, dialect.failed_code, dialect.error_event)
            else:
                events = dress_events(events, dialect, ids.number)
            frames = [frame(event) for event in events]
            frames += [DONE_FRAME] if settings.done_marker else []
            return _faults.sse_response(frames, lambda: self.state.delay(settings),
                                        None if dialect.failed_code else success)
        if settings.latency or settings.hold_until_in_flight is not None:
            await self.state.delay(settings)
        shape = settings.shape
        if shape == "auto":
            shape = "image" if parsed.images else "text"
        payload = (text_shape if shape == "text" else image_shape)(parsed, reply, ids)
        if dialect.failed_code:
            return JSONResponse(failed_body(payload, dialect.failed_code))
        success()
        return JSONResponse(dress_body(payload, dialect, ids.number))

    def cut_stream(self, body: dict[str, Any], size: int, settings: EmulatorSettings) -> Response:
        """A stream that stops after a few deltas, without response.completed."""
        try:
            parsed = parse_request(body)
        except RequestRefused:
            parsed = ParsedRequest(body=body, model=str(body.get("model")), user_texts=["cut"])
        reply = make_reply(parsed, [], size, json_invalid=False)
        events = sse_events(parsed, reply, ReplyIds.new())
        first_done = next(i for i, e in enumerate(events) if e["type"].endswith("text.done"))
        kept = events[: min(first_done, 6)]
        frames = [sse_frame(e) for e in kept]
        return _faults.sse_response(frames, lambda: self.state.pause(settings.latency))

    def count_success(self, parsed: ParsedRequest, input_tokens: int, output_tokens: int) -> None:
        repeat = self.state.answered(body_digest(parsed.body, b""))
        with self.state.lock:
            stats = self.state.stats
            stats.responses_ok += 1
            stats.image_responses_ok += bool(parsed.images)
            stats.repeat_responses_ok += repeat
            stats.spent += self.state.settings.cost_per_response
            stats.input_tokens += input_tokens
            stats.output_tokens += output_tokens
            stats.by_model[parsed.model] += 1


def build_app(state: EmulatorState) -> ASGIApp:
    """Routes of the real API (/v1/responses, /usage) and of the control plane (/_emulator)."""

    async def usage(request: Request) -> Response:
        if not _authorized(request, state):
            return _faults.ig1_error(request, 401, "Invalid API key")
        with state.lock:
            state.stats.usage_requests += 1
            current = round(state.stats.spent, 6)
            settings = state.settings
            body = {
                "current": current,
                "commit": settings.usage_commit,
                "max_throughput": settings.max_throughput,
            }
        return JSONResponse(body)

    async def usage_history(request: Request) -> Response:
        if not _authorized(request, state):
            return _faults.ig1_error(request, 401, "Invalid API key")
        today = datetime.date.today().isoformat()
        with state.lock:
            state.stats.usage_requests += 1
            cost = state.settings.cost_per_response
            rows = [
                {"date": today, "model": model, "requests": n, "cost": round(n * cost, 6)}
                for model, n in sorted(state.stats.by_model.items())
            ]
        return JSONResponse(rows)

    async def control_stats(request: Request) -> Response:
        return JSONResponse(state.snapshot_stats().as_json())

    async def control_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"reset": True})

    async def control_settings(request: Request) -> Response:
        if request.method == "POST":
            try:
                state.configure(load_json_body(await request.body()))
            except (RequestRefused, ValueError) as exc:
                return _faults.ig1_error(request, 400, str(exc))
        return JSONResponse(vars(state.snapshot_settings()))

    async def control_faults(request: Request) -> Response:
        try:
            body = load_json_body(await request.body())
            kind, count = body.get("kind"), body.get("count", 1)
            if kind not in _faults.FAULT_KINDS:
                raise ValueError(f"kind must be one of {_faults.FAULT_KINDS}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError("count must be a non-negative integer")
        except (RequestRefused, ValueError) as exc:
            return _faults.ig1_error(request, 400, str(exc))
        state.add_faults(kind, count)
        with state.lock:
            return JSONResponse({"queued": list(state.faults)})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = "Not found" if status == 404 else "Method not allowed"
        return _faults.ig1_error(request, status, f"{message}: {request.method} {request.url.path}")

    routes = [
        Route("/v1/responses", ResponsesEndpoint(state), methods=["POST"]),
        Route("/usage", usage, methods=["GET"]),
        Route("/usage/history", usage_history, methods=["GET"]),
        Route("/_emulator/stats", control_stats, methods=["GET"]),
        Route("/_emulator/reset", control_reset, methods=["POST"]),
        Route("/_emulator/settings", control_settings, methods=["GET", "POST"]),
        Route("/_emulator/faults", control_faults, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    return RequestIdMiddleware(app, state)
