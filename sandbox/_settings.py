"""Emulator knobs and counters: what tests change at runtime and what they read back."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

Shape = Literal["auto", "text", "image"]
SHAPES: tuple[str, ...] = ("auto", "text", "image")
RECEIVED_LIMIT = 1000


@dataclass
class EmulatorSettings:
    """Behaviour of the emulator; every field may change while it runs."""

    shape: Shape = "auto"
    """"text"/"image" force a reply shape; "auto" picks "image" iff an input_image is sent."""
    latency: float = 0.0
    """Seconds slept before each /v1/responses reply (before the first SSE event)."""
    max_in_flight: int | None = None
    """Concurrent /v1/responses above this get an immediate 429."""
    retry_after: float = 0.0
    """Seconds advertised on 429s (Retry-After rounded up, retry-after-ms exact)."""
    budget_requests: int | None = None
    """After this many successful replies every further one is 402 "Commit exceeded"."""
    revoke_key_after: int | None = None
    """After this many POST /v1/responses the key is refused (401), as when revoked mid-run."""
    usage_commit: float = 1000.0
    """`commit` reported by GET /usage."""
    max_throughput: int = 16
    """`max_throughput` reported by GET /usage."""
    hang_seconds: float = 30.0
    """How long a "hang" fault keeps the client waiting before a 504."""
    json_invalid: bool = False
    """Structured (json_schema/json_object) replies are deliberately not valid JSON."""
    cost_per_response: float = 0.001
    """Spend added to GET /usage `current` per successful reply."""


def apply_changes(settings: EmulatorSettings, changes: dict[str, Any]) -> None:
    """Validate then apply a patch, so a bad patch (e.g. from JSON) changes nothing."""
    names = {f.name for f in dataclasses.fields(EmulatorSettings)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}; known: {sorted(names)}")
    checked = {name: _check(name, value) for name, value in changes.items()}
    for name, value in checked.items():
        setattr(settings, name, value)


def _check(name: str, value: Any) -> Any:
    if name == "shape":
        if value not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, not {value!r}")
        return value
    if name == "json_invalid":
        if not isinstance(value, bool):
            raise ValueError("json_invalid must be a boolean")
        return value
    if name in ("max_in_flight", "budget_requests", "revoke_key_after"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer or null")
        return value
    if name == "max_throughput":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("max_throughput must be a positive integer")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)


@dataclass
class EmulatorStats:
    """Counters of what the emulator saw; read a snapshot via `EmulatorServer.stats`."""

    requests: int = 0
    """Every POST /v1/responses received, faulted or not."""
    responses_ok: int = 0
    """Successful (200, complete) /v1/responses replies."""
    in_flight: int = 0
    """/v1/responses requests being handled now (a live gauge)."""
    max_in_flight_seen: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    """HTTP statuses sent on /v1/* (a dropped connection counts under `faults_served`)."""
    faults_served: Counter[str] = field(default_factory=Counter)
    received: list[dict[str, Any]] = field(default_factory=list)
    """Parsed JSON bodies of the last 1000 POST /v1/responses, oldest first."""
    usage_requests: int = 0
    """GET /usage and /usage/history calls."""
    spent: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    """Successful replies per model (feeds /usage/history)."""

    def as_json(self) -> dict[str, Any]:
        """The counters without the bodies, for the control endpoint."""
        return {
            "requests": self.requests,
            "responses_ok": self.responses_ok,
            "in_flight": self.in_flight,
            "max_in_flight_seen": self.max_in_flight_seen,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults_served": dict(self.faults_served),
            "received_count": len(self.received),
            "usage_requests": self.usage_requests,
            "spent": round(self.spent, 6),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "by_model": dict(self.by_model),
        }


class EmulatorState:
    """Settings, stats and the fault queue behind one lock: the server thread writes, tests read."""

    def __init__(self, api_key: str, settings: EmulatorSettings) -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self._defaults = copy.deepcopy(settings)
        self.settings = settings
        self.stats = EmulatorStats()
        self.faults: list[str] = []
        self.budget_reserved = 0
        self.stopping = threading.Event()

    async def pause(self, seconds: float) -> bool:
        """Sleep, but wake early when the server stops; True if the full time passed."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.05))
        return False

    def snapshot_settings(self) -> EmulatorSettings:
        with self.lock:
            return copy.copy(self.settings)

    def snapshot_stats(self) -> EmulatorStats:
        with self.lock:
            return copy.deepcopy(self.stats)

    def configure(self, changes: dict[str, Any]) -> None:
        with self.lock:
            apply_changes(self.settings, changes)

    def add_faults(self, kind: str, count: int) -> None:
        with self.lock:
            self.faults.extend([kind] * count)

    def pop_fault(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    def reset(self) -> None:
        """Back to defaults; `in_flight` stays a live gauge so running requests stay counted."""
        with self.lock:
            live = self.stats.in_flight
            self.stats = EmulatorStats(in_flight=live, max_in_flight_seen=live)
            self.faults.clear()
            self.budget_reserved = 0
            for f in dataclasses.fields(EmulatorSettings):
                setattr(self.settings, f.name, getattr(self._defaults, f.name))
