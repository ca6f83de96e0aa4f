"""What a batch writes for each row, in input order, and what its run reports.

``ResultSink`` receives outcomes in any order and writes them in input order: an outcome
waits only until the rows before it are done, and the engine keeps at most ~2 x
``max_concurrency`` rows outstanding, so what waits here stays bounded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TextIO

from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from prefect_ig1.client import Response
from prefect_ig1.tasks.ledger import usage_rows

from .batch_io import CHUNK_ROWS, TableWriter
from .batch_requests import BATCH_STATUSES, RowOutcome
from .markdown import escape_markdown, one_line, publishable_markdown
from .spend import SpendReport

__all__ = ["MAX_TABLE_ROWS", "BatchReport", "ResultSink", "publish_batch_artifacts"]

MAX_TABLE_ROWS = 500


class BatchReport(SpendReport):
    """The run's result and its ``run.json``."""

    run: str
    source: str
    output: str
    kind: str = Field(description="'requests' (a Batch request file) or 'table'")
    model: str
    max_concurrency: int
    rows: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    requests: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    timings: dict[str, float] = Field(default_factory=dict)
    stopped_by: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)

    def n(self, status: str) -> int:
        return self.counts.get(status, 0)

    def headline(self) -> str:
        parts = ", ".join(f"{self.n(status)} {status}" for status in BATCH_STATUSES)
        return (f"{self.rows} rows: {parts}; {self.requests} IG1 requests, "
                f"{self.input_tokens + self.output_tokens} tokens")


class _LineResponse(BaseModel):
    status_code: int = 200
    request_id: str | None
    body: Response


class _ResultLine(BaseModel):
    """The Batch output line shape, plus the row's ``status``."""

    id: str
    custom_id: str
    response: _LineResponse | None
    error: dict[str, str] | None
    status: str


_NOT_IN_BODY: Any = {"response": {"body": {"parsed", "request_id"}}}


class ResultSink:
    """results.jsonl (Batch output lines) and the results table, written in input order."""

    def __init__(self, run_id: str, report: BatchReport, results: TextIO,
                 table: TableWriter | None, property_columns: dict[str, bool]) -> None:
        """``property_columns``: ``ig1_<name>`` -> whether its values are stored as JSON text
        (objects and arrays in a CSV or Parquet column)."""
        self.run_id = run_id
        self.report = report
        self.results = results
        self.table = table
        self.property_columns = property_columns
        self.preview: list[dict[str, str]] = []
        self._waiting: dict[int, tuple[RowOutcome, dict[str, Any] | None]] = {}
        self._next = 0
        self._rows: list[dict[str, Any]] = []

    def add(self, position: int, outcome: RowOutcome, row: dict[str, Any] | None) -> None:
        """Take one row's outcome; write every outcome now next in input order."""
        self._waiting[position] = (outcome, row)
        while self._next in self._waiting:
            self._write(self._next, *self._waiting.pop(self._next))
            self._next += 1

    def close(self) -> None:
        assert not self._waiting, f"rows never answered: {sorted(self._waiting)[:10]}"
        if self.table is not None:
            self.table.write(self._rows)
            self._rows = []
            self.table.close()

    def _write(self, position: int, outcome: RowOutcome, row: dict[str, Any] | None) -> None:
        report = self.report
        report.rows += 1
        report.counts[outcome.status] = report.counts.get(outcome.status, 0) + 1
        report.cache_hits += outcome.status == "cached"
        report.input_tokens += outcome.input_tokens
        report.output_tokens += outcome.output_tokens
        self.results.write(self._line(position, outcome) + "\n")
        if self.table is not None and row is not None:
            self._rows.append({**row, **self._table_columns(outcome)})
            if len(self._rows) >= CHUNK_ROWS:
                self.table.write(self._rows)
                self._rows = []
        if len(self.preview) < MAX_TABLE_ROWS:
            words = outcome.response.output_text if outcome.response else ""
            error = (outcome.error or {}).get("message", "")
            self.preview.append({
                "id": escape_markdown(outcome.custom_id), "status": outcome.status,
                "output": publishable_markdown(" ".join(one_line(words).split()[:20])),
                "error": escape_markdown(error[:200])})

    def _line(self, position: int, outcome: RowOutcome) -> str:
        """One line of results.jsonl, serialised by pydantic in one pass (the body is most
        of a rerun's writing)."""
        digest = hashlib.sha256(f"{self.run_id}:{position}".encode()).hexdigest()[:24]
        response = outcome.response
        line = _ResultLine(
            id=f"batch_req_{digest}", custom_id=outcome.custom_id,
            response=None if response is None else _LineResponse(
                request_id=response.request_id, body=response),
            error=outcome.error, status=outcome.status)
        return line.model_dump_json(exclude=_NOT_IN_BODY)

    def _table_columns(self, outcome: RowOutcome) -> dict[str, Any]:
        columns: dict[str, Any] = {
            "ig1_status": outcome.status,
            "ig1_output_text": outcome.response.output_text if outcome.response else None,
            "ig1_error": (outcome.error or {}).get("message")}
        values = outcome.values or {}
        for name, as_json in self.property_columns.items():
            value = values.get(name.removeprefix("ig1_"))
            if as_json and value is not None and not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False)
            columns[name] = value
        return columns


def publish_batch_artifacts(report: BatchReport, preview: list[dict[str, str]]) -> None:
    """A table of the first rows (detail lives in results.jsonl) and the run's usage."""
    more = report.rows - len(preview)
    create_table_artifact(
        key="batch-results", table=preview,
        description=f"Batch {report.run}" + (f" (first {len(preview)} rows; {more} more in "
                                             "results.jsonl)" if more > 0 else ""))
    usage = usage_rows(report.spend)
    create_table_artifact(key="ig1-usage", table=usage, description=f"IG1 usage of {report.run}")


def write_run_json(path: Path, report: BatchReport) -> Path:
    path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return path
