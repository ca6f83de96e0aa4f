"""LocalS3 comes back on the same port with its buckets after a stop: an S3 outage in tests."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import EndpointConnectionError

from sandbox.local_s3 import LocalS3


def test_stop_refuses_connections_and_start_serves_the_same_state() -> None:
    s3 = LocalS3().start()
    try:
        client, bucket = s3.client(), f"b-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="kept.txt", Body=b"still here")
        endpoint = s3.endpoint_url
        s3.stop()
        with pytest.raises(EndpointConnectionError):
            client.get_object(Bucket=bucket, Key="kept.txt")
        s3.start()
        assert s3.endpoint_url == endpoint
        assert client.get_object(Bucket=bucket, Key="kept.txt")["Body"].read() == b"still here"
    finally:
        s3.stop()
