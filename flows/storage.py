"""S3 access for the flows: listing, reading images, writing records, in plain boto3.

The per-image calls (``read_bytes``, ``write_json``, ``object_exists``, ``write_bytes``)
go through obstore where that is exact and cheaper in CPU (``objio.py``), with the
same results and errors as boto3's.

Plain functions over one boto3 client, not Prefect tasks: the flagship flow calls them
from its coarse window tasks, and one task run per S3 call would cost more than the call.
Keys go through boto3 unchanged (it URL-encodes requests and decodes listings), so keys
with spaces, unicode, ``+`` or ``%`` round-trip exactly.

Errors::

    S3Error                 root of what this module raises on purpose
    ├── BucketNotFound      the bucket does not exist (or is not visible to us)
    ├── S3AccessDenied      the bucket exists but these credentials may not use it
    └── ObjectTooLarge      an object is larger than the caller's limit (body not read)

Other failures (throttling after retries, network) stay botocore's own exceptions.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from . import objio

if objio.HAVE_OBSTORE:
    import obstore
    from obstore.exceptions import NotFoundError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectTypeDef
    from prefect_aws import AwsCredentials  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNSUPPORTED_IMAGE_EXTENSIONS",
    "BucketNotFound",
    "ObjectTooLarge",
    "S3AccessDenied",
    "S3Error",
    "S3Object",
    "ensure_bucket_exists",
    "is_image_key",
    "list_objects",
    "object_exists",
    "presigned_url",
    "read_bytes",
    "read_if_exists",
    "read_json",
    "record_key",
    "s3_client",
    "thumbnail_key",
    "upload_file",
    "write_bytes",
    "write_json",
    "write_text",
]

MAX_ATTEMPTS = 5
MAX_POOL_CONNECTIONS = 64
MAX_CACHED_CLIENTS = 8  # default-chain clients kept per process (one per AWS_* environment)
# Standard retry mode backs off on throttling (503 SlowDown) and transient errors, for
# MAX_ATTEMPTS attempts in all ("max_attempts" in a botocore Config would mean retries); the
# pool fits ~64 worker threads on one client (botocore's default of 10 discards connections).
_CLIENT_CONFIG: dict[str, Any] = {
    "retries": {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
    "max_pool_connections": MAX_POOL_CONNECTIONS,
}

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
)
# Pictures that cannot be sent as they are: listed anyway, so each gets an error record
# naming its format and the fix instead of a silent skip.
UNSUPPORTED_IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".heic", ".heif", ".avif", ".jxl", ".svg"}
)

_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled"})


class S3Error(Exception):
    """Root of the errors this module raises on purpose."""


class BucketNotFound(S3Error):
    """The bucket does not exist: the job cannot start, so say which bucket and what to do."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)  # args are the constructor's, so the error pickles
        self.bucket = bucket

    def __str__(self) -> str:
        return (
            f"S3 bucket {self.bucket!r} does not exist or is not visible to these credentials; "
            "check the bucket name, the region and AWS_ENDPOINT_URL (or the AwsCredentials "
            "block's endpoint_url)"
        )


class S3AccessDenied(S3Error):
    """The bucket exists but the credentials may not use it: a permissions fix, not a typo."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.bucket = bucket

    def __str__(self) -> str:
        return (
            f"access denied to S3 bucket {self.bucket!r}; grant these credentials "
            "s3:ListBucket, s3:GetObject and s3:PutObject on it, or use other credentials"
        )


class ObjectTooLarge(S3Error):
    """An object exceeds the caller's limit; raised before its body is downloaded."""

    def __init__(self, size: int, max_bytes: int) -> None:
        super().__init__(size, max_bytes)
        self.size = size
        self.max_bytes = max_bytes

    def __str__(self) -> str:
        return f"object is {self.size} bytes, over the limit of {self.max_bytes} bytes"


@dataclass(frozen=True)
class S3Object:
    """One listed object: what the flow needs to decide whether it is new (key and ETag)."""

    key: str
    etag: str
    size: int


def s3_client(aws_credentials: AwsCredentials | None = None) -> S3Client:
    """An S3 client with retries and a pool for ~64 threads; share it between threads.

    With a prefect-aws ``AwsCredentials`` block, the block builds the client (its
    credentials, region and client parameters; its own ``config`` wins over ours).
    Without one, boto3's default chain, which honours ``AWS_ENDPOINT_URL``. Either way
    the client is reused within the process (building one costs ~150 ms of CPU, and
    the flow asks per window): prefect-aws caches per block, we per ``AWS_*`` environment.
    """
    if aws_credentials is not None:
        parameters = aws_credentials.aws_client_parameters
        config = {**_client_config(), **(parameters.config or {})}
        block = aws_credentials.model_copy(
            update={"aws_client_parameters": parameters.model_copy(update={"config": config})}
        )
        client: S3Client = block.get_s3_client()
        verify = parameters.verify_cert_path or parameters.verify
        objio.register_session(client, block.get_boto3_session,
                               verify=verify if isinstance(verify, bool | None) else str(verify))
        return client
    aws_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _default_chain_client(aws_env)


# Keyed by a keyed digest of the AWS_* environment, never the environment itself: it holds
# AWS_SECRET_ACCESS_KEY, which must not sit in a process-wide structure (or a debugger's view).
_DIGEST_KEY = secrets.token_bytes(32)
_default_chain_clients: OrderedDict[str, S3Client] = OrderedDict()
_default_chain_lock = threading.Lock()


def _default_chain_client(aws_env: tuple[tuple[str, str], ...]) -> S3Client:
    """One client per ``AWS_*`` environment; a session of its own, since boto3's default
    session is not thread-safe and would keep credentials from an earlier environment.

    Least recently used first out, and closed: its pooled connections are released (a
    thread still holding it can go on, botocore reopens a pool on the next call).
    """
    digest = hmac.new(_DIGEST_KEY, json.dumps(aws_env).encode(), hashlib.sha256).hexdigest()
    with _default_chain_lock:  # held while building, so concurrent windows build one client
        client = _default_chain_clients.get(digest)
        if client is not None:
            _default_chain_clients.move_to_end(digest)
            return client
        session = boto3.session.Session()
        client = session.client("s3", config=Config(**_client_config()))
        objio.register_session(client, lambda: session)
        _default_chain_clients[digest] = client
        while len(_default_chain_clients) > MAX_CACHED_CLIENTS:
            _, evicted = _default_chain_clients.popitem(last=False)
            evicted.close()
        return client


def _client_config() -> dict[str, Any]:
    """A fresh copy each time: botocore edits the ``retries`` dict it is given in place."""
    return copy.deepcopy(_CLIENT_CONFIG)


def is_image_key(key: str, *, unsupported: bool = False) -> bool:
    """Whether the key names an image by its extension (case-insensitive); folders are not.

    With ``unsupported``, also pictures in formats that are not sent (HEIC, AVIF, SVG...).
    """
    name = key.rsplit("/", 1)[-1]
    _, dot, extension = name.rpartition(".")
    suffix = f".{extension.lower()}"
    return bool(dot) and (suffix in IMAGE_EXTENSIONS
                          or (unsupported and suffix in UNSUPPORTED_IMAGE_EXTENSIONS))


def _list_contents(client: S3Client, bucket: str, prefix: str) -> Iterator[ObjectTypeDef]:
    """Page by page, so a 100 000-object bucket never sits in memory at once."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def list_objects(client: S3Client, bucket: str, prefix: str = "") -> Iterator[S3Object]:
    """Every object under ``prefix``, in key order, lazily; ETags without their quotes."""
    for item in _list_contents(client, bucket, prefix):
        yield S3Object(
            key=item["Key"],
            etag=item.get("ETag", "").strip('"'),
            size=item.get("Size", 0),
        )


def record_key(output_prefix: str, source_key: str) -> str:
    """Where an image's record lives: the outputs are the job's state, found by this name."""
    return f"{output_prefix}{source_key}.json"


def thumbnail_key(output_prefix: str, sha256: str) -> str:
    """Where a gallery thumbnail lives: one per image content, shared by all keys and runs."""
    return f"{output_prefix}_thumbs/{sha256}.jpg"


def read_bytes(
    client: S3Client, bucket: str, key: str, *, max_bytes: int | None = None
) -> tuple[bytes, str | None]:
    """``(body, content_type)``; over ``max_bytes`` raises ObjectTooLarge without the download."""
    store = objio.store_for(client, bucket, key)
    if store is not None:
        try:
            result = obstore.get(store, key)
            size = result.meta["size"]  # the response's length: the body is not read yet
            if max_bytes is None or size <= max_bytes:
                data = bytes(result.bytes())
                size = len(data)
        except Exception:  # boto3 redoes it and raises today's errors
            return _boto3_read_bytes(client, bucket, key, max_bytes=max_bytes)
        if max_bytes is not None and size > max_bytes:  # dropping `result` drops the connection
            raise ObjectTooLarge(size, max_bytes)
        return data, result.attributes.get("Content-Type")
    return _boto3_read_bytes(client, bucket, key, max_bytes=max_bytes)


def _boto3_read_bytes(
    client: S3Client, bucket: str, key: str, *, max_bytes: int | None = None
) -> tuple[bytes, str | None]:
    response = client.get_object(Bucket=bucket, Key=key)
    body = response["Body"]
    size = response.get("ContentLength")
    if max_bytes is not None and size is not None and size > max_bytes:
        body.close()  # drops the connection instead of draining a huge body
        raise ObjectTooLarge(size, max_bytes)
    with body:
        data = body.read()
    if max_bytes is not None and len(data) > max_bytes:  # no or wrong Content-Length
        raise ObjectTooLarge(len(data), max_bytes)
    return data, response.get("ContentType")


def read_json(client: S3Client, bucket: str, key: str, *,
              max_bytes: int | None = None) -> dict[str, Any] | None:
    """The JSON object at ``key``, or None when there is none (an image not yet described).

    A missing bucket or denied access still raises: only a missing key means "no record".
    Invalid JSON, or JSON that is not an object, raises ValueError; a larger object than
    ``max_bytes`` raises ObjectTooLarge.
    """
    data = read_if_exists(client, bucket, key, max_bytes=max_bytes)
    if data is None:
        return None
    document = json.loads(data.decode("utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"s3://{bucket}/{key} holds JSON that is not an object")
    return document


def read_if_exists(client: S3Client, bucket: str, key: str, *,
                   max_bytes: int | None = None) -> bytes | None:
    """The object's bytes, or None when the key does not exist (bucket errors still raise)."""
    try:
        # boto3's own call: records and the index are read rarely, and by the client's rules
        data, _ = _boto3_read_bytes(client, bucket, key, max_bytes=max_bytes)
    except ClientError as error:
        if _error_code(error) in _MISSING_KEY_CODES:
            return None
        raise
    return data


def write_json(client: S3Client, bucket: str, key: str, document: dict[str, Any]) -> str:
    """Store a record as UTF-8 JSON (RFC 8259: no charset parameter); returns its ETag."""
    body = json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
    etag = _obstore_put(client, bucket, key, body, "application/json")
    if etag is not None:
        return etag
    written = client.put_object(Bucket=bucket, Key=key, Body=body,
                                ContentType="application/json")
    return written["ETag"].strip('"')


def object_exists(client: S3Client, bucket: str, key: str) -> bool:
    """One HEAD: whether ``key`` exists (bucket errors still raise)."""
    store = objio.store_for(client, bucket, key)
    if store is not None:
        try:
            obstore.head(store, key)
        except (FileNotFoundError, NotFoundError):  # a 404 (obstore raises the builtin
            return False  # FileNotFoundError for it), which boto3 reports as False too
        except Exception:  # noqa: S110 - boto3 redoes it and raises today's errors
            pass
        else:
            return True
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _error_code(error) in _MISSING_KEY_CODES:
            return False
        raise
    return True


def write_bytes(client: S3Client, bucket: str, key: str, data: bytes, content_type: str) -> None:
    """Store bytes (a thumbnail) with the content type a browser needs to show them."""
    if _obstore_put(client, bucket, key, data, content_type) is None:
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)


def _obstore_put(client: S3Client, bucket: str, key: str, data: bytes,
                 content_type: str) -> str | None:
    """One PUT through obstore: the new ETag without quotes, or None for boto3 to redo it
    (a full-object PUT is idempotent, so a redo after a PUT that landed is harmless)."""
    store = objio.store_for(client, bucket, key)
    if store is None:
        return None
    try:
        written = obstore.put(store, key, data, attributes={"Content-Type": content_type},
                              use_multipart=False)  # one PUT, as boto3's: an MD5 ETag
    except Exception:  # boto3 redoes it and raises today's errors
        return None
    etag = written["e_tag"]
    return None if etag is None else etag.strip('"')


def presigned_url(client: S3Client, bucket: str, key: str, seconds: int) -> str:
    """A time-limited GET URL for ``key``, signed locally (no S3 call)."""
    url: str = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds)
    return url


def write_text(
    client: S3Client,
    bucket: str,
    key: str,
    text: str,
    content_type: str = "text/markdown; charset=utf-8",
) -> None:
    """Store text (the run's summary) as UTF-8 with a content type browsers render."""
    client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)


def upload_file(
    client: S3Client, bucket: str, key: str, path: str | Path, content_type: str
) -> None:
    """Upload a local file (a manifest too big to build in memory), multipart when large."""
    client.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": content_type})


def ensure_bucket_exists(client: S3Client, bucket: str) -> None:
    """Fail at the start of a job with a message that says what to fix, not mid-run."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as error:
        code = _error_code(error)
        if code in _DENIED_CODES:
            raise S3AccessDenied(bucket) from error
        if code in _MISSING_BUCKET_CODES:
            raise BucketNotFound(bucket) from error
        raise


def _error_code(error: ClientError) -> str:
    """S3's error code, or the HTTP status as text for HEAD requests (which have no body)."""
    code = error.response.get("Error", {}).get("Code")
    if code:
        return str(code)
    return str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
