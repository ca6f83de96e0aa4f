"""The record index: each image's last verdict, so a rerun with nothing new reads no record.

Whether an image is new is written in its record (source ETag, error), and reading
every record costs one S3 GET per image: most of a rerun. The index keeps, per
image, the source ETag and verdict together with the ETag of the record they were
read from or written as. A listed record whose ETag still matches its entry is
byte for byte the one judged, so the entry stands for it. Anything else (no entry,
a rewritten record, an index lost to a crash or overwritten by an overlapping run)
falls back to reading the record: the index makes a run faster, never wrong.

The index sits in a bucket others may write to: it is read within size caps
(compressed and decompressed, streamed) and each entry is type-checked; past a
cap, or for a malformed entry, the index (or the entry) is ignored with a warning.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import zlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from prefect_ig1.flows.storage import ObjectTooLarge, read_if_exists

__all__ = ["INDEX_NAME", "IndexEntry", "RecordIndex", "load_index", "save_index"]

INDEX_NAME = "_state/record-index.jsonl.gz"
MAX_INDEX_BYTES = 64 * 1024 * 1024
"""Compressed size read at most (a million images make ~40 MB)."""
MAX_INDEX_EXPANDED_BYTES = 512 * 1024 * 1024
"""Decompressed size accepted at most: a gzip bomb stops here, not at the memory's end."""
logger = logging.getLogger(__name__)


class IndexEntry(NamedTuple):
    source_etag: str
    record_etag: str
    settled: bool
    """No new attempt is due while the source keeps this ETag (described, or a lasting error)."""
    settings: str | None = None
    """For a lasting error: the run settings it holds for (another run's settings retry it)."""


class RecordIndex(MutableMapping[str, IndexEntry]):
    """The index as a run holds it, entries packed: ~280 bytes an entry (with its slot in
    the dict) become ~100 (tracemalloc, 100,000 entries).

    At 100,000 images the entries are most of what a run keeps until its end.
    An entry whose two ETags are MD5 hex digests (S3's, for an object put in one part) and
    that holds for any settings is kept as 33 bytes: both digests and the settled flag.
    Any other entry is kept as it is; every entry reads back exactly as it was set.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[str, bytes | IndexEntry] = {}

    def __getitem__(self, key: str) -> IndexEntry:
        held = self._held[key]
        if isinstance(held, bytes):
            return IndexEntry(held[:16].hex(), held[16:32].hex(), held[32] == 1)
        return held

    def __setitem__(self, key: str, entry: IndexEntry) -> None:
        packable = (entry.settings is None and _MD5_HEX.fullmatch(entry.source_etag)
                    and _MD5_HEX.fullmatch(entry.record_etag))
        if packable:
            flag = b"\1" if entry.settled else b"\0"
            self._held[key] = bytes.fromhex(entry.source_etag + entry.record_etag) + flag
        else:
            self._held[key] = entry

    def __delitem__(self, key: str) -> None:
        del self._held[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)


_MD5_HEX = re.compile(r"[0-9a-f]{32}")


class _IndexRow(BaseModel):
    """One line as stored; strict, so ``"settled": "false"`` or a null ETag is refused."""

    model_config = ConfigDict(strict=True, extra="ignore")

    key: str
    etag: str
    record_etag: str
    settled: bool
    settings: str | None = None


def load_index(s3: Any, bucket: str, output_prefix: str) -> RecordIndex:
    """The last saved index; empty when there is none or it cannot be read within the caps."""
    key = output_prefix + INDEX_NAME
    index = RecordIndex()
    try:
        data = read_if_exists(s3, bucket, key, max_bytes=MAX_INDEX_BYTES)
        if data is None:
            return index
        text = _gunzip(data, MAX_INDEX_EXPANDED_BYTES)
    except (ObjectTooLarge, OSError, EOFError, zlib.error, ValueError) as exc:
        logger.warning("Ignoring the unreadable record index s3://%s/%s (%s): this run reads "
                       "each record instead, and writes a new index", bucket, key, exc)
        return index
    malformed = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = _IndexRow.model_validate_json(line)
        except ValidationError:
            malformed += 1
            continue
        index[row.key] = IndexEntry(row.etag, row.record_etag, row.settled, row.settings)
    if malformed:
        logger.warning("Ignoring %d malformed entries of the record index s3://%s/%s: their "
                       "records are read instead", malformed, bucket, key)
    return index


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress in a stream, refusing to produce more than ``limit`` bytes."""
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = inflate.decompress(data, limit + 1)
    if len(out) > limit or inflate.unconsumed_tail:
        raise ValueError(f"the index expands past {limit:,} bytes")
    if not inflate.eof:
        raise EOFError("the index is truncated")
    return out


def save_index(s3: Any, bucket: str, output_prefix: str,
               index: Mapping[str, IndexEntry]) -> None:
    """Write the index whole (one PUT: a reader sees the old one or the new one).

    Compressed line by line: at 100,000 images, joining the lines first held ~34 MB
    at once (tracemalloc) for a body of ~4 MB."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=5) as packed:
        for key in sorted(index):
            entry = index[key]
            packed.write(json.dumps(
                {"key": key, "etag": entry.source_etag, "record_etag": entry.record_etag,
                 "settled": entry.settled,
                 **({"settings": entry.settings} if entry.settings else {})},
                ensure_ascii=False).encode("utf-8") + b"\n")
    body = buffer.getvalue()
    s3.put_object(Bucket=bucket, Key=output_prefix + INDEX_NAME, Body=body,
                  ContentType="application/gzip")
