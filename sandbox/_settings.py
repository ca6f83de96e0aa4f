"""Emulator knobs and counters: what tests change at runtime and what they read back."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from ._dialect import ERROR_EVENTS, Dialect, ErrorEvent
from ._faults import FAULT_KINDS

Shape = Literal["auto", "text", "image"]
SHAPES: tuple[str, ...] = ("auto", "text", "image")
RECEIVED_LIMIT = 1000
HOLD_LIMIT = 60.0
"""Seconds a reply waits at most for `hold_until_in_flight`."""
TRANSIENT_MIX: dict[str, float] = {
    "429": 1.0, "500": 1.0, "502": 1.0, "503": 1.0, "drop": 1.0, "malformed": 1.0}
"""The default `fault_mix`: every transient fault a gateway sends, equally often."""


@dataclass
class EmulatorSettings:
    """Behaviour of the emulator; every field may change while it runs."""

    shape: Shape = "auto"
    """"text"/"image" force a reply shape; "auto" picks "image" iff an input_image is sent."""
    latency: float = 0.0
    """Seconds slept before each /v1/responses reply (before the first SSE event)."""
    max_in_flight: int | None = None
    """Concurrent /v1/responses above this get an immediate 429."""
    hold_until_in_flight: int | None = None
    """Replies wait (at most `HOLD_LIMIT` seconds, then go on) until this many /v1/responses
    have been in flight at once, or until the setting is cleared: two clients capped at 4
    each overlap for sure at 5, however late one of them starts."""
    retry_after: float = 0.0
    """Seconds advertised on 429s (Retry-After rounded up, retry-after-ms exact)."""
    rate_limit_rps: float | None = None
    """Requests per second accepted (a bucket of one second's worth); beyond it, 429 with
    the wait until the next request would be accepted, as a gateway's rate limit does."""
    rate_limit_window: float | None = None
    """With `rate_limit_rps`: fixed windows of this many seconds, each accepting rps x window
    requests; beyond, 429 with the wait until the window ends (a quota gateway: a
    Retry-After of seconds, not of one request's spacing)."""
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
    fault_rate: float = 0.0
    """Share (0-1) of /v1/responses requests that fail at random (after queued faults)."""
    fault_mix: dict[str, float] = field(default_factory=lambda: dict(TRANSIENT_MIX))
    """Relative weights of the fault kinds drawn at `fault_rate`."""
    reasoning: bool = False
    """Text replies start with a reasoning item; streams send its reasoning_text deltas (vLLM)."""
    function_call: bool = False
    """Text replies carry a function_call item before the message."""
    done_marker: bool = False
    """Streams end with `data: [DONE]` after the terminal event (Chat-Completions proxies)."""
    fractional_created: bool = False
    """`created_at`/`created` is a float, e.g. 1754925861.734."""
    null_fields: bool = False
    """Nulls where OpenAI's types allow them: annotations, usage details, a content-null item."""
    failed_code: str | None = None
    """When set, every reply is a 200 with status "failed" and this error code (not billed)."""
    error_event: ErrorEvent = "response.failed"
    """How a failing stream says so: "response.failed", an "error" event, or vLLM's "data_only"."""
    json_for_stream: bool = False
    """Stream requests are answered with the plain JSON body, as some proxies do."""
    image_patch_size: int = 28
    """Pixels per side of the patch an image is billed by: 28 for Qwen2.5-VL, 32 for Qwen3-VL.
    Each input_image adds one input token per patch after Qwen's ``smart_resize``."""
    max_image_tokens: int = 16384
    """The most patches (tokens) one image costs: larger images are scaled down to fit
    (Qwen2.5-VL's default ``max_pixels`` is 16384 patches of 28x28)."""
    fault_seed: int = 0
    """Seed of the draws. A draw depends on the seed, the request body and how often that
    body was seen, never on arrival order: the same requests get the same faults, however
    many threads send them."""


_SWITCHES = ("json_invalid", "reasoning", "function_call", "done_marker", "fractional_created",
             "null_fields", "json_for_stream")


def dialect_of(settings: EmulatorSettings) -> Dialect:
    """The reply switches of these settings."""
    return Dialect(reasoning=settings.reasoning, function_call=settings.function_call,
                   fractional_created=settings.fractional_created,
                   null_fields=settings.null_fields, failed_code=settings.failed_code,
                   error_event=settings.error_event)


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
    if name in _SWITCHES:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if name == "failed_code":
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError("failed_code must be a non-empty string or null")
        return value
    if name == "error_event":
        if value not in ERROR_EVENTS:
            raise ValueError(f"error_event must be one of {ERROR_EVENTS}, not {value!r}")
        return value
    if name == "fault_rate":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError("fault_rate must be a number from 0 to 1")
        return float(value)
    if name == "fault_mix":
        return _check_mix(value)
    if name == "fault_seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("fault_seed must be an integer")
        return value
    if name in ("max_in_flight", "hold_until_in_flight", "budget_requests", "revoke_key_after"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer or null")
        return value
    if name in ("max_throughput", "image_patch_size", "max_image_tokens"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)


def _check_mix(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise ValueError("fault_mix must be a non-empty mapping of fault kind to weight")
    unknown = sorted(set(value) - set(FAULT_KINDS))
    if unknown:
        raise ValueError(f"unknown fault kind(s) in fault_mix: {unknown}; known: {FAULT_KINDS}")
    weights = {}
    for kind, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"fault_mix weight of {kind!r} must be a non-negative number")
        weights[kind] = float(weight)
    if not sum(weights.values()):
        raise ValueError("fault_mix needs at least one positive weight")
    return weights


def parse_mix(text: str) -> dict[str, float]:
    """``"429=2,500=1,drop"`` -> ``{"429": 2.0, "500": 1.0, "drop": 1.0}`` (for the CLI)."""
    mix: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, weight = item.partition("=")
        try:
            mix[kind.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"bad weight in fault mix item {item!r}") from None
    return _check_mix(mix)


def body_digest(body: dict[str, Any] | None, raw: bytes) -> str:
    """Identity of a request's content: the same request sent again has the same digest."""
    canonical = json.dumps(body, sort_keys=True).encode() if body is not None else raw
    return hashlib.sha256(canonical).hexdigest()


@dataclass
class EmulatorStats:
    """Counters of what the emulator saw; read a snapshot via `EmulatorServer.stats`."""

    requests: int = 0
    """Every POST /v1/responses received, faulted or not."""
    responses_ok: int = 0
    """Successful (200, complete) /v1/responses replies."""
    image_responses_ok: int = 0
    """Successful replies to requests carrying an input_image (description calls)."""
    repeat_responses_ok: int = 0
    """Successful replies to a request already answered successfully: paying twice."""
    in_flight: int = 0
    """/v1/responses requests being handled now (a live gauge)."""
    max_in_flight_seen: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    """HTTP statuses sent on /v1/* (a dropped connection counts under `faults_served`)."""
    faults_served: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    """429s sent by the `rate_limit_rps` bucket."""
    received: list[dict[str, Any]] = field(default_factory=list)
    """Parsed JSON bodies of the last 1000 POST /v1/responses, oldest first."""
    arrived_at: list[float] = field(default_factory=list)
    """Wall-clock times (epoch) the last 1000 POST /v1/responses arrived, oldest first."""
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
            "image_responses_ok": self.image_responses_ok,
            "repeat_responses_ok": self.repeat_responses_ok,
            "in_flight": self.in_flight,
            "max_in_flight_seen": self.max_in_flight_seen,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults_served": dict(self.faults_served),
            "rate_limited": self.rate_limited,
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
        self._seen: Counter[str] = Counter()  # body digest -> times it reached the fault stage
        self._answered: set[str] = set()  # body digests answered successfully
        self._tokens: float | None = None  # the `rate_limit_rps` bucket; None: full
        self._refilled_at = time.monotonic()
        self._window_ends = 0.0  # the `rate_limit_window` now counting, and its count
        self._window_used = 0

    def rate_limit_wait(self, rate: float | None, window: float | None = None) -> float:
        """0 when a request may pass now (it takes a token), else seconds until one may.
        Call with the lock held."""
        now = time.monotonic()
        if rate is None:
            self._tokens = None
            return 0.0
        if window:
            if now >= self._window_ends:
                self._window_ends, self._window_used = now + window, 0
            if self._window_used < rate * window:
                self._window_used += 1
                return 0.0
            return self._window_ends - now
        refill = (now - self._refilled_at) * rate
        self._tokens = rate if self._tokens is None else min(rate, self._tokens + refill)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    async def delay(self, settings: EmulatorSettings) -> bool:
        """What a reply waits before it starts: the hold, then the latency; as `pause`.

        The hold reads the live setting, so clearing it lets held replies go: a gate a test
        opens when it is ready."""
        deadline = time.monotonic() + HOLD_LIMIT
        while (wanted := self.settings.hold_until_in_flight) is not None and (
                self.stats.max_in_flight_seen < wanted):
            if self.stopping.is_set() or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        return await self.pause(settings.latency)

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

    def next_fault(self, digest: str, settings: EmulatorSettings) -> str | None:
        """A queued fault first; else a seeded draw at `fault_rate` (see `fault_seed`)."""
        with self.lock:
            seen = self._seen[digest]
            self._seen[digest] += 1
            if self.faults:
                return self.faults.pop(0)
        if settings.fault_rate <= 0:
            return None
        draw = random.Random(f"{settings.fault_seed}:{digest}:{seen}")
        if draw.random() >= settings.fault_rate:
            return None
        kinds = list(settings.fault_mix)
        return draw.choices(kinds, [settings.fault_mix[kind] for kind in kinds])[0]

    def answered(self, digest: str) -> bool:
        """Record a successful reply; True if this request had been answered before."""
        with self.lock:
            repeat = digest in self._answered
            self._answered.add(digest)
            return repeat

    def reset(self) -> None:
        """Back to defaults; `in_flight` stays a live gauge so running requests stay counted."""
        with self.lock:
            live = self.stats.in_flight
            self.stats = EmulatorStats(in_flight=live, max_in_flight_seen=live)
            self.faults.clear()
            self.budget_reserved = 0
            self._seen.clear()
            self._answered.clear()
            self._tokens = None
            self._window_ends = 0.0
            for f in dataclasses.fields(EmulatorSettings):
                setattr(self.settings, f.name, copy.deepcopy(getattr(self._defaults, f.name)))
