"""A local S3 for the demo and the tests: moto's server mode on 127.0.0.1, over real HTTP.

Server mode, not ``mock_aws``: requests go through sockets and URL encoding exactly as
against AWS, so key-encoding bugs show up here instead of in production.

    with LocalS3() as s3:
        s3.client().create_bucket(Bucket="photos")
        os.environ.update(s3.env())  # boto3's default chain now talks to it

moto keeps its state per process: two LocalS3 servers in one process share buckets,
and ``reset()`` empties them all. The same holds across ``stop()`` and ``start()``:
the server comes back on the same port with every bucket and object, which is how
tests make S3 unreachable for a while.

The same server speaks SQS and delivers S3 notifications to it: ``notify_queue`` is the
local recipe for S3 events (``aws sqs create-queue`` in AWS CLI v1 ignores
``AWS_ENDPOINT_URL``, so the CLI needs ``--endpoint-url``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
import httpx
from botocore.config import Config
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["LocalS3", "NotifiedQueue"]

ACCESS_KEY = "testing"
SECRET_KEY = "testing"  # noqa: S105 - moto's dummy credentials, accepted by any moto server
REGION = "us-east-1"


@dataclass(frozen=True)
class NotifiedQueue:
    """An SQS queue that a bucket's ObjectCreated notifications under ``prefix`` go to."""

    url: str  # what the bridge's --queue-url takes
    arn: str  # what the bucket's notification configuration names


class LocalS3:
    """moto's S3 on 127.0.0.1 in a background thread; port 0 picks a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        self._host = host
        self._port = port
        self._quiet = quiet
        self._server: ThreadedMotoServer | None = None
        self._endpoint_url: str | None = None

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self._endpoint_url is None:
            raise RuntimeError("LocalS3 is not running: call start() or use it in a with block")
        return self._endpoint_url

    def start(self) -> LocalS3:
        """Start serving; returns self so ``s3 = LocalS3().start()`` reads naturally.

        After ``stop()`` it serves again on the same port, with the same buckets.
        """
        if self._server is not None:
            return self
        werkzeug_log = logging.getLogger("werkzeug")
        if self._quiet and werkzeug_log.level == logging.NOTSET:
            # one access-log line per request would drown test and demo output
            werkzeug_log.setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._port = port
        self._server = server
        self._endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Stop serving (connections are refused) and join the thread; safe to call twice."""
        server, self._server = self._server, None
        self._endpoint_url = None
        if server is not None:
            server.stop()

    def reset(self) -> None:
        """Empty every bucket moto holds in this process (moto's ``/moto-api/reset``)."""
        httpx.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def client(self) -> S3Client:
        """A boto3 S3 client bound to this server with moto's dummy credentials.

        Its pool fits 64 threads, so tests can fill a bucket in parallel without warnings.
        """
        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        config = Config(max_pool_connections=64)
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def sqs_client(self) -> Any:
        """A boto3 SQS client bound to this server (moto serves every AWS API on one port)."""
        session = boto3.session.Session(aws_access_key_id=ACCESS_KEY,
                                        aws_secret_access_key=SECRET_KEY, region_name=REGION)
        return session.client("sqs", endpoint_url=self.endpoint_url)

    def notify_queue(self, bucket: str, queue_name: str, prefix: str = "") -> NotifiedQueue:
        """Create ``bucket`` (if needed) and ``queue_name``, and send the bucket's
        ObjectCreated notifications under ``prefix`` to the queue: S3 events, locally."""
        s3, sqs = self.client(), self.sqs_client()
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url,
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        target: dict[str, Any] = {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}
        if prefix:
            target["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
        configuration: Any = {"QueueConfigurations": [target]}
        s3.put_bucket_notification_configuration(Bucket=bucket,
                                                 NotificationConfiguration=configuration)
        return NotifiedQueue(url=str(url), arn=str(arn))

    def env(self) -> dict[str, str]:
        """Environment that points boto3's default chain (and any AWS CLI/SDK) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_s3_only(host: str, port: int) -> None:
    """Serve moto's S3 alone, in the foreground (for benchmarks, in a process of its own).

    ``python -m moto.server`` matches every request against every AWS service it
    emulates before handing it to S3: about 40 % of its CPU per request. Here moto's
    S3 app answers directly (no SQS, no ``/moto-api``).
    """
    from moto.moto_server.werkzeug_app import create_backend_app
    from werkzeug.serving import run_simple

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    run_simple(host, port, create_backend_app("s3"), threaded=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m prefect_ig1.sandbox.local_s3 --port 9000``: moto's S3 alone until interrupted;
    with ``--queue``, S3 + SQS and a bucket notifying the queue (prints URL, ARN, env)."""
    import argparse
    import signal
    import threading

    parser = argparse.ArgumentParser(
        prog="python -m prefect_ig1.sandbox.local_s3",
        description="moto on 127.0.0.1 until interrupted: S3 alone, or with --queue S3 + SQS "
                    f"and bucket notifications. Credentials {ACCESS_KEY}/{SECRET_KEY}, "
                    f"region {REGION}.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--queue", metavar="NAME", help="also serve SQS, create queue NAME and "
                        "send --bucket's ObjectCreated notifications to it")
    parser.add_argument("--bucket", default="demo-photos",
                        help="with --queue (default %(default)s)")
    parser.add_argument("--prefix", default="incoming/", help="with --queue (default %(default)s)")
    args = parser.parse_args(argv)
    if not args.queue:
        serve_s3_only(args.host, args.port)
        return 0
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    signal.signal(signal.SIGINT, lambda signum, frame: done.set())
    with LocalS3(args.host, args.port) as server:
        queue = server.notify_queue(args.bucket, args.queue, args.prefix)
        exports = " ".join(f"{name}={value}" for name, value in server.env().items())
        print(f"S3 + SQS at {server.endpoint_url}\nqueue URL: {queue.url}\nqueue ARN: "
              f"{queue.arn}\ns3://{args.bucket}/{args.prefix}* notifies it\n"
              f"export {exports}", flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
