"""Shared by the reliability suite: buckets of images and the records the flow left in S3.

Images are generated per test (random pixels), so no other test's response is a cache
hit (the response cache lives as long as the session). Records are read back raw and
each must be whole, valid JSON and a valid ``ImageRecord``.
"""

from __future__ import annotations

import io
import json
import random
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from prefect_ig1.flows.describe_images import DEFAULT_PROMPT
from prefect_ig1.flows.records import ImageRecord
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.tasks.s3 import record_key

Images = list[tuple[str, bytes]]


def distinct_pngs(count: int, *, seed: int | None = None) -> Images:
    """``count`` small PNGs of random pixels, none alike (same seed, same images)."""
    draw = random.Random(uuid.uuid4().int if seed is None else seed)
    images = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.frombytes("RGB", (16, 12), draw.randbytes(16 * 12 * 3)).save(buffer, "PNG")
        images.append((f"img-{i:05d}.png", buffer.getvalue()))
    return images


@pytest.fixture
def flow_env(local_s3: LocalS3, ig1_env: EmulatorServer,
             monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """boto3's default chain on the session's moto server, IG1 credentials on the emulator."""
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    return ig1_env


@pytest.fixture
def env(flow_env: EmulatorServer) -> EmulatorServer:
    """The same, by the short name the flow tests use."""
    return flow_env


@pytest.fixture
def bucket(local_s3: LocalS3) -> str:
    """A new, empty bucket per test."""
    name = f"rel-{uuid.uuid4().hex[:12]}"
    local_s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def prompt() -> str:
    """A prompt no other test sends: the response cache is shared by the whole session."""
    return f"{DEFAULT_PROMPT} [{uuid.uuid4().hex[:8]}]"


@pytest.fixture
def bucket_with_images(local_s3: LocalS3) -> Callable[..., str]:
    """``bucket_with_images(images, prefix="in/")``: a new bucket holding them, its name."""

    def create(images: Images, prefix: str = "in/") -> str:
        name = f"rel-{uuid.uuid4().hex[:12]}"
        client = local_s3.client()
        client.create_bucket(Bucket=name)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda item: client.put_object(
                Bucket=name, Key=prefix + item[0], Body=item[1]), images))
        return name

    return create


@pytest.fixture
def read_records(local_s3: LocalS3) -> Callable[..., dict[str, ImageRecord]]:
    """``read_records(bucket, output_prefix="descriptions/")``: every record, by source key.

    Fails the test on a record that is not whole JSON, not an ``ImageRecord``, or not
    stored where its ``source_key`` says.
    """

    def read(bucket: str, output_prefix: str = "descriptions/") -> dict[str, ImageRecord]:
        client = local_s3.client()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=output_prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])
                if not obj["Key"].startswith((f"{output_prefix}_runs/",
                                              f"{output_prefix}_state/",
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

    return read
