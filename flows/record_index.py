"""The record index: each image's last verdict, so a rerun with nothing new reads no record.

Whether an image is new is written in its record (source ETag, error), and reading
every record costs one S3 GET per image: most of a rerun. The index keeps, per
image, the source ETag and verdict together with the ETag of the record they were
read from or written as. A listed record whose ETag still matches its entry is
byte for byte the one judged, so the entry stands for it. Anything else (no entry,
a rewritten record, an index lost to a crash or overwritten by an overlapping run)
falls back to reading the record: the index makes a run faster, never wrong.
"""

from __future__ import annotations

import gzip
import json
import logging
from typing import Any, NamedTuple

from tasks.s3 import read_if_exists

from .records import ItemStatus
from .window import Candidate, ItemResult

__all__ = ["INDEX_NAME", "IndexEntry", "entry_for", "is_settled", "load_index", "save_index"]

INDEX_NAME = "_state/record-index.jsonl.gz"
logger = logging.getLogger(__name__)


class IndexEntry(NamedTuple):
    source_etag: str
    record_etag: str
    settled: bool
    """No new attempt is due while the source keeps this ETag (described, or a lasting error)."""


def is_settled(candidate: Candidate, index: dict[str, IndexEntry]) -> bool:
    """True when the index proves this image's record current: no need to read it."""
    entry = index.get(candidate.key)
    return (entry is not None and entry.settled and entry.source_etag == candidate.etag
            and entry.record_etag == candidate.record_etag)


def entry_for(result: ItemResult) -> IndexEntry | None:
    """What a run learnt of one image, if it wrote or read its record."""
    if result.etag is None or result.record_etag is None:
        return None
    settled = (result.status is not ItemStatus.failed
               or (result.error is not None and not result.error.retryable))
    return IndexEntry(result.etag, result.record_etag, settled)


def load_index(s3: Any, bucket: str, output_prefix: str) -> dict[str, IndexEntry]:
    """The last saved index; empty when there is none or it cannot be read."""
    key = output_prefix + INDEX_NAME
    data = read_if_exists(s3, bucket, key)
    if data is None:
        return {}
    try:
        rows = (json.loads(line) for line in gzip.decompress(data).splitlines() if line)
        return {row["key"]: IndexEntry(row["etag"], row["record_etag"], bool(row["settled"]))
                for row in rows}
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Ignoring the unreadable record index s3://%s/%s (%s): this run reads "
                       "each record instead, and writes a new index", bucket, key, exc)
        return {}


def save_index(s3: Any, bucket: str, output_prefix: str,
               index: dict[str, IndexEntry]) -> None:
    """Write the index whole (one PUT: a reader sees the old one or the new one)."""
    lines = (json.dumps({"key": key, "etag": entry.source_etag,
                         "record_etag": entry.record_etag, "settled": entry.settled},
                        ensure_ascii=False) for key, entry in sorted(index.items()))
    body = gzip.compress("\n".join(lines).encode("utf-8"), compresslevel=5)
    s3.put_object(Bucket=bucket, Key=output_prefix + INDEX_NAME, Body=body,
                  ContentType="application/gzip")
