"""Describing a window of images as ONE Prefect task, one IG1 call per image.

A task per image costs more CPU in Prefect than the call itself (measured in
``benchmarks/``), so a window of ~50 images is one task whose items run on the
run's call engine (``prefect_ig1.tasks.engine``: cache, bound, single flight, global
limit, stop on 401/402). This module holds only the image job: read, prepare, ask,
record; at most ``PREPARERS`` images are prepared at once, and downloads wait until
their bytes fit a budget.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_ig1.client import InputImage, InputMessage, InputText, Response
from prefect_ig1.flows.storage import (
    ObjectTooLarge,
    object_exists,
    read_bytes,
    read_if_exists,
    record_key,
    s3_client,
    thumbnail_key,
    write_bytes,
    write_json,
)
from prefect_ig1.tasks import prepare_call
from prefect_ig1.tasks.engine import CallEngine, NotAttempted
from prefect_ig1.tasks.images import ImageRejected, PreparedImage, prepare_image, thumbnail_jpeg

from .freshness import needs_description
from .records import (
    Candidate,
    DescribeSettings,
    ImageRecord,
    ItemResult,
    ItemStatus,
    RecordError,
    is_run_stopping,
)

__all__ = ["ImagePreparation", "RecentSet", "WindowResults", "answer_problem", "describe_window"]

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1024 * 1024
"""A record is a few KB: a larger object under a record's key is not one of ours."""
PREPARERS = 2
"""Images decoded at once per run: Pillow releases the GIL while decoding, so two cores
stay busy, and a run never holds more than two decoded images."""
DOWNLOAD_BUDGET_BYTES = 200 * 1024 * 1024
"""Bytes of images downloaded and not yet prepared, at most, per run and process."""
THUMBNAILS_REMEMBERED = 10_000
"""Contents whose thumbnail a run remembers having (~180 bytes each, tracemalloc): duplicates
seldom lie further apart, and a forgotten one costs a HEAD, not a second thumbnail."""
_S3_FAILURES = (BotoCoreError, ClientError)
P = ParamSpec("P")
T = TypeVar("T")


class ByteBudget:
    """Downloads wait here until their bytes fit the budget (one alone always fits), so
    2 x max_concurrency + 2 workers never hold that many 50 MB objects at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.held == 0 or self.held + size <= self.limit)
            self.held += size
        try:
            yield
        finally:
            with self._changed:
                self.held -= size
                self._changed.notify_all()


class RecentSet:
    """The last ``size`` members added, oldest forgotten first: a set in bounded memory."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._members: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: str) -> None:
        with self._lock:
            self._members[member] = None
            self._members.move_to_end(member)
            if len(self._members) > self.size:
                self._members.popitem(last=False)


class ImagePreparation:
    """The run's image preparation bound and download budget, shared by its windows."""

    def __init__(self) -> None:
        self._preparing = threading.BoundedSemaphore(PREPARERS)
        self.downloads = ByteBudget(DOWNLOAD_BUDGET_BYTES)
        self.thumbnails = RecentSet(THUMBNAILS_REMEMBERED)
        """Contents whose thumbnail this run found or wrote lately: a duplicate costs no HEAD."""

    def run(self, work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``work`` on the calling thread, once one of the ``PREPARERS`` places is free.

        Not a pool: handing each image to another thread and back cost more CPU than
        preparing a small image (two thread switches under the GIL, per image)."""
        with self._preparing:
            return work(*args, **kwargs)


@dataclass(frozen=True)
class WindowResults:
    """A window's results, as one object: Prefect remembers every element of a list a task
    returns until its flow run ends (~130 bytes an image, measured with tracemalloc), but
    only the fields of an object."""

    items: tuple[ItemResult, ...]


@task(name="describe-window", cache_policy=NO_CACHE, persist_result=False,
      task_run_name="describe-window-{first_key}")
def describe_window(candidates: list[Candidate], settings: DescribeSettings,
                    engine: CallEngine, images: ImagePreparation,
                    first_key: str = "") -> WindowResults:
    """Describe each candidate (one IG1 call each at most) and write its record."""
    item = _ItemWork(settings, engine, images, s3_client(settings.aws_credentials))
    futures = [engine.submit(item.run, candidate) for candidate in candidates]
    return WindowResults(tuple(future.result() for future in futures))


@dataclass
class _ItemWork:
    settings: DescribeSettings
    engine: CallEngine
    images: ImagePreparation
    s3: Any

    def run(self, candidate: Candidate) -> ItemResult:
        if self.engine.stopped:
            return ItemResult(key=candidate.key, status=ItemStatus.not_attempted)
        try:
            return self._run(candidate)
        except _S3_FAILURES:
            # S3 failed past boto's quick retries: a second chance after the same pause an
            # IG1 call gets. Safe to redo: reads and writes are idempotent and an answer
            # already paid for is in the response cache. The sleeping workers also keep
            # the run from racing through the bucket while S3 is away.
            time.sleep(self.engine.retry_delay_seconds)
        try:
            return self._run(candidate)
        except _S3_FAILURES as exc:
            # Not the image's fault: it keeps the record it had (none, or one for older
            # bytes), so the next run takes it again, without paying twice (the cache).
            error = RecordError.from_exception(exc).model_copy(update={"retryable": True})
            return ItemResult(key=candidate.key, status=ItemStatus.failed, error=error)

    def _run(self, candidate: Candidate) -> ItemResult:
        where = record_key(self.settings.output_prefix, candidate.key)
        if candidate.record_etag is not None and not needs_description(
                self._read_record(where), candidate.etag, self.settings.digest):
            return ItemResult(key=candidate.key, status=ItemStatus.unchanged,
                              etag=candidate.etag, record_etag=candidate.record_etag)
        base: dict[str, Any] = {
            "source_key": candidate.key, "source_etag": candidate.etag,
            "model": self.settings.profile.model, "flow_run": self.settings.run_name,
            "source_bytes": candidate.size, "settings": self.settings.digest}
        thumbnail: bool | None = None
        try:
            prepared = self._prepare(candidate, base)
            thumbnail = self._store_thumbnail(base["sha256"], prepared)
            sent = {"sent_width": prepared.width, "sent_height": prepared.height,
                    "sent_bytes": len(prepared.data)}
            response, cached = self._describe(prepared)
        except ImageRejected as exc:
            error = RecordError(type=exc.reason, message=exc.message)
            return self._write_failure(candidate, where, base, error)
        except ObjectTooLarge as exc:
            error = RecordError(type="too_large", message=(
                f"The object is {exc.size:,} bytes, over this run's max_object_mb "
                f"({exc.max_bytes:,} bytes): not downloaded. Shrink it before upload, or raise "
                "max_object_mb."))
            return self._write_failure(candidate, where, base, error)
        except NotAttempted:
            return ItemResult(key=candidate.key, status=ItemStatus.not_attempted)
        except _S3_FAILURES:
            raise  # no error record: see run()
        except Exception as exc:  # MemoryError included: not the image's verdict
            if is_run_stopping(exc):
                self.engine.stop(exc)
            return self._write_failure(candidate, where, base, RecordError.from_exception(exc),
                                       thumbnail=thumbnail)
        problem = answer_problem(response)
        if problem is not None:
            return self._write_failure(candidate, where, {**base, **sent}, problem,
                                       response=response, thumbnail=thumbnail)
        record = ImageRecord.described(response=response, cached=cached, **base, **sent)
        record_etag = write_json(self.s3, self.settings.bucket, where,
                                 record.model_dump(mode="json"))
        usage = response.usage
        return ItemResult(
            key=candidate.key, status=ItemStatus.cached if cached else ItemStatus.described,
            text=response.output_text, sent_bytes=len(prepared.data),
            etag=candidate.etag, record_etag=record_etag,
            sha256=base["sha256"], thumbnail=thumbnail,
            input_tokens=0 if cached or not usage else usage.input_tokens,
            output_tokens=0 if cached or not usage else usage.output_tokens)

    def _read_record(self, where: str) -> ImageRecord | None:
        """The image's record; one that is unreadable, too big or invalid counts as missing
        (the image is described again and the record rewritten)."""
        try:
            data = read_if_exists(self.s3, self.settings.bucket, where,
                                  max_bytes=MAX_RECORD_BYTES)
            return None if data is None else ImageRecord.model_validate_json(data)
        except (ObjectTooLarge, ValueError) as exc:
            logger.warning("Ignoring the unreadable record s3://%s/%r (%s): the image is "
                           "described again and its record rewritten", self.settings.bucket,
                           where, type(exc).__name__)
            return None

    def _prepare(self, candidate: Candidate, base: dict[str, Any]) -> PreparedImage:
        """Download, hash and prepare; a download waits until its bytes fit the budget."""
        size = min(max(candidate.size, 1), self.settings.max_object_bytes)
        with self.images.downloads.reserve(size):
            data, _ = read_bytes(self.s3, self.settings.bucket, candidate.key,
                                 max_bytes=self.settings.max_object_bytes)
            base["sha256"] = hashlib.sha256(data).hexdigest()
            return self.images.run(
                prepare_image, data, max_image_side=self.settings.max_image_side,
                max_object_bytes=self.settings.max_object_bytes,
                max_image_pixels=self.settings.max_image_pixels)

    def _store_thumbnail(self, sha256: str, prepared: PreparedImage) -> bool:
        """The gallery's thumbnail, once per content: a HEAD first, so an image seen before
        (under another key, or by an earlier run) costs no encoding and no PUT. A failure
        here costs the card its picture, never the image its description."""
        if sha256 in self.images.thumbnails:
            return True
        bucket, key = self.settings.bucket, thumbnail_key(self.settings.output_prefix, sha256)
        try:
            if not object_exists(self.s3, bucket, key):
                data = self.images.run(thumbnail_jpeg, prepared)
                write_bytes(self.s3, bucket, key, data, "image/jpeg")
        except (*_S3_FAILURES, OSError, ValueError) as exc:
            logger.warning("No gallery thumbnail for s3://%s/%s (%s)", bucket, key,
                           type(exc).__name__)
            return False
        self.images.thumbnails.add(sha256)
        return True

    def _describe(self, prepared: PreparedImage) -> tuple[Response, bool]:
        message = InputMessage(role="user", content=[
            InputText(text=self.settings.prompt),
            InputImage.from_bytes(prepared.data, mime_type=prepared.mime_type,
                                  detail=self.settings.detail),
        ])
        return self.engine.call(prepare_call([message], model=self.settings.profile,
                                             credentials=self.settings.credentials,
                                             params=self.settings.params))

    def _write_failure(self, candidate: Candidate, where: str, base: dict[str, Any],
                       error: RecordError, response: Response | None = None,
                       thumbnail: bool | None = None) -> ItemResult:
        record = ImageRecord.failed(error=error, response=response, **base)
        record_etag = write_json(self.s3, self.settings.bucket, where,
                                 record.model_dump(mode="json"))
        return ItemResult(key=candidate.key, status=ItemStatus.failed, error=error,
                          etag=candidate.etag, record_etag=record_etag,
                          sha256=base.get("sha256"), thumbnail=thumbnail)


def answer_problem(response: Response) -> RecordError | None:
    """Why a 200 is not a description: only a completed answer with text settles an image."""
    if response.refusal:
        return RecordError(type="refused", request_id=response.request_id, message=(
            f"The model refused: {response.refusal[:500]}. Change the prompt to try again "
            "(the image is tried again when the run's settings change)."))
    if response.status == "incomplete":
        reason = response.incomplete_reason
        return RecordError(type="incomplete", request_id=response.request_id, message=(
            f"IG1 stopped the answer early ({reason}). Raise max_output_tokens (or shorten the "
            "prompt); the image is tried again when the run's settings change."))
    if response.status != "completed":
        return RecordError(type=f"status_{response.status}", retryable=True,
                           request_id=response.request_id,
                           message=f"IG1 answered with status {response.status!r}; a later "
                                   "run tries again.")
    if not response.output_text.strip():
        return RecordError(type="empty_answer", retryable=True, request_id=response.request_id,
                           message="IG1 answered with no text; a later run tries again.")
    return None
