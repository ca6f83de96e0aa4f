"""SQS queues on the session's moto server, wired to bucket notifications, and the Prefect
API URL.

Everything runs on 127.0.0.1; moto's server, the ``bucket`` fixture and the Prefect server
(the session's test harness) come from ``tests/conftest.py``.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from prefect_ig1.sandbox.local_s3 import ACCESS_KEY, REGION, SECRET_KEY, LocalS3


@pytest.fixture
def sqs(local_s3: LocalS3) -> Any:
    """A boto3 SQS client on the same moto server (moto serves every AWS API on one port)."""
    return boto3.client("sqs", endpoint_url=local_s3.endpoint_url, region_name=REGION,
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


@dataclass(frozen=True)
class Queue:
    url: str
    arn: str
    dlq_url: str | None = None


@pytest.fixture
def make_queue(sqs: Any) -> Callable[..., Queue]:
    """Queues with a unique name; ``dlq_after=N`` adds a dead-letter queue (RedrivePolicy)."""

    def make(visibility_timeout: int = 30, dlq_after: int | None = None) -> Queue:
        name = f"q-{uuid.uuid4().hex[:12]}"
        attributes = {"VisibilityTimeout": str(visibility_timeout)}
        dlq_url = None
        if dlq_after is not None:
            dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
            dlq_arn = arn_of(sqs, dlq_url)
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": dlq_after})
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        return Queue(url=url, arn=arn_of(sqs, url), dlq_url=dlq_url)

    return make


def arn_of(sqs: Any, queue_url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    arn: str = attributes["Attributes"]["QueueArn"]
    return arn


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue()


@pytest.fixture
def notified_bucket(local_s3: LocalS3, bucket: str, queue: Queue) -> str:
    """A bucket whose ObjectCreated notifications go to ``queue`` (S3 sends a TestEvent first)."""
    local_s3.client().put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": queue.arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    return bucket


@pytest.fixture
def api_url(prefect_server: None) -> str:
    """The harness server's API URL, e.g. ``http://127.0.0.1:PORT/api``."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_server fixture sets PREFECT_API_URL"
    return str(url)


# test_s3_events.py does not carry the ``slow`` mark yet (it is being reworked elsewhere):
# until it does, its tests that start a process or a server of their own, sleep or poll
# are marked here, by what their source calls (the policy is in tests/helpers.py).
_SLOW_CALLS = ("subprocess.", "time.sleep(", "wait_for(")
_SLOW_FIXTURES = frozenset({"served_deployment", "refusing_events"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function) or item.path.name != "test_s3_events.py":
            continue
        source = inspect.getsource(item.function)
        if any(call in source for call in _SLOW_CALLS) or _SLOW_FIXTURES & set(
                item.fixturenames):
            item.add_marker(pytest.mark.slow)
