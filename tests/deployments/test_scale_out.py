"""Scale-out, for real: one Prefect server, a process work pool, TWO workers, moto S3, the emulator.

Everything runs on 127.0.0.1 and is started and stopped by the tests: the session's Prefect
test server (``prefect_server``), moto's S3 (``local_s3``), the IG1 emulator, and two
``prefect worker start`` subprocesses, each with its OWN ``PREFECT_HOME`` and local
storage, sharing only what a fleet of machines would share: the API, a global
concurrency limit, and an S3 bucket as default result storage (the response cache).

A. Two sharded runs (``shard-a/``, ``shard-b/``) at once, one per worker, each allowed
   8 calls in flight, share one global limit of 3: never more than 3 description calls
   in flight (measured by kind by a pass-through proxy in front of the emulator).
B. The same pictures copied under ``shard-c/`` are all cache hits, whichever worker
   runs them: the cache lives in S3, not on a worker's disk.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from prefect.workers.process import ProcessWorker
from prefect_aws import AwsCredentials, S3Bucket

from prefect_ig1.flows import describe_s3_images
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.tasks.cache import CACHE_KEY_PREFIX, image_digest
from prefect_ig1.tasks.images import prepare_image
from tests.helpers import TEST_KEY

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = "prefect_ig1.flows.describe_images:describe_s3_images"
PER_SHARD = 12
GLOBAL_LIMIT = 3
PER_RUN = 8
LATENCY = 0.25
RUN_TIMEOUT = 75.0


def _png(seed: int) -> bytes:
    """A small PNG whose content differs for every seed (so every image is a distinct call)."""
    image = Image.new("RGB", (40, 30), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    image.putpixel((seed % 40, seed // 40 % 30), (255 - seed % 256, 0, seed % 7))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


IMAGES = {"shard-a/": [(f"a{i:02d}.png", _png(i)) for i in range(PER_SHARD)],
          "shard-b/": [(f"b{i:02d}.png", _png(100 + i)) for i in range(PER_SHARD)]}


@dataclass
class Fleet:
    """What the test deployed, and where."""

    s3: LocalS3
    bucket: str
    results_bucket: str
    limit_name: str
    deployment_id: UUID
    worker_names: list[str]
    worker_logs: list[Path]
    worker_homes: list[Path]

    @functools.cached_property
    def s3_client(self) -> Any:
        """One boto3 client for the test's own reads (creating one costs ~0.2 s)."""
        return self.s3.client()

    def logs(self) -> str:
        tails = [f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
                 for path in self.worker_logs]
        return "\n".join(tails)


@dataclass
class ShardedRuns:
    runs: dict[str, FlowRun]
    peak_in_flight: dict[str, int]  # "image" (descriptions), "text" (summaries), "all"
    emulator_max_in_flight_seen: int
    shard_sequence: list[str]  # which shard each image request came from, in arrival order


class InFlightProxy:
    """A pass-through in front of the emulator that measures IG1 calls in flight BY KIND.

    The emulator's own gauge counts every call; this one also tells the image descriptions
    (which hold a global-limit slot) from the summary calls (which, today, do not).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64))
        self._lock = threading.Lock()
        self._now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def reset(self) -> None:
        with self._lock:
            self.peak.clear()

    def _count(self, kind: str, step: int) -> None:
        with self._lock:
            for name in (kind, "all"):
                self._now[name] += step
                self.peak[name] = max(self.peak[name], self._now[name])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        hop = {"host", "content-length", "connection", "transfer-encoding", "content-encoding",
               "accept-encoding", "keep-alive"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real API
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on small replies

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                kind = "image" if b"input_image" in body else "text"
                counted = self.command == "POST"
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                if counted:
                    proxy._count(kind, 1)
                try:
                    reply = proxy._client.request(self.command, proxy.upstream + self.path,
                                                  content=body, headers=headers)
                finally:
                    if counted:
                        proxy._count(kind, -1)
                self.send_response(reply.status_code)
                for name, value in reply.headers.items():
                    if name.lower() not in hop:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = do_POST = forward

        return Handler

    def __enter__(self) -> InFlightProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


@pytest.fixture(scope="module")
def ig1_proxy(emulator_server: EmulatorServer) -> Iterator[InFlightProxy]:
    """The workers' IG1AI_BASE_URL: the emulator, through the in-flight gauge."""
    with InFlightProxy(emulator_server.url) as proxy:
        yield proxy


def _worker_env(name: str, root: Path, s3: LocalS3, ig1_base_url: str,
                block: str) -> dict[str, str]:
    home = root / name
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTEST_", "PREFECT_"))}
    env.update(s3.env())
    env.update({
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK": block,
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # both runs picked up within ~1 s
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_ENABLED": "false",
        "IG1AI_API_KEY": TEST_KEY,
        "IG1AI_BASE_URL": ig1_base_url,
    })
    return env


def _default_signals() -> None:
    """In the child: a non-interactive shell leaves SIGINT ignored, so SIGTERM would not stop
    the worker (Prefect turns SIGTERM into SIGINT); restore both defaults."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def fleet(prefect_server: None, emulator_server: EmulatorServer, ig1_proxy: InFlightProxy,
          local_s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Pool, result-storage block, global limit, deployment, and two running workers."""
    suffix = uuid.uuid4().hex[:8]
    pool, limit_name = f"ig1-test-{suffix}", f"ig1-{suffix}"
    bucket, results_bucket = f"photos-{suffix}", f"prefect-results-{suffix}"
    client = local_s3.client()
    client.create_bucket(Bucket=bucket)
    client.create_bucket(Bucket=results_bucket)
    for prefix, images in IMAGES.items():
        for name, data in images:
            client.put_object(Bucket=bucket, Key=prefix + name, Body=data)

    block_name = f"ig1-results-{suffix}"
    S3Bucket(bucket_name=results_bucket, credentials=AwsCredentials(
        aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": local_s3.endpoint_url},
    )).save(block_name)
    with get_client(sync_client=True) as api:
        api.create_work_pool(WorkPoolCreate(
            name=pool, type="process",
            base_job_template=ProcessWorker.get_default_base_job_template()))
        api.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=limit_name, limit=GLOBAL_LIMIT))

    # The entrypoint is the installed package's module path (as in deployments/prefect.yaml):
    # a process worker imports it, whatever its working directory.
    with get_client(sync_client=True) as api:
        deployment_id = api.create_deployment(
            flow_id=api.create_flow_from_name(describe_s3_images.name),
            name=f"scale-out-{suffix}", entrypoint=ENTRYPOINT, work_pool_name=pool,
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {
                "directory": str(REPO_ROOT)}}])

    root = tmp_path_factory.mktemp("ig1-workers")
    names = [f"worker-a-{suffix}", f"worker-b-{suffix}"]
    logs = [root / f"{name}.log" for name in names]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, log in zip(names, logs, strict=True):
            with log.open("wb") as out:
                # --limit 1: two simultaneous runs must land on two different workers.
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                     "--type", "process", "--name", name, "--limit", "1"],
                    cwd=root, env=_worker_env(name, root, local_s3, ig1_proxy.base_url,
                                              f"s3-bucket/{block_name}"),
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_default_signals))
        fleet = Fleet(local_s3, bucket, results_bucket, limit_name, deployment_id, names, logs,
                      [root / name for name in names])
        _wait_for_workers(pool, names, processes, fleet)
        yield fleet
    finally:
        for process in processes:
            _stop(process)
        emulator_server.reset()


def _wait_for_workers(pool: str, names: list[str], processes: list[subprocess.Popen[bytes]],
                      fleet: Fleet, timeout: float = 45.0) -> None:
    """Both workers have registered with the server (so neither takes both runs)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as api:
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in processes), "a worker died:\n" + fleet.logs()
            seen = {worker.name for worker in api.read_workers_for_work_pool(pool)}
            if set(names) <= seen:
                return
            time.sleep(0.5)
    pytest.fail("workers did not register in time:\n" + fleet.logs())


def _trigger(fleet: Fleet, prefix: str) -> UUID:
    run = run_deployment(fleet.deployment_id, timeout=0, parameters={
        "bucket": fleet.bucket, "prefix": prefix, "output_prefix": "out/",
        "max_concurrency": PER_RUN, "concurrency_limit_name": fleet.limit_name})
    return run.id


def _wait(fleet: Fleet, run_ids: list[UUID], timeout: float = RUN_TIMEOUT) -> list[FlowRun]:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as api:
        while True:
            runs = [api.read_flow_run(run_id) for run_id in run_ids]
            if all(run.state is not None and run.state.is_final() for run in runs):
                return runs
            if time.monotonic() > deadline:
                states = [(run.name, run.state_name) for run in runs]
                pytest.fail(f"flow runs not finished in {timeout}s: {states}\n" + fleet.logs())
            time.sleep(0.5)


def _image_requests(emulator: EmulatorServer) -> list[dict[str, Any]]:
    return [body for body in emulator.stats.received if "input_image" in json.dumps(body)]


def _image_digest_of(body: dict[str, Any]) -> str:
    for message in body["input"]:
        for part in message.get("content", []):
            if isinstance(part, dict) and part.get("type") == "input_image":
                return image_digest(part["image_url"])
    raise AssertionError(f"no input_image in {body}")


def _run_json(fleet: Fleet, run: FlowRun) -> dict[str, Any]:
    listed = fleet.s3_client.list_objects_v2(Bucket=fleet.bucket, Prefix="out/_runs/")
    key, = (obj["Key"] for obj in listed.get("Contents", [])
            if obj["Key"].endswith(f"Z-{run.name}/run.json"))
    body = fleet.s3_client.get_object(Bucket=fleet.bucket, Key=key)
    document: dict[str, Any] = json.loads(body["Body"].read())
    return document


def _record(fleet: Fleet, key: str) -> dict[str, Any]:
    body = fleet.s3_client.get_object(Bucket=fleet.bucket, Key=f"out/{key}.json")["Body"]
    document: dict[str, Any] = json.loads(body.read())
    return document


@pytest.fixture(scope="module")
def sharded(fleet: Fleet, emulator_server: EmulatorServer,
            ig1_proxy: InFlightProxy) -> ShardedRuns:
    """Scenario A's two runs, triggered at once; the emulator's counters read right after."""
    emulator_server.reset()
    ig1_proxy.reset()
    emulator_server.configure(latency=LATENCY)
    ids = {prefix: _trigger(fleet, prefix) for prefix in IMAGES}
    runs = dict(zip(ids, _wait(fleet, list(ids.values())), strict=True))
    shard_of = {"sha256:" + hashlib.sha256(prepare_image(data).data).hexdigest():
                prefix for prefix, images in IMAGES.items() for _, data in images}
    bodies = _image_requests(emulator_server)
    sequence = [shard_of.get(_image_digest_of(body), "?") for body in bodies]
    stats = emulator_server.stats
    emulator_server.reset()
    return ShardedRuns(runs, dict(ig1_proxy.peak), stats.max_in_flight_seen, sequence)


def test_sharded_runs_share_one_global_limit_across_two_workers(
        fleet: Fleet, sharded: ShardedRuns) -> None:
    runs = sharded.runs
    assert all(run.state is not None and run.state.is_completed() for run in runs.values()), (
        [(run.name, run.state_name, run.state and run.state.message) for run in runs.values()],
        fleet.logs())
    workers = {prefix: run.labels.get("prefect.worker.name") for prefix, run in runs.items()}
    assert set(workers.values()) <= set(fleet.worker_names), workers

    # every image described once, by the run of its shard
    assert sorted(sharded.shard_sequence) == sorted(p for p in IMAGES for _ in range(PER_SHARD))
    # Which worker takes which run, and how much the runs overlap, is up to timing;
    # the bound is not: each run allows 8 in flight, together never more than the limit.
    peak = sharded.peak_in_flight
    assert peak["image"] <= GLOBAL_LIMIT, peak
    assert peak["image"] == GLOBAL_LIMIT, peak  # the limit, not luck, was the bound
    # Summary calls hold a global slot too: nothing exceeds the limit.
    assert peak["all"] <= GLOBAL_LIMIT, peak
    assert sharded.emulator_max_in_flight_seen <= GLOBAL_LIMIT, peak

    for prefix, run in runs.items():
        report = _run_json(fleet, run)
        assert report["counts"] == {"described": PER_SHARD}, report
        assert report["max_concurrency"] == PER_RUN
        for name, _ in IMAGES[prefix]:
            record = _record(fleet, prefix + name)
            assert record["text"] and record["cached"] is False and record["error"] is None


def test_a_copy_is_a_cache_hit_on_any_worker(fleet: Fleet, sharded: ShardedRuns,
                                             emulator: EmulatorServer) -> None:
    """The response cache is in the S3 result storage, not on the worker that paid."""
    cached = fleet.s3_client.list_objects_v2(Bucket=fleet.results_bucket,
                                             Prefix=CACHE_KEY_PREFIX)
    assert cached.get("KeyCount", 0) >= 2 * PER_SHARD, "responses not cached in the S3 block"
    for home in fleet.worker_homes:  # and nothing on a worker's own disk
        assert not list(home.rglob(CACHE_KEY_PREFIX + "*")), home

    client = fleet.s3_client
    copies = [(prefix, name) for prefix, images in IMAGES.items() for name, _ in images]
    for prefix, name in copies:
        client.copy_object(Bucket=fleet.bucket, Key=f"shard-c/{prefix}{name}",
                           CopySource={"Bucket": fleet.bucket, "Key": prefix + name})
    (run,) = _wait(fleet, [_trigger(fleet, "shard-c/")])

    assert run.state is not None and run.state.is_completed(), (run.state, fleet.logs())
    assert run.labels.get("prefect.worker.name") in fleet.worker_names
    assert _image_requests(emulator) == []  # not one image paid twice
    assert _run_json(fleet, run)["counts"] == {"cached": 2 * PER_SHARD}
    for prefix, name in copies:
        record = _record(fleet, f"shard-c/{prefix}{name}")
        assert record["cached"] is True and record["text"]
