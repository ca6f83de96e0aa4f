"""The flagship job: describe every new image in an S3 bucket, then summarise the results.

    python -m prefect_ig1.flows.describe_images --bucket photos --prefix 2026/
    prefect deploy prefect_ig1.flows.describe_images:describe_s3_images

The outputs are the state: an image is new when its record
``{output_prefix}{key}.json`` is missing, its ETag changed, or its last attempt
may succeed now. A rerun with nothing new makes no IG1 call.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_aws import AwsCredentials
from pydantic import Field

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import APIStatusError, AuthenticationError, BudgetExhaustedError, IG1Error
from prefect_ig1.tasks import prepare_call, resolve_model
from prefect_ig1.tasks.images import DEFAULT_MAX_PIXELS
from prefect_ig1.tasks.s3 import (
    ensure_bucket_exists,
    is_image_key,
    list_objects,
    record_key,
    s3_client,
    upload_file,
    write_json,
    write_text,
)

from .markdown import escape_markdown, publishable_markdown, summary_line
from .record_index import IndexEntry, entry_for, is_settled, load_index, save_index
from .records import ItemStatus
from .reporting import RunReport, publish_artifacts
from .summary import DEFAULT_SUMMARY_PROMPT, MIN_CHUNK_CHARS, SummaryResult, map_reduce_summary
from .window import (
    CallGate,
    Candidate,
    DescribeSettings,
    ItemResult,
    check_global_limit,
    describe_window,
    release_run_control,
    run_control,
)

__all__ = ["DEFAULT_PROMPT", "describe_s3_images", "main"]

DEFAULT_PROMPT = (
    "Describe this image for a searchable catalogue: the main subject, the setting, "
    "notable objects, any visible text, and the overall mood, in 2-4 sentences."
)
DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 256
"""Calls in flight at most, however high /usage's max_throughput claims to be."""
WINDOW_SIZE = 50
SHUFFLE_BLOCK = 1000  # one S3 listing page


class ItemErrors(Exception):
    """Raised at the end of a run with ``fail_on_item_errors`` when some images failed."""


@flow(name="describe-s3-images",
      task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def describe_s3_images(
    bucket: Annotated[str, Field(min_length=3, max_length=255)],
    prefix: str = "",
    output_prefix: Annotated[str, Field(min_length=1)] = "descriptions/",
    model: ResponsesModel | str | None = None,
    prompt: Annotated[str, Field(min_length=1)] = DEFAULT_PROMPT,
    summary_prompt: Annotated[str, Field(min_length=1)] = DEFAULT_SUMMARY_PROMPT,
    max_concurrency: Annotated[int | None, Field(ge=1, le=MAX_CONCURRENCY)] = None,
    concurrency_limit_name: str | None = None,
    max_image_side: Annotated[int, Field(ge=16, le=16_384)] = 1024,
    max_object_mb: Annotated[float, Field(gt=0, le=1024)] = 50.0,
    max_image_pixels: Annotated[int, Field(ge=1_000_000, le=1_000_000_000)] = DEFAULT_MAX_PIXELS,
    detail: Literal["auto", "low", "high"] = "auto",
    max_output_tokens: Annotated[int | None, Field(ge=1)] = None,
    window_size: Annotated[int, Field(ge=1, le=1000)] = WINDOW_SIZE,
    summary_chunk_chars: Annotated[int, Field(ge=MIN_CHUNK_CHARS, le=1_000_000)] = 12_000,
    retry_delay_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0,
    slot_timeout_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0,
    fail_on_item_errors: bool = False,
    aws_credentials: AwsCredentials | None = None,
) -> RunReport:
    """Describe every new image under ``prefix`` in ``bucket``, record each, summarise the run.

    Parameters are checked before anything is read or sent (ranges in the signature);
    ``slot_timeout_seconds`` bounds the wait for a slot of ``concurrency_limit_name``.
    """
    logger = get_run_logger()
    started, started_at = time.monotonic(), datetime.now(timezone.utc)
    if prefix.startswith(output_prefix):
        raise ValueError(
            f"prefix {prefix!r} lies under output_prefix {output_prefix!r}, where the run "
            "writes its records: nothing there would be described. Use another output_prefix.")
    run_id, run_name = _run_identity()
    profile = resolve_model(model)
    credentials = profile.get_credentials()
    if concurrency_limit_name:
        check_global_limit(concurrency_limit_name)
    s3 = s3_client(aws_credentials)
    ensure_bucket_exists(s3, bucket)
    concurrency = max_concurrency or _concurrency_from_usage(credentials)
    settings = DescribeSettings(
        run_id=run_id, run_name=run_name, bucket=bucket, output_prefix=output_prefix, prompt=prompt,
        profile=profile, credentials=credentials, aws_credentials=aws_credentials,
        params={"max_output_tokens": max_output_tokens} if max_output_tokens else {},
        detail=detail, max_image_side=max_image_side,
        max_object_bytes=int(max_object_mb * 1024 * 1024), max_image_pixels=max_image_pixels,
        max_concurrency=concurrency, concurrency_limit_name=concurrency_limit_name,
        slot_timeout_seconds=slot_timeout_seconds, retry_delay_seconds=retry_delay_seconds,
    )
    report = RunReport(run=run_name, bucket=bucket, prefix=prefix, output_prefix=output_prefix,
                       model=profile.model, max_concurrency=concurrency)
    logger.info("Describing new images in s3://%s/%s with %s, %d calls in flight",
                bucket, prefix, profile.model, concurrency)

    index = load_index(s3, bucket, output_prefix)
    learnt: dict[str, IndexEntry] = {}
    with tempfile.TemporaryDirectory(prefix="ig1-run-") as workdir:
        manifest = Path(workdir) / "manifest.jsonl"
        try:
            with manifest.open("w", encoding="utf-8") as lines:
                for result in _describe_all(s3, settings, report, window_size, lines, index):
                    report.count(result)
                    entry = entry_for(result, settings.digest)
                    if entry is not None and index.get(result.key) != entry:
                        learnt[result.key] = entry
            if learnt:
                save_index(s3, bucket, output_prefix, {**index, **learnt})
            report.timings["describe_s"] = round(time.monotonic() - started, 3)
            control = run_control(settings)
            report.requests = control.requests_sent
            summary_started = time.monotonic()
            if control.stop_reason is None:
                summary = _summarise(manifest, settings, summary_prompt, summary_chunk_chars,
                                     report)
            stop = control.stop_reason  # a refusal may also come during the summary
            stop_error = None if stop is None else _stop_error(stop, report)
            if stop_error is not None:
                if report.summary_calls == 0:  # every further call would fail the same way
                    summary = _summary_header(report) + f"_No summary: {stop_error.message}_\n"
                report.stopped_by = f"{type(stop_error).__name__}: {stop_error.message}"
            report.timings["summary_s"] = round(time.monotonic() - summary_started, 3)
        finally:
            release_run_control(run_id)

        report.timings["total_s"] = round(time.monotonic() - started, 3)
        # Started-at first: folders sort by time, and a repeated run name cannot overwrite.
        run_prefix = f"{output_prefix}_runs/{started_at:%Y%m%dT%H%M%SZ}-{run_name}/"
        write_text(s3, bucket, run_prefix + "summary.md", summary)
        upload_file(s3, bucket, run_prefix + "manifest.jsonl", manifest, "application/x-ndjson")
        write_json(s3, bucket, run_prefix + "run.json", report.model_dump(mode="json"))
        report.outputs = {name: f"s3://{bucket}/{run_prefix}{name}"
                          for name in ("summary.md", "manifest.jsonl", "run.json")}
        publish_artifacts(report, manifest, summary)
    logger.info("Run %s: %s", run_name, report.headline())

    if stop_error is not None:
        raise stop_error
    if fail_on_item_errors and report.counts.get(ItemStatus.failed.value):
        raise ItemErrors(f"{report.counts[ItemStatus.failed.value]} image(s) failed; "
                         f"see {report.outputs['manifest.jsonl']}")
    return report


def _run_identity() -> tuple[str, str]:
    """(id, name) of this flow run: two runs may share a name, never an id."""
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        return str(context.flow_run.id), str(context.flow_run.name)
    run_id = uuid.uuid4().hex
    return run_id, run_id[:12]


def _stop_error(stop: BaseException, report: RunReport) -> APIStatusError:
    """The one error a stopped run ends with (and its summary says): cause, what was left, fix."""
    left = f"{report.n(ItemStatus.not_attempted)} image(s) not attempted"
    where = {"status": getattr(stop, "status", 0), "code": getattr(stop, "code", None),
             "request_id": getattr(stop, "request_id", None)}
    if isinstance(stop, BudgetExhaustedError):
        return BudgetExhaustedError(
            f"IG1 budget exhausted (402) after {report.requests} requests: {left}. Raise the "
            "commit and rerun: the rerun describes exactly what is missing.", **where)
    return AuthenticationError(
        f"IG1 refused the credentials ({where['status']}: {getattr(stop, 'message', stop)}); "
        f"the run stopped at once, {left}. Check the IG1Credentials block or IG1AI_API_KEY.",
        **where)


def _concurrency_from_usage(credentials: IG1Credentials) -> int:
    """``max_throughput`` from ``/usage``, else a safe default; warn when over budget."""
    logger = get_run_logger()
    try:
        usage = credentials.usage()
    except IG1Error as exc:
        if isinstance(exc, AuthenticationError):
            raise
        logger.info("IG1 /usage unavailable (%s): %d calls in flight", exc, DEFAULT_CONCURRENCY)
        return DEFAULT_CONCURRENCY
    if usage.remaining <= 0:
        logger.warning("IG1 budget already spent this month (%.2f of %.2f): calls will fail "
                       "with 402 until the commit is raised", usage.current, usage.commit)
    claimed = usage.max_throughput or DEFAULT_CONCURRENCY
    if claimed > MAX_CONCURRENCY:
        logger.warning("IG1 /usage claims max_throughput=%d: capped at %d calls in flight "
                       "(pass max_concurrency to choose)", claimed, MAX_CONCURRENCY)
    return max(1, min(claimed, MAX_CONCURRENCY))


def _candidates(s3: Any, settings: DescribeSettings, prefix: str,
                report: RunReport) -> Iterator[Candidate]:
    """Listed images, with their record's ETag if any; skipped keys are counted, not hidden.

    The records of images under ``prefix`` are listed in a thread beside the first page
    of images (on a rerun, the two listings are most of the time spent).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="ig1-list-records") as lister:
        listing = lister.submit(_record_etags, s3, settings.bucket,
                                settings.output_prefix + prefix)
        for obj in list_objects(s3, settings.bucket, prefix):
            report.listed += 1
            if obj.key.startswith(settings.output_prefix):
                report.skip("output")
            elif obj.key.endswith("/") and obj.size == 0:
                report.skip("folder")
            elif not is_image_key(obj.key, unsupported=True):  # HEIC & co.: an error record
                report.skip("not_an_image_extension")
            else:
                records = listing.result()
                yield Candidate(key=obj.key, etag=obj.etag, size=obj.size,
                                record_etag=records.get(record_key(settings.output_prefix,
                                                                   obj.key)))


def _record_etags(s3: Any, bucket: str, records_prefix: str) -> dict[str, str]:
    return {obj.key: obj.etag for obj in list_objects(s3, bucket, records_prefix)
            if obj.key.endswith(".json")}


def _windows(candidates: Iterator[Candidate], index: dict[str, IndexEntry], size: int,
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


def _describe_all(s3: Any, settings: DescribeSettings, report: RunReport, window_size: int,
                  manifest: Any, index: dict[str, IndexEntry]) -> Iterator[ItemResult]:
    """Submit windows with a bounded number in flight; stream results to the manifest."""
    in_flight_windows = max(2, math.ceil(2 * settings.max_concurrency / window_size) + 1)
    pending: list[PrefectFuture[list[ItemResult]]] = []
    windows = _windows(_candidates(s3, settings, report.prefix, report), index, window_size,
                       random.Random(settings.run_id), settings.digest)
    control = run_control(settings)
    for window in windows:
        if isinstance(window, ItemResult):
            yield window
            continue
        if control.stop_reason is not None:
            yield from (ItemResult(key=c.key, status=ItemStatus.not_attempted) for c in window)
            continue
        pending.append(describe_window.submit(window, settings, first_key=window[0].key))
        if len(pending) >= in_flight_windows:
            done = next(as_completed(pending))
            pending.remove(done)
            yield from _drain(done, manifest)
    for future in pending:
        yield from _drain(future, manifest)


def _drain(future: PrefectFuture[list[ItemResult]], manifest: Any) -> Iterator[ItemResult]:
    for result in future.result():
        if result.status is not ItemStatus.unchanged:
            manifest.write(result.model_dump_json(exclude_none=True) + "\n")
        yield result


@task(name="summarize-run", cache_policy=NO_CACHE, persist_result=False)
def summarize_run(manifest: Path, settings: DescribeSettings, summary_prompt: str,
                  chunk_chars: int) -> SummaryResult | None:
    """Map-reduce this run's descriptions; the calls share the run's bound, cache and limit."""
    control = run_control(settings)
    gate = CallGate(settings, control)

    def lines() -> Iterator[str]:
        with manifest.open(encoding="utf-8") as rows:
            for row in rows:
                item = json.loads(row)
                if item.get("text"):
                    yield summary_line(item["key"], item["text"])

    def summarize(chunks: list[str]) -> list[str]:
        calls = [prepare_call(chunk, model=settings.profile, credentials=settings.credentials,
                              instructions=summary_prompt) for chunk in chunks]
        futures = [control.workers.submit(gate.call, call, counted=False) for call in calls]
        return [future.result()[0].output_text for future in futures]

    return map_reduce_summary(lines(), summarize=summarize, chunk_chars=chunk_chars,
                              parallel=2 * settings.max_concurrency)


def _summary_header(report: RunReport) -> str:
    return f"# Image descriptions: run {report.run}\n\n{report.headline()}\n\n"


def _summarise(manifest: Path, settings: DescribeSettings, summary_prompt: str,
               chunk_chars: int, report: RunReport) -> str:
    """The run's summary in Markdown; a failed summary is said, not fatal."""
    header = _summary_header(report)
    if not any(report.n(status) for status in (ItemStatus.described, ItemStatus.cached)):
        return header + "_No new descriptions in this run._\n"
    try:
        result = summarize_run(manifest, settings, summary_prompt, chunk_chars)
    except Exception as exc:  # the descriptions are done: the run's outputs are written anyway
        get_run_logger().warning("summary failed: %s: %s", type(exc).__name__, exc)
        why = escape_markdown(f"{type(exc).__name__}: {exc}")
        return header + f"_Summary unavailable: {why}_\n"
    if result is None:
        return header + "_No new descriptions in this run._\n"
    report.summary_calls = result.calls
    return header + publishable_markdown(result.text).strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m prefect_ig1.flows.describe_images --bucket ... [--prefix ...]``"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--output-prefix", default="descriptions/")
    parser.add_argument("--model", help="a ResponsesModel block name or a model id")
    parser.add_argument("--max-concurrency", type=int)
    parser.add_argument("--concurrency-limit-name")
    parser.add_argument("--max-image-side", type=int, default=1024)
    report = describe_s3_images(**vars(parser.parse_args(argv)))
    print(json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
