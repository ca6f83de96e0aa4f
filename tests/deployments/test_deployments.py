"""prefect.yaml and serve: schedules, triggers and concurrency limits as declared, on a server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, Deployment, FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

from prefect_ig1.deployments.serve import PREFECT_YAML, load_deployments
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.sandbox.sample_images import sample_images
from tests.helpers import TEST_KEY

ROOT = Path(__file__).resolve().parents[2]
FLOW = "describe-s3-images"


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> str:
    bucket = f"watched-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("IG1_IMAGES_BUCKET", bucket)
    monkeypatch.setenv("IG1_IMAGES_PREFIX", "incoming/")
    return bucket


def test_yaml_declares_schedule_trigger_and_limits(watched: str) -> None:
    nightly, on_upload, batch = load_deployments(PREFECT_YAML)
    assert nightly.name == "describe-images-nightly"
    assert batch.name == "run-batch" and batch.flow_name == "run-batch"
    assert not batch.schedules and not batch.triggers
    assert nightly.schedules[0].schedule.cron == "0 2 * * *"  # type: ignore[union-attr]
    assert nightly.parameters == {"bucket": watched, "prefix": "incoming/",
                                  "output_prefix": "descriptions/"}
    assert nightly.concurrency_limit == 1 and nightly.concurrency_options is not None
    assert nightly.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    trigger = on_upload.triggers[0]
    assert trigger.match.root == {"prefect.resource.id": f"s3://{watched}/incoming/*"}
    assert trigger.expect == {"ig1.s3.object.created"} and trigger.threshold == 1
    assert trigger.parameters == {"bucket": "{{ event.payload.bucket }}", "prefix": "incoming/",
                                  "output_prefix": "descriptions/"}


def _deployment(name: str) -> Deployment:
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"{FLOW}/{name}")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_prefect_deploy_all_registers_them(watched: str) -> None:
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="ig1-process", type="process"))
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
         "--prefect-file", str(PREFECT_YAML)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    nightly = _deployment("describe-images-nightly")
    assert nightly.schedules[0].schedule.cron == "0 2 * * *"  # type: ignore[union-attr]
    assert nightly.parameters["bucket"] == watched
    assert nightly.global_concurrency_limit is not None
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.work_pool_name == "ig1-process"
    on_upload = _deployment("describe-images-on-upload")
    with get_client(sync_client=True) as client:
        automations = client.read_automations_by_name(
            "describe-images-on-upload__automation_1")
    assert automations and automations[0].actions[0].deployment_id == on_upload.id  # type: ignore[union-attr]
    with get_client(sync_client=True) as client:
        batch = client.read_deployment_by_name("run-batch/run-batch")
    assert batch.work_pool_name == "ig1-process" and not batch.schedules


def _serve(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "prefect_ig1.deployments.serve"],
                            cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_final(flow_run_id: uuid.UUID, timeout: float = 90) -> FlowRun:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} did not finish")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_serve_runs_deployments_prevents_overlap_and_stops_on_sigterm(
        watched: str, local_s3: LocalS3, emulator: EmulatorServer) -> None:
    client = local_s3.client()
    client.create_bucket(Bucket=watched)
    for name, data in sample_images()[:4]:
        client.put_object(Bucket=watched, Key=f"incoming/{name}", Body=data)
    # The first run's calls are held until the second run has been decided: the overlap
    # is by construction, not by the first run's pace.
    emulator.configure(hold_until_in_flight=1_000)
    env = {**os.environ, **local_s3.env(), "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "IG1AI_API_KEY": TEST_KEY, "IG1AI_BASE_URL": emulator.base_url,
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    with get_client(sync_client=True) as prefect:  # forget `prefect deploy`'s versions
        for name in ("describe-images-nightly", "describe-images-on-upload"):
            with contextlib.suppress(ObjectNotFound):
                prefect.delete_deployment(_deployment(name).id)
        with contextlib.suppress(ObjectNotFound):
            prefect.delete_deployment(prefect.read_deployment_by_name("run-batch/run-batch").id)
    server = _serve(env)
    try:
        deadline = time.monotonic() + 60
        while True:  # until serve has (re)registered the deployment for this bucket
            with contextlib.suppress(ObjectNotFound):
                nightly = _deployment("describe-images-nightly")
                if nightly.parameters.get("bucket") == watched:
                    break
            assert time.monotonic() < deadline and server.poll() is None, (
                server.stdout.read() if server.stdout else "")
            time.sleep(0.5)
        assert nightly.schedules
        first = run_deployment(f"{FLOW}/describe-images-nightly", timeout=0)
        deadline = time.monotonic() + 60
        while emulator.stats.in_flight == 0:  # the first run is in its body, calling IG1
            assert time.monotonic() < deadline, "the first run never called IG1"
            time.sleep(0.2)
        second = run_deployment(f"{FLOW}/describe-images-nightly", timeout=0)
        cancelled = _wait_final(second.id)
        emulator.configure(hold_until_in_flight=None)  # the first run's calls go on
        completed = _wait_final(first.id)
        assert completed.state is not None and completed.state.is_completed()
        assert cancelled.state is not None and cancelled.state.is_cancelled()
        described = client.list_objects_v2(Bucket=watched, Prefix="descriptions/incoming/")
        assert described["KeyCount"] == 4
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output[-3000:]
    assert TEST_KEY not in output


def _deploy_all(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
         "--prefect-file", str(PREFECT_YAML)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_serve_refuses_a_work_pools_deployments_takes_them_over_and_deploy_resumes_them(
        watched: str) -> None:
    """`serve` after `deploy` once crashed runs (pool kept, path None); serve's stop paused
    the nightly schedule, and workers taking over found it paused."""
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="ig1-process", type="process"))
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    _deploy_all(env)
    refused = subprocess.run([sys.executable, "-m", "prefect_ig1.deployments.serve"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "describe-s3-images/describe-images-nightly (work pool 'ig1-process')" \
        in refused.stderr and "--take-over" in refused.stderr
    assert _deployment("describe-images-nightly").work_pool_name == "ig1-process"  # untouched

    server = subprocess.Popen([sys.executable, "-m", "prefect_ig1.deployments.serve",
                               "--take-over"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # until serve re-created both without the pool
            with contextlib.suppress(ObjectNotFound):
                served = [_deployment(name) for name in ("describe-images-nightly",
                                                         "describe-images-on-upload")]
                if all(d.work_pool_name is None and not d.paused for d in served):
                    break
            assert time.monotonic() < deadline and server.poll() is None, (
                server.stdout.read() if server.stdout else "")
            time.sleep(0.5)
        assert served[0].path is not None and served[0].schedules
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output[-3000:]
    assert "took over describe-s3-images/describe-images-nightly from work pool 'ig1-process'" \
        in output
    kept = output[:output.index("stay un-paused")]
    assert "describe-s3-images/describe-images-nightly" in kept
    assert "describe-s3-images/describe-images-on-upload" in kept and "workers take over" in output
    assert not _deployment("describe-images-nightly").paused

    _deploy_all(env)  # back to workers: prefect.yaml's `paused: false` un-pauses them
    for name in ("describe-images-nightly", "describe-images-on-upload"):
        deployment = _deployment(name)
        assert deployment.work_pool_name == "ig1-process" and not deployment.paused
