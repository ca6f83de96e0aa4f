"""The README's "run it on events" section, end to end, with real local processes.

A Prefect server, moto's S3 + SQS with bucket notifications, the IG1 emulator,
``prefect deploy`` of ``deployments/prefect.yaml``, a process worker and the S3-events
bridge; then a burst of uploads, the one triggered run's records and summary, and
everything it started stopped again. ``python -m prefect_ig1.sandbox.events_demo``
(``make events-demo``); ``tests/sandbox/test_events_demo.py`` runs it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from ..deployments.serve import PREFECT_YAML
from .emulator import EmulatorServer
from .local_s3 import LocalS3
from .sample_images import sample_images

__all__ = ["main"]

DEMO_KEY = "sk-demo-not-a-real-key"
BUCKET, PREFIX, QUEUE, POOL = "demo-photos", "incoming/", "ig1-uploads", "ig1-process"
DEPLOYMENT = "describe-images-on-upload"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _default_signals() -> None:
    """In the child: a non-interactive shell may leave SIGINT ignored, and Prefect's worker
    turns SIGTERM into SIGINT; restore both so SIGTERM stops it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _shown(command: Sequence[str]) -> str:
    """The command as a user types it (``prefect ...`` rather than ``python -m prefect ...``)."""
    words = list(command)
    if words[:2] == [sys.executable, "-m"]:
        words = words[2:] if words[2] == "prefect" else ["python", "-m", *words[2:]]
    return "$ " + shlex.join(words)


class Demo:
    """The processes and environment of one demo; every process it starts, it stops."""

    def __init__(self, workdir: Path, stack: ExitStack) -> None:
        self.workdir, self.stack = workdir, stack
        self.logs: list[Path] = []
        self.env: dict[str, str] = {key: value for key, value in os.environ.items()
                                    if not key.startswith(("PREFECT_", "AWS_", "IG1"))}
        self.env.update({"PREFECT_HOME": str(workdir / "client"),
                         "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                         "PREFECT_WORKER_QUERY_SECONDS": "2",
                         "IG1_IMAGES_BUCKET": BUCKET, "IG1_IMAGES_PREFIX": PREFIX})

    def run(self, *command: str) -> None:
        print(_shown(command), flush=True)
        done = subprocess.run(  # noqa: S603 - the demo's own commands
            command, cwd=self.workdir, env=self.env, capture_output=True, text=True,
            timeout=300, check=False)
        if done.returncode:
            raise RuntimeError(f"{_shown(command)} failed:\n{done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")

    def start(self, name: str, *command: str, env: dict[str, str] | None = None) -> None:
        """A background process, its output in ``<workdir>/<name>.log``, stopped on exit."""
        print(_shown(command) + " &", flush=True)
        log = self.workdir / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            process = subprocess.Popen(  # noqa: S603 - the demo's own commands
                command, cwd=self.workdir, env=env or self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_signals)
        self.stack.callback(_stop, process)

    def tails(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                         for log in self.logs if log.exists())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: it and its children only
        process.wait(timeout=10)


def _wait(check: Any, timeout: float, what: str, demo: Demo) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}\n{demo.tails()}")
        time.sleep(1)


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=5).is_success
    except httpx.HTTPError:
        return False


def _runs(api_url: str) -> list[dict[str, Any]]:
    reply = httpx.post(f"{api_url}/flow_runs/filter", timeout=10, json={
        "deployments": {"name": {"any_": [DEPLOYMENT]}}})
    reply.raise_for_status()
    runs: list[dict[str, Any]] = reply.json()
    return runs


@contextmanager
def _demo_directory(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(".demo/events").resolve()
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="ig1-events-demo-") as name:
            yield Path(name)


def _start_everything(demo: Demo, s3: LocalS3, emulator: EmulatorServer) -> tuple[str, str]:
    """Server, pool, deployments, worker, bridge: the README's commands. (API URL, queue URL)"""
    queue = s3.notify_queue(BUCKET, QUEUE, PREFIX)
    print(f"$ python -m prefect_ig1.sandbox.local_s3 --queue {QUEUE} --bucket {BUCKET} "
          f"--prefix {PREFIX}  # here in-process\nqueue URL: {queue.url}\nqueue ARN: {queue.arn}")
    print(f"IG1 emulator at {emulator.base_url} (key {DEMO_KEY})")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_env = {**demo.env, "PREFECT_HOME": str(demo.workdir / "server")}
    demo.start("server", sys.executable, "-m", "prefect", "server", "start", "--no-ui",
               "--host", "127.0.0.1", "--port", str(port), env=server_env)
    _wait(lambda: _healthy(api_url), 90, "the Prefect server", demo)
    demo.env.update({"PREFECT_API_URL": api_url, **s3.env(), "IG1AI_API_KEY": DEMO_KEY,
                     "IG1AI_BASE_URL": emulator.base_url})
    demo.run(sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process")
    demo.run(sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
             "--prefect-file", str(PREFECT_YAML))
    demo.start("worker", sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL)
    demo.start("bridge", sys.executable, "-m", "prefect_ig1.deployments.s3_events",
               "--queue-url", queue.url, "--ignore-prefix", "descriptions/",
               "--wait-seconds", "2")
    _wait(lambda: "bridging" in (demo.workdir / "bridge.log").read_text(errors="replace"),
          60, "the bridge", demo)
    return api_url, queue.url


def _show_results(s3: LocalS3, run: dict[str, Any], uploaded_at: float, keys: list[str]) -> None:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="descriptions/")
    objects = {obj["Key"]: obj for obj in listed.get("Contents", [])}
    records = sorted(key for key in objects if key.startswith(f"descriptions/{PREFIX}"))
    last = max(objects[key]["LastModified"].timestamp() for key in records)
    print(f"\n== run {run['name']!r} of {DEPLOYMENT}: {run['state']['type']}; "
          f"{len(records)} records for {len(keys)} uploads, the last written "
          f"{last - uploaded_at:.0f} s after the first upload (30 s of it the trigger's "
          "schedule_after)")
    for key in records:
        print(f"   s3://{BUCKET}/{key}")
    record = client.get_object(Bucket=BUCKET, Key=records[0])["Body"].read().decode()
    print(f"\nA record ({records[0]}):\n{record}")
    [summary] = [key for key in objects if key.endswith("/summary.md")]
    body = client.get_object(Bucket=BUCKET, Key=summary)["Body"].read().decode()
    print(f"\nThe run's summary (s3://{BUCKET}/{summary}):\n\n{body}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefect_ig1.sandbox.events_demo",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=10, help="uploads in the burst")
    parser.add_argument("--keep", action="store_true",
                        help="keep logs and Prefect homes in .demo/events/ (else a temp dir)")
    parser.add_argument("--timeout", type=float, default=240,
                        help="seconds to wait for the triggered run")
    args = parser.parse_args(argv)
    with _demo_directory(args.keep) as workdir, ExitStack() as stack:
        demo = Demo(workdir, stack)
        emulator = stack.enter_context(EmulatorServer(api_key=DEMO_KEY, latency=0.05))
        s3 = stack.enter_context(LocalS3())
        api_url, _ = _start_everything(demo, s3, emulator)
        images = (sample_images() * (args.images // len(sample_images()) + 1))[:args.images]
        client = s3.client()
        uploaded_at = time.time()
        keys = [f"{PREFIX}{index:02d} {name}" for index, (name, _) in enumerate(images)]
        for key, (_, data) in zip(keys, images, strict=True):
            client.put_object(Bucket=BUCKET, Key=key, Body=data)
        print(f"\nUploaded {len(keys)} images to s3://{BUCKET}/{PREFIX}; waiting for the "
              "triggered run (the trigger waits 30 s after the first upload)...", flush=True)

        def finished() -> dict[str, Any] | None:
            runs = _runs(api_url)
            done = [run for run in runs if run["state"] and run["state"]["type"] in
                    ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
            return done[0] if done else None

        run = _wait(finished, args.timeout, "the triggered run", demo)
        if run["state"]["type"] != "COMPLETED":
            raise RuntimeError(f"the triggered run ended {run['state']['type']}\n{demo.tails()}")
        _show_results(s3, run, uploaded_at, keys)
        print(f"{len(_runs(api_url))} run(s) of {DEPLOYMENT} for {len(keys)} uploads; "
              f"{emulator.stats.requests} IG1 call(s). Stopping everything.", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
