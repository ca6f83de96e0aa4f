"""What a run reports: counts, tokens, timings (``run.json``) and its Prefect artifacts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field, computed_field

from prefect_ig1.tasks.ledger import usage_rows

from .markdown import one_line, publishable_markdown
from .records import ItemResult, ItemStatus
from .spend import SpendReport

__all__ = ["MAX_TABLE_ROWS", "RunReport", "publish_artifacts"]

MAX_TABLE_ROWS = 500


class RunReport(SpendReport):
    """The run's result and its ``run.json``."""

    run: str
    bucket: str
    prefix: str
    output_prefix: str
    model: str
    max_concurrency: int
    listed: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    requests: int = 0
    summary_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    sent_bytes: int = 0
    timings: dict[str, float] = Field(default_factory=dict)
    stopped_by: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def count(self, result: ItemResult) -> None:
        self.counts[result.status.value] = self.counts.get(result.status.value, 0) + 1
        self.input_tokens += result.input_tokens
        self.output_tokens += result.output_tokens
        self.sent_bytes += result.sent_bytes or 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def new(self) -> int:
        """Images that needed describing in this run."""
        return sum(n for status, n in self.counts.items() if status != ItemStatus.unchanged.value)

    def n(self, status: ItemStatus) -> int:
        return self.counts.get(status.value, 0)

    def headline(self) -> str:
        return (f"{self.listed} listed, {self.new} new: {self.n(ItemStatus.described)} described, "
                f"{self.n(ItemStatus.cached)} from cache, {self.n(ItemStatus.failed)} failed, "
                f"{self.n(ItemStatus.not_attempted)} not attempted; "
                f"{self.n(ItemStatus.unchanged)} unchanged, {sum(self.skipped.values())} skipped; "
                f"{self.requests} IG1 requests, {self.input_tokens + self.output_tokens} tokens")


def publish_artifacts(report: RunReport, manifest: Path, summary: str) -> None:
    """A table of this run's images, the summary, and usage: per-image detail lives in S3."""
    rows: list[dict[str, Any]] = []
    statuses: Counter[str] = Counter()
    with manifest.open(encoding="utf-8") as lines:
        for line in lines:
            item = json.loads(line)
            statuses[item["status"]] += 1
            if len(rows) < MAX_TABLE_ROWS:
                words = (item.get("text") or (item.get("error") or {}).get("message") or "")
                rows.append({"key": one_line(item["key"]), "status": item["status"],
                             "first words": publishable_markdown(
                                 " ".join(one_line(words).split()[:12]))})
    more = sum(statuses.values()) - len(rows)
    create_table_artifact(
        key="described-images", table=rows,
        description=f"Images of run {report.run}" + (f" (first {len(rows)}; {more} more in "
                                                     "manifest.jsonl)" if more > 0 else ""))
    create_markdown_artifact(key="image-summary", markdown=summary,
                             description=f"Summary of run {report.run}")
    usage = usage_rows(report.spend)
    usage.append({"model": "(bytes sent)", "requests": None, "cache hits": None,
                  "input tokens": None, "output tokens": None, "reasoning tokens": None,
                  "cost": None, "bytes": report.sent_bytes})
    create_table_artifact(key="ig1-usage", table=usage, description=f"IG1 usage of {report.run}")

