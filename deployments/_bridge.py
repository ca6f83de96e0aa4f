"""The bridge's loop: receive an SQS batch, post its events to Prefect, delete what Prefect has.

A Prefect outage costs each message one receive: the loop stops receiving and probes
``/api/health`` instead, backing off (doubling to one probe a minute), and keeps the
messages it holds invisible meanwhile (ChangeMessageVisibility), so a dead-letter queue's
``maxReceiveCount`` is not spent waiting. When Prefect answers its health check but not
its events (5xx), each back-off step costs one receive: at most one a minute.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
from prefect.events import Event

from ._s3_messages import is_ignored, parse_records, to_prefect_event

__all__ = ["BACKOFF_BASE_SECONDS", "BACKOFF_CAP_SECONDS", "DEFAULT_MAX_RECEIVES",
           "PERMANENT_STATUSES", "STARTUP_ATTEMPTS", "BatchResult", "Bridge", "SQSClient"]

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
HIDE_MARGIN_SECONDS = 10  # held messages stay hidden this long past the next probe
STARTUP_ATTEMPTS = 5  # reading the queue's attributes: 1 + 2 + 4 + 8 s of patience
DEFAULT_MAX_RECEIVES = 5  # without a dead-letter queue, a refused message is dropped after this
# Prefect refuses these events for what they are: resending the same body cannot help
PERMANENT_STATUSES = frozenset({400, 413, 422})

Delivery = Literal["delivered", "refused", "failed"]

logger = logging.getLogger("prefect_ig1.deployments.s3_events")


class SQSClient(Protocol):
    """The calls the bridge makes on a boto3 SQS client."""

    def receive_message(self, **kwargs: Any) -> Any: ...
    def delete_message(self, **kwargs: Any) -> Any: ...
    def get_queue_attributes(self, **kwargs: Any) -> Any: ...
    def change_message_visibility_batch(self, **kwargs: Any) -> Any: ...


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


class Bridge:
    """Receives one SQS batch at a time and posts its events; never raises on bad input.

    ``sleep`` is the start-up retries' wait and ``backoff_base``/``backoff_cap`` the loop's
    (tests pass a recorder, or a compressed clock).
    """

    def __init__(self, sqs_client: SQSClient, queue_url: str, api_url: str,
                 ignore_prefixes: Sequence[str] = (), *, wait_seconds: int = 20,
                 api_key: str | None = None, http: httpx.Client | None = None,
                 max_receives: int = DEFAULT_MAX_RECEIVES,
                 startup_attempts: int = STARTUP_ATTEMPTS,
                 backoff_base: float = BACKOFF_BASE_SECONDS,
                 backoff_cap: float = BACKOFF_CAP_SECONDS,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sqs = sqs_client
        self.queue_url = queue_url
        self.events_url = api_url.rstrip("/") + "/events"
        self.health_url = api_url.rstrip("/") + "/health"
        self.ignore_prefixes = tuple(ignore_prefixes)
        self.wait_seconds = wait_seconds
        self.max_receives = max_receives
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.held: list[dict[str, Any]] = []  # not delivered: hidden while Prefect is down
        self.has_dead_letter_queue = self._has_redrive_policy(sleep, startup_attempts)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.Client(timeout=10.0, headers=headers)

    def _has_redrive_policy(self, sleep: Callable[[float], None], attempts: int) -> bool:
        """Read at start-up, retried: a throttled or briefly unreachable SQS must not stop
        the bridge from starting; a missing queue or denied access fails at once."""
        attempt = 1
        while True:
            try:
                attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                                           AttributeNames=["RedrivePolicy"])
                return "RedrivePolicy" in attributes.get("Attributes", {})
            except Exception as exc:
                if attempt >= attempts or _is_permanent_sqs_error(exc):
                    raise
                delay = self._delay(attempt)
                logger.warning("reading the attributes of %s failed (%s); attempt %d of %d "
                               "in %.0f s", self.queue_url, exc, attempt + 1, attempts, delay)
                sleep(delay)
                attempt += 1

    def poll_once(self) -> BatchResult:
        """Long-poll one batch; delete each message only once Prefect has its events."""
        reply = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self.wait_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"])
        messages: list[dict[str, Any]] = reply.get("Messages", [])
        self.held = []  # earlier receipts are stale once a new batch is received
        posted = skipped = malformed = kept = refused = 0
        delivering = True  # after one failed POST the rest wait for the next receive
        for message in messages:
            message_id = message.get("MessageId", "?")
            try:
                objects, not_created = parse_records(message.get("Body", ""))
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
                self.held.append(message)
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
        (not on refusals: those are the message's fault); False if any delivery failed.

        Only a batch that did not fail resets the back-off: after a failed delivery the next
        receive waits for Prefect's health check, so empty polls cannot reset it.
        """
        failures = 0
        all_delivered = True
        prefect_down = False
        while not stop.is_set():
            if prefect_down:
                if not self.prefect_is_up():
                    failures += 1
                    self._back_off(stop, failures, "Prefect is still unreachable")
                    continue
                prefect_down = False
                self._set_held_visibility(0)  # back now: deliver what we hold at once
                self.held.clear()
            try:
                result = self.poll_once()
                failed = prefect_down = result.delivery_failed
                all_delivered = all_delivered and not result.any_failed
            except Exception as exc:  # SQS unreachable, throttled...: wait, never crash
                logger.warning("receiving from SQS failed: %s", exc)
                failed = True
                all_delivered = False
            if once:
                break
            failures = failures + 1 if failed else 0
            if failures:
                self._back_off(stop, failures, f"{failures} failed batch(es)")
        return all_delivered

    def prefect_is_up(self) -> bool:
        """Prefect's ``/api/health`` answers 2xx: worth receiving (and spending a receive) again."""
        try:
            return self.http.get(self.health_url).is_success
        except httpx.HTTPError:
            return False

    def _delay(self, failures: int) -> float:
        return float(min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1)))

    def _back_off(self, stop: threading.Event, failures: int, why: str) -> None:
        delay = self._delay(failures)
        # hidden past the next probe, so they are not received (and counted) in between
        self._set_held_visibility(math.ceil(delay) + HIDE_MARGIN_SECONDS)
        logger.warning("backing off %.0f s (%s)%s", delay, why,
                       f"; {len(self.held)} message(s) kept hidden" if self.held else "")
        stop.wait(delay)

    def _set_held_visibility(self, seconds: int) -> None:
        """ChangeMessageVisibility for the held messages; one that fails (its receipt expired,
        it was deleted) is forgotten: SQS shows it again after the queue's visibility timeout."""
        for start in range(0, len(self.held), 10):  # the batch call's limit
            chunk = self.held[start:start + 10]
            entries = [{"Id": str(index), "ReceiptHandle": message["ReceiptHandle"],
                        "VisibilityTimeout": seconds} for index, message in enumerate(chunk)]
            try:
                reply = self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url,
                                                                 Entries=entries)
                failed = {int(entry["Id"]) for entry in reply.get("Failed", [])}
            except Exception as exc:
                logger.warning("changing the visibility of held messages failed: %s", exc)
                failed = set(range(len(chunk)))
            for index in sorted(failed, reverse=True):
                self.held.remove(chunk[index])

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


