"""The S3 → Prefect events bridge: parsing offline, then moto's S3 + SQS and a real Prefect."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from prefect_ig1.deployments import s3_events
from prefect_ig1.deployments.s3_events import (
    EVENT_NAME,
    Bridge,
    MalformedMessage,
    S3ObjectEvent,
    is_ignored,
    parse_message,
    to_prefect_event,
)
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.sandbox.sample_images import sample_images
from tests.deployments.conftest import Queue

ROOT = Path(__file__).resolve().parents[2]
TIME = "2026-03-01T12:34:56.789Z"
ETAG = "9dd4e461268c8034f5c8564e155c67a6"


def s3_record(key: str, *, bucket: str = "photos", event_name: str = "ObjectCreated:Put",
              etag: str = ETAG, event_time: str = TIME, safe: str = "/") -> dict[str, Any]:
    """One record as AWS documents it (notification-content-structure); AWS keeps ``/``,
    moto encodes it too (``safe=""``)."""
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": event_time, "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "203.0.113.7"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810",
                             "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/J"},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "images",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe=safe), "size": 1024, "eTag": etag,
                       "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                       "sequencer": "0055AED6DCD90281E5"},
        },
    }


def with_object(record: dict[str, Any], **fields: Any) -> dict[str, Any]:
    record["s3"]["object"].update(fields)
    return record


def s3_message(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def sns_wrapped(body: str) -> str:
    return json.dumps({"Type": "Notification", "MessageId": str(uuid.uuid4()),
                       "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
                       "Subject": "Amazon S3 Notification", "Message": body,
                       "Timestamp": TIME, "SignatureVersion": "1"})


TEST_EVENT = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": TIME,
                         "Bucket": "photos", "RequestId": "5582815E1AEA5ADF",
                         "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+EXAMPLE"})
TRICKY_KEYS = ["in/with space/été 2024.png", "in/plus+sign.png", "in/100%25 real%.png",
               "in/ünïcødé/图片.png", "in/a%2Fb.png"]


# --- parsing, offline ------------------------------------------------------------------

@pytest.mark.parametrize("key", TRICKY_KEYS)
@pytest.mark.parametrize("safe", ["/", ""], ids=["aws", "moto"])
def test_keys_are_decoded_as_s3_encodes_them(key: str, safe: str) -> None:
    [obj] = parse_message(s3_message(s3_record(key, safe=safe)))
    assert obj == S3ObjectEvent(bucket="photos", key=key, etag=ETAG, size=1024,
                                event_time=TIME, event_name="ObjectCreated:Put")


def test_test_event_sns_wrapping_several_records_and_other_events() -> None:
    assert parse_message(TEST_EVENT) == []
    assert parse_message(sns_wrapped(TEST_EVENT)) == []
    body = s3_message(s3_record("in/a.png"),
                      s3_record("in/old.png", event_name="ObjectRemoved:Delete"),
                      s3_record("in/b.png", event_name="ObjectCreated:CompleteMultipartUpload"))
    keys = [obj.key for obj in parse_message(body)]
    assert keys == ["in/a.png", "in/b.png"]
    assert parse_message(sns_wrapped(body)) == parse_message(body)


@pytest.mark.parametrize(("body", "why"), [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"hello": 1}', "no Records"),
    (json.dumps({"Type": "Notification", "Message": "{oops"}), "SNS Message is not JSON"),
    (s3_message({"eventName": "ObjectCreated:Put"}), "lacks 's3'"),
    (s3_message({**s3_record("k"), "eventTime": "yesterday"}), "eventTime"),
    (s3_message({**s3_record("k"), "eventName": None}), "eventName"),
    (s3_message(with_object(s3_record("k"), size="12")), "non-integer size"),
    (s3_message(with_object(s3_record("k"), eTag="")), "no valid eTag"),
])
def test_malformed_bodies_say_why(body: str, why: str) -> None:
    with pytest.raises(MalformedMessage, match=why):
        parse_message(body)


def test_events_carry_the_object_and_a_deterministic_id() -> None:
    [obj] = parse_message(s3_message(s3_record("in/été 2024.png")))
    event = to_prefect_event(obj)
    assert event.event == EVENT_NAME
    assert dict(event.resource.items()) == {
        "prefect.resource.id": "s3://photos/in/été 2024.png",
        "prefect.resource.name": "in/été 2024.png", "s3.bucket": "photos"}
    assert event.payload == {"bucket": "photos", "key": "in/été 2024.png", "etag": ETAG,
                             "size": 1024, "event_time": TIME, "event_name": "ObjectCreated:Put"}
    assert event.occurred == datetime(2026, 3, 1, 12, 34, 56, 789000, tzinfo=timezone.utc)
    assert event.id == uuid.uuid5(s3_events.EVENT_ID_NAMESPACE,
                                  f"photos\nin/été 2024.png\n{ETAG}\n{TIME}")
    assert to_prefect_event(parse_message(s3_message(s3_record("in/été 2024.png")))[0]) == event
    others = [s3_record("in/été 2024.png", etag="0" * 32),
              s3_record("in/été 2024.png", event_time="2026-03-01T12:34:57.000Z"),
              s3_record("in/été 2024.png", bucket="other"), s3_record("in/été 2025.png")]
    assert len({to_prefect_event(parse_message(s3_message(r))[0]).id for r in others}) == 4
    assert Event.model_validate(event.model_dump(mode="json")) == event  # what we POST


def test_ignored_prefixes() -> None:
    assert is_ignored("descriptions/in/a.png.json", ["descriptions/"])
    assert not is_ignored("in/descriptions/a.png", ["descriptions/"])
    assert not is_ignored("in/a.png", [])


# --- moto (S3 + SQS) and the session's Prefect server -----------------------------------

def put_images(local_s3: LocalS3, bucket: str, count: int, prefix: str = "incoming/"
               ) -> list[str]:
    client, keys = local_s3.client(), []
    for index, (name, data) in enumerate((sample_images() * 2)[:count]):
        key = f"{prefix}{index} {name}"  # a space: S3 sends it as "+"
        client.put_object(Bucket=bucket, Key=key, Body=data)
        keys.append(key)
    return keys


def messages_in(sqs: Any, queue_url: str) -> int:
    """Visible + in flight: what is still in the queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
    return sum(int(attributes["Attributes"][name]) for name in names)


def stored_events(resource_prefix: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(
            event=EventNameFilter(name=[EVENT_NAME]),
            resource=EventResourceFilter(id_prefix=[resource_prefix])), limit=50)  # the API's max
    return list(page.events)


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@pytest.fixture
def make_bridge(sqs: Any, api_url: str) -> Iterator[Callable[..., Bridge]]:
    bridges: list[Bridge] = []

    def make(queue: Queue, api: str = api_url, ignore: tuple[str, ...] = ("descriptions/",)
             ) -> Bridge:
        bridges.append(Bridge(sqs, queue.url, api, ignore, wait_seconds=0))
        return bridges[-1]

    yield make
    for bridge in bridges:
        bridge.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


def test_uploads_become_prefect_events_and_messages_are_deleted(
        local_s3: LocalS3, sqs: Any, queue: Queue, notified_bucket: str,
        make_bridge: Callable[..., Bridge]) -> None:
    keys = put_images(local_s3, notified_bucket, 5)
    local_s3.client().put_object(Bucket=notified_bucket, Key="descriptions/x.json", Body=b"{}")
    result = make_bridge(queue).poll_once()
    assert (result.received, result.posted, result.malformed, result.kept) == (7, 5, 0, 0)
    assert result.skipped == 2 and not result.delivery_failed  # the TestEvent, our own output
    assert messages_in(sqs, queue.url) == 0
    prefix = f"s3://{notified_bucket}/"
    events = wait_for(lambda: len(stored_events(prefix)) >= 5 and stored_events(prefix),
                      what="events in Prefect")
    assert sorted(e.resource.id for e in events) == sorted(prefix + key for key in keys)
    s3 = local_s3.client()
    for event in events:
        key = event.payload["key"]
        assert event.payload["etag"] == s3.head_object(Bucket=notified_bucket,
                                                       Key=key)["ETag"].strip('"')
        assert event.resource["s3.bucket"] == notified_bucket and event.payload["size"] > 0


def test_a_redelivered_message_is_one_event(
        local_s3: LocalS3, sqs: Any, queue: Queue, bucket: str,
        make_bridge: Callable[..., Bridge]) -> None:
    twice = s3_message(s3_record("in/twice.png", bucket=bucket, event_time=now()))
    for body in (twice, twice, s3_message(s3_record("in/marker.png", bucket=bucket,
                                                    event_time=now()))):
        sqs.send_message(QueueUrl=queue.url, MessageBody=body)
    result = make_bridge(queue).poll_once()
    assert (result.received, result.posted, result.kept) == (3, 3, 0)  # Prefect said 2xx
    prefix = f"s3://{bucket}/"
    wait_for(lambda: any(e.resource.id.endswith("marker.png") for e in stored_events(prefix)),
             what="the marker event, posted after both copies")
    ids = sorted(e.resource.id for e in stored_events(prefix))
    assert ids == [f"{prefix}in/marker.png", f"{prefix}in/twice.png"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_prefect_down_keeps_every_message(
        sqs: Any, make_queue: Callable[..., Queue], bucket: str,
        make_bridge: Callable[..., Bridge], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="prefect_ig1.deployments.s3_events")
    queue = make_queue(visibility_timeout=1)
    for index in range(3):
        sqs.send_message(QueueUrl=queue.url, MessageBody=s3_message(
            s3_record(f"in/{index}.png", bucket=bucket, event_time=now())))
    down = make_bridge(queue, api=closed_port_url())
    result = down.poll_once()
    assert (result.received, result.posted, result.kept) == (3, 0, 3) and result.delivery_failed
    assert "kept for redelivery" in caplog.text
    assert messages_in(sqs, queue.url) == 3
    time.sleep(1.2)  # visibility timeout: the messages come back...
    down.run(threading.Event(), once=True)  # ...the loop fails again without raising...
    assert messages_in(sqs, queue.url) == 3
    time.sleep(1.2)
    result = make_bridge(queue).poll_once()  # ...and they are delivered once Prefect is up
    assert (result.received, result.posted, result.kept) == (3, 3, 0)
    assert messages_in(sqs, queue.url) == 0


Step = bool | Exception | str


class ScriptedBridge(Bridge):
    """The run loop over scripted batches: True = delivery failed, an exception = SQS failed,
    "empty" = nothing received; "down" = Prefect's health check fails (no receive)."""

    def __init__(self, script: list[Step]) -> None:  # no queue, no HTTP
        self.script = script
        self.backoff_base, self.backoff_cap = 1.0, 60.0
        self.held = []
        self.receives = 0

    def prefect_is_up(self) -> bool:
        if self.script and self.script[0] == "down":
            self.script.pop(0)
            return False
        return True

    def poll_once(self) -> s3_events.BatchResult:
        step = self.script.pop(0)
        assert step != "down", "received while Prefect was down"
        self.receives += 1
        if isinstance(step, Exception):
            raise step
        if step == "empty":
            return s3_events.BatchResult()
        return s3_events.BatchResult(received=1, kept=int(step), delivery_failed=bool(step))


def run_until_script_ends(bridge: ScriptedBridge, monkeypatch: pytest.MonkeyPatch
                          ) -> list[float]:
    delays: list[float] = []
    stop = threading.Event()
    monkeypatch.setattr(stop, "wait", delays.append)
    monkeypatch.setattr(stop, "is_set", lambda: not bridge.script)
    bridge.run(stop)
    return delays


def test_the_loop_backs_off_exponentially_capped_and_resets_on_success(
        monkeypatch: pytest.MonkeyPatch) -> None:
    script: list[Step] = [True, True, True, False, False, True]
    assert run_until_script_ends(ScriptedBridge(script), monkeypatch) == [1, 2, 4, 1]
    script = [ConnectionError("SQS unreachable")] * 9
    assert run_until_script_ends(ScriptedBridge(script), monkeypatch) == [
        1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_during_an_outage_the_loop_probes_prefect_instead_of_receiving(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-off to one probe a minute; an empty poll resets it only once Prefect answered
    its health check (before, every empty poll reset it to 1 s)."""
    script: list[Step] = [True, *["down"] * 8, True, "down", "empty", True]
    bridge = ScriptedBridge(script)
    assert run_until_script_ends(bridge, monkeypatch) == [
        1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 1]
    assert bridge.receives == 4  # two failed batches, the empty one, the last


def test_a_malformed_message_is_logged_and_dropped_without_a_dlq(
        sqs: Any, queue: Queue, bucket: str, make_bridge: Callable[..., Bridge],
        caplog: pytest.LogCaptureFixture) -> None:
    bad = sqs.send_message(QueueUrl=queue.url, MessageBody="<xml>not json</xml>")["MessageId"]
    sqs.send_message(QueueUrl=queue.url, MessageBody=s3_message(
        s3_record("in/ok.png", bucket=bucket, event_time=now())))
    caplog.set_level(logging.WARNING, logger="prefect_ig1.deployments.s3_events")
    result = make_bridge(queue).poll_once()
    assert (result.received, result.posted, result.malformed, result.kept) == (2, 1, 1, 0)
    assert f"SQS message {bad} is malformed (body is not JSON): deleted" in caplog.text
    assert messages_in(sqs, queue.url) == 0


def test_a_malformed_message_goes_to_the_dlq_when_there_is_one(
        sqs: Any, make_queue: Callable[..., Queue], make_bridge: Callable[..., Bridge],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="prefect_ig1.deployments.s3_events")
    queue = make_queue(visibility_timeout=1, dlq_after=1)
    bad = sqs.send_message(QueueUrl=queue.url, MessageBody='{"Records": "nope"}')["MessageId"]
    bridge = make_bridge(queue)
    assert bridge.has_dead_letter_queue
    result = bridge.poll_once()
    assert (result.received, result.malformed, result.kept) == (1, 1, 1)
    assert f"SQS message {bad} is malformed (no Records list): kept for the dead-letter" \
        in caplog.text
    time.sleep(1.2)
    assert bridge.poll_once().received == 0  # past maxReceiveCount: SQS moved it aside
    moved = sqs.receive_message(QueueUrl=queue.dlq_url, WaitTimeSeconds=0)["Messages"]
    assert [m["MessageId"] for m in moved] == [bad]


# --- hostile input: poison messages, a flaky SQS at start-up ----------------------------

class CountingSQS:
    """The real (moto) SQS client, counting receives per message id and deletions; the first
    ``failing_reads`` get_queue_attributes calls raise ``read_error``."""

    def __init__(self, sqs: Any, failing_reads: int = 0,
                 read_error: Exception | None = None) -> None:
        self.sqs, self.failing_reads, self.read_error = sqs, failing_reads, read_error
        self.receives: Counter[str] = Counter()
        self.deleted: list[str] = []
        self.attribute_reads = 0
        self._ids: dict[str, str] = {}
        self.visibility_changes: list[int] = []  # the timeout each batch call set

    def receive_message(self, **kwargs: Any) -> Any:
        reply = self.sqs.receive_message(**kwargs)
        for message in reply.get("Messages", []):
            self.receives[message["MessageId"]] += 1
            self._ids[message["ReceiptHandle"]] = message["MessageId"]
        return reply

    def delete_message(self, **kwargs: Any) -> Any:
        self.deleted.append(self._ids[kwargs["ReceiptHandle"]])
        return self.sqs.delete_message(**kwargs)

    def change_message_visibility_batch(self, **kwargs: Any) -> Any:
        self.visibility_changes.append(
            {entry["VisibilityTimeout"] for entry in kwargs["Entries"]}.pop())
        return self.sqs.change_message_visibility_batch(**kwargs)

    def get_queue_attributes(self, **kwargs: Any) -> Any:
        self.attribute_reads += 1
        if self.attribute_reads <= self.failing_reads and self.read_error is not None:
            raise self.read_error
        return self.sqs.get_queue_attributes(**kwargs)


class RefusingEvents:
    """A stand-in for Prefect's /api/events on 127.0.0.1: 422 to any body naming "poison",
    204 to the rest; counts both."""

    def __init__(self) -> None:
        self.answers: Counter[int] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 422 if b"poison" in body else 204
                outer.answers[status] += 1
                self.send_response(status)
                detail = b'{"detail": "invalid event"}' if status == 422 else b""
                self.send_header("Content-Length", str(len(detail)))
                self.end_headers()
                self.wfile.write(detail)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.api_url = f"http://{host!s}:{port}/api"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def refusing_events() -> Iterator[RefusingEvents]:
    events = RefusingEvents()
    yield events
    events.close()


def send_poison_and_good(sqs: Any, queue: Queue, bucket: str) -> tuple[str, str]:
    poison = sqs.send_message(QueueUrl=queue.url, MessageBody=s3_message(
        s3_record("in/poison.png", bucket=bucket, event_time=now())))["MessageId"]
    good = sqs.send_message(QueueUrl=queue.url, MessageBody=s3_message(
        s3_record("in/good.png", bucket=bucket, event_time=now())))["MessageId"]
    return poison, good


def test_a_refused_message_is_deleted_with_an_error_after_max_receives_without_a_dlq(
        sqs: Any, make_queue: Callable[..., Queue], bucket: str,
        refusing_events: RefusingEvents, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="prefect_ig1.deployments.s3_events")
    queue = make_queue(visibility_timeout=1)
    poison, good = send_poison_and_good(sqs, queue, bucket)
    counting = CountingSQS(sqs)
    bridge = Bridge(counting, queue.url, refusing_events.api_url, wait_seconds=0,
                    max_receives=2)
    try:
        first = bridge.poll_once()  # the refusal is the message's, not an outage:
        assert counting.deleted == [good] and messages_in(sqs, queue.url) == 1  # good goes on
        assert not first.delivery_failed and first.any_failed  # and no back-off
        assert (first.received, first.posted, first.refused, first.kept) == (2, 1, 1, 1)
        assert f"Prefect answered 422 to events of SQS message {poison}" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        time.sleep(1.2)  # visibility timeout: the poison comes back, for the 2nd receive
        assert bridge.run(threading.Event(), once=True) is False
    finally:
        bridge.close()
    assert counting.receives == {poison: 2, good: 1}
    assert counting.deleted == [good, poison] and messages_in(sqs, queue.url) == 0
    assert refusing_events.answers == {422: 2, 204: 1}
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert poison in error.getMessage() and "in/poison.png" in error.getMessage()


def test_a_refused_message_is_left_to_the_dead_letter_queue(
        sqs: Any, make_queue: Callable[..., Queue], bucket: str,
        refusing_events: RefusingEvents, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="prefect_ig1.deployments.s3_events")
    queue = make_queue(visibility_timeout=1, dlq_after=2)
    poison, good = send_poison_and_good(sqs, queue, bucket)
    counting = CountingSQS(sqs)
    bridge = Bridge(counting, queue.url, refusing_events.api_url, wait_seconds=0,
                    max_receives=1)  # the queue's redrive policy decides, not this
    try:
        results = [bridge.poll_once()]
        time.sleep(1.2)
        results.append(bridge.poll_once())
        time.sleep(1.2)
        results.append(bridge.poll_once())  # past maxReceiveCount: SQS moved it aside
    finally:
        bridge.close()
    assert counting.receives == {poison: 2, good: 1} and counting.deleted == [good]
    assert [(r.received, r.refused, r.delivery_failed) for r in results] == [
        (2, 1, False), (1, 1, False), (0, 0, False)]
    assert f"SQS message {poison} (receive 2) is left for the dead-letter queue" in caplog.text
    moved = sqs.receive_message(QueueUrl=queue.dlq_url, WaitTimeSeconds=0)["Messages"]
    assert [m["MessageId"] for m in moved] == [poison]


class PrefectStandIn:
    """Prefect's /api/health and /api/events on 127.0.0.1 that can go down (the port refuses
    connections) and come back on the same port; counts probes and keeps posted events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.probes = 0
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.probes += 1
                self._answer(200, b"true")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.events.extend(json.loads(body))
                self._answer(204, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.mark.parametrize(("outage", "base", "cap"), [
    pytest.param(4.0, 0.1, 1.0, id="compressed"),
    pytest.param(120.0, s3_events.BACKOFF_BASE_SECONDS, s3_events.BACKOFF_CAP_SECONDS,
                 id="2-minutes", marks=[pytest.mark.slow, pytest.mark.timeout(240)]),
])
def test_a_prefect_outage_costs_each_message_one_receive(
        sqs: Any, make_queue: Callable[..., Queue], bucket: str, outage: float, base: float,
        cap: float, caplog: pytest.LogCaptureFixture) -> None:
    """With maxReceiveCount 3 and a 30 s visibility timeout, the old loop sent these uploads
    to the dead-letter queue within 2 minutes; now the outage is probed, not received."""
    caplog.set_level(logging.WARNING, logger="prefect_ig1.deployments.s3_events")
    queue = make_queue(dlq_after=3)
    sent = [sqs.send_message(QueueUrl=queue.url, MessageBody=s3_message(
        s3_record(f"in/{index}.png", bucket=bucket, event_time=now())))["MessageId"]
        for index in range(3)]
    prefect = PrefectStandIn()  # down from the start
    counting = CountingSQS(sqs)
    bridge = Bridge(counting, queue.url, prefect.api_url, wait_seconds=1,
                    backoff_base=base, backoff_cap=cap)
    stop = threading.Event()
    loop = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    started = time.monotonic()
    loop.start()
    try:
        time.sleep(outage)
        during = dict(counting.receives)
        prefect.up()
        wait_for(lambda: len(prefect.events) == 3, timeout=cap + 15, what="delivery after it")
        recovered_in = time.monotonic() - started - outage
    finally:
        stop.set()
        loop.join(timeout=5)
        bridge.close()
        prefect.down()
    assert during == {message_id: 1 for message_id in sent}  # one receive for the outage
    assert counting.receives == {message_id: 2 for message_id in sent}
    assert recovered_in < cap + 5  # at most one back-off step after Prefect is back
    # held messages hidden at each back-off step (doubling to the cap), shown again at the end
    steps = [min(cap, base * 2 ** n) for n in range(200)]
    expected = next(n for n in range(1, 200) if sum(steps[:n]) >= outage)
    hidden = counting.visibility_changes[:-1]
    assert expected - 1 <= len(hidden) <= expected + 1, (hidden, expected)
    assert hidden == sorted(hidden) and hidden[-1] == math.ceil(cap) + 10
    assert counting.visibility_changes[-1] == 0
    assert messages_in(sqs, queue.url) == 0
    assert queue.dlq_url is not None and messages_in(sqs, queue.dlq_url) == 0
    assert sorted(event["resource"]["prefect.resource.id"] for event in prefect.events) == [
        f"s3://{bucket}/in/{index}.png" for index in range(3)]
    assert "Prefect is still unreachable" in caplog.text


def throttled() -> ClientError:
    return ClientError({"Error": {"Code": "RequestThrottled", "Message": "slow down"},
                        "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetQueueAttributes")


@pytest.mark.parametrize("error", [EndpointConnectionError(endpoint_url="http://sqs"),
                                   throttled()], ids=["unreachable", "throttled"])
def test_reading_the_queue_at_start_up_is_retried(
        sqs: Any, make_queue: Callable[..., Queue], error: Exception) -> None:
    queue = make_queue(dlq_after=3)
    counting = CountingSQS(sqs, failing_reads=2, read_error=error)
    waits: list[float] = []
    bridge = Bridge(counting, queue.url, closed_port_url(), wait_seconds=0, sleep=waits.append)
    bridge.close()
    assert bridge.has_dead_letter_queue
    assert (counting.attribute_reads, waits) == (3, [1, 2])
    always = CountingSQS(sqs, failing_reads=99, read_error=error)
    with pytest.raises(type(error)):
        Bridge(always, queue.url, closed_port_url(), sleep=waits.append)
    assert always.attribute_reads == s3_events.STARTUP_ATTEMPTS


def test_a_missing_queue_fails_at_start_up_without_retries(sqs: Any, queue: Queue) -> None:
    counting = CountingSQS(sqs)
    waits: list[float] = []
    with pytest.raises(ClientError, match=r"NonExistentQueue|QueueDoesNotExist"):
        Bridge(counting, queue.url + "-missing", closed_port_url(), sleep=waits.append)
    assert (counting.attribute_reads, waits) == (1, [])


def bridge_command(queue: Queue, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prefect_ig1.deployments.s3_events", "--queue-url", queue.url,
            "--ignore-prefix", "descriptions/", *extra]


def bridge_env(local_s3: LocalS3, api_url: str) -> dict[str, str]:
    return {**os.environ, **local_s3.env(), "PREFECT_API_URL": api_url}


def test_cli_once_delivers_one_batch(local_s3: LocalS3, sqs: Any, queue: Queue,
                                     notified_bucket: str, api_url: str) -> None:
    put_images(local_s3, notified_bucket, 2)
    done = subprocess.run(bridge_command(queue, "--once", "--wait-seconds", "0"), cwd=ROOT,
                          env=bridge_env(local_s3, api_url), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert messages_in(sqs, queue.url) == 0
    wait_for(lambda: len(stored_events(f"s3://{notified_bucket}/")) == 2, what="2 events")


def test_cli_once_exits_non_zero_when_a_delivery_failed(
        local_s3: LocalS3, sqs: Any, queue: Queue, bucket: str) -> None:
    sqs.send_message(QueueUrl=queue.url, MessageBody=s3_message(
        s3_record("in/a.png", bucket=bucket, event_time=now())))
    done = subprocess.run(bridge_command(queue, "--once", "--wait-seconds", "0"), cwd=ROOT,
                          env=bridge_env(local_s3, closed_port_url()), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "kept for redelivery" in done.stderr
    assert messages_in(sqs, queue.url) == 1


def test_cli_stops_cleanly_on_sigterm(local_s3: LocalS3, queue: Queue, api_url: str) -> None:
    bridge = subprocess.Popen(bridge_command(queue, "--wait-seconds", "1"), cwd=ROOT,
                              env=bridge_env(local_s3, api_url), stderr=subprocess.PIPE,
                              text=True)
    lines: list[str] = []
    stderr = bridge.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")),
                              daemon=True)
    reader.start()
    try:  # signal handlers are installed before the "bridging" line
        wait_for(lambda: any("bridging" in line for line in lines) or bridge.poll() is not None,
                 timeout=60, what="the bridge to start")
        assert bridge.poll() is None, "".join(lines)
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(timeout=15) == 0, "".join(lines)
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
        reader.join(timeout=5)
    assert any("stopped after the current batch" in line for line in lines), "".join(lines)


# --- end to end: upload → bridge → trigger → one run of describe_s3_images --------------

SERVE_WITH_TRIGGER = """
import signal, sys
from prefect import serve
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect_ig1.flows.describe_images import describe_s3_images

bucket, name = sys.argv[1:3]
trigger = DeploymentEventTrigger(**{
    "type": "event", "match": {"prefect.resource.id": f"s3://{bucket}/incoming/*"},
    "expect": ["ig1.s3.object.created"], "posture": "Reactive", "threshold": 1, "within": 10,
    "parameters": {"bucket": "{{ event.payload.bucket }}", "prefix": "incoming/"}})

def stop(signum, frame):
    raise KeyboardInterrupt  # serve() shuts its runner down on this

signal.signal(signal.SIGTERM, stop)
try:
    serve(describe_s3_images.to_deployment(name=name, triggers=[trigger]))
except KeyboardInterrupt:
    pass
"""


@pytest.fixture
def served_deployment(local_s3: LocalS3, notified_bucket: str, ig1_env: EmulatorServer,
                      api_url: str) -> Iterator[uuid.UUID]:
    """``describe_s3_images`` served with an S3-event trigger on ``incoming/``; its id."""
    name = f"on-upload-{uuid.uuid4().hex[:8]}"
    env = {**bridge_env(local_s3, api_url), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server = subprocess.Popen([sys.executable, "-c", SERVE_WITH_TRIGGER, notified_bucket, name],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            def ready() -> uuid.UUID | None:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                if not client.read_automations_by_name(f"{name}__automation_1"):
                    return None
                return client.read_deployment_by_name(f"describe-s3-images/{name}").id
            yield wait_for(ready, timeout=40, what="the served deployment and its automation")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the group holds only this serve and its runs
            server.wait()


def runs_of(deployment_id: uuid.UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id])))


def test_a_burst_of_uploads_triggers_one_run_that_describes_them_all(
        local_s3: LocalS3, sqs: Any, queue: Queue, notified_bucket: str,
        served_deployment: uuid.UUID, make_bridge: Callable[..., Bridge]) -> None:
    keys = put_images(local_s3, notified_bucket, 6)
    bridge = make_bridge(queue)
    posted_at = time.monotonic()
    assert bridge.poll_once().posted == 6

    def finished() -> FlowRun | None:
        runs = runs_of(served_deployment)
        done = [run for run in runs if run.state is not None and run.state.is_final()]
        return done[0] if done else None

    run = wait_for(finished, timeout=50, what="the triggered run to finish")
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.parameters == {"bucket": notified_bucket, "prefix": "incoming/"}
    time.sleep(max(0.0, posted_at + 11 - time.monotonic()))  # past the trigger's window
    assert len(runs_of(served_deployment)) == 1  # 6 events, one run
    described = local_s3.client().list_objects_v2(Bucket=notified_bucket,
                                                  Prefix="descriptions/incoming/")
    assert sorted(obj["Key"] for obj in described["Contents"]) == sorted(
        f"descriptions/{key}.json" for key in keys)
    # the run's own outputs notified the queue too: skipped, so the job never triggers itself
    again = bridge.poll_once()
    assert again.received > 0 and again.posted == 0 and again.skipped == again.received
