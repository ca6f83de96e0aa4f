"""The image job's own machinery, without servers: how many images are prepared at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prefect_ig1.flows.window import PREPARERS, ImagePreparation, RecentSet


def test_images_are_prepared_on_the_calling_thread_at_most_preparers_at_once() -> None:
    """No hand-off to a pool (a thread switch each way per image), and still never more
    than ``PREPARERS`` decodes at once, however many calls are in flight."""
    lock, running, peak, threads = threading.Lock(), 0, 0, []

    def prepare(caller: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threads.append((caller, threading.get_ident()))
        time.sleep(0.05)
        with lock:
            running -= 1
        return caller

    images = ImagePreparation()
    with ThreadPoolExecutor(8) as calls:
        results = list(calls.map(lambda _: images.run(prepare, threading.get_ident()),
                                 range(16)))
    assert peak == PREPARERS
    assert len(results) == 16 and all(caller == ran_on for caller, ran_on in threads)


def test_a_failed_preparation_frees_its_place() -> None:
    def broken() -> None:
        raise MemoryError

    images = ImagePreparation()
    for _ in range(PREPARERS + 1):
        with pytest.raises(MemoryError):
            images.run(broken)
    assert images.run(lambda: "next") == "next"


def test_the_run_remembers_recent_thumbnails_in_bounded_memory() -> None:
    """A digest seen lately is known (no HEAD); past ``size`` others, the oldest is
    forgotten, and one seen again counts as recent."""
    recent = RecentSet(3)
    for digest in ("a", "b", "c"):
        recent.add(digest)
    recent.add("a")  # seen again: now the most recent
    recent.add("d")
    assert "b" not in recent and all(d in recent for d in "acd") and len(recent) == 3
    recent.add("e")
    assert "c" not in recent and all(d in recent for d in "ade")
    assert isinstance(ImagePreparation().thumbnails, RecentSet)
