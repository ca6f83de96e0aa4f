"""S3 ObjectCreated notifications as SQS delivers them, read into Prefect events.

Pure functions, no I/O: the bridge (``s3_events``) receives and posts, this module reads.
Keys arrive URL-encoded with ``+`` for spaces (moto also encodes ``/``): ``unquote_plus``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_plus

from prefect.events import Event
from prefect.events.schemas.events import Resource

__all__ = ["EVENT_ID_NAMESPACE", "EVENT_NAME", "MalformedMessage", "S3ObjectEvent",
           "is_ignored", "parse_message", "parse_records", "to_prefect_event"]

EVENT_NAME = "ig1.s3.object.created"
EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://ig1.ai/prefect/s3-object-created")


class MalformedMessage(ValueError):
    """An SQS message body that is not an S3 notification this bridge can read."""


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


def parse_message(body: str) -> list[S3ObjectEvent]:
    """The ObjectCreated records of one SQS body (raw or SNS-wrapped); [] for a TestEvent."""
    return parse_records(body)[0]


def parse_records(body: str) -> tuple[list[S3ObjectEvent], int]:
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
