"""A shared response cache that someone else can write to must never run what it holds.

The flow runs with an S3 bucket block as default result storage, as
``deployments/scale_out.md`` recommends. Then every cache record in that bucket is
overwritten by a real Prefect result record whose serializer is ``pickle`` and whose
payload would create a marker file; the flow's own records are deleted and the flow runs
again: no marker file, every image described again, each poisoned key warned about
once (by name) and holding a JSON answer afterwards.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prefect.settings import PREFECT_DEFAULT_RESULT_STORAGE_BLOCK, temporary_settings
from prefect_aws import AwsCredentials, S3Bucket

from prefect_ig1.flows import describe_s3_images
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.helpers import distinct_pngs, pickled_record, put, read_records

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

IMAGES = 6
CACHE_RECORDS = "ig1-response-"  # every version of the key


@pytest.fixture
def shared_result_storage(local_s3: LocalS3) -> str:
    """A new bucket, saved as an S3Bucket block: the name of that block."""
    name = f"results-{uuid.uuid4().hex[:12]}"
    local_s3.client().create_bucket(Bucket=name)
    S3Bucket(bucket_name=name, credentials=AwsCredentials(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
        aws_client_parameters={"endpoint_url": local_s3.endpoint_url},
    )).save(name)
    return name


def test_a_poisoned_shared_cache_runs_nothing_and_every_image_is_described_again(
        env: EmulatorServer, local_s3: LocalS3, shared_result_storage: str,
        bucket: str, prompt: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s3, results = local_s3.client(), shared_result_storage
    put(local_s3, bucket, distinct_pngs(IMAGES))
    marker = tmp_path / "marker"

    def cache_keys() -> list[str]:
        listed = s3.list_objects_v2(Bucket=results, Prefix=CACHE_RECORDS)
        return [obj["Key"] for obj in listed.get("Contents", [])]

    with temporary_settings({PREFECT_DEFAULT_RESULT_STORAGE_BLOCK: f"s3-bucket/{results}"}):
        first = describe_s3_images(bucket, prefix="in/", prompt=prompt, max_concurrency=4)
        assert first.counts == {"described": IMAGES}
        poisoned = cache_keys()
        assert len(poisoned) >= IMAGES  # each image's answer (and the summary's)
        for key in poisoned:
            s3.put_object(Bucket=results, Key=key, Body=pickled_record(key, marker))
        records = s3.list_objects_v2(Bucket=bucket, Prefix="descriptions/")["Contents"]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [
            {"Key": obj["Key"]} for obj in records]})
        paid = env.stats.image_responses_ok

        with caplog.at_level(logging.WARNING):
            second = describe_s3_images(bucket, prefix="in/", prompt=prompt,
                                        max_concurrency=4)

    assert not marker.exists(), "a planted cache record ran code"
    assert second.counts == {"described": IMAGES}
    assert env.stats.image_responses_ok - paid == IMAGES
    described = read_records(local_s3, bucket)
    assert len(described) == IMAGES
    assert all(r.text and not r.cached and r.error is None for r in described.values())
    warned = Counter(key for record in caplog.records if record.levelno == logging.WARNING
                     for key in poisoned if key in record.getMessage())
    assert len(warned) >= IMAGES and set(warned.values()) == {1}  # once per key, by name
    for key in set(cache_keys()) & set(poisoned):  # the answers replaced the plants
        if key in warned:
            entry = json.loads(s3.get_object(Bucket=results, Key=key)["Body"].read())
            assert entry["kind"] == "ig1-response" and entry["response"]["output_text"]
