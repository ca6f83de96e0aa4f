"""Folding a Responses event stream into the same ``Response`` a plain call returns.

SSE framing is httpx-sse's job; this module only knows the Responses event
types. A stream that stops before ``response.completed`` (or
``response.incomplete``) is an error, never a silently short answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import APIError, IncompleteStreamError, ServerError
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
    _deltas: list[str] = field(default_factory=list)
    _final: Response | None = None

    def event(self, name: str | None, raw_data: str) -> StreamEvent:
        """Decode one SSE event and fold it in; raises on error events."""
        try:
            data = json.loads(raw_data) if raw_data else {}
        except json.JSONDecodeError:
            raise APIError(f"stream event is not JSON: {raw_data[:120]!r}", status=200,
                           request_id=self.request_id) from None
        kind = str(data.get("type") or name or "message")
        event = StreamEvent(kind, data)
        if event.delta is not None:
            self._deltas.append(event.delta)
        elif kind in ("response.completed", "response.incomplete"):
            self._final = Response.model_validate(
                {**data.get("response", {}), "request_id": self.request_id}
            )
        elif kind in ("response.failed", "error"):
            details = data.get("response", {}).get("error") or data.get("error") or data
            message = details.get("message") if isinstance(details, dict) else str(details)
            raise ServerError(f"stream failed: {message}", status=200,
                              request_id=self.request_id)
        return event

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
