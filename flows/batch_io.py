"""Batch inputs and outputs: rows in and results out a chunk at a time, in bounded memory.

CSV and Parquet go through pyarrow's streaming readers and writers (no parsing of our own);
JSON lines through the json module, one line at a time. An S3 source is downloaded to a
temporary file first, and outputs are written to a temporary folder, then uploaded (or
moved) whole: a crash never leaves half a results file where the last good one was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from prefect_ig1.flows.storage import upload_file

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "CHUNK_ROWS",
    "BatchInputError",
    "Location",
    "RequestLines",
    "TableSource",
    "TableWriter",
    "fetch_source",
    "publish_outputs",
]

CHUNK_ROWS = 1024
Format = Literal["csv", "parquet", "jsonl"]
FORMATS: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl",
                              ".ndjson": "jsonl"}


class BatchInputError(ValueError):
    """Bad input found before any call; the message says what is wrong and the fix."""


@dataclass(frozen=True)
class Location:
    """A file or folder: ``s3://bucket/key`` or a local path."""

    bucket: str | None
    path: str  # the S3 key, or the local path

    @classmethod
    def parse(cls, text: str) -> Location:
        if text.startswith("s3://"):
            bucket, _, key = text.removeprefix("s3://").partition("/")
            if not bucket:
                raise BatchInputError(f"{text!r} names no bucket: write s3://bucket/key")
            return cls(bucket, key)
        return cls(None, text)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.bucket else self.path

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix.lower()

    def results_folder(self) -> Location:
        """``<stem>.results/`` beside this file: the default output."""
        if self.bucket:
            folder = PurePosixPath(self.path)
            return Location(self.bucket, str(folder.with_name(folder.stem + ".results")) + "/")
        return Location(None, str(Path(self.path).with_name(Path(self.path).stem + ".results")))


def source_format(location: Location) -> Format:
    """The input's format from its extension (unknown: an error naming what is accepted)."""
    fmt = FORMATS.get(location.suffix)
    if fmt is None:
        raise BatchInputError(
            f"cannot read {location}: unknown extension {location.suffix or '(none)'!r}; "
            f"a batch source is {', '.join(sorted(FORMATS))}")
    return fmt


def fetch_source(location: Location, workdir: Path, s3: S3Client | None) -> Path:
    """A local path to read: the file itself, or an S3 object downloaded (streamed to disk)."""
    if location.bucket is None:
        path = Path(location.path)
        if not path.is_file():
            raise BatchInputError(f"cannot read {location}: no such file")
        return path
    assert s3 is not None
    target = workdir / ("source" + location.suffix)
    try:
        s3.download_file(location.bucket, location.path, str(target))
    except (ClientError, BotoCoreError) as exc:
        raise BatchInputError(f"cannot read {location}: {exc}") from None
    return target


class TableSource:
    """Rows of a CSV, JSON lines or Parquet table as dicts, ``CHUNK_ROWS`` at a time.

    CSV columns are read as text (a later block cannot contradict types guessed from the
    first, and the results keep the cells as written); Parquet keeps its types.
    """

    def __init__(self, path: Path, fmt: Format) -> None:
        self.path = path
        self.format = fmt
        self.schema: pa.Schema | None = None
        try:
            if fmt == "csv":
                with pacsv.open_csv(path) as reader:
                    names = reader.schema.names
                self.schema = pa.schema([(name, pa.string()) for name in names])
            elif fmt == "parquet":
                self.schema = pq.ParquetFile(path).schema_arrow
            else:
                first = next(self._json_rows(), None)
                names = list(first) if first else []
        except (pa.ArrowException, OSError) as exc:
            raise BatchInputError(f"cannot read {path.name} as {fmt}: {exc}") from None
        self.columns: list[str] = self.schema.names if self.schema is not None else names

    def chunks(self) -> Iterator[list[dict[str, Any]]]:
        """The rows, in order, a chunk at a time."""
        if self.format == "jsonl":
            chunk: list[dict[str, Any]] = []
            for row in self._json_rows():
                chunk.append(row)
                if len(chunk) == CHUNK_ROWS:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
            return
        try:
            for batch in self._batches():
                yield batch.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise BatchInputError(f"cannot read {self.path.name} as {self.format}: {exc}"
                                  ) from None

    def column(self, name: str) -> Iterator[Any]:
        """One column's values, in order (the pre-pass reads only what it checks)."""
        if self.format == "jsonl":
            for chunk in self.chunks():
                yield from (row.get(name) for row in chunk)
            return
        try:
            for batch in self._batches([name]):
                yield from batch.column(0).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise BatchInputError(f"cannot read {self.path.name} as {self.format}: {exc}"
                                  ) from None

    def _batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        assert self.schema is not None
        if self.format == "parquet":
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=CHUNK_ROWS,
                                                              columns=columns)
            return
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in self.schema.names},
            include_columns=columns)
        with pacsv.open_csv(self.path, convert_options=convert) as reader:
            for batch in reader:  # blocks of ~1 MB; re-cut to bound the rows held
                for start in range(0, batch.num_rows, CHUNK_ROWS):
                    yield batch.slice(start, CHUNK_ROWS)

    def _json_rows(self) -> Iterator[dict[str, Any]]:
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise BatchInputError(f"cannot read {self.path.name}: line {number} is not "
                                          f"JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise BatchInputError(f"cannot read {self.path.name}: line {number} is not "
                                          "a JSON object (a table row is an object)")
                yield row


class RequestLines:
    """A Batch request file: ``(line number, raw text)`` of each non-empty line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[tuple[int, str]]:
        try:
            with self.path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if line.strip():
                        yield number, line
        except UnicodeDecodeError as exc:
            raise BatchInputError(f"cannot read {self.path.name}: not UTF-8 text ({exc})"
                                  ) from None


def is_request_file(path: Path) -> bool:
    """A JSON lines file whose first object is a Batch request line (custom_id and body)."""
    for _, line in RequestLines(path):
        try:
            first = json.loads(line)
        except ValueError:
            return False
        return isinstance(first, dict) and "custom_id" in first and "body" in first
    return False


class TableWriter:
    """The results table in the input's format: its columns, then ``ig1_status``,
    ``ig1_output_text``, ``ig1_error`` and ``extra`` (one per schema property)."""

    def __init__(self, path: Path, fmt: Format, input_schema: pa.Schema | None,
                 extra: list[tuple[str, pa.DataType]]) -> None:
        self.path = path
        self.format = fmt
        self.extra = [("ig1_status", pa.string()), ("ig1_output_text", pa.string()),
                      ("ig1_error", pa.string()), *extra]
        self.schema = (pa.schema([*input_schema, *(pa.field(n, t) for n, t in self.extra)])
                       if input_schema is not None else None)
        self._lines = path.open("w", encoding="utf-8") if fmt == "jsonl" else None
        self._writer: pacsv.CSVWriter | pq.ParquetWriter | None = None
        if fmt == "csv":
            self._writer = pacsv.CSVWriter(path, self.schema)
        elif fmt == "parquet":
            self._writer = pq.ParquetWriter(path, self.schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._lines is not None:
            for row in rows:
                self._lines.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            return
        assert self._writer is not None
        self._writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=self.schema))

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()
        if self._writer is not None:
            self._writer.close()


def table_result_name(fmt: Format, suffix: str) -> str:
    """``results.<input's extension>``; a ``.jsonl`` table's results would clash with the
    Batch-shaped ``results.jsonl``, so they are ``results.table.jsonl``."""
    return "results.table.jsonl" if suffix == ".jsonl" else "results" + suffix


_CONTENT_TYPES = {".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson",
                  ".json": "application/json", ".csv": "text/csv; charset=utf-8",
                  ".parquet": "application/vnd.apache.parquet"}


def publish_outputs(files: list[Path], output: Location, s3: S3Client | None) -> dict[str, str]:
    """Upload (S3) or move (local folder) the finished files whole; ``{name: where}``."""
    where: dict[str, str] = {}
    for path in files:
        if output.bucket is not None:
            assert s3 is not None
            key = output.path + path.name
            upload_file(s3, output.bucket, key, path,
                        _CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
            where[path.name] = f"s3://{output.bucket}/{key}"
        else:
            folder = Path(output.path)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / path.name
            shutil.move(str(path), target)
            where[path.name] = str(target)
    return where
