"""Describing a window of images as ONE Prefect task, one IG1 call per image.

A task per image costs more CPU in Prefect than the call itself (DESIGN.md,
"Throughput facts"), so a window of ~50 images is one task whose items run
on process-wide pools: a bounded number of IG1 calls in flight, image
preparation in a small pool beside them. Every call goes through the same
client, retry policy, cache key and cache store as ``create_response``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect_aws import AwsCredentials
from pydantic import BaseModel, ConfigDict

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import InputImage, InputMessage, InputText, Response, is_transient
from prefect_ig1.tasks import PreparedCall, ResponseCache, create_response, prepare_call
from prefect_ig1.tasks.images import DEFAULT_MAX_PIXELS, ImageRejected, PreparedImage, prepare_image
from prefect_ig1.tasks.s3 import (
    ObjectTooLarge,
    read_bytes,
    read_if_exists,
    record_key,
    s3_client,
    write_json,
)

from .records import ImageRecord, ItemStatus, RecordError, is_run_stopping, needs_description

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1024 * 1024
"""A record is a few KB: a larger object under a record's key is not one of ours."""

__all__ = [
    "CallGate",
    "Candidate",
    "DescribeSettings",
    "ItemResult",
    "NotAttempted",
    "RunControl",
    "describe_window",
    "global_slot",
]


class Candidate(BaseModel):
    """A listed image that may need describing (no bytes: keys only cross task boundaries)."""

    key: str
    etag: str
    size: int
    record_etag: str | None = None
    """The ETag of its record as listed, if it has one."""


class DescribeSettings(BaseModel):
    """Everything a window needs, resolved once per run."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    run_id: str  # unique: keys the run's control in this process (names may repeat)
    run_name: str  # shown in records and run outputs
    bucket: str
    output_prefix: str
    prompt: str
    profile: ResponsesModel
    credentials: IG1Credentials
    aws_credentials: AwsCredentials | None = None
    params: dict[str, Any] = {}
    detail: str = "auto"
    max_image_side: int = 1024
    max_object_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_concurrency: int = 8
    concurrency_limit_name: str | None = None
    slot_timeout_seconds: float = 600.0
    retry_delay_seconds: float = 10.0

    @property
    def digest(self) -> str:
        """What a lasting failure depends on besides the image: another value, another try."""
        material = {"base_url": self.credentials.base_url, "model": self.profile.model,
                    "prompt": self.prompt, "params": self.params, "detail": self.detail,
                    "max_image_side": self.max_image_side,
                    "max_object_bytes": self.max_object_bytes,
                    "max_image_pixels": self.max_image_pixels}
        canonical = json.dumps(material, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ItemResult(BaseModel):
    """One line of the run's manifest."""

    key: str
    status: ItemStatus
    text: str | None = None
    error: RecordError | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    sent_bytes: int | None = None
    etag: str | None = None
    """The source's ETag, and the ETag of the record read or written for it (the index's)."""
    record_etag: str | None = None


PREPARERS = 2
DOWNLOAD_BUDGET_BYTES = 200 * 1024 * 1024
"""Bytes of images downloaded and not yet prepared, at most, per run and process."""


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

_inflight: dict[str, tuple[RunControl, Future[tuple[Response, bool]]]] = {}
_inflight_lock = threading.Lock()


@dataclass
class RunControl:
    """Process-wide state of one run: the call bound, the stop switch, its requests."""

    max_concurrency: int
    stop_reason: BaseException | None = None
    requests_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.calls = threading.BoundedSemaphore(self.max_concurrency)
        self.workers = ThreadPoolExecutor(2 * self.max_concurrency + 2,
                                          thread_name_prefix="ig1-item")
        self.preparers = ThreadPoolExecutor(PREPARERS, thread_name_prefix="ig1-prepare")
        self.downloads = ByteBudget(DOWNLOAD_BUDGET_BYTES)

    def stop(self, reason: BaseException) -> None:
        with self._lock:
            self.stop_reason = self.stop_reason or reason

    def once(self, key: str, produce: Callable[[], tuple[Response, bool]]
             ) -> tuple[Response, bool]:
        """Single flight per process: the same request from two items at once, of this run or
        of another run in this process, is paid for once. Another run's failure (its stop,
        its credentials) is not this run's: then this item tries itself."""
        while True:
            with _inflight_lock:
                entry = _inflight.get(key)
                if entry is None:
                    pending: Future[tuple[Response, bool]] = Future()
                    _inflight[key] = (self, pending)
                    break
            owner, waited = entry
            try:
                response, _ = waited.result()
            except BaseException:
                if owner is self:
                    raise
                continue  # the cache first, then a call of its own
            return response, True
        try:
            result = produce()
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with _inflight_lock:
                _inflight.pop(key, None)
        pending.set_result(result)
        return result

    def close(self) -> None:
        self.workers.shutdown(wait=True)
        self.preparers.shutdown(wait=True)


def check_global_limit(limit_name: str) -> None:
    """Fail the run before any image is touched when the named limit does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(limit_name)
    except ObjectNotFound:
        raise ValueError(
            f"The global concurrency limit {limit_name!r} does not exist on this Prefect "
            f"server: create it with `prefect gcl create {limit_name} --limit N` (N calls in "
            "flight for all workers), or leave concurrency_limit_name unset.") from None


def global_slot(limit_name: str | None, timeout_seconds: float | None = None
                ) -> AbstractContextManager[Any]:
    """One slot of the Prefect global concurrency limit shared by all runs, if one is named;
    waiting longer than ``timeout_seconds`` raises TimeoutError (a retryable failure)."""
    if not limit_name:
        return nullcontext()
    return concurrency(limit_name, occupy=1, strict=True, timeout_seconds=timeout_seconds)


_controls: dict[str, RunControl] = {}
_controls_lock = threading.Lock()


def run_control(settings: DescribeSettings) -> RunControl:
    """The control of this run in this process (windows of one run share it)."""
    with _controls_lock:
        control = _controls.get(settings.run_id)
        if control is None:
            control = _controls[settings.run_id] = RunControl(settings.max_concurrency)
        return control


def release_run_control(run_id: str) -> None:
    with _controls_lock:
        control = _controls.pop(run_id, None)
    if control is not None:
        control.close()


@task(name="describe-window", cache_policy=NO_CACHE, persist_result=False,
      task_run_name="describe-window-{first_key}")
def describe_window(candidates: list[Candidate], settings: DescribeSettings,
                    first_key: str = "") -> list[ItemResult]:
    """Describe each candidate (one IG1 call each at most) and write its record."""
    control = run_control(settings)
    client = s3_client(settings.aws_credentials)
    item = _ItemWork(settings, control, client, CallGate(settings, control))
    futures = [control.workers.submit(item.run, candidate) for candidate in candidates]
    return [future.result() for future in futures]


_S3_FAILURES = (BotoCoreError, ClientError)


class NotAttempted(Exception):
    """The run stopped (401/403/402) before this call was sent."""

    def __init__(self) -> None:
        super().__init__("the run stopped (IG1 refused a call) before this call was sent")


@dataclass
class CallGate:
    """Every IG1 call of a run passes here: the cache first, then at most one send of the
    same request at a time, within the run's bound and the global limit."""

    settings: DescribeSettings
    control: RunControl
    cache: ResponseCache = field(default_factory=lambda: ResponseCache.for_task(create_response))

    def call(self, call: PreparedCall, *, counted: bool = True) -> tuple[Response, bool]:
        """``(response, from_cache)``; ``counted`` calls add to the run's request count."""
        key = call.cache_key

        def pay() -> tuple[Response, bool]:
            hit = self.cache.get(key)
            if hit is not None:
                return hit, True
            try:
                return self._send(call, key, counted)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # The client's quick retries are spent: one slower second chance, like
                # create_response's task retry, before the error is recorded.
                time.sleep(self.settings.retry_delay_seconds)
                return self._send(call, key, counted)

        return self.control.once(key, pay)

    def _send(self, call: PreparedCall, key: str, counted: bool) -> tuple[Response, bool]:
        with self.control.calls, global_slot(self.settings.concurrency_limit_name,
                                             self.settings.slot_timeout_seconds):
            if self.control.stop_reason is not None:
                raise NotAttempted
            # Looked up again now that a slot is ours: another process (an overlapping
            # run) may have paid for this answer while this item waited.
            hit = self.cache.get(key)
            if hit is not None:
                return hit, True
            if counted:
                with self.control._lock:
                    self.control.requests_sent += 1
            try:
                response = call.credentials.get_client().send(call.request)
            except Exception as exc:
                if is_run_stopping(exc):  # before the slot is freed: no waiting item may send
                    self.control.stop(exc)
                raise
            # Saved before the slot is freed: a crash loses at most one paid answer per
            # slot, so a rerun pays again for at most max_concurrency of them.
            try:
                self.cache.put(key, response)
            except Exception as exc:  # the answer in hand still makes the record
                logger.warning("Could not store a paid IG1 answer in the response cache "
                               "(%s: %s); the record is written from it all the same",
                               type(exc).__name__, exc)
            return response, False


@dataclass
class _ItemWork:
    settings: DescribeSettings
    control: RunControl
    s3: Any
    gate: CallGate

    def run(self, candidate: Candidate) -> ItemResult:
        if self.control.stop_reason is not None:
            return ItemResult(key=candidate.key, status=ItemStatus.not_attempted)
        try:
            return self._run(candidate)
        except _S3_FAILURES:
            # S3 failed past boto's quick retries: a second chance after the same pause an
            # IG1 call gets. Safe to redo: reads and writes are idempotent and an answer
            # already paid for is in the response cache. The sleeping workers also keep
            # the run from racing through the bucket while S3 is away.
            time.sleep(self.settings.retry_delay_seconds)
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
        base = {"source_key": candidate.key, "source_etag": candidate.etag,
                "model": self.settings.profile.model, "flow_run": self.settings.run_name,
                "source_bytes": candidate.size, "settings": self.settings.digest}
        try:
            prepared = self._prepare(candidate, base)
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
                self.control.stop(exc)
            return self._write_failure(candidate, where, base, RecordError.from_exception(exc))
        problem = answer_problem(response)
        if problem is not None:
            return self._write_failure(candidate, where, {**base, **sent}, problem,
                                       response=response)
        record = ImageRecord.described(response=response, cached=cached, **base, **sent)
        record_etag = write_json(self.s3, self.settings.bucket, where,
                                 record.model_dump(mode="json"))
        usage = response.usage
        return ItemResult(
            key=candidate.key, status=ItemStatus.cached if cached else ItemStatus.described,
            text=response.output_text, sent_bytes=len(prepared.data),
            etag=candidate.etag, record_etag=record_etag,
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
        with self.control.downloads.reserve(size):
            data, _ = read_bytes(self.s3, self.settings.bucket, candidate.key,
                                 max_bytes=self.settings.max_object_bytes)
            base["sha256"] = hashlib.sha256(data).hexdigest()
            return self.control.preparers.submit(
                prepare_image, data, max_side=self.settings.max_image_side,
                max_bytes=self.settings.max_object_bytes,
                max_pixels=self.settings.max_image_pixels).result()

    def _describe(self, prepared: PreparedImage) -> tuple[Response, bool]:
        message = InputMessage(role="user", content=[
            InputText(text=self.settings.prompt),
            InputImage.from_bytes(prepared.data, mime_type=prepared.mime_type,
                                  detail=self.settings.detail),  # type: ignore[arg-type]
        ])
        return self.gate.call(prepare_call([message], model=self.settings.profile,
                                           credentials=self.settings.credentials,
                                           params=self.settings.params))

    def _write_failure(self, candidate: Candidate, where: str, base: dict[str, Any],
                       error: RecordError, response: Response | None = None) -> ItemResult:
        record = ImageRecord.failed(error=error, response=response, **base)
        record_etag = write_json(self.s3, self.settings.bucket, where,
                                 record.model_dump(mode="json"))
        return ItemResult(key=candidate.key, status=ItemStatus.failed, error=error,
                          etag=candidate.etag, record_etag=record_etag)


def answer_problem(response: Response) -> RecordError | None:
    """Why a 200 is not a description: only a completed answer with text settles an image."""
    if response.status == "incomplete":
        reason = response.incomplete_reason
        return RecordError(type="incomplete", request_id=response.request_id, message=(
            f"IG1 stopped the answer early ({reason}). Raise max_output_tokens (or shorten the "
            "prompt); the image is tried again when the run's settings change."))
    if response.refusal:
        return RecordError(type="refused", request_id=response.request_id, message=(
            f"The model refused: {response.refusal[:500]}. Change the prompt to try again "
            "(the image is tried again when the run's settings change)."))
    if response.status != "completed":
        return RecordError(type=f"status_{response.status}", retryable=True,
                           request_id=response.request_id,
                           message=f"IG1 answered with status {response.status!r}; a later "
                                   "run tries again.")
    if not response.output_text.strip():
        return RecordError(type="empty_answer", retryable=True, request_id=response.request_id,
                           message="IG1 answered with no text; a later run tries again.")
    return None
