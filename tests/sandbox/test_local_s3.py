"""LocalS3 comes back on the same port with its buckets after a stop: an S3 outage in tests."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import EndpointConnectionError

from prefect_ig1.sandbox.local_s3 import LocalS3


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


def test_the_s3_only_server_of_the_benchmarks_serves_tricky_keys() -> None:
    """``python -m prefect_ig1.sandbox.local_s3``: moto's S3 app alone, in a process of its own."""
    import socket
    import subprocess
    import sys
    import time

    import boto3
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "prefect_ig1.sandbox.local_s3",
                               "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        client = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket="photos")
        key = "été 2024/a+b%20c.png"
        client.put_object(Bucket="photos", Key=key, Body=b"bytes")
        assert client.get_object(Bucket="photos", Key=key)["Body"].read() == b"bytes"
        listed = client.list_objects_v2(Bucket="photos")["Contents"]
        assert [item["Key"] for item in listed] == [key]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_notify_queue_is_the_local_recipe_for_s3_events(local_s3: LocalS3) -> None:
    """Bucket, queue and notification in one call: uploads under the prefix reach the queue."""
    import json
    import uuid

    name = f"n-{uuid.uuid4().hex[:8]}"
    queue = local_s3.notify_queue(name, f"{name}-q", prefix="incoming/")
    assert queue.url == f"{local_s3.endpoint_url}/123456789012/{name}-q"
    assert queue.arn == f"arn:aws:sqs:us-east-1:123456789012:{name}-q"
    s3 = local_s3.client()
    s3.put_object(Bucket=name, Key="incoming/a b.png", Body=b"x")
    s3.put_object(Bucket=name, Key="descriptions/a.json", Body=b"{}")
    sqs = local_s3.sqs_client()
    bodies = [json.loads(m["Body"]) for m in sqs.receive_message(
        QueueUrl=queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])]
    keys = [r["s3"]["object"]["key"] for body in bodies for r in body.get("Records", [])]
    assert keys == ["incoming%2Fa+b.png"]  # moto encodes "/"; the prefix filter holds
