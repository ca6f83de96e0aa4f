"""S3 ObjectCreated notifications (via SQS) become Prefect events that deployments trigger on.

Open-source Prefect has no inbound webhooks, so this bridge long-polls the SQS queue S3
notifies and POSTs one ``ig1.s3.object.created`` event per new object.

    python -m prefect_ig1.deployments.s3_events --queue-url URL --ignore-prefix descriptions/

At-least-once, and harmless: a message is deleted only after Prefect answered 2xx, and
an event's id is uuid5(bucket, key, ETag, event time), so Prefect drops SQS redeliveries.
A message Prefect refuses for good (400, 413, 422) is no outage: it is left to the queue's
dead-letter queue, or, without one, deleted with an ERROR after ``max_receives`` receives.
The SQS endpoint and region are the queue URL's own (``--endpoint-url``/``--region``
override), never ``AWS_ENDPOINT_URL``'s: a URL for one queue must not read another.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from ._bridge import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    DEFAULT_MAX_RECEIVES,
    PERMANENT_STATUSES,
    STARTUP_ATTEMPTS,
    BatchResult,
    Bridge,
    SQSClient,
)
from ._s3_messages import (
    EVENT_ID_NAMESPACE,
    EVENT_NAME,
    MalformedMessage,
    S3ObjectEvent,
    is_ignored,
    parse_message,
    to_prefect_event,
)
from ._sqs_queue import (
    DEFAULT_REGION,
    QueueAddress,
    QueueUrlError,
    describe_sqs_failure,
    parse_queue_url,
)

__all__ = ["BACKOFF_BASE_SECONDS", "BACKOFF_CAP_SECONDS", "DEFAULT_MAX_RECEIVES",
           "EVENT_ID_NAMESPACE", "EVENT_NAME", "PERMANENT_STATUSES", "STARTUP_ATTEMPTS",
           "BatchResult", "Bridge", "MalformedMessage", "QueueAddress", "QueueUrlError",
           "S3ObjectEvent", "SQSClient", "is_ignored", "main", "parse_message",
           "parse_queue_url", "to_prefect_event"]

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prefect_ig1.deployments.s3_events",
                                     description="S3 notifications in SQS -> Prefect events")
    parser.add_argument("--queue-url", required=True,
                        help="the SQS queue S3 notifies, as `aws sqs get-queue-url` prints it; "
                             "its host and region are where the bridge reads")
    parser.add_argument("--endpoint-url", default=None,
                        help="send SQS calls here instead of the queue URL's host (a proxy)")
    parser.add_argument("--region", default=None,
                        help="the queue's region when its URL names none (a local server; "
                             "default AWS_REGION, AWS_DEFAULT_REGION, us-east-1)")
    parser.add_argument("--ignore-prefix", action="append", default=[], metavar="PREFIX",
                        help="skip keys under PREFIX (the job's outputs); repeatable")
    parser.add_argument("--wait-seconds", type=int, default=20, choices=range(21),
                        metavar="0-20", help="SQS long-poll wait (default 20)")
    parser.add_argument("--max-receives", type=int, default=DEFAULT_MAX_RECEIVES, metavar="N",
                        help="without a dead-letter queue, delete a message Prefect refuses "
                             f"(400/413/422) at its N-th receive (default {DEFAULT_MAX_RECEIVES})")
    parser.add_argument("--startup-attempts", type=int, default=STARTUP_ATTEMPTS, metavar="N",
                        help="tries to reach the queue at start-up, 1 s, 2 s, 4 s... apart "
                             f"(default {STARTUP_ATTEMPTS})")
    parser.add_argument("--once", action="store_true",
                        help="process one batch and exit (1 if any delivery failed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: bridge a queue until SIGTERM/SIGINT (or one batch with --once, which
    exits 1 when some events did not reach Prefect); 2 when the queue cannot be read."""
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    from ._sqs_queue import sqs_client

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        address = parse_queue_url(
            args.queue_url, endpoint_url=args.endpoint_url, region=args.region,
            default_region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION)
    except QueueUrlError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api_url = PREFECT_API_URL.value()
    if not api_url:
        parser.error("PREFECT_API_URL is not set (prefect config set PREFECT_API_URL=...)")
    try:
        bridge = Bridge(sqs_client(address), address.url, api_url, args.ignore_prefix,
                        wait_seconds=args.wait_seconds, api_key=PREFECT_API_KEY.value(),
                        max_receives=args.max_receives, startup_attempts=args.startup_attempts)
    except Exception as exc:
        why = describe_sqs_failure(exc, address)
        parser.exit(2, f"{parser.prog}: error: {why or f'reading the queue failed: {exc!r}'}\n")
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only this: logging from a signal handler can re-enter the stream

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info("bridging %s (SQS at %s, region %s) to %s", address.url, address.endpoint_url,
                address.region, bridge.events_url)
    try:
        all_delivered = bridge.run(stop, once=args.once)
    finally:
        bridge.close()
    logger.info("stopped after the current batch" if stop.is_set() else "done")
    return 1 if args.once and not all_delivered else 0


if __name__ == "__main__":
    raise SystemExit(main())
