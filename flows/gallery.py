"""The run's gallery: every image of the run next to what was said about it, as static pages.

``{run folder}/gallery.html`` (then ``gallery-2.html``... past ``PAGE_SIZE`` images) is one
self-contained page: no external request, no framework, a strict Content-Security-Policy.
Thumbnails are ``{output_prefix}_thumbs/<sha256>.jpg``, written once per content by the
windows and linked by relative URLs, so the folder can be synced or served as it is.
Keys, descriptions and errors are data: Jinja2's autoescape renders them as text.
"""

from __future__ import annotations

import html
import json
import posixpath
import secrets
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from prefect.artifacts import create_link_artifact

from prefect_ig1.flows.storage import presigned_url, thumbnail_key, write_text

from .markdown import escape_markdown
from .records import ItemResult, ItemStatus
from .reporting import RunReport

__all__ = ["PAGE_SIZE", "STATUSES", "gallery_pages", "page_name", "publish_gallery",
           "write_gallery"]

PAGE_SIZE = 500
"""Cards per page: a page of 500 is interactive in well under a second (benchmarks/RESULTS.md)."""
STATUSES = ((ItemStatus.described.value, "described"), (ItemStatus.cached.value, "cached"),
            (ItemStatus.failed.value, "failed"), (ItemStatus.not_attempted.value, "not attempted"))
"""The statuses a run's manifest holds (unchanged images are not in it), as the filters say."""

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,  # keys, model text and errors are data, never markup
    undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)


def page_name(number: int) -> str:
    """``gallery.html`` for the first page (the one linked), ``gallery-<n>.html`` after it."""
    return "gallery.html" if number == 1 else f"gallery-{number}.html"


def _results(manifest: Path) -> Iterator[ItemResult]:
    with manifest.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield ItemResult.model_validate(json.loads(line))


def gallery_pages(manifest: Path, report: RunReport, summary: str, *, started: datetime,
                  thumbs_url: str, page_size: int = PAGE_SIZE) -> Iterator[tuple[str, str]]:
    """``(file name, HTML)`` per page, streamed from the manifest (one page in memory).

    ``thumbs_url`` is the relative URL of the thumbnails folder as seen from the pages.
    """
    with manifest.open(encoding="utf-8") as lines:
        total = sum(1 for line in lines if line.strip())
    count = max(1, -(-total // page_size))
    pages = [page_name(number) for number in range(1, count + 1)]
    template = _TEMPLATES.get_template("gallery.html.j2")
    # summary.md escapes <, > and & for Markdown renderers; shown here as text, escaped once.
    summary = html.unescape(summary)
    results = _results(manifest)
    for number, name in enumerate(pages, start=1):
        cards = list(islice(results, page_size))
        page = template.render(
            report=report, summary=summary, started=f"{started:%Y-%m-%d %H:%M:%S} UTC",
            cards=cards, thumbs=thumbs_url, pages=pages, page=number, statuses=STATUSES,
            nonce=secrets.token_urlsafe(16))
        yield name, page


def write_gallery(s3: Any, report: RunReport, summary: str, manifest: Path, *,
                  run_prefix: str, started: datetime) -> str:
    """Write the run's gallery pages beside its summary; returns the first page's key."""
    # Relative, so the folder can be synced or served as it is ("../../_thumbs/" usually).
    thumbs_url = posixpath.relpath(thumbnail_key(report.output_prefix, "x").rsplit("/", 1)[0],
                                   run_prefix.rstrip("/")) + "/"
    for name, page in gallery_pages(manifest, report, summary, started=started,
                                    thumbs_url=thumbs_url):
        write_text(s3, report.bucket, run_prefix + name, page, "text/html; charset=utf-8")
    return run_prefix + page_name(1)


def publish_gallery(s3: Any, report: RunReport, key: str,
                    presign_seconds: int | None = None) -> str:
    """A link artifact to the gallery: its ``s3://`` URL, or a presigned HTTPS URL when asked
    (the page then opens in any browser for that long; thumbnails show where the bucket
    serves ``_thumbs/`` to the reader, e.g. after a sync or behind a website)."""
    s3_url = f"s3://{report.bucket}/{key}"
    # Prefect shows the link as Markdown: the URL is percent-quoted, the words escaped.
    link = f"s3://{report.bucket}/{quote(key)}" if presign_seconds is None else presigned_url(
        s3, report.bucket, key, presign_seconds)
    expiry = "" if presign_seconds is None else f"; this link expires in {presign_seconds} s"
    create_link_artifact(
        key="image-gallery", link=link, link_text=escape_markdown(f"Gallery of run {report.run}"),
        description=escape_markdown(f"Gallery of run {report.run}: {s3_url}{expiry}"))
    return link
