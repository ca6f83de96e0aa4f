"""S3 access against moto's SERVER mode: real HTTP, so key encoding is exercised as on AWS."""

from __future__ import annotations

import inspect
import pickle
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from prefect_aws import AwsCredentials

from prefect_ig1.flows.storage import (
    MAX_ATTEMPTS,
    MAX_POOL_CONNECTIONS,
    BucketNotFound,
    ObjectTooLarge,
    S3AccessDenied,
    S3Error,
    S3Object,
    ensure_bucket_exists,
    is_image_key,
    list_objects,
    read_bytes,
    read_json,
    record_key,
    s3_client,
    upload_file,
    write_json,
    write_text,
)
from prefect_ig1.sandbox.local_s3 import LocalS3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MANY = 1100  # past one ListObjectsV2 page of 1000
TRICKY_KEYS = [
    "photos/été 2024/a+b%20c.jpg",
    "a/b/c/d/e.png",
    "with space.png",
    "plus+sign.png",
    "percent%2Fslash.png",
    "日本/写真.JPG",
    "q?x=1&y=2#frag.png",
    "tilde~!*'();:@$,.gif",
    "double//slash/./dot/../x.webp",
    "tab\tand emoji 🐱.png",
]


@pytest.fixture(scope="module")
def client(local_s3: LocalS3) -> S3Client:
    return local_s3.client()


@pytest.fixture(scope="module")
def many_bucket(client: S3Client) -> str:
    """MANY tiny objects, put by 16 threads so the fixture takes a few seconds, not a minute."""
    name = f"many-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=name, Key=f"many/{i:05d}.png",
                                                  Body=b"x"), range(MANY)))
    client.put_object(Bucket=name, Key="other/outside.png", Body=b"x")
    return name


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS settings from this machine: only what the test sets reaches boto3."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                 "AWS_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return monkeypatch


# --- listing ---------------------------------------------------------------------------

@pytest.mark.slow
def test_list_objects_pages_past_1000_in_key_order(client: S3Client, many_bucket: str) -> None:
    objects = list(list_objects(client, many_bucket, "many/"))
    assert [o.key for o in objects] == [f"many/{i:05d}.png" for i in range(MANY)]
    first = objects[0]
    assert isinstance(first, S3Object)
    assert first.size == 1
    assert first.etag == "9dd4e461268c8034f5c8564e155c67a6"  # md5(b"x"), quotes stripped


@pytest.mark.slow
def test_list_objects_is_lazy(local_s3: LocalS3, many_bucket: str) -> None:
    counting = local_s3.client()
    calls: list[str] = []
    counting.meta.events.register("before-call.s3.ListObjectsV2",
                                  lambda **_: calls.append("page"))
    objects = list_objects(counting, many_bucket, "many/")
    assert inspect.isgenerator(objects)
    assert calls == []  # nothing fetched until asked
    assert next(objects).key == "many/00000.png"
    assert len(calls) == 1  # one page, not the whole bucket
    assert sum(1 for _ in objects) == MANY - 1
    assert len(calls) == 2


@pytest.mark.slow
def test_prefix_limits_the_listing(client: S3Client, many_bucket: str) -> None:
    def keys(prefix: str = "") -> list[str]:
        return [o.key for o in list_objects(client, many_bucket, prefix)]

    assert keys("other/") == ["other/outside.png"]
    assert keys("many/0000") == [f"many/0000{i}.png" for i in range(10)]
    assert keys("nothing/") == []
    assert len(keys()) == MANY + 1


# --- keys ------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "expected"), [
    ("a.jpg", True), ("a.JPG", True), ("a.jpeg", True), ("dir/a.Png", True),
    ("a.gif", True), ("a.webp", True), ("a.bmp", True), ("a.tif", True), ("a.TIFF", True),
    ("photos/été 2024/a+b%20c.jpg", True), (".jpg", True),
    ("a.jpg.json", False), ("descriptions/a.png.json", False), ("a.txt", False),
    ("jpg", False), ("folder.png/", False), ("folder/", False), ("", False),
    ("a.jpg/b", False), ("a.heic", False), ("a.svg", False),
])
def test_is_image_key(key: str, expected: bool) -> None:
    assert is_image_key(key) is expected


@pytest.mark.parametrize("key", ["IMG_0001.HEIC", "a.heif", "a.avif", "a.jxl", "d/a.svg"])
def test_unsupported_pictures_are_image_keys_only_when_asked(key: str) -> None:
    assert not is_image_key(key) and is_image_key(key, unsupported=True)
    assert not is_image_key(key + ".txt", unsupported=True)


def test_record_key_appends_json_under_the_output_prefix() -> None:
    assert record_key("descriptions/", "photos/a b.jpg") == "descriptions/photos/a b.jpg.json"
    assert record_key("", "x.png") == "x.png.json"


def test_tricky_keys_round_trip_exactly(client: S3Client, bucket: str) -> None:
    for index, key in enumerate(TRICKY_KEYS):
        client.put_object(Bucket=bucket, Key=key, Body=f"image {index}".encode(),
                          ContentType="image/png")
    listed = [o.key for o in list_objects(client, bucket) if is_image_key(o.key)]
    assert sorted(listed) == sorted(TRICKY_KEYS)
    assert listed == sorted(TRICKY_KEYS, key=lambda k: k.encode())  # S3 orders by UTF-8 bytes
    for key in listed:
        body, _ = read_bytes(client, bucket, key)
        assert body == f"image {TRICKY_KEYS.index(key)}".encode()
        write_json(client, bucket, record_key("descriptions/", key), {"source_key": key})
    records = [o.key for o in list_objects(client, bucket, "descriptions/")]
    assert sorted(records) == sorted(f"descriptions/{key}.json" for key in TRICKY_KEYS)
    for key in TRICKY_KEYS:
        assert read_json(client, bucket, record_key("descriptions/", key)) == {"source_key": key}


def test_the_measured_example_key(client: S3Client, bucket: str) -> None:
    key = "photos/été 2024/a+b%20c.jpg"
    client.put_object(Bucket=bucket, Key=key, Body=b"jpeg")
    assert [o.key for o in list_objects(client, bucket, "photos/été 2024/")] == [key]
    assert read_bytes(client, bucket, key)[0] == b"jpeg"
    # neither the decoded nor the re-encoded neighbour exists
    assert read_json(client, bucket, "photos/été 2024/a b c.jpg") is None
    assert read_json(client, bucket, "photos/%C3%A9t%C3%A9%202024/a%2Bb%2520c.jpg") is None


# --- reading and writing ---------------------------------------------------------------

def test_read_bytes_returns_body_and_content_type(client: S3Client, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="a.png", Body=b"\x89PNG data", ContentType="image/png")
    assert read_bytes(client, bucket, "a.png") == (b"\x89PNG data", "image/png")
    assert read_bytes(client, bucket, "a.png", max_bytes=9) == (b"\x89PNG data", "image/png")


def test_read_bytes_refuses_objects_over_the_limit(client: S3Client, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="big.jpg", Body=b"x" * 1000)
    with pytest.raises(ObjectTooLarge) as caught:
        read_bytes(client, bucket, "big.jpg", max_bytes=999)
    assert (caught.value.size, caught.value.max_bytes) == (1000, 999)
    assert "1000" in str(caught.value) and "999" in str(caught.value)
    assert isinstance(caught.value, S3Error)
    # the client is still usable after abandoning the body
    assert read_bytes(client, bucket, "big.jpg", max_bytes=1000)[0] == b"x" * 1000


def test_read_json_of_a_missing_key_is_none(client: S3Client, bucket: str) -> None:
    assert read_json(client, bucket, "descriptions/none.jpg.json") is None


def test_read_json_of_a_missing_bucket_raises(client: S3Client) -> None:
    with pytest.raises(client.exceptions.NoSuchBucket):
        read_json(client, f"missing-{uuid.uuid4().hex[:12]}", "a.json")


def test_read_json_refuses_json_that_is_not_an_object(client: S3Client, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="list.json", Body=b"[1, 2]")
    client.put_object(Bucket=bucket, Key="broken.json", Body=b"{not json")
    with pytest.raises(ValueError, match="not an object"):
        read_json(client, bucket, "list.json")
    with pytest.raises(ValueError):
        read_json(client, bucket, "broken.json")


def test_write_json_keeps_unicode_readable(client: S3Client, bucket: str) -> None:
    document = {"text": "Un café à Zürich, 東京 🐱", "usage": {"input_tokens": 3}, "n": None}
    write_json(client, bucket, "r.json", document)
    assert read_json(client, bucket, "r.json") == document
    stored = client.get_object(Bucket=bucket, Key="r.json")
    assert stored["ContentType"] == "application/json"
    assert "café à Zürich, 東京 🐱".encode() in stored["Body"].read()  # not \\u escapes


def test_write_text_and_upload_file(client: S3Client, bucket: str, tmp_path: Path) -> None:
    write_text(client, bucket, "_runs/1/summary.md", "# Résumé\n")
    assert read_bytes(client, bucket, "_runs/1/summary.md") == (
        "# Résumé\n".encode(), "text/markdown; charset=utf-8")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"source_key": "été.jpg"}\n', encoding="utf-8")
    upload_file(client, bucket, "_runs/1/manifest.jsonl", manifest, "application/x-ndjson")
    assert read_bytes(client, bucket, "_runs/1/manifest.jsonl") == (
        manifest.read_bytes(), "application/x-ndjson")


# --- buckets and errors ----------------------------------------------------------------

def test_ensure_bucket_exists(client: S3Client, bucket: str) -> None:
    ensure_bucket_exists(client, bucket)
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(BucketNotFound, match=missing) as caught:
        ensure_bucket_exists(client, missing)
    assert caught.value.bucket == missing
    assert "AWS_ENDPOINT_URL" in str(caught.value)  # says where to look


@pytest.mark.parametrize("code", ["403", "AccessDenied"])
def test_ensure_bucket_exists_tells_denied_from_missing(local_s3: LocalS3, code: str) -> None:
    # moto does not enforce permissions by default, so S3's 403 is stubbed on a real client.
    client = local_s3.client()
    with Stubber(client) as stub:
        stub.add_client_error("head_bucket", service_error_code=code, http_status_code=403)
        with pytest.raises(S3AccessDenied, match="'private'") as caught:
            ensure_bucket_exists(client, "private")
    assert caught.value.bucket == "private"
    assert not isinstance(caught.value, BucketNotFound)


def test_ensure_bucket_exists_lets_other_errors_through(local_s3: LocalS3) -> None:
    client = local_s3.client()
    with Stubber(client) as stub:
        stub.add_client_error("head_bucket", service_error_code="500", http_status_code=500)
        with pytest.raises(ClientError):
            ensure_bucket_exists(client, "flaky")


def test_errors_pickle_with_their_fields() -> None:
    # Prefect pickles a failed task's exception: the fields must survive.
    for error in (BucketNotFound("b"), S3AccessDenied("b"), ObjectTooLarge(10, 5)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert isinstance(copy, S3Error)


# --- clients ---------------------------------------------------------------------------

def test_s3_client_default_chain_honours_aws_endpoint_url(
    local_s3: LocalS3, bucket: str, clean_aws_env: pytest.MonkeyPatch
) -> None:
    for name, value in local_s3.env().items():
        clean_aws_env.setenv(name, value)
    client = s3_client()
    assert client.meta.endpoint_url == local_s3.endpoint_url
    write_json(client, bucket, "via-env.json", {"ok": True})
    assert read_json(local_s3.client(), bucket, "via-env.json") == {"ok": True}
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}
    assert client.meta.config.max_pool_connections == MAX_POOL_CONNECTIONS
    assert s3_client() is client  # reused: building a client costs ~150 ms of CPU
    clean_aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    other = s3_client()  # another environment, another client, same defaults
    assert other is not client and other.meta.region_name == "eu-west-3"
    assert other.meta.config.retries == client.meta.config.retries


def test_s3_client_from_an_aws_credentials_block(
    local_s3: LocalS3, bucket: str, clean_aws_env: pytest.MonkeyPatch
) -> None:
    block = AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": local_s3.endpoint_url},
    )
    client = s3_client(block)
    assert client.meta.endpoint_url == local_s3.endpoint_url
    assert client.meta.region_name == "us-east-1"
    ensure_bucket_exists(client, bucket)
    write_json(client, bucket, "via-block.json", {"ok": "oui"})
    assert read_json(client, bucket, "via-block.json") == {"ok": "oui"}
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}
    assert client.meta.config.max_pool_connections == MAX_POOL_CONNECTIONS
    assert block.aws_client_parameters.config is None  # the caller's block is left as it was
    assert s3_client(block) is client  # prefect-aws caches the client per block


def test_a_block_config_wins_over_the_defaults(local_s3: LocalS3) -> None:
    block = AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": local_s3.endpoint_url,
                               "config": {"max_pool_connections": 7}},
    )
    client = s3_client(block)
    assert client.meta.config.max_pool_connections == 7
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}


@pytest.mark.slow
def test_the_client_cache_holds_no_secret_and_closes_what_it_evicts(
    local_s3: LocalS3, bucket: str, clean_aws_env: pytest.MonkeyPatch
) -> None:
    from prefect_ig1.flows import storage as s3_module

    secret = f"cache-secret-{uuid.uuid4().hex}"
    for name, value in {**local_s3.env(), "AWS_SECRET_ACCESS_KEY": secret}.items():
        clean_aws_env.setenv(name, value)
    first = s3_client()
    write_json(first, bucket, "secret-env.json", {"ok": True})  # moto takes any secret
    keys = list(s3_module._default_chain_clients)
    assert keys and secret not in repr(keys)
    closed: list[object] = []
    real_close = first.close
    clean_aws_env.setattr(first, "close", lambda: (closed.append(first), real_close()))
    for index in range(s3_module.MAX_CACHED_CLIENTS - 1):  # fills the cache: first stays
        clean_aws_env.setenv("AWS_DEFAULT_REGION", f"eu-test-{index}")
        s3_client()
    assert not closed
    clean_aws_env.setenv("AWS_DEFAULT_REGION", "eu-test-last")  # one more: first goes
    s3_client()
    assert closed == [first]
    assert len(s3_module._default_chain_clients) == s3_module.MAX_CACHED_CLIENTS
    assert secret not in repr(list(s3_module._default_chain_clients))
    clean_aws_env.setenv("AWS_DEFAULT_REGION", local_s3.env()["AWS_DEFAULT_REGION"])
    again = s3_client()  # the first environment again: a new client, and it works
    assert again is not first
    assert read_json(again, bucket, "secret-env.json") == {"ok": True}
