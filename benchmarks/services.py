"""The services a benchmark measures against: the IG1 emulator and moto's S3 (its S3 app
alone, see ``prefect_ig1.sandbox.local_s3``), each in a process of its own on 127.0.0.1 (as real
services would be), plus CPU accounting.

Separate processes matter on a 2-core machine: the flow, the emulator and moto
compete for the same cores, and each one's CPU seconds are read from /proc so a
figure can say who spent them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
import httpx
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["API_KEY", "PrefectServer", "Services", "cpu_seconds", "free_port"]

API_KEY = "sk-bench-0123456789"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service for {url} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within 180 s")


@dataclass
class Services:
    """Emulator + moto S3 subprocesses; ``env`` points boto3 and the IG1 blocks at them."""

    latency: float = 0.2
    cap: int = 16
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ig1_url: str = ""
    s3_url: str = ""

    def __enter__(self) -> Services:
        ig1_port, s3_port = free_port(), free_port()
        self.ig1_url = f"http://127.0.0.1:{ig1_port}"
        self.s3_url = f"http://127.0.0.1:{s3_port}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.processes["ig1"] = subprocess.Popen(
            [sys.executable, "-m", "prefect_ig1.sandbox.emulator", "--port", str(ig1_port),
             "--api-key", API_KEY], **quiet)  # type: ignore[call-overload]
        self.processes["s3"] = subprocess.Popen(
            [sys.executable, "-m", "prefect_ig1.sandbox.local_s3", "--port", str(s3_port)],
            **quiet)  # type: ignore[call-overload]
        _wait_until_up(self.ig1_url + "/_emulator/stats", self.processes["ig1"])
        _wait_until_up(self.s3_url, self.processes["s3"])
        self.configure(latency=self.latency, max_in_flight=self.cap, max_throughput=self.cap)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=15)

    @property
    def env(self) -> dict[str, str]:
        return {"IG1AI_API_KEY": API_KEY, "IG1AI_BASE_URL": self.ig1_url + "/v1",
                "AWS_ENDPOINT_URL": self.s3_url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def configure(self, **settings: Any) -> None:
        """Change the emulator's behaviour (latency, in-flight cap, ...) while it runs."""
        if "latency" in settings:
            self.latency = settings["latency"]
        if "max_in_flight" in settings:
            self.cap = settings["max_in_flight"]
        httpx.post(self.ig1_url + "/_emulator/settings", json=settings).raise_for_status()

    def reset_counters(self) -> None:
        httpx.post(self.ig1_url + "/_emulator/reset").raise_for_status()
        self.configure(latency=self.latency, max_in_flight=self.cap, max_throughput=self.cap)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(self.ig1_url + "/_emulator/stats").json()
        return result

    def cpu(self) -> dict[str, float]:
        """CPU seconds each service has used so far."""
        return {name: cpu_seconds(process.pid) for name, process in self.processes.items()}

    def s3(self) -> S3Client:
        client: S3Client = boto3.session.Session().client(
            "s3", endpoint_url=self.s3_url, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
            config=Config(max_pool_connections=32))
        return client

    def seed(self, bucket: str, keys: Iterable[str], make: Callable[[str], bytes]) -> int:
        """Upload ``make(key)`` for each key (made in the upload threads); returns how many."""
        client = self.s3()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)

        def put(key: str) -> None:
            client.put_object(Bucket=bucket, Key=key, Body=make(key))

        with ThreadPoolExecutor(16) as pool:
            return len(list(pool.map(put, keys)))


class PrefectServer:
    """``prefect server start`` in a home of its own: what the probes run against."""

    def __init__(self) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        home = tempfile.mkdtemp(prefix="ig1-bench-server-")
        self.env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
                    "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(self.port)], env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def client_env(self) -> dict[str, str]:
        """The environment of a process that runs flows against this server (once it is up)."""
        _wait_until_up(self.api_url + "/health", self.process)
        return {**self.env, "PREFECT_API_URL": self.api_url}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
