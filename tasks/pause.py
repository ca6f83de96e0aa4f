"""One pause for every worker under a Prefect global concurrency limit.

A 429 with ``Retry-After`` tells the process that got it when IG1's rate limit reopens
(its ``Throttle`` holds every send until then), but the limit is the key's, shared by
every worker whose runs name the same ``concurrency_limit_name``. So the moment is
published as a Prefect Variable, ``ig1-pause-<limit>`` (visible in the UI under
Variables), and every run under that limit reads it about once a second and holds its
sends until then:

    429 (Retry-After s) ─► Throttle.hold ─► SharedPause.announce ─► Variable {until, until_utc}
    Variable (read ~1/s) ─► SharedPause ─► Throttle.pause(until - now) in every other process

All Prefect API traffic runs on one thread per run, never on a send's path: at most one
read a second and one write per burst of 429s (a write moves the moment later by at least
``MIN_EXTENSION`` seconds, never earlier). The value holds two timestamps and nothing
else. An unreachable Prefect API costs the sharing, never a call: one warning, then
the process paces on its own 429s alone. Without compare-and-set on Variables two
workers writing at once may both write; the later moment is the one kept from then on
(each reader and writer keeps the latest it has seen). Moments are wall-clock epochs:
the workers' clocks must agree (NTP) to well under a second.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.context import SettingsContext, get_settings_context
from prefect.exceptions import ObjectAlreadyExists

from prefect_ig1.client import Throttle

__all__ = ["SharedPause", "pause_variable_name"]

logger = logging.getLogger("prefect_ig1.tasks.pause")
VARIABLE_PREFIX = "ig1-pause-"
_NAME_ROOM = 255 - len(VARIABLE_PREFIX) - 9  # Prefect's cap, minus "-" and a digest


def pause_variable_name(limit_name: str) -> str:
    """``ig1-pause-<limit>``; a limit name that is not a valid Variable name (lowercase
    letters, digits, ``-``, ``_``) is slugged and suffixed with its digest."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", limit_name.lower()).strip("-")
    if slug == limit_name and len(slug) <= _NAME_ROOM + 9:
        return VARIABLE_PREFIX + slug
    digest = hashlib.sha256(limit_name.encode()).hexdigest()[:8]
    return f"{VARIABLE_PREFIX}{slug[:_NAME_ROOM]}-{digest}"


class SharedPause:
    """The pause of one limit for one run: watches the run's throttles, tells the other
    workers of their 429s and holds them on the others'. ``close()`` ends it."""

    REFRESH_SECONDS = 1.0
    MIN_EXTENSION = 0.5
    MAX_PAUSE = 60.0

    def __init__(self, limit_name: str, *, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.limit_name = limit_name
        self.variable = pause_variable_name(limit_name)
        self.refresh_seconds = refresh_seconds
        self.until = 0.0
        """The latest pause moment (UTC epoch) written or read: never moves backwards."""
        self.reads = 0
        self.writes = 0
        # The caller's Prefect settings (a test's or a flow's API URL), for the thread.
        self._settings = get_settings_context()
        self._throttles: list[Throttle] = []
        self._pending = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def watch(self, throttle: Throttle) -> None:
        """Share ``throttle``'s 429s and hold it on the other workers' (idempotent, cheap)."""
        if throttle in self._throttles:
            return
        with self._lock:
            if throttle in self._throttles or self._closed.is_set():
                return
            self._throttles.append(throttle)
            throttle.subscribe(self.announce)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                 name=f"ig1-pause-{self.limit_name}")
                self._thread.start()

    def announce(self, seconds: float) -> None:
        """A 429 here: publish its moment (on the thread, as soon as it wakes)."""
        with self._lock:
            self._pending = max(self._pending, time.time() + seconds)
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop sharing: unsubscribe, publish what is pending, end the thread."""
        with self._lock:
            self._closed.set()
            throttles, self._throttles = self._throttles, []
        for throttle in throttles:
            throttle.unsubscribe(self.announce)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> SharedPause:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            with SettingsContext(profile=self._settings.profile,
                                 settings=self._settings.settings), \
                    get_client(sync_client=True) as client:
                self._loop(client)
        except Exception as exc:
            self._warn(exc)

    def _loop(self, client: SyncPrefectClient) -> None:
        next_read = 0.0
        while True:
            closing = self._closed.is_set()
            self._guarded(self._publish, client)
            if closing:
                return
            if time.monotonic() >= next_read:
                self._guarded(self._refresh, client)
                next_read = time.monotonic() + self.refresh_seconds
            self._wake.wait(max(0.0, next_read - time.monotonic()))
            self._wake.clear()

    def _guarded(self, step: Callable[[SyncPrefectClient], None],
                 client: SyncPrefectClient) -> None:
        try:
            step(client)
        except Exception as exc:  # the sharing is best effort; calls go on without it
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        log = logger.debug if self._warned else logger.warning
        self._warned = True
        log("IG1 rate-limit pause not shared through Prefect Variable %r (%s: %s); this "
            "process paces on its own 429s", self.variable, type(exc).__name__, exc)

    def _refresh(self, client: SyncPrefectClient) -> None:
        """Read the moment; a later one than known holds every watched throttle."""
        self.reads += 1
        # A moment further off than any Retry-After we honour is a wrong clock or value.
        until = min(_moment(client.read_variable_by_name(self.variable)),
                    time.time() + self.MAX_PAUSE)
        if until <= self.until:
            return
        self.until = until
        with self._lock:
            throttles = list(self._throttles)
        for throttle in throttles:
            throttle.pause(until - time.time())

    def _publish(self, client: SyncPrefectClient) -> None:
        """Write the pending moment if it moves the shared one later by MIN_EXTENSION."""
        with self._lock:
            pending, self._pending = self._pending, 0.0
        if pending <= self.until + self.MIN_EXTENSION:
            return
        try:
            self._write(client, pending)
        except BaseException:
            with self._lock:  # tried again on the next wake
                self._pending = max(self._pending, pending)
            raise

    def _write(self, client: SyncPrefectClient, pending: float) -> None:
        current = client.read_variable_by_name(self.variable)
        self.until = max(self.until, _moment(current))  # another worker's may be later
        if pending <= self.until + self.MIN_EXTENSION:
            return
        value = {"until": round(pending, 3),
                 "until_utc": datetime.fromtimestamp(pending, timezone.utc).isoformat()}
        try:
            if current is None:
                client.create_variable(VariableCreate(name=self.variable, value=value,
                                                      tags=["prefect-ig1", "rate-limit"]))
            else:
                client.update_variable(VariableUpdate(name=self.variable, value=value))
        except ObjectAlreadyExists:  # created by another worker meanwhile
            client.update_variable(VariableUpdate(name=self.variable, value=value))
        self.until = pending
        self.writes += 1


def _moment(variable: Any) -> float:
    """The ``until`` of a pause Variable; 0 for none or a value that is not one (anyone
    with access may write the Variable: a NaN, an infinity or a bool is not a moment)."""
    value = getattr(variable, "value", None)
    until = value.get("until") if isinstance(value, dict) else None
    if isinstance(until, bool) or not isinstance(until, int | float):
        return 0.0
    return float(until) if math.isfinite(until) else 0.0
