"""Which SQS endpoint and region a queue URL names, and what to tell a user when it fails.

boto3 sends every call to ``AWS_ENDPOINT_URL`` (or the client's region), whatever host the
queue URL names: a URL for another endpoint or region silently read another queue. So the
bridge takes its endpoint and region from the URL unless told otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["QueueAddress", "QueueUrlError", "describe_sqs_failure", "parse_queue_url",
           "sqs_client"]

DEFAULT_REGION = "us-east-1"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}(\.fifo)?")
# sqs.eu-west-1.amazonaws.com(.cn), eu-west-1.queue.amazonaws.com (legacy),
# sqs.eu-west-1.localhost.localstack.cloud
_AWS_HOSTS = (re.compile(r"sqs[.-](?:fips\.)?(?P<region>[a-z]{2}(-[a-z]+)+-\d+)\.(amazonaws\.com"
                         r"(\.cn)?|api\.aws|localhost\.localstack\.cloud)"),
              re.compile(r"(?P<region>[a-z]{2}(-[a-z]+)+-\d+)\.queue\.amazonaws\.com(\.cn)?"))


class QueueUrlError(ValueError):
    """A ``--queue-url`` that is not ``scheme://host/ACCOUNT/NAME``."""


@dataclass(frozen=True)
class QueueAddress:
    """Where a queue lives: ``endpoint_url`` and ``region`` are what boto3 is given."""

    url: str
    endpoint_url: str
    region: str
    account: str
    name: str


def parse_queue_url(url: str, *, endpoint_url: str | None = None, region: str | None = None,
                    default_region: str = DEFAULT_REGION) -> QueueAddress:
    """Endpoint and region from the URL; ``endpoint_url``/``region`` override (a proxy);
    ``default_region`` is for a host that names none (a local server)."""
    parts = urlsplit(url)
    path = parts.path.strip("/").split("/")
    if (parts.scheme not in ("http", "https") or not parts.hostname or len(path) != 2
            or not path[0].isdigit() or not _NAME.fullmatch(path[1])):
        raise QueueUrlError(
            f"--queue-url {url!r} is not a queue URL: expected "
            "https://sqs.REGION.amazonaws.com/ACCOUNT/NAME (or http://HOST:PORT/ACCOUNT/NAME for "
            "a local server), as `aws sqs get-queue-url --queue-name NAME` prints it")
    found = next((match for pattern in _AWS_HOSTS
                  if (match := pattern.fullmatch(parts.hostname))), None)
    url_region = found.group("region") if found else None
    return QueueAddress(url=url, endpoint_url=endpoint_url or f"{parts.scheme}://{parts.netloc}",
                        region=region or url_region or default_region, account=path[0],
                        name=path[1])


def sqs_client(address: QueueAddress) -> Any:
    """A boto3 SQS client bound to the queue's own endpoint and region (credentials from the
    usual chain); botocore's retries stay short, the bridge has its own."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5,
                    read_timeout=30)  # > the 20 s long poll
    return boto3.client("sqs", endpoint_url=address.endpoint_url, region_name=address.region,
                        config=config)


def describe_sqs_failure(exc: Exception, address: QueueAddress) -> str | None:
    """What went wrong reaching the queue and how to fix it; None if not a known case."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    where = f"{address.endpoint_url} (region {address.region})"
    if isinstance(exc, EndpointConnectionError):
        return (f"cannot reach SQS at {where}: is the server running and the URL right? "
                "Pass --endpoint-url if the queue is served elsewhere than its URL's host.")
    if isinstance(exc, (NoCredentialsError, NoRegionError)):
        return (f"no AWS credentials for SQS at {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role.")
    if not isinstance(exc, ClientError):
        return None
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
        return (f"queue {address.name!r} (account {address.account}) does not exist at {where}: "
                f"create it (`aws sqs create-queue --queue-name {address.name} --endpoint-url "
                f"{address.endpoint_url} --region {address.region}`), or pass --region if the "
                "queue lives in another region than the one shown.")
    if "AccessDenied" in code or "InvalidClientTokenId" in code or "SignatureDoesNotMatch" in code:
        return (f"SQS at {where} refused these credentials ({code}: {message}). The bridge needs "
                "sqs:ReceiveMessage, sqs:DeleteMessage, sqs:ChangeMessageVisibility and "
                "sqs:GetQueueAttributes on the queue.")
    return None
