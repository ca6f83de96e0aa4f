"""What tests share besides fixtures: the test key, fresh images, S3 reads, emulator counts.

Fixtures are in ``tests/conftest.py`` (one each: ``emulator``, ``local_s3``, ``bucket``,
``env``, ``prompt``, ``prefect_server``); plain functions and constants are here, so no
test module imports another one (or a conftest).

Marker policy: ``slow`` (registered in pyproject.toml). A test is slow, and says so with
``@pytest.mark.slow`` or its module's ``pytestmark``, when it

- starts a process (the CLI, ``prefect serve``, a worker, a wheel build, a second flow
  run in a subprocess) or a server of its own (an emulator or moto server it stops and
  starts, a proxy, a server that refuses events);
- sleeps or waits on the clock (beyond a few milliseconds): latency configured so calls
  overlap, outages, visibility timeouts, polling for Prefect's event pipeline or for a
  run's final state;
- or takes more than ~2 s on a 2-core machine for any other reason (1 000+ objects,
  a flow run per parameter change, hundreds of images).

Shared servers do not make a test slow: the IG1 emulator, moto's S3 and the Prefect test
harness start once per session (the sandbox's emulator and the corpus's replay server
once per module). A module whose tests are all slow marks itself (``pytestmark``);
``tests/deployments/conftest.py`` marks test_s3_events.py's slow tests by what they call
until that module carries the mark itself. ``pytest -m "not slow"`` is the quick pass
(under 2 minutes); CI runs everything. After a run, the root conftest names any test
without the mark that took longer than ``QUICK_LIMIT_SECONDS`` there.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import random
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from prefect_ig1.flows.records import ImageRecord
from prefect_ig1.flows.storage import record_key
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

TEST_KEY = "sk-test-0123456789abcdef-SECRET"
OUTPUT_PREFIX = "descriptions/"
Images = list[tuple[str, bytes]]
_SENT_DIGEST = re.compile(r"sha256:([0-9a-f]{16})")


# --- images --------------------------------------------------------------------------------

def distinct_pngs(count: int, *, seed: int | None = None) -> Images:
    """``count`` small PNGs of random pixels, none alike (same seed, same images).

    Without a seed they are new to the session, so no earlier test's cached answer fits them
    (the response cache lives as long as the session).
    """
    draw = random.Random(uuid.uuid4().int if seed is None else seed)
    images = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.frombytes("RGB", (16, 12), draw.randbytes(16 * 12 * 3)).save(buffer, "PNG")
        images.append((f"img-{i:05d}.png", buffer.getvalue()))
    return images


# --- S3 --------------------------------------------------------------------------------------

def s3_of(local_s3: LocalS3) -> S3Client:
    """One boto3 client per moto server (building one costs ~0.2 s of CPU)."""
    return _client(local_s3.endpoint_url, local_s3)


@functools.lru_cache(maxsize=4)
def _client(endpoint_url: str, local_s3: LocalS3) -> S3Client:
    return local_s3.client()


def put(local_s3: LocalS3, bucket: str, items: Images, prefix: str = "in/") -> None:
    """Upload ``items`` under ``prefix``, 16 at a time."""
    client = s3_of(local_s3)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: client.put_object(
            Bucket=bucket, Key=prefix + item[0], Body=item[1]), items))


def all_keys(local_s3: LocalS3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_of(local_s3).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def object_text(local_s3: LocalS3, bucket: str, key: str) -> str:
    body = s3_of(local_s3).get_object(Bucket=bucket, Key=key)["Body"].read()
    return bytes(body).decode("utf-8")


def read_record(local_s3: LocalS3, bucket: str, source_key: str) -> dict[str, Any]:
    """One record as stored (raw JSON), by its image's key."""
    document: dict[str, Any] = json.loads(
        object_text(local_s3, bucket, record_key(OUTPUT_PREFIX, source_key)))
    return document


def read_records(local_s3: LocalS3, bucket: str, output_prefix: str = OUTPUT_PREFIX
                 ) -> dict[str, ImageRecord]:
    """Every record under ``output_prefix``, by source key.

    Fails the test on a record that is not whole JSON, not an ``ImageRecord``, or not
    stored where its ``source_key`` says.
    """
    client = s3_of(local_s3)
    keys = [key for key in all_keys(local_s3, bucket, output_prefix)
            if not key.startswith((f"{output_prefix}_runs/", f"{output_prefix}_state/",
                                   f"{output_prefix}_thumbs/"))]
    with ThreadPoolExecutor(16) as pool:
        bodies = pool.map(lambda key: client.get_object(Bucket=bucket, Key=key)[
            "Body"].read(), keys)
    records: dict[str, ImageRecord] = {}
    for key, body in zip(keys, bodies, strict=True):
        try:
            record = ImageRecord.model_validate(json.loads(body))
        except ValueError as exc:
            pytest.fail(f"s3://{bucket}/{key} is not a whole record: {exc}\n{body[:300]!r}")
        assert record_key(output_prefix, record.source_key) == key
        records[record.source_key] = record
    return records


def run_outputs(local_s3: LocalS3, bucket: str, folder: str) -> dict[str, str]:
    """``summary.md``, ``manifest.jsonl`` and ``run.json`` of one run (its folder under
    ``_runs/``: ``<started-at>-<run name>``), as text."""
    prefix = f"{OUTPUT_PREFIX}_runs/{folder}/"
    return {name: object_text(local_s3, bucket, prefix + name)
            for name in ("summary.md", "manifest.jsonl", "run.json")}


# --- what the emulator received --------------------------------------------------------------

def describe_calls(emulator: EmulatorServer) -> int:
    """Calls that described an image (the summary's calls carry no image)."""
    return sum(1 for body in emulator.stats.received if "input_image" in json.dumps(body))


def sent_image(emulator: EmulatorServer, record: ImageRecord) -> Image.Image:
    """The picture the emulator received for this record (matched by the digest it echoed)."""
    match = _SENT_DIGEST.search(record.text or "")
    assert match, record
    for body in emulator.stats.received:
        for part in _image_parts(body):
            data = base64.b64decode(part["image_url"].partition(",")[2])
            if hashlib.sha256(data).hexdigest().startswith(match.group(1)):
                image = Image.open(io.BytesIO(data))
                image.load()
                return image
    raise AssertionError(f"the emulator received no image for {record.source_key}")


def _image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("input")
    if not isinstance(messages, list):
        return []
    return [part for message in messages for part in message.get("content", [])
            if isinstance(part, dict) and part.get("type") == "input_image"]


# --- raw requests and hostile cache entries ------------------------------------------------

MODEL = "qwen35-397b-a17b-instruct-general"  # the emulator's (and ResponsesModel's) default

# Every optional request parameter, with a value IG1 accepts.
EVERY_PARAMETER = {
    "instructions": "Be brief.",
    "stream": False,
    "temperature": 0.7,
    "top_p": 0.9,
    "max_output_tokens": 256,
    "use_beam_search": False,
    "top_k": 40,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "length_penalty": 1.0,
    "stop_token_ids": [2, 7],
    "include_stop_str_in_output": True,
    "ignore_eos": False,
    "min_tokens": 3,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": False,
    "truncate_prompt_tokens": 2048,
    "prompt_logprobs": 1,
    "allowed_token_ids": [0, 1, 2, 3, 4, 5],
    "bad_words": ["darn"],
}


def image_input(data: bytes, text: str = "Describe this image", detail: str | None = "auto"
                ) -> Any:
    """A Responses API ``input`` (plain JSON) asking about one PNG."""
    url = f"data:image/png;base64,{base64.b64encode(data).decode()}"
    part: dict[str, Any] = {"type": "input_image", "image_url": url}
    if detail is not None:
        part["detail"] = detail
    return [{"role": "user", "content": [{"type": "input_text", "text": text}, part]}]


class RunsShell:
    """Unpickling this runs a shell command: what a poisoned cache entry would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def pickled_record(key: str, marker: Path) -> bytes:
    """A real Prefect result record, serializer ``pickle``, whose payload touches ``marker``."""
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    record = ResultRecord(result=RunsShell(f"touch {marker}"), metadata=ResultRecordMetadata(
        serializer=PickleSerializer(), storage_key=key, expiration=None))
    content = record.serialize()
    assert json.loads(content)["metadata"]["serializer"]["type"] == "pickle"
    return content
