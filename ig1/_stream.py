"""Folding a Responses event stream into the same ``Response`` a plain call returns.

SSE framing is httpx-sse's job; this module only knows the Responses event
types. A stream that stops before ``response.completed`` (or
``response.incomplete``) is an error, never a silently short answer. What real
servers add is read too: the ``[DONE]`` of Chat-Completions-style proxies,
vLLM's data-only ``{"error": {...}}`` events, and a plain JSON reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import IncompleteStreamError, MalformedResponseError, ResponseFailedError
from ._reply import error_details, excerpt, redact, response_from_json
from ._response import Response

__all__ = ["StreamEvent"]


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event: its type and decoded JSON data."""

    type: str
    data: dict[str, Any]

    @property
    def delta(self) -> str | None:
        """The text delta, for ``response.output_text.delta`` events."""
        if self.type != "response.output_text.delta":
            return None
        return str(self.data.get("delta", ""))


@dataclass
class StreamAccumulator:
    """Collects events; ``result()`` is the final Response or an error."""

    request_id: str | None = None
    secret: str = field(default="", repr=False)
    _deltas: list[str] = field(default_factory=list)
    _final: Response | None = None

    def event(self, name: str | None, raw_data: str) -> StreamEvent:
        """Decode one SSE event and fold it in; raises on error events."""
        if raw_data.strip() == "[DONE]":  # what Chat-Completions-style proxies append
            return StreamEvent("[DONE]", {})
        try:
            data = json.loads(raw_data) if raw_data else {}
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise MalformedResponseError(
                f"stream event is not a JSON object: {excerpt(raw_data, self.secret)!r}",
                status=200, request_id=self.request_id)
        kind = str(data.get("type") or name or "message")
        event = StreamEvent(kind, data)
        if event.delta is not None:
            self._deltas.append(event.delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data.get("response")
            if kind == "response.failed":
                response = {**response, "status": "failed"} if isinstance(response, dict) else {
                    "id": "", "status": "failed", "error": data.get("error")}
            self._final = response_from_json(response, request_id=self.request_id,
                                             secret=self.secret)
        elif kind == "error" or (data.get("type") is None and "error" in data):
            message, code = error_details(data)  # OpenAI's error event, or vLLM's data-only one
            raise ResponseFailedError(f"stream failed: {redact(message, self.secret)}",
                                      status=200, code=code, request_id=self.request_id,
                                      body=redact(raw_data[:2000], self.secret))
        return event

    def whole(self, response: Response) -> list[StreamEvent]:
        """Fold a plain JSON reply to a stream request: its text as one delta, then done."""
        self._final = response
        self._deltas = [response.output_text]
        dumped = response.model_dump(mode="json")
        return [StreamEvent("response.output_text.delta", {"delta": response.output_text}),
                StreamEvent("response.completed", {"response": dumped})]

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._deltas)

    def result(self) -> Response:
        """The folded response; deltas fill ``output_text`` if the final event lacks it."""
        if self._final is None:
            raise IncompleteStreamError(
                "the stream ended without response.completed (backend dropped); "
                f"{len(self.text)} characters arrived before it stopped",
                partial_text=self.text, request_id=self.request_id,
            )
        if not self._final.output_text and self._deltas:
            return self._final.model_copy(update={"output_text": self.text})
        return self._final
