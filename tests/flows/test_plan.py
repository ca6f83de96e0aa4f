"""A run's plan is held compact until each step's turn, and comes back exactly as made."""

from __future__ import annotations

import random
import sys

from prefect_ig1.flows.freshness import compact, expand, windows
from prefect_ig1.flows.record_index import IndexEntry
from prefect_ig1.flows.records import Candidate, ItemResult, ItemStatus


def test_each_step_comes_back_as_windows_made_it_and_is_held_in_less_memory() -> None:
    listed = [Candidate(key=f"photos/{i:04d} é%2F.jpg", etag=f'"{i:032x}"', size=i,
                        record_etag=None if i % 2 else f'"r{i}"') for i in range(120)]
    index = {"photos/0007 é%2F.jpg": IndexEntry('"' + f"{7:032x}" + '"', '"r7"', True)}
    listed[7] = listed[7].model_copy(update={"record_etag": '"r7"'})
    made = list(windows(iter(listed), index, 50, random.Random(1), "settings"))
    held = [compact(step) for step in made]

    assert [expand(step) for step in held] == made
    assert made[0] == ItemResult(key="photos/0007 é%2F.jpg", status=ItemStatus.unchanged)
    assert sum(len(step) for step in held if isinstance(step, tuple)) == 119

    window = next(step for step in made if isinstance(step, list))
    as_models = sum(sys.getsizeof(c) + sys.getsizeof(c.__dict__) for c in window)
    as_tuples = sum(map(sys.getsizeof, compact(window)))
    assert as_tuples < as_models / 2
