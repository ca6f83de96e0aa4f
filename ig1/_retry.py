"""The one retry policy: which failures are retried, how long to wait, when to give up.

Only transient failures (``IG1Error.retryable``) are retried, with capped
exponential backoff and jitter (stamina), the server's ``Retry-After`` taking
precedence, all within a total deadline. ``stamina.set_testing(True, ...)``
turns the waits off in tests while keeping the attempt counts exact.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import stamina

from ._exceptions import IG1Error

__all__ = ["RetryPolicy", "Throttle", "is_transient", "parse_retry_after"]


def is_transient(exc: BaseException) -> bool:
    """True for the failures a later attempt can fix (the single retry predicate)."""
    return isinstance(exc, IG1Error) and exc.retryable


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date; a garbled header is no hint, not an error
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """Client-side retries: quick, bounded, honouring the server's hints."""

    max_retries: int = 2
    deadline: float = 300.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 0.5
    max_retry_after: float = 60.0

    def backoff(self, exc: Exception) -> bool | float:
        """stamina's ``on=`` hook: False to give up, True for backoff, or the wait itself."""
        if not is_transient(exc):
            return False
        hint = getattr(exc, "retry_after", None)
        if hint is None:
            return True
        # A hint longer than we are willing to wait: give up now and let the
        # caller (a task retry, a later run) come back, rather than sleep.
        return False if hint > self.max_retry_after else float(hint)

    def _stamina_arguments(self) -> dict[str, Any]:
        return {
            "on": self.backoff,
            "attempts": self.max_retries + 1,
            "timeout": self.deadline,
            "wait_initial": self.wait_initial,
            "wait_max": self.wait_max,
            "wait_jitter": self.wait_jitter,
        }

    def attempts(self) -> Iterator[stamina.Attempt]:
        """``for attempt in policy.attempts(): with attempt: ...``"""
        return iter(stamina.retry_context(**self._stamina_arguments()))

    def async_attempts(self) -> AsyncIterator[stamina.Attempt]:
        """``async for attempt in policy.async_attempts(): with attempt: ...``"""
        return stamina.retry_context(**self._stamina_arguments()).__aiter__()


class Throttle:
    """One pace for every send of a client, learnt from 429s: a rate limit is shared by all
    the calls of a process, so all of them slow down, not only the request that got it.

    A 429 holds every send until its ``Retry-After``. The first 429 of a burst also spaces
    sends, 30 % further than the spacing before it: by a sub-second wait (a token bucket's
    ``retry-after-ms`` is its own spacing), else by the rate the server was accepting
    (successes of the last ``WINDOW`` seconds), since a gateway's whole-second
    ``Retry-After: 1`` or a quota's "until the window resets" says when to resume, not how
    fast. Each success shortens the spacing by 0.3 %, so the pace settles at the limit
    and returns to full speed once it is gone. Measured in ``benchmarks.rate_limit``
    (5 runs each): at R = 20/s, C = 16, 0.99 x R with 3.8-4.5 % 429s (a 15 % step: 1.02-1.03
    x R, 5.4-5.7 %; 50 %: 0.78 x R); at R = 40/s, C = 32, 0.91 x R with 5.1 % (15 %: 0.99,
    6.0 %); at a 5-second quota, 1.01 x R with 0.7 %.
    ``stamina.set_testing(True)`` turns the waits off, as it turns off backoff.

    Other processes learn of a 429 through ``subscribe`` (each hold is announced) and
    ``pause`` (a hold that leaves the pace alone): ``prefect_ig1.tasks.pause``.
    """

    BACKOFF = 1.3
    RECOVERY = 0.997
    FLOOR = 0.001  # a spacing shorter than this is no spacing
    WINDOW = 5.0  # seconds of successes that tell the rate the server accepts

    def __init__(self, max_pause: float = 60.0) -> None:
        self.max_pause = max_pause
        self.interval = 0.0
        self._next = 0.0
        self._episode_ends = 0.0
        self._accepted: deque[float] = deque()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[float], None]] = []

    def subscribe(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(seconds)`` after each hold, to pass the pause on (never raise in it)."""
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[float], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def hold(self, seconds: float | None) -> None:
        """A 429 said to wait ``seconds``: hold every send that long, and space them."""
        if not seconds or seconds <= 0:
            return
        seconds = min(seconds, self.max_pause)
        with self._lock:
            now = time.monotonic()
            if now >= self._episode_ends:  # 429s of one burst slow the pace once, not each
                # A sub-second wait (``retry-after-ms``) is a token bucket's own spacing; a
                # wait of seconds is when to resume, and the accepted rate is the pace.
                spacing = seconds if seconds < 1.0 else self._accepted_spacing(now)
                self.interval = min(max(self.interval * self.BACKOFF, spacing), self.max_pause)
                self._episode_ends = now + max(seconds, self.interval)
            elif seconds < 1.0:
                self.interval = max(self.interval, seconds)
            self._next = max(self._next, now + seconds)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(seconds)

    def pause(self, seconds: float) -> None:
        """Hold every send ``seconds`` without slowing the pace: another process's 429 says
        when the shared limit reopens, not how fast this process may send."""
        if seconds <= 0:
            return
        with self._lock:
            self._next = max(self._next, time.monotonic() + min(seconds, self.max_pause))

    def succeeded(self) -> None:
        """An accepted request: counted for the rate, and the pace may quicken."""
        with self._lock:
            now = time.monotonic()
            self._accepted.append(now)
            while self._accepted[0] < now - self.WINDOW:
                self._accepted.popleft()
            if self.interval:
                self.interval *= self.RECOVERY
                if self.interval < self.FLOOR:
                    self.interval = 0.0

    def _accepted_spacing(self, now: float) -> float:
        """Seconds between sends at the rate the server accepted lately (none with nothing
        to go by: the hold alone, until a later 429 finds successes to count)."""
        while self._accepted and self._accepted[0] < now - self.WINDOW:
            self._accepted.popleft()
        if len(self._accepted) < 2:
            return 0.0
        return max(self._accepted[-1] - self._accepted[0], 1e-3) / (len(self._accepted) - 1)

    def turn(self) -> float:
        """Take the next send's turn; the seconds to wait for it."""
        if stamina.is_testing():
            return 0.0
        with self._lock:
            now = time.monotonic()
            if not self.interval and self._next <= now:
                return 0.0
            start = max(now, self._next)
            self._next = start + self.interval
            return start - now

    def wait(self) -> None:
        if (delay := self.turn()) > 0:
            time.sleep(delay)

    async def await_turn(self) -> None:
        if (delay := self.turn()) > 0:
            await asyncio.sleep(delay)
