"""Helpers of the reliability suite: S3 reads and counts from the emulator.

The fixtures (``env``, ``bucket``, ``prompt``) are in this folder's conftest; the S3
helpers of the flow tests are reused, not copied.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import re
from typing import TYPE_CHECKING, Any

from PIL import Image

from prefect_ig1.flows.records import ImageRecord
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.flows.test_describe_images import _solid_png, all_keys, describe_calls, put

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "all_keys",
    "describe_calls",
    "distinct_pngs",
    "object_text",
    "put",
    "records",
    "run_outputs",
    "s3",
    "sent_image",
]

OUTPUT_PREFIX = "descriptions/"
_SENT_DIGEST = re.compile(r"sha256:([0-9a-f]{16})")


def distinct_pngs(count: int, first_seed: int, name: str = "p{}.png") -> list[tuple[str, bytes]]:
    """``count`` small PNGs of distinct colours (distinct bytes after preparation too)."""
    return [(name.format(i), _solid_png(first_seed + i)) for i in range(count)]


def object_text(local_s3: LocalS3, bucket: str, key: str) -> str:
    body = s3(local_s3).get_object(Bucket=bucket, Key=key)["Body"].read()
    return bytes(body).decode("utf-8")


def s3(local_s3: LocalS3) -> S3Client:
    """One boto3 client per moto server (building one costs ~0.2 s of CPU)."""
    return _client(local_s3.endpoint_url, local_s3)


@functools.lru_cache(maxsize=4)
def _client(endpoint_url: str, local_s3: LocalS3) -> S3Client:
    return local_s3.client()


def records(local_s3: LocalS3, bucket: str) -> dict[str, dict[str, Any]]:
    """Every record under the output prefix, by source key, each validated as an ImageRecord.

    Raises if a record is not whole, valid JSON of the record's schema, or is not where its
    source key says it should be.
    """
    found: dict[str, dict[str, Any]] = {}
    for key in all_keys(local_s3, bucket):
        if not key.startswith(OUTPUT_PREFIX) or key.startswith(
                (f"{OUTPUT_PREFIX}_runs/", f"{OUTPUT_PREFIX}_state/",
                 f"{OUTPUT_PREFIX}_thumbs/")):  # run outputs, index, gallery thumbnails
            continue
        document = json.loads(object_text(local_s3, bucket, key))
        ImageRecord.model_validate(document)
        assert key == f"{OUTPUT_PREFIX}{document['source_key']}.json", key
        found[document["source_key"]] = document
    return found


def run_outputs(local_s3: LocalS3, bucket: str, folder: str) -> dict[str, str]:
    """``summary.md``, ``manifest.jsonl`` and ``run.json`` of one run (its folder under
    ``_runs/``: ``<started-at>-<run name>``), as text."""
    prefix = f"{OUTPUT_PREFIX}_runs/{folder}/"
    return {name: object_text(local_s3, bucket, prefix + name)
            for name in ("summary.md", "manifest.jsonl", "run.json")}


def sent_image(emulator: EmulatorServer, record: dict[str, Any]) -> Image.Image:
    """The picture the emulator received for this record (matched by the digest it echoed)."""
    match = _SENT_DIGEST.search(record["text"] or "")
    assert match, record
    for body in emulator.stats.received:
        for part in _image_parts(body):
            data = base64.b64decode(part["image_url"].partition(",")[2])
            if hashlib.sha256(data).hexdigest().startswith(match.group(1)):
                image = Image.open(io.BytesIO(data))
                image.load()
                return image
    raise AssertionError(f"the emulator received no image for {record['source_key']}")


def _image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("input")
    if not isinstance(messages, list):
        return []
    return [part for message in messages for part in message.get("content", [])
            if isinstance(part, dict) and part.get("type") == "input_image"]
