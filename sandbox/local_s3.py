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
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING

import boto3
import httpx
from botocore.config import Config
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["LocalS3"]

ACCESS_KEY = "testing"
SECRET_KEY = "testing"  # noqa: S105 - moto's dummy credentials, accepted by any moto server
REGION = "us-east-1"


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
    """``python -m prefect_ig1.sandbox.local_s3 --port 9000``: moto's S3 alone until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description="moto's S3 alone on 127.0.0.1, until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    serve_s3_only(args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
