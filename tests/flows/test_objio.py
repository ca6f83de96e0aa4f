"""Per-image S3 calls through obstore: same bytes, ETags and errors as boto3, against moto.

Which path served a call is seen from the client's botocore events: a call obstore made
fires none, a call boto3 made (or redid) fires its operation's event.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from prefect_aws import AwsCredentials

from prefect_ig1.flows import objio
from prefect_ig1.flows.storage import (
    ObjectTooLarge,
    object_exists,
    read_bytes,
    s3_client,
    write_bytes,
    write_json,
)
from prefect_ig1.sandbox.local_s3 import LocalS3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.skipif(not objio.HAVE_OBSTORE, reason="obstore is not installed")

SECRET = f"objio-secret-{uuid.uuid4().hex}"

# key -> whether obstore serves it (else boto3 does, as before)
HOSTILE_KEYS = {
    "with space.png": True,
    "日本/写真 été.JPG": True,
    "plus+sign.png": True,
    "percent%2Fslash%20%.png": True,
    "q?x=1&y=2#frag.png": True,
    "a/../b.png": False,
    "a/./b.png": False,
    "double//slash.png": False,
    "tab\there.png": False,
    "/leading.png": False,
    "trailing.png/": False,
    "..": False,
    "c1\x85control.png": False,
}


def _block(endpoint: str, **config: Any) -> AwsCredentials:
    parameters: dict[str, Any] = {"endpoint_url": endpoint}
    if config:
        parameters["config"] = config
    return AwsCredentials(aws_access_key_id="testing", aws_secret_access_key=SECRET,
                          region_name="us-east-1", aws_client_parameters=parameters)


@pytest.fixture(scope="module")
def client(local_s3: LocalS3) -> S3Client:
    """Made by s3_client from a block with explicit keys and an endpoint: obstore-enabled."""
    return s3_client(_block(local_s3.endpoint_url))


@pytest.fixture
def boto3_calls(client: S3Client) -> Iterator[list[str]]:
    """Operations that went through boto3 on ``client``."""
    calls: list[str] = []

    def seen(model: Any, **_: Any) -> None:
        calls.append(model.name)

    unique = uuid.uuid4().hex
    client.meta.events.register("before-call.s3", seen, unique_id=unique)
    yield calls
    client.meta.events.unregister("before-call.s3", seen, unique_id=unique)


def test_plain_key_accepts_only_what_object_store_sends_as_itself() -> None:
    assert {key: objio.plain_key(key) for key in HOSTILE_KEYS} == HOSTILE_KEYS
    assert not objio.plain_key("")


@pytest.mark.parametrize("key", list(HOSTILE_KEYS))
def test_hostile_keys_round_trip_exactly_on_the_right_path(
        client: S3Client, local_s3: LocalS3, bucket: str, boto3_calls: list[str],
        key: str) -> None:
    plain = local_s3.client()  # boto3 only: the reference
    assert not object_exists(client, bucket, key)
    write_bytes(client, bucket, key, b"thumb " + key.encode(), "image/jpeg")
    assert object_exists(client, bucket, key)
    assert [o["Key"] for o in plain.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    assert read_bytes(client, bucket, key) == (b"thumb " + key.encode(), "image/jpeg")
    assert plain.get_object(Bucket=bucket, Key=key)["ContentType"] == "image/jpeg"

    etag = write_json(client, bucket, key, {"key": key, "été": 1})
    head = plain.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/json"
    assert etag == head["ETag"].strip('"')
    assert etag == write_json(plain, bucket, key, {"key": key, "été": 1})  # boto3's own ETag
    assert [o["Key"] for o in plain.list_objects_v2(Bucket=bucket)["Contents"]] == [key]

    via_boto3 = ["HeadObject", "PutObject", "HeadObject", "GetObject", "PutObject"]
    assert boto3_calls == ([] if HOSTILE_KEYS[key] else via_boto3)


def test_max_bytes_refuses_before_reading(
        client: S3Client, local_s3: LocalS3, bucket: str, boto3_calls: list[str]) -> None:
    local_s3.client().put_object(Bucket=bucket, Key="big.jpg", Body=b"x" * 1000,
                                 ContentType="image/jpeg")
    with pytest.raises(ObjectTooLarge) as caught:
        read_bytes(client, bucket, "big.jpg", max_bytes=999)
    assert (caught.value.size, caught.value.max_bytes) == (1000, 999)
    assert read_bytes(client, bucket, "big.jpg", max_bytes=1000) == (b"x" * 1000, "image/jpeg")
    assert boto3_calls == []  # obstore refused it, from the response's length


def _code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


def test_missing_key_and_bucket_raise_what_boto3_raises(
        client: S3Client, local_s3: LocalS3, bucket: str, boto3_calls: list[str]) -> None:
    plain = local_s3.client()
    nowhere = f"nowhere-{uuid.uuid4().hex[:12]}"
    for where, code in ((bucket, "NoSuchKey"), (nowhere, "NoSuchBucket")):
        for used in (client, plain):
            with pytest.raises(ClientError) as caught:
                read_bytes(used, where, "missing.jpg")
            assert _code(caught.value) == code
        assert object_exists(client, where, "missing.jpg") is object_exists(
            plain, where, "missing.jpg") is False  # a HEAD's 404 has no code: boto3 says so
    with pytest.raises(ClientError) as caught:
        write_json(client, nowhere, "r.json", {})
    assert _code(caught.value) == "NoSuchBucket"
    with pytest.raises(ClientError) as caught:
        write_bytes(client, nowhere, "t.jpg", b"x", "image/jpeg")
    assert _code(caught.value) == "NoSuchBucket"
    # obstore's HEADs answered alone; GETs and PUTs that failed were redone by boto3
    assert boto3_calls == ["GetObject", "GetObject", "PutObject", "PutObject"]


def test_s3_down_raises_botocore_errors() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = s3_client(_block(f"http://127.0.0.1:{port}",
                            retries={"mode": "standard", "total_max_attempts": 1}))
    assert objio.store_for(down, "photos", "a.jpg") is not None
    for call in (lambda: read_bytes(down, "photos", "a.jpg"),
                 lambda: object_exists(down, "photos", "a.jpg"),
                 lambda: write_json(down, "photos", "a.json", {}),
                 lambda: write_bytes(down, "photos", "a.jpg", b"x", "image/jpeg")):
        with pytest.raises(BotoCoreError) as caught:
            call()
        assert SECRET not in repr(caught.value) and SECRET not in str(caught.value)


def test_clients_not_made_by_s3_client_keep_boto3(local_s3: LocalS3, bucket: str) -> None:
    plain = local_s3.client()
    assert objio.store_for(plain, bucket, "a.jpg") is None
    calls: list[str] = []
    plain.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    write_bytes(plain, bucket, "a.jpg", b"x", "image/jpeg")
    assert read_bytes(plain, bucket, "a.jpg") == (b"x", "image/jpeg")
    assert calls == ["PutObject", "GetObject"]


def test_the_secret_is_in_no_store_repr_or_configuration(
        client: S3Client, bucket: str) -> None:
    store = objio.store_for(client, bucket, "a.jpg")
    assert store is not None
    stores = objio._stores[client]
    shown = [repr(stores), repr(store), str(store.config), str(store.client_options),
             str(vars(stores))]
    assert not [text for text in shown if SECRET in text]
    assert "testing" not in str(store.config)  # not even the access key: the provider has it


def test_without_obstore_every_client_keeps_boto3(
        local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objio, "HAVE_OBSTORE", False)  # as on Python 3.10
    fresh = local_s3.client()
    objio.register_session(fresh, lambda: pytest.fail("no session needed"))
    assert objio.store_for(fresh, "photos", "a.jpg") is None
