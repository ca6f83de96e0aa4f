"""The flagship job: describe every new image in an S3 bucket, then summarise the results.

    python -m prefect_ig1.flows.describe_images --bucket photos --prefix 2026/
    prefect deploy prefect_ig1.flows.describe_images:describe_s3_images

The outputs are the state: an image is new when its record
``{output_prefix}{key}.json`` is missing, its ETag changed, or its last attempt
may succeed now. A rerun with nothing new makes no IG1 call.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_aws import AwsCredentials
from pydantic import Field

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import AuthenticationError, BudgetExhaustedError, IG1Error
from prefect_ig1.flows.storage import (
    ensure_bucket_exists,
    s3_client,
    upload_file,
    write_json,
    write_text,
)
from prefect_ig1.tasks import resolve_credentials, resolve_model
from prefect_ig1.tasks.engine import CallEngine, check_global_limit
from prefect_ig1.tasks.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_IMAGE_SIDE,
    DEFAULT_MAX_OBJECT_BYTES,
)
from prefect_ig1.tasks.ledger import SpendCapReached

from .account import MAX_CONCURRENCY, concurrency_from, read_usage, run_identity
from .freshness import PlanStep, candidates, compact, entry_for, expand, windows
from .gallery import publish_gallery, write_gallery
from .markdown import escape_markdown, publishable_markdown
from .progress import RunProgress, run_from_command_line
from .record_index import load_index, save_index
from .records import DEFAULT_OUTPUT_PREFIX, Candidate, DescribeSettings, ItemResult, ItemStatus
from .reporting import RunReport, publish_artifacts
from .spend import (
    emit_budget_low,
    emit_run_event,
    forecast_run,
    spend_payload,
    tokens_per_item_of_last_run,
)
from .summary import DEFAULT_SUMMARY_PROMPT, MIN_CHUNK_CHARS, summarize_run
from .window import ImagePreparation, WindowResults, describe_window

__all__ = ["DEFAULT_PROMPT", "describe_s3_images", "main"]

DEFAULT_PROMPT = (
    "Describe this image for a searchable catalogue: the main subject, the setting, "
    "notable objects, any visible text, and the overall mood, in 2-4 sentences."
)
WINDOW_SIZE = 50


class ItemErrors(Exception):
    """Raised at the end of a run with ``fail_on_item_errors`` when some images failed."""


@flow(name="describe-s3-images",
      task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def describe_s3_images(
    bucket: Annotated[str, Field(min_length=3, max_length=255)],
    prefix: str = "",
    output_prefix: Annotated[str, Field(min_length=1)] = DEFAULT_OUTPUT_PREFIX,
    model: ResponsesModel | str | None = None,
    prompt: Annotated[str, Field(min_length=1)] = DEFAULT_PROMPT,
    summary_prompt: Annotated[str, Field(min_length=1)] = DEFAULT_SUMMARY_PROMPT,
    max_concurrency: Annotated[int | None, Field(ge=1, le=MAX_CONCURRENCY)] = None,
    concurrency_limit_name: str | None = None,
    max_image_side: Annotated[int, Field(ge=16, le=16_384)] = DEFAULT_MAX_IMAGE_SIDE,
    max_object_mb: Annotated[float, Field(gt=0, le=1024)] = DEFAULT_MAX_OBJECT_BYTES / 2**20,
    max_image_pixels: Annotated[int, Field(ge=1_000_000,
                                           le=1_000_000_000)] = DEFAULT_MAX_IMAGE_PIXELS,
    detail: Literal["auto", "low", "high"] = "auto",
    max_output_tokens: Annotated[int | None, Field(ge=1)] = None,
    window_size: Annotated[int, Field(ge=1, le=1000)] = WINDOW_SIZE,
    summary_chunk_chars: Annotated[int, Field(ge=MIN_CHUNK_CHARS, le=1_000_000)] = 12_000,
    retry_delay_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0,
    slot_timeout_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0,
    fail_on_item_errors: bool = False,
    gallery_presign_seconds: Annotated[int | None, Field(ge=1, le=604_800)] = None,
    aws_credentials: AwsCredentials | None = None,
    credentials: IG1Credentials | str | None = None,
    max_tokens: Annotated[int | None, Field(ge=1)] = None,
    max_spend: Annotated[float | None, Field(gt=0)] = None,
    dry_run: bool = False,
    allow_over_budget: bool = False,
) -> RunReport:
    """Describe every new image under ``prefix`` in ``bucket``, record each, summarise the run.

    Parameters are checked before anything is read or sent (ranges in the signature);
    ``slot_timeout_seconds`` bounds the wait for a slot of ``concurrency_limit_name``;
    ``gallery_presign_seconds`` makes the gallery's link artifact a presigned HTTPS URL.
    After listing, the run forecasts its spend; ``dry_run`` stops there. ``max_tokens`` /
    ``max_spend`` cap the run as a 402 would stop it.
    """
    logger = get_run_logger()
    started, started_at = time.monotonic(), datetime.now(timezone.utc)
    if prefix.startswith(output_prefix):
        raise ValueError(
            f"prefix {prefix!r} lies under output_prefix {output_prefix!r}, where the run "
            "writes its records: nothing there would be described. Use another output_prefix.")
    run_id, run_name = run_identity()
    profile = resolve_model(model)
    credentials = resolve_credentials(credentials, profile)
    if max_spend is not None and profile.prices is None:
        raise ValueError("max_spend needs prices: set input_price_per_million and "
                         "output_price_per_million on the ResponsesModel profile")
    if concurrency_limit_name:
        check_global_limit(concurrency_limit_name)
    s3 = s3_client(aws_credentials)
    ensure_bucket_exists(s3, bucket)
    usage = read_usage(credentials)
    emit_budget_low(usage, credentials)
    concurrency = max_concurrency or concurrency_from(usage)
    settings = DescribeSettings(
        run_name=run_name, bucket=bucket, output_prefix=output_prefix, prompt=prompt,
        profile=profile, credentials=credentials, aws_credentials=aws_credentials,
        params={"max_output_tokens": max_output_tokens} if max_output_tokens else {},
        detail=detail, max_image_side=max_image_side,
        max_object_bytes=int(max_object_mb * 1024 * 1024), max_image_pixels=max_image_pixels,
    )
    report = RunReport(run=run_name, bucket=bucket, prefix=prefix, output_prefix=output_prefix,
                       model=profile.model, max_concurrency=concurrency)
    logger.info("Describing new images in s3://%s/%s with %s, %d calls in flight",
                bucket, prefix, profile.model, concurrency)

    index = load_index(s3, bucket, output_prefix)
    with RunProgress("Describing images") as progress:
        listed = _listing(candidates(s3, bucket, output_prefix, prefix, report), progress,
                          report)
        plan = deque(compact(step) for step in windows(listed, index, window_size,
                                                       random.Random(run_id), settings.digest))
        to_send = sum(len(step) for step in plan if isinstance(step, tuple))
        per_item = tokens_per_item_of_last_run(s3, bucket, output_prefix) if to_send else None
        if forecast_run(report, to_send, per_item, profile.prices, usage, dry_run=dry_run,
                        allow_over_budget=allow_over_budget):
            return report
        progress.start(to_send)
        learnt = 0
        with (tempfile.TemporaryDirectory(prefix="ig1-run-") as workdir,
              CallEngine(max_concurrency=concurrency, concurrency_limit_name=concurrency_limit_name,
                         slot_timeout_seconds=slot_timeout_seconds,
                         retry_delay_seconds=retry_delay_seconds, max_tokens=max_tokens,
                         max_spend=max_spend, prices=profile.prices) as engine):
            manifest = Path(workdir) / "manifest.jsonl"
            images = ImagePreparation()
            with manifest.open("w", encoding="utf-8") as lines:
                for result in _describe_all(settings, engine, images, window_size, lines, plan):
                    report.count(result)
                    if result.status is not ItemStatus.unchanged:
                        progress.done(result.status.value, tokens=result.input_tokens
                                      + result.output_tokens,
                                      requests=int(result.status is ItemStatus.described))
                    entry = entry_for(result, settings.digest)
                    if entry is not None and index.get(result.key) != entry:
                        index[result.key] = entry
                        learnt += 1
            if learnt:
                save_index(s3, bucket, output_prefix, index)
            report.timings["describe_s"] = round(time.monotonic() - started, 3)
            report.requests = engine.requests_sent
            summary_started = time.monotonic()
            if not engine.stopped:
                summary = _summarise(manifest, settings, engine, summary_prompt,
                                     summary_chunk_chars, report)
            stop = engine.stop_reason  # a refusal may also come during the summary
            stop_error = None if stop is None else _stop_error(stop, report)
            if stop_error is not None:
                if report.summary_calls == 0:  # every further call would fail the same way
                    summary = _summary_header(report) + f"_No summary: {stop_error.message}_\n"
                report.stopped_by = f"{type(stop_error).__name__}: {stop_error.message}"
            report.timings["summary_s"] = round(time.monotonic() - summary_started, 3)
            report.spend = engine.ledger.rows()

            report.timings["total_s"] = round(time.monotonic() - started, 3)
            _write_outputs(s3, report, summary, manifest, started_at, gallery_presign_seconds)
    logger.info("Run %s: %s", run_name, report.headline())
    failed = bool(fail_on_item_errors and report.n(ItemStatus.failed))
    emit_run_event("stopped" if stop_error else "failed" if failed else "completed",
                   flow_run_id=run_id, run_name=run_name,
                   payload=spend_payload(report.spend, report.counts, report.stopped_by))

    if stop_error is not None:
        raise stop_error
    if failed:
        raise ItemErrors(f"{report.n(ItemStatus.failed)} image(s) failed; "
                         f"see {report.outputs['manifest.jsonl']}")
    return report


def _write_outputs(s3: Any, report: RunReport, summary: str, manifest: Path,
                   started_at: datetime, gallery_presign_seconds: int | None) -> None:
    """The run's folder (summary, manifest, gallery, run.json) and its artifacts."""
    # Started-at first: folders sort by time, and a repeated run name cannot overwrite.
    run_prefix = f"{report.output_prefix}_runs/{started_at:%Y%m%dT%H%M%SZ}-{report.run}/"
    write_text(s3, report.bucket, run_prefix + "summary.md", summary)
    upload_file(s3, report.bucket, run_prefix + "manifest.jsonl", manifest,
                "application/x-ndjson")
    gallery = write_gallery(s3, report, summary, manifest, run_prefix=run_prefix,
                            started=started_at)
    report.outputs = {name: f"s3://{report.bucket}/{run_prefix}{name}"
                      for name in ("summary.md", "manifest.jsonl", "run.json", "gallery.html")}
    write_json(s3, report.bucket, run_prefix + "run.json", report.model_dump(mode="json"))
    publish_artifacts(report, manifest, summary)
    publish_gallery(s3, report, gallery, gallery_presign_seconds)


def _listing(listed: Iterator[Candidate], progress: RunProgress,
             report: RunReport) -> Iterator[Candidate]:
    """The candidates as listed, counting them on the run's progress."""
    for candidate in listed:
        progress.listed(report.listed)
        yield candidate


def _stop_error(stop: BaseException, report: RunReport) -> IG1Error:
    """The one error a stopped run ends with (and its summary says): cause, what was left, fix."""
    left = f"{report.n(ItemStatus.not_attempted)} image(s) not attempted"
    if isinstance(stop, SpendCapReached):
        return SpendCapReached(
            f"The run's spend cap was reached after {report.requests} requests ({stop}): "
            f"{left}. Raise max_tokens / max_spend and rerun: the rerun describes exactly "
            "what is missing.")
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


def _describe_all(settings: DescribeSettings, engine: CallEngine, images: ImagePreparation,
                  window_size: int, manifest: Any,
                  plan: deque[PlanStep]) -> Iterator[ItemResult]:
    """Submit windows with a bounded number in flight; stream results to the manifest.

    Steps leave ``plan`` as they are taken: at 100,000 images, the plan still ahead and
    the index the run has learnt then share the memory instead of adding up."""
    in_flight_windows = max(2, math.ceil(2 * engine.max_concurrency / window_size) + 1)
    pending: list[PrefectFuture[WindowResults]] = []
    while plan:
        window = expand(plan.popleft())
        if isinstance(window, ItemResult):
            yield window
            continue
        if engine.stopped:
            yield from (ItemResult(key=c.key, status=ItemStatus.not_attempted) for c in window)
            continue
        pending.append(describe_window.submit(window, settings, engine, images,
                                              first_key=window[0].key))
        if len(pending) >= in_flight_windows:
            done = next(as_completed(pending))
            pending.remove(done)
            yield from _drain(done, manifest)
    for future in pending:
        yield from _drain(future, manifest)


def _drain(future: PrefectFuture[WindowResults], manifest: Any) -> Iterator[ItemResult]:
    for result in future.result().items:
        if result.status is not ItemStatus.unchanged:
            manifest.write(result.model_dump_json(exclude_none=True) + "\n")
        yield result


def _summary_header(report: RunReport) -> str:
    return f"# Image descriptions: run {report.run}\n\n{report.headline()}\n\n"


def _summarise(manifest: Path, settings: DescribeSettings, engine: CallEngine,
               summary_prompt: str, chunk_chars: int, report: RunReport) -> str:
    """The run's summary in Markdown; a failed summary is said, not fatal."""
    header = _summary_header(report)
    if not any(report.n(status) for status in (ItemStatus.described, ItemStatus.cached)):
        return header + "_No new descriptions in this run._\n"
    try:
        result = summarize_run(manifest, settings, engine, summary_prompt, chunk_chars)
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
    parser.add_argument("--output-prefix", default=DEFAULT_OUTPUT_PREFIX)
    parser.add_argument("--model", help="a ResponsesModel block name or a model id")
    parser.add_argument("--max-concurrency", type=int)
    parser.add_argument("--concurrency-limit-name")
    parser.add_argument("--max-image-side", type=int, default=DEFAULT_MAX_IMAGE_SIDE)
    return run_from_command_line(describe_s3_images, vars(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
