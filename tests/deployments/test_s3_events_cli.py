"""The bridge's command line and the SQS side of its start-up: queue URLs, errors, exit 2.

The endpoint and region come from ``--queue-url``: ``AWS_ENDPOINT_URL`` pointing elsewhere
must not make the bridge read another queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prefect_ig1.deployments.s3_events import QueueAddress, QueueUrlError, main, parse_queue_url
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.deployments.conftest import Queue
from tests.deployments.test_s3_events import (
    closed_port_url,
    messages_in,
    now,
    s3_message,
    s3_record,
    stored_events,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("url", "endpoint", "region"), [
    ("https://sqs.eu-west-3.amazonaws.com/123456789012/ig1-uploads",
     "https://sqs.eu-west-3.amazonaws.com", "eu-west-3"),
    ("https://eu-central-1.queue.amazonaws.com/123456789012/ig1-uploads",
     "https://eu-central-1.queue.amazonaws.com", "eu-central-1"),
    ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q.fifo",
     "https://sqs.cn-north-1.amazonaws.com.cn", "cn-north-1"),
    ("https://sqs.us-gov-west-1.amazonaws.com/123456789012/q",
     "https://sqs.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
    ("http://127.0.0.1:9000/123456789012/ig1-uploads", "http://127.0.0.1:9000", "us-east-1"),
    ("http://localhost:4566/000000000000/ig1-uploads/", "http://localhost:4566", "us-east-1"),
])
def test_endpoint_and_region_come_from_the_queue_url(url: str, endpoint: str,
                                                     region: str) -> None:
    address = parse_queue_url(url)
    assert (address.endpoint_url, address.region) == (endpoint, region)
    assert address.name in url and address.account in url


def test_endpoint_and_region_can_be_told() -> None:
    local = "http://127.0.0.1:9000/123456789012/q"
    assert parse_queue_url(local, default_region="eu-west-1").region == "eu-west-1"
    assert parse_queue_url(local, region="ap-south-1").region == "ap-south-1"
    aws = "https://sqs.eu-west-3.amazonaws.com/123456789012/q"
    assert parse_queue_url(aws, default_region="eu-west-1").region == "eu-west-3"  # URL wins
    told = parse_queue_url(aws, endpoint_url="http://proxy:8080", region="eu-west-1")
    assert told == QueueAddress(url=aws, endpoint_url="http://proxy:8080", region="eu-west-1",
                                account="123456789012", name="q")


@pytest.mark.parametrize("url", [
    "ig1-uploads", "sqs.eu-west-3.amazonaws.com/123456789012/q",
    "https://sqs.eu-west-3.amazonaws.com/ig1-uploads",
    "https://sqs.eu-west-3.amazonaws.com/123456789012/q/extra",
    "arn:aws:sqs:eu-west-3:123456789012:ig1-uploads", "ftp://host/123456789012/q",
    "https://sqs.eu-west-3.amazonaws.com/123456789012/bad name",
])
def test_a_value_that_is_not_a_queue_url_is_refused(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(QueueUrlError, match="not a queue URL"):
        parse_queue_url(url)
    with pytest.raises(SystemExit) as exited:
        main(["--queue-url", url])
    assert exited.value.code == 2
    assert "is not a queue URL" in capsys.readouterr().err


@pytest.fixture
def elsewhere_env(local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for moto, but AWS_ENDPOINT_URL on a closed port: only the URL's host works."""
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_port_url().removesuffix("/api"))


@pytest.mark.usefixtures("elsewhere_env")
def test_a_missing_queue_says_how_to_create_it_and_exits_2(
        queue: Queue, api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    missing = queue.url + "-missing"
    with pytest.raises(SystemExit) as exited:
        main(["--queue-url", missing, "--once"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    endpoint = missing.rsplit("/", 2)[0]
    assert f"queue '{queue.url.rsplit('/', 1)[1]}-missing' (account 123456789012) does not " \
           f"exist at {endpoint} (region us-east-1)" in err
    assert "aws sqs create-queue" in err and "Traceback" not in err


@pytest.mark.usefixtures("elsewhere_env")
def test_an_unreachable_endpoint_says_so_and_exits_2(
        api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = closed_port_url().removesuffix("/api")
    with pytest.raises(SystemExit) as exited:
        main(["--queue-url", f"{endpoint}/123456789012/ig1-uploads", "--startup-attempts", "1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot reach SQS at {endpoint} (region us-east-1)" in err
    assert "Traceback" not in err


@pytest.mark.slow  # runs the bridge's command line in a process
def test_the_queue_urls_host_is_read_not_aws_endpoint_url(
        local_s3: LocalS3, sqs: Any, make_queue: Callable[..., Queue], bucket: str,
        api_url: str) -> None:
    """A subprocess, as users run it: AWS_ENDPOINT_URL points at nothing, the URL at moto."""
    queue = make_queue()
    sqs.send_message(QueueUrl=queue.url, MessageBody=s3_message(
        s3_record("in/a.png", bucket=bucket, event_time=now())))
    env = {**os.environ, **local_s3.env(), "PREFECT_API_URL": api_url,
           "AWS_ENDPOINT_URL": closed_port_url().removesuffix("/api")}
    done = subprocess.run([sys.executable, "-m", "prefect_ig1.deployments.s3_events",
                           "--queue-url", queue.url, "--once", "--wait-seconds", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert f"SQS at {local_s3.endpoint_url}, region us-east-1" in done.stderr
    assert messages_in(sqs, queue.url) == 0
    wait_for(lambda: stored_events(f"s3://{bucket}/"), what="the event in Prefect")
