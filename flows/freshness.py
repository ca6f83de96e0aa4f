"""Which images need describing: decided here, and only here.

An image needs describing when it has no readable record, its bytes changed (ETag),
or its last attempt failed for a reason a later run can fix, or for a lasting reason
under other run settings (``DescribeSettings.digest``). The record index answers
without reading the record when it can prove the record current; what a run learns
goes back into the index.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect_ig1.flows.storage import is_image_key, list_objects, record_key

from .record_index import IndexEntry
from .records import Candidate, ImageRecord, ItemResult, ItemStatus
from .reporting import RunReport

__all__ = ["SHUFFLE_BLOCK", "PlanStep", "candidates", "compact", "entry_for", "expand",
           "is_settled", "needs_description", "windows"]

SHUFFLE_BLOCK = 1000  # one S3 listing page


def needs_description(existing: ImageRecord | None, etag: str, settings: str) -> bool:
    """True unless the record describes these bytes, or failed on them for a lasting reason
    under these same settings (another prompt, size or cap deserves another try)."""
    if existing is None or existing.source_etag != etag:
        return True
    if existing.error is None:
        return False
    return existing.error.retryable or existing.settings != settings


def is_settled(candidate: Candidate, index: Mapping[str, IndexEntry], settings: str) -> bool:
    """True when the index proves this image's record current: no need to read it."""
    entry = index.get(candidate.key)
    return (entry is not None and entry.settled and entry.source_etag == candidate.etag
            and entry.record_etag == candidate.record_etag
            and entry.settings in (None, settings))


def entry_for(result: ItemResult, settings: str) -> IndexEntry | None:
    """What a run learnt of one image, if it wrote or read its record."""
    if result.etag is None or result.record_etag is None:
        return None
    if result.status is not ItemStatus.failed:
        return IndexEntry(result.etag, result.record_etag, True)
    lasting = result.error is not None and not result.error.retryable
    return IndexEntry(result.etag, result.record_etag, lasting, settings if lasting else None)


def candidates(s3: Any, bucket: str, output_prefix: str, prefix: str,
               report: RunReport) -> Iterator[Candidate]:
    """Listed images, with their record's ETag if any; skipped keys are counted, not hidden.

    The records of images under ``prefix`` are listed in a thread beside the first page
    of images (on a rerun, the two listings are most of the time spent).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="ig1-list-records") as lister:
        listing = lister.submit(_record_etags, s3, bucket, output_prefix + prefix)
        for obj in list_objects(s3, bucket, prefix):
            report.listed += 1
            if obj.key.startswith(output_prefix):
                report.skip("output")
            elif obj.key.endswith("/") and obj.size == 0:
                report.skip("folder")
            elif not is_image_key(obj.key, unsupported=True):  # HEIC & co.: an error record
                report.skip("not_an_image_extension")
            else:
                records = listing.result()
                yield Candidate(key=obj.key, etag=obj.etag, size=obj.size,
                                record_etag=records.get(record_key(output_prefix, obj.key)))


def _record_etags(s3: Any, bucket: str, records_prefix: str) -> dict[str, str]:
    return {obj.key: obj.etag for obj in list_objects(s3, bucket, records_prefix)
            if obj.key.endswith(".json")}


def windows(candidates: Iterator[Candidate], index: Mapping[str, IndexEntry], size: int,
            order: random.Random, digest: str) -> Iterator[list[Candidate] | ItemResult]:
    """Windows of candidates to describe; images the index proves current come out alone.

    Candidates are taken in blocks of ``SHUFFLE_BLOCK`` as listed, each block shuffled
    by the run's own ``order``: two runs overlapping on one bucket (a nightly run and an
    upload-triggered one, in separate processes) then seldom reach the same image at the
    same moment, and the later one finds the answer in the shared cache instead of
    paying for it again.
    """
    block: list[Candidate] = []

    def windows_of(block: list[Candidate]) -> Iterator[list[Candidate]]:
        order.shuffle(block)
        for start in range(0, len(block), size):
            yield block[start:start + size]

    for candidate in candidates:
        if is_settled(candidate, index, digest):
            yield ItemResult(key=candidate.key, status=ItemStatus.unchanged)
            continue
        block.append(candidate)
        if len(block) == SHUFFLE_BLOCK:
            yield from windows_of(block)
            block = []
    yield from windows_of(block)


PlanStep = tuple[tuple[str, str, int, str | None], ...] | str
"""One step of a run's plan as it is held until its turn: a window as (key, etag, size,
record_etag) tuples, or the key of an image the index proves current. The plan is whole
before the first call (the forecast counts it): at 100,000 images, models would hold
~640 bytes a candidate (measured with tracemalloc), these tuples ~220."""


def compact(step: list[Candidate] | ItemResult) -> PlanStep:
    """``windows``' step as the plan keeps it."""
    if isinstance(step, ItemResult):
        return step.key
    return tuple((c.key, c.etag, c.size, c.record_etag) for c in step)


def expand(step: PlanStep) -> list[Candidate] | ItemResult:
    """The step back as ``windows`` made it, when its turn comes."""
    if isinstance(step, str):
        return ItemResult(key=step, status=ItemStatus.unchanged)
    return [Candidate(key=key, etag=etag, size=size, record_etag=record_etag)
            for key, etag, size, record_etag in step]
