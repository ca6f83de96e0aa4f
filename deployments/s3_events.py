"""S3 ObjectCreated notifications (via SQS) become Prefect events that deployments trigger on.

Open-source Prefect has no inbound webhooks, so this bridge long-polls the SQS queue S3
notifies and POSTs one ``ig1.s3.object.created`` event per new object.

    python -m prefect_ig1.deployments.s3_events --queue-url URL --ignore-prefix descriptions/

At-least-once, and harmless: a message is deleted only after Prefect answered 2xx, and
an event's id is uuid5(bucket, key, ETag, event time), so Prefect drops SQS redeliveries.
A message Prefect refuses for good (400, 413, 422) is no outage: it is left to the queue's
dead-letter queue, or, without one, deleted with an ERROR after ``max_receives`` receives.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import Any, Literal, Protocol, cast
from urllib.parse import unquote_plus

import httpx
from prefect.events import Event
from prefect.events.schemas.events import Resource

__all__ = ["EVENT_NAME", "BatchResult", "Bridge", "MalformedMessage", "S3ObjectEvent",
           "is_ignored", "main", "parse_message", "to_prefect_event"]

EVENT_NAME = "ig1.s3.object.created"
EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://ig1.ai/prefect/s3-object-created")
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
STARTUP_ATTEMPTS = 5  # reading the queue's attributes: 1 + 2 + 4 + 8 s of patience
DEFAULT_MAX_RECEIVES = 5  # without a dead-letter queue, a refused message is dropped after this
# Prefect refuses these events for what they are: resending the same body cannot help
PERMANENT_STATUSES = frozenset({400, 413, 422})

Delivery = Literal["delivered", "refused", "failed"]

logger = logging.getLogger(__name__)


class MalformedMessage(ValueError):
    """An SQS message body that is not an S3 notification this bridge can read."""


class SQSClient(Protocol):
    """The three calls the bridge makes on a boto3 SQS client."""

    def receive_message(self, **kwargs: Any) -> Any: ...
    def delete_message(self, **kwargs: Any) -> Any: ...
    def get_queue_attributes(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class S3ObjectEvent:
    """One ObjectCreated record, key already URL-decoded. Never change EVENT_ID_NAMESPACE:
    redelivered messages would get new ids (and start new runs)."""

    bucket: str
    key: str
    etag: str
    size: int | None
    event_time: str  # as S3 sent it: part of the event id, so never reformatted
    event_name: str

    @property
    def occurred(self) -> datetime:
        return _parse_time(self.event_time)

    @property
    def event_id(self) -> uuid.UUID:
        """Same object version and notification ⇒ same id, so Prefect deduplicates."""
        name = f"{self.bucket}\n{self.key}\n{self.etag}\n{self.event_time}"
        return uuid.uuid5(EVENT_ID_NAMESPACE, name)


@dataclass(frozen=True)
class BatchResult:
    """Messages received/malformed/refused/kept in the queue, events posted, records skipped."""

    received: int = 0
    posted: int = 0
    skipped: int = 0
    malformed: int = 0
    kept: int = 0
    delivery_failed: bool = False  # Prefect unreachable or failing: the loop backs off
    refused: int = 0  # messages whose events Prefect refused for good (400, 413, 422)

    @property
    def any_failed(self) -> bool:
        """Some events did not reach Prefect (what ``--once`` reports in its exit status)."""
        return self.delivery_failed or self.refused > 0


def parse_message(body: str) -> list[S3ObjectEvent]:
    """The ObjectCreated records of one SQS body (raw or SNS-wrapped); [] for a TestEvent."""
    return _parse(body)[0]


def _parse(body: str) -> tuple[list[S3ObjectEvent], int]:
    """Records to post, and how many records were skipped (not ObjectCreated, test events)."""
    document = _load_object(body, "body")
    if document.get("Type") == "Notification" and "Message" in document:
        document = _load_object(document["Message"], "SNS Message")
    if document.get("Event") == "s3:TestEvent":
        return [], 1
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedMessage("no Records list")
    created: list[S3ObjectEvent] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise MalformedMessage(f"Records[{index}] is not an object")
        event_name = record.get("eventName")
        if not isinstance(event_name, str):
            raise MalformedMessage(f"Records[{index}] has no eventName")
        if event_name.startswith(("ObjectCreated:", "s3:ObjectCreated:")):
            created.append(_parse_record(record, event_name, index))
    return created, len(records) - len(created)


def _parse_record(record: dict[str, Any], event_name: str, index: int) -> S3ObjectEvent:
    try:
        s3 = record["s3"]
        bucket, obj, event_time = s3["bucket"]["name"], s3["object"], record["eventTime"]
        raw_key, etag, size = obj["key"], obj.get("eTag"), obj.get("size")
    except (KeyError, TypeError) as exc:
        raise MalformedMessage(f"Records[{index}] lacks {exc}") from None
    texts = {"bucket": bucket, "key": raw_key, "eTag": etag, "eventTime": event_time}
    if bad := [name for name, value in texts.items() if not isinstance(value, str) or not value]:
        raise MalformedMessage(f"Records[{index}] has no valid {bad[0]}")
    if size is not None and type(size) is not int:  # bool is not a size either
        raise MalformedMessage(f"Records[{index}] has a non-integer size")
    try:
        _parse_time(event_time)
    except ValueError:
        raise MalformedMessage(f"Records[{index}] has an unreadable eventTime") from None
    return S3ObjectEvent(bucket=bucket, key=unquote_plus(raw_key), etag=etag.strip('"'),
                         size=size, event_time=event_time, event_name=event_name)


def _load_object(text: object, what: str) -> dict[str, Any]:
    try:
        document = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        raise MalformedMessage(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedMessage(f"{what} is not a JSON object")
    return document


def _parse_time(text: str) -> datetime:
    # fromisoformat only reads a trailing "Z" from Python 3.11 on; S3 always sends UTC
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def to_prefect_event(obj: S3ObjectEvent) -> Event:
    """The Prefect event deployments trigger on, matched by ``s3://bucket/prefix*``."""
    resource = Resource({"prefect.resource.id": f"s3://{obj.bucket}/{obj.key}",
                         "prefect.resource.name": obj.key, "s3.bucket": obj.bucket})
    payload = {"bucket": obj.bucket, "key": obj.key, "etag": obj.etag, "size": obj.size,
               "event_time": obj.event_time, "event_name": obj.event_name}
    return Event(event=EVENT_NAME, resource=resource, payload=payload,
                 occurred=obj.occurred, id=obj.event_id)


def is_ignored(key: str, ignore_prefixes: Sequence[str]) -> bool:
    """Keys under these prefixes (the job's own outputs) must not trigger the job again."""
    return any(key.startswith(prefix) for prefix in ignore_prefixes)


class Bridge:
    """Receives one SQS batch at a time and posts its events; never raises on bad input.

    With a dead-letter queue, undelivered messages count receives too: give the queue a
    maxReceiveCount that outlasts a Prefect outage (the loop backs off to one receive a minute).
    ``sleep`` is the start-up retries' wait (tests pass a recorder).
    """

    def __init__(self, sqs_client: SQSClient, queue_url: str, api_url: str,
                 ignore_prefixes: Sequence[str] = (), *, wait_seconds: int = 20,
                 api_key: str | None = None, http: httpx.Client | None = None,
                 max_receives: int = DEFAULT_MAX_RECEIVES,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sqs = sqs_client
        self.queue_url = queue_url
        self.events_url = api_url.rstrip("/") + "/events"
        self.ignore_prefixes = tuple(ignore_prefixes)
        self.wait_seconds = wait_seconds
        self.max_receives = max_receives
        self.has_dead_letter_queue = self._has_redrive_policy(sleep)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.Client(timeout=10.0, headers=headers)

    def _has_redrive_policy(self, sleep: Callable[[float], None]) -> bool:
        """Read at start-up, retried: a throttled or briefly unreachable SQS must not stop
        the bridge from starting; a missing queue or denied access fails at once."""
        attempt = 1
        while True:
            try:
                attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                                           AttributeNames=["RedrivePolicy"])
                return "RedrivePolicy" in attributes.get("Attributes", {})
            except Exception as exc:
                if attempt >= STARTUP_ATTEMPTS or _is_permanent_sqs_error(exc):
                    raise
                delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
                logger.warning("reading the attributes of %s failed (%s); attempt %d of %d "
                               "in %.0f s", self.queue_url, exc, attempt + 1, STARTUP_ATTEMPTS,
                               delay)
                sleep(delay)
                attempt += 1

    def poll_once(self) -> BatchResult:
        """Long-poll one batch; delete each message only once Prefect has its events."""
        reply = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self.wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"])
        messages: list[dict[str, Any]] = reply.get("Messages", [])
        posted = skipped = malformed = kept = refused = 0
        delivering = True  # after one failed POST the rest wait for the next receive
        for message in messages:
            message_id = message.get("MessageId", "?")
            try:
                objects, not_created = _parse(message.get("Body", ""))
                wanted = [to_prefect_event(obj) for obj in objects
                          if not is_ignored(obj.key, self.ignore_prefixes)]
            except ValueError as why:  # MalformedMessage, or a record Prefect would refuse
                malformed += 1
                keep = self.has_dead_letter_queue  # SQS moves it there after maxReceiveCount
                logger.warning("SQS message %s is malformed (%s): %s", message_id, why,
                               "kept for the dead-letter queue" if keep else "deleted")
                kept += keep
                if not keep:
                    self._delete(message)
                continue
            skipped += not_created + len(objects) - len(wanted)
            delivery: Delivery = "delivered"
            if wanted:
                delivery = self._post(message_id, wanted) if delivering else "failed"
            if delivery == "failed":
                delivering = False
                kept += 1
                continue
            if delivery == "refused":  # this message only: the rest of the batch goes on
                refused += 1
                if not self._drop_refused(message, message_id, wanted):
                    kept += 1
                continue
            posted += len(wanted)
            self._delete(message)
        return BatchResult(received=len(messages), posted=posted, skipped=skipped,
                           malformed=malformed, kept=kept, delivery_failed=not delivering,
                           refused=refused)

    def run(self, stop: threading.Event, *, once: bool = False) -> bool:
        """Poll until ``stop`` is set, backing off (capped exponential) while delivery fails
        (not on refusals: those are the message's fault); False if any delivery failed."""
        failures = 0
        all_delivered = True
        while not stop.is_set():
            try:
                result = self.poll_once()
                failed = result.delivery_failed
                all_delivered = all_delivered and not result.any_failed
            except Exception as exc:  # SQS unreachable, throttled...: wait, never crash
                logger.warning("receiving from SQS failed: %s", exc)
                failed = True
                all_delivered = False
            if once:
                break
            failures = failures + 1 if failed else 0
            if failures:
                delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (failures - 1))
                logger.warning("backing off %.0f s after %d failed batch(es)", delay, failures)
                stop.wait(delay)
        return all_delivered

    def close(self) -> None:
        self.http.close()

    def _post(self, message_id: str, events: Sequence[Event]) -> Delivery:
        body = [event.model_dump(mode="json") for event in events]
        try:
            response = self.http.post(self.events_url, json=body)
        except httpx.HTTPError as exc:
            logger.warning("posting events of SQS message %s failed: %r; kept for redelivery",
                           message_id, exc)
            return "failed"
        if response.is_success:
            return "delivered"
        permanent = response.status_code in PERMANENT_STATUSES
        logger.warning("Prefect answered %d to events of SQS message %s: %s; %s",
                       response.status_code, message_id, response.text[:200],
                       "refused for good" if permanent else "kept for redelivery")
        return "refused" if permanent else "failed"

    def _drop_refused(self, message: dict[str, Any], message_id: str,
                      events: Sequence[Event]) -> bool:
        """Whether a refused message was deleted: never with a dead-letter queue (SQS moves
        it there), else once it has been received ``max_receives`` times."""
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        if self.has_dead_letter_queue:
            logger.warning("SQS message %s (receive %d) is left for the dead-letter queue",
                           message_id, receives)
            return False
        if receives < self.max_receives:
            logger.warning("SQS message %s (receive %d of %d) is kept; with no dead-letter "
                           "queue it is deleted at receive %d", message_id, receives,
                           self.max_receives, self.max_receives)
            return False
        logger.error("Prefect refused the events of SQS message %s %d times; deleted (the "
                     "queue has no dead-letter queue). Lost: %s", message_id, receives,
                     ", ".join(event.resource.id for event in events))
        self._delete(message)
        return True

    def _delete(self, message: dict[str, Any]) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url,
                                    ReceiptHandle=message["ReceiptHandle"])
        except Exception as exc:  # redelivery is harmless: Prefect drops the duplicate ids
            logger.warning("deleting SQS message %s failed: %s", message.get("MessageId"), exc)


def _is_permanent_sqs_error(exc: Exception) -> bool:
    """A botocore ClientError that retrying cannot fix (missing queue, denied access)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False  # connection errors, timeouts: worth another try
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = str(response.get("Error", {}).get("Code", ""))
    return isinstance(status, int) and 400 <= status < 500 and "Throttl" not in code


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: bridge a queue until SIGTERM/SIGINT (or one batch with --once, which
    exits 1 when some events did not reach Prefect)."""
    import boto3
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    parser = argparse.ArgumentParser(prog="python -m prefect_ig1.deployments.s3_events",
                                     description="S3 notifications in SQS -> Prefect events")
    parser.add_argument("--queue-url", required=True, help="SQS queue S3 notifies")
    parser.add_argument("--ignore-prefix", action="append", default=[], metavar="PREFIX",
                        help="skip keys under PREFIX (the job's outputs); repeatable")
    parser.add_argument("--wait-seconds", type=int, default=20, choices=range(21),
                        metavar="0-20", help="SQS long-poll wait (default 20)")
    parser.add_argument("--max-receives", type=int, default=DEFAULT_MAX_RECEIVES, metavar="N",
                        help="without a dead-letter queue, delete a message Prefect refuses "
                             f"(400/413/422) at its N-th receive (default {DEFAULT_MAX_RECEIVES})")
    parser.add_argument("--once", action="store_true",
                        help="process one batch and exit (1 if any delivery failed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api_url = PREFECT_API_URL.value()
    if not api_url:
        parser.error("PREFECT_API_URL is not set (prefect config set PREFECT_API_URL=...)")
    sqs = cast(SQSClient, boto3.client("sqs"))  # works with or without mypy_boto3_sqs stubs
    bridge = Bridge(sqs, args.queue_url, api_url, args.ignore_prefix,
                    wait_seconds=args.wait_seconds, api_key=PREFECT_API_KEY.value(),
                    max_receives=args.max_receives)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only this: logging from a signal handler can re-enter the stream

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info("bridging %s to %s", args.queue_url, bridge.events_url)
    try:
        all_delivered = bridge.run(stop, once=args.once)
    finally:
        bridge.close()
    logger.info("stopped after the current batch" if stop.is_set() else "done")
    return 1 if args.once and not all_delivered else 0


if __name__ == "__main__":
    raise SystemExit(main())
