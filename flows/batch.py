"""The data-team batch: one prompt over every row of a table, or every line of a Batch
request file, through the call engine; resumable, in the Batch file shapes.

    python -m prefect_ig1.flows.batch --source tickets.csv --prompt "Classify: {text}"

IG1 is stateless (no ``/v1/files`` or ``/v1/batches``): the batch runs against
``/v1/responses`` and the content cache is its memory, so a rerun pays only for rows that
are new or changed, and the results files are written whole again each run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_aws import AwsCredentials
from pydantic import Field

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import AuthenticationError, BudgetExhaustedError, IG1Error
from prefect_ig1.flows.storage import read_bytes, s3_client
from prefect_ig1.tasks import PreparedCall, resolve_credentials, resolve_model
from prefect_ig1.tasks.engine import DEFAULT_WINDOW_SIZE, CallEngine, NotAttempted, respond_many
from prefect_ig1.tasks.images import DEFAULT_MAX_IMAGE_SIDE, ImageRejected
from prefect_ig1.tasks.ledger import SpendCapReached

from .account import MAX_CONCURRENCY, concurrency_from, read_usage, run_identity
from .batch_io import (
    BatchInputError,
    Location,
    RequestLines,
    TableSource,
    TableWriter,
    fetch_source,
    is_request_file,
    publish_outputs,
    source_format,
    table_result_name,
)
from .batch_report import BatchReport, ResultSink, publish_batch_artifacts, write_run_json
from .batch_requests import (
    ResponseFormat,
    RowOutcome,
    RowRequests,
    check_template,
    judge,
    load_response_format,
    read_local_image,
    request_line_call,
)
from .progress import RunProgress, run_from_command_line
from .spend import (
    emit_budget_low,
    emit_run_event,
    forecast_run,
    spend_payload,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["BatchItemErrors", "main", "run_batch"]

Item = tuple[str, dict[str, Any] | None, PreparedCall | BaseException]
_IMAGE_BYTES = 50 * 1024 * 1024


class BatchItemErrors(Exception):
    """Raised at the end of a run with ``fail_on_item_errors`` when some rows failed."""


@flow(name="run-batch", task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def run_batch(
    source: Annotated[str, Field(min_length=1)],
    output: str | None = None,
    prompt: str | None = None,
    instructions: str | None = None,
    response_format: dict[str, Any] | str | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
    model: ResponsesModel | str | None = None,
    credentials: IG1Credentials | str | None = None,
    max_concurrency: Annotated[int | None, Field(ge=1, le=MAX_CONCURRENCY)] = None,
    concurrency_limit_name: str | None = None,
    max_output_tokens: Annotated[int | None, Field(ge=1)] = None,
    max_image_side: Annotated[int, Field(ge=16, le=16_384)] = DEFAULT_MAX_IMAGE_SIDE,
    retry_delay_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0,
    fail_on_item_errors: bool = False,
    aws_credentials: AwsCredentials | None = None,
    max_tokens: Annotated[int | None, Field(ge=1)] = None,
    max_spend: Annotated[float | None, Field(gt=0)] = None,
    dry_run: bool = False,
    allow_over_budget: bool = False,
) -> BatchReport:
    """Answer every row (``prompt`` with ``{column}`` placeholders) or request line of
    ``source``; write ``results.jsonl``, the results table and ``run.json`` to ``output``.

    The whole input is checked before any call (format, columns, schema, unique ids); then
    the run forecasts its spend (``dry_run`` stops there) and may be capped by
    ``max_tokens`` / ``max_spend``, as the image flow is.
    """
    logger = get_run_logger()
    started = time.monotonic()
    run_id, run_name = run_identity()
    where = Location.parse(source)
    out = Location.parse(output) if output else where.results_folder()
    if out.bucket is not None and out.path and not out.path.endswith("/"):
        out = Location(out.bucket, out.path + "/")
    fmt = source_format(where)
    s3 = _lazy_s3(aws_credentials)
    profile = resolve_model(model)
    creds = resolve_credentials(credentials, profile)
    answer_format = load_response_format(response_format, lambda uri: _read_text(uri, s3))
    params = {"max_output_tokens": max_output_tokens} if max_output_tokens else {}

    with tempfile.TemporaryDirectory(prefix="ig1-batch-") as tmp:
        workdir = Path(tmp)
        path = fetch_source(where, workdir, s3() if where.bucket else None)
        kind = "requests" if fmt == "jsonl" and is_request_file(path) else "table"
        table: TableSource | None = None
        if kind == "table":
            table = TableSource(path, fmt)
            builder, rows = _check_table(table, prompt, instructions, answer_format, params,
                                         image_column, id_column, profile, creds,
                                         max_image_side, s3)
            items = _table_items(table, builder, id_column)
        else:
            if prompt or image_column or id_column or answer_format:
                raise BatchInputError(
                    f"{where} is a Batch request file: each line carries its own body, so "
                    "prompt, image_column, id_column and response_format do not apply")
            rows = _check_unique(_request_ids(path), "custom_id")
            items = _request_items(path, profile, creds)
        if max_spend is not None and profile.prices is None:
            raise BatchInputError("max_spend needs prices: set input_price_per_million and "
                                  "output_price_per_million on the ResponsesModel profile")
        usage = read_usage(creds)
        emit_budget_low(usage, creds)
        concurrency = max_concurrency or concurrency_from(usage)
        report = BatchReport(run=run_name, source=str(where), output=str(out), kind=kind,
                             model=profile.model, max_concurrency=concurrency)
        if forecast_run(report, rows, None, profile.prices, usage, dry_run=dry_run,
                        allow_over_budget=allow_over_budget):
            return report
        report.timings["check_s"] = round(time.monotonic() - started, 3)
        logger.info("Batch %s (%s) with %s, %d calls in flight", where, kind, profile.model,
                    concurrency)

        results_path = workdir / "results.jsonl"
        files = [results_path]
        writer = None
        as_json: dict[str, bool] = {}
        if table is not None:
            files.append(workdir / table_result_name(fmt, where.suffix))
            writer = TableWriter(files[-1], fmt, table.schema,
                                 answer_format.columns() if answer_format else [])
            if answer_format is not None:
                as_json = {name: not scalar and fmt != "jsonl"
                           for name, scalar in answer_format.scalar_columns().items()}
        with (CallEngine(max_concurrency=concurrency,
                         concurrency_limit_name=concurrency_limit_name,
                         retry_delay_seconds=retry_delay_seconds, max_tokens=max_tokens,
                         max_spend=max_spend, prices=profile.prices) as engine,
              results_path.open("w", encoding="utf-8") as lines,
              RunProgress("Answering rows") as progress):
            progress.listed(rows)
            progress.start(rows)
            sink = ResultSink(run_id, report, lines, writer, as_json)
            _answer_all(items, engine, _Counted(sink, progress), answer_format)
            sink.close()
            report.requests = engine.requests_sent
            report.spend = engine.ledger.rows()
            stop = engine.stop_reason
        stop_error = None if stop is None else _stop_error(stop, report)
        if stop_error is not None:
            report.stopped_by = f"{type(stop_error).__name__}: {stop_error.message}"
        report.timings["total_s"] = round(time.monotonic() - started, 3)
        files.append(write_run_json(workdir / "run.json", report))
        report.outputs = publish_outputs(files, out, s3() if out.bucket else None)
        publish_batch_artifacts(report, sink.preview)
    logger.info("Batch %s: %s", run_name, report.headline())
    bad = report.n("failed") + report.n("invalid_output")
    emit_run_event("stopped" if stop_error else "failed" if fail_on_item_errors and bad
                   else "completed", flow_run_id=run_id, run_name=run_name,
                   payload=spend_payload(report.spend, report.counts, report.stopped_by))

    if stop_error is not None:
        raise stop_error
    bad = report.n("failed") + report.n("invalid_output")
    if fail_on_item_errors and bad:
        raise BatchItemErrors(f"{bad} row(s) failed or gave an invalid output; see "
                              f"{report.outputs['results.jsonl']}")
    return report


def _lazy_s3(aws_credentials: AwsCredentials | None) -> Callable[[], S3Client]:
    """The S3 client, built on first use (a local batch needs none)."""
    made: list[S3Client] = []

    def get() -> S3Client:
        if not made:
            made.append(s3_client(aws_credentials))
        return made[0]
    return get


def _read_text(uri: str, s3: Callable[[], S3Client]) -> str:
    where = Location.parse(uri)
    if where.bucket is None:
        return Path(uri).read_text(encoding="utf-8")
    data, _ = read_bytes(s3(), where.bucket, where.path, max_bytes=10 * 1024 * 1024)
    return data.decode("utf-8")


def _check_table(table: TableSource, prompt: str | None, instructions: str | None,
                 answer_format: ResponseFormat | None, params: dict[str, Any],
                 image_column: str | None, id_column: str | None, profile: ResponsesModel,
                 creds: IG1Credentials, max_image_side: int,
                 s3: Callable[[], S3Client]) -> tuple[RowRequests, int]:
    """Everything a table run depends on, checked before any call; and its row count."""
    if not prompt:
        raise BatchInputError("a table needs a prompt: a template with {column} placeholders "
                              f"(columns: {table.columns})")
    check_template(prompt, table.columns)
    for name, value in (("image_column", image_column), ("id_column", id_column)):
        if value is not None and value not in table.columns:
            raise BatchInputError(f"{name} {value!r} is not a column of the input; its "
                                  f"columns are {table.columns}")
    clashes = [c for c in table.columns if c.startswith("ig1_")]
    if clashes:
        raise BatchInputError(f"column(s) {clashes} clash with the ig1_* result columns: "
                              "rename them (or drop them from a previous results file)")
    ids = table.column(id_column or table.columns[0])  # also reads the whole file once
    if id_column:
        rows = _check_unique((str(v) if v is not None else None for v in ids), id_column)
    else:
        rows = sum(1 for _ in ids)

    def read_image(source: str) -> bytes:
        image = Location.parse(source)
        if image.bucket is None:
            return read_local_image(source, _IMAGE_BYTES)
        return read_bytes(s3(), image.bucket, image.path, max_bytes=_IMAGE_BYTES)[0]

    return RowRequests(profile, creds, prompt, instructions, answer_format, params,
                       image_column, read_image, max_image_side), rows


def _check_unique(ids: Iterator[str | None], what: str) -> int:
    """Ids are the results' keys: a duplicate or a missing one is an error before any call.
    Kept as 8-byte digests, so 1,000,000 ids cost ~40 MB less than the strings would.
    Returns how many there are (the run's total, for its progress)."""
    import hashlib

    seen: set[bytes] = set()
    count = 0
    for number, value in enumerate(ids):
        count = number + 1
        if value is None or value == "":
            continue  # a request line without custom_id is that row's error; ids: see below
        digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
        if digest in seen:
            raise BatchInputError(f"{what} {value!r} appears more than once (again at row "
                                  f"{number}); ids must be unique to match results to rows")
        seen.add(digest)
    return count


def _request_ids(path: Path) -> Iterator[str | None]:
    for _, line in RequestLines(path):
        try:
            value = json.loads(line)
        except ValueError:
            yield None
            continue
        yield str(value["custom_id"]) if isinstance(value, dict) and value.get(
            "custom_id") is not None else None


def _table_items(table: TableSource, builder: RowRequests, id_column: str | None
                 ) -> Iterator[Item]:
    position = 0
    for chunk in table.chunks():
        for row in chunk:
            custom_id = str(row[id_column]) if id_column and row[id_column] is not None \
                else str(position)
            call: PreparedCall | BaseException
            try:
                call = builder.call(row)
            except Exception as exc:
                call = exc
            yield custom_id, row, call
            position += 1


def _request_items(path: Path, profile: ResponsesModel, creds: IG1Credentials
                   ) -> Iterator[Item]:
    for number, line in RequestLines(path):
        custom_id = f"line-{number}"
        call: PreparedCall | BaseException
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError("a request line is a JSON object")
            if value.get("custom_id") is None:
                raise ValueError("the line has no custom_id")
            custom_id = str(value["custom_id"])
            call = request_line_call(value, profile, creds)
        except Exception as exc:
            call = exc
        yield custom_id, None, call


class _Counted:
    """The sink, counting each outcome on the run's progress as it arrives."""

    def __init__(self, sink: ResultSink, progress: RunProgress) -> None:
        self.sink = sink
        self.progress = progress

    def add(self, position: int, outcome: RowOutcome, row: dict[str, Any] | None) -> None:
        self.sink.add(position, outcome, row)
        paid = outcome.status in ("completed", "invalid_output")
        self.progress.done(outcome.status, requests=int(paid),
                           tokens=outcome.input_tokens + outcome.output_tokens)


def _answer_all(items: Iterator[Item], engine: CallEngine, sink: ResultSink | _Counted,
                answer_format: ResponseFormat | None) -> None:
    """Fan every call out through the engine; outcomes reach the sink in any order, rows
    that cannot be sent at once (an invalid line, an unreadable image) without a call."""
    pending: dict[int, tuple[str, dict[str, Any] | None, PreparedCall]] = {}

    def calls() -> Iterator[tuple[str, PreparedCall]]:
        for position, (custom_id, row, call) in enumerate(items):
            if isinstance(call, BaseException):
                code = call.reason if isinstance(call, ImageRejected) else (
                    "image_unreadable" if isinstance(call, OSError) else "invalid_request")
                sink.add(position, RowOutcome.failed(custom_id, call, code), row)
                continue
            if engine.stopped:  # IG1 refused a call: the rest is for the rerun, at no cost
                sink.add(position, RowOutcome.failed(custom_id, NotAttempted()), row)
                continue
            pending[position] = (custom_id, row, call)
            yield str(position), call

    for result in respond_many(calls(), engine=engine, window_size=DEFAULT_WINDOW_SIZE):
        position = int(result.key)
        custom_id, row, call = pending.pop(position)
        sink.add(position, judge(custom_id, call, result, answer_format), row)


def _stop_error(stop: BaseException, report: BatchReport) -> IG1Error:
    """The one error a stopped batch ends with: why, what was left, and that a rerun does the
    rest (answered rows come back from the cache for free)."""
    left = f"{report.n('not_attempted')} row(s) not attempted"
    where = {"status": getattr(stop, "status", 0), "code": getattr(stop, "code", None),
             "request_id": getattr(stop, "request_id", None)}
    rerun = ("rerun the same batch: it sends exactly the rest (rows already answered come "
             "from the cache, free); the results files are written whole again")
    if isinstance(stop, SpendCapReached):
        return SpendCapReached(f"The batch's spend cap was reached after {report.requests} "
                               f"requests ({stop}): {left}. Raise max_tokens / max_spend and "
                               f"{rerun}.")
    if isinstance(stop, BudgetExhaustedError):
        return BudgetExhaustedError(
            f"IG1 budget exhausted (402) after {report.requests} requests: {left}. Raise the "
            f"commit and {rerun}.", **where)
    return AuthenticationError(
        f"IG1 refused the credentials ({where['status']}: {getattr(stop, 'message', stop)}); "
        f"the batch stopped at once, {left}. Fix the IG1Credentials block or IG1AI_API_KEY "
        f"and {rerun}.", **where)


def main(argv: list[str] | None = None) -> int:
    """``python -m prefect_ig1.flows.batch --source ... [--prompt ...]``"""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--source", required=True, help="s3://bucket/key or a local path")
    parser.add_argument("--output", help="s3://bucket/prefix/ or a local folder")
    parser.add_argument("--prompt", help="a template with {column} placeholders (tables)")
    parser.add_argument("--instructions")
    parser.add_argument("--response-format", help="a .json schema, or module:Class")
    parser.add_argument("--image-column")
    parser.add_argument("--id-column")
    parser.add_argument("--model", help="a ResponsesModel block name or a model id")
    parser.add_argument("--max-concurrency", type=int)
    parser.add_argument("--concurrency-limit-name")
    parser.add_argument("--max-output-tokens", type=int)
    return run_from_command_line(run_batch, vars(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
