"""Progress of a long run, where people look: the Prefect UI, the logs, the terminal.

Driven by the results the run already has (no thread, no extra S3 or IG1 call): the flow
calls ``listed`` while listing, ``start`` once it knows how many items it will send, and
``done`` per finished item. At most every ``ARTIFACT_EVERY`` seconds the run's progress
artifact moves; at most every ``LOG_EVERY`` seconds (and at the end of listing) one INFO
line gives done/total, the counts, the rate over the last minute, requests, tokens and
an ETA; with ``show_bar`` (the CLI on a terminal) a rich bar shows the same figures.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel

__all__ = ["ARTIFACT_EVERY", "LOG_EVERY", "RunProgress", "bar_on_terminal",
           "run_from_command_line"]

ARTIFACT_EVERY = 2.0
LOG_EVERY = 10.0
RATE_WINDOW = 60.0
_bar_wanted = False  # set by bar_on_terminal


@contextmanager
def bar_on_terminal() -> Iterator[None]:
    """Runs started inside show a live bar when stdout is a terminal (log lines otherwise):
    for command lines and the demo, never for deployments."""
    global _bar_wanted
    _bar_wanted = sys.stdout.isatty()
    try:
        yield
    finally:
        _bar_wanted = False


def run_from_command_line(flow: Callable[..., BaseModel], arguments: dict[str, Any]) -> int:
    """Run a flow from its CLI (with ``bar_on_terminal``), then print its report as JSON."""
    with bar_on_terminal():
        report = flow(**arguments)
    print(json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False))
    return 0


class RunProgress:
    """One run's progress; a context manager so the bar and the artifact end with the run."""

    def __init__(self, what: str, *, show_bar: bool | None = None) -> None:
        self.what = what
        self.show_bar = _bar_wanted if show_bar is None else show_bar
        self.total: int | None = None
        self.listed_count = 0
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self.tokens = 0
        self._finished: deque[float] = deque()
        self._artifact: UUID | None = None
        self._artifact_at = self._logged_at = 0.0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> RunProgress:
        self._artifact = cast(UUID, create_progress_artifact(
            0.0, description=f"{self.what}: listing"))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.total is not None and error is None:
            self._update_artifact(force=True)
            self._log(force=True)
        if self._bar is not None:
            self._bar.stop()

    @property
    def done_count(self) -> int:
        return sum(self.counts.values())

    def listed(self, count: int) -> None:
        """Items listed so far (before the total is known)."""
        self.listed_count = count
        now = time.monotonic()
        if self._artifact is not None and now - self._artifact_at >= ARTIFACT_EVERY:
            self._artifact_at = now
            update_progress_artifact(self._artifact, 0.0,
                                     description=f"{self.what}: {count:,} listed")

    def start(self, total: int) -> None:
        """Listing is done: ``total`` items are to be sent."""
        self.total = total
        get_run_logger().info("%s: listing done, %d listed, %d to send", self.what,
                              self.listed_count, total)
        self._update_artifact(force=True)
        if self.show_bar and total:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[figures]}"))
            self._task = self._bar.add_task(self.what, total=total, figures="")
            self._bar.start()

    def done(self, status: str, *, requests: int = 0, tokens: int = 0) -> None:
        """One item finished with ``status`` (what it cost: ``requests``, ``tokens``)."""
        self.counts[status] += 1
        self.requests += requests
        self.tokens += tokens
        now = time.monotonic()
        self._finished.append(now)
        while self._finished and now - self._finished[0] > RATE_WINDOW:
            self._finished.popleft()
        self._update_artifact()
        self._log()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done_count, figures=self._figures())

    def rate(self) -> float:
        """Items per second over the last minute."""
        if len(self._finished) < 2:
            return 0.0
        span = self._finished[-1] - self._finished[0]
        return (len(self._finished) - 1) / span if span > 0 else 0.0

    def line(self) -> str:
        """The one progress line, the same for every flow."""
        total = self.total or 0
        left = max(total - self.done_count, 0)
        rate = self.rate()
        eta = f"{left / rate:,.0f} s" if rate > 0 and left else "-"
        return (f"{self.what}: {self.done_count:,}/{total:,} done ({self._percent():.0f} %); "
                f"{self._figures()}; {rate:.1f} items/s over the last minute; ETA {eta}")

    def _figures(self) -> str:
        counts = ", ".join(f"{self.counts.get(s, 0):,} {s.replace('_', ' ')}"
                           for s in ("described", "completed", "cached", "failed",
                                     "invalid_output", "not_attempted")
                           if s in self.counts or s in ("cached", "failed", "not_attempted"))
        return f"{counts}; {self.requests:,} IG1 requests, {self.tokens:,} tokens"

    def _percent(self) -> float:
        return 100.0 * self.done_count / self.total if self.total else 100.0

    def _update_artifact(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._artifact is None or (not force and now - self._artifact_at < ARTIFACT_EVERY):
            return
        self._artifact_at = now
        update_progress_artifact(self._artifact, round(self._percent(), 1),
                                 description=self.line())

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._logged_at < LOG_EVERY:
            return
        self._logged_at = now
        get_run_logger().info("%s", self.line())
