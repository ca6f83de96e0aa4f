"""Issue 7, item 7: two runs of the flow on the same bucket at the same time.

Started together in two threads of one process, with IG1 latency so their calls overlap:
every image ends with exactly one whole, valid record (the right source, the right bytes),
both runs finish and write their outputs, and the calls paid stay below two runs' worth.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.settings import PREFECT_API_URL

from prefect_ig1.flows import describe_s3_images
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.helpers import describe_calls, distinct_pngs, put, read_records, run_outputs

pytestmark = pytest.mark.usefixtures("prefect_server")

IMAGES = 24


def _together(*runs: Callable[[], Any]) -> list[Any]:
    """Start the runs at the same instant, each on its own thread; their results in order."""
    start = threading.Barrier(len(runs))

    def go(run: Callable[[], Any]) -> Any:
        start.wait()
        return run()

    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(go, runs))


def _check_records(local_s3: LocalS3, bucket: str, images: list[tuple[str, bytes]]) -> None:
    found = read_records(local_s3, bucket)  # each one parses and validates as an ImageRecord
    assert set(found) == {f"in/{name}" for name, _ in images}  # one per image, no strays
    for name, data in images:
        doc = found[f"in/{name}"]
        assert doc.sha256 == hashlib.sha256(data).hexdigest() and doc.error is None
        assert doc.text is not None and doc.text.startswith("Echo: ")


@pytest.mark.slow
@pytest.mark.parametrize("same_name", [False, True], ids=["own-names", "same-name"])
def test_two_runs_at_once_write_one_valid_record_per_image_and_pay_once(
        env: EmulatorServer, local_s3: LocalS3, bucket: str, prompt: str,
        same_name: bool) -> None:
    """Also with one flow-run name for both (a templated ``flow_run_name``): the runs are told
    apart by their ids."""
    images = distinct_pngs(IMAGES, seed=9600)
    put(local_s3, bucket, images)
    env.configure(latency=0.5)  # 24 images at 4 in flight: ~3 s
    flow = describe_s3_images.with_options(flow_run_name="nightly") if same_name else (
        describe_s3_images)
    # Each run, once Running, waits for the other before its body: the overlap is by
    # construction. Without it, a busy SQLite server once delayed the second run's creation
    # by ~6 s of client retries (503, then 2 s and 4 s), past the first run's end.
    both_running = threading.Barrier(2, timeout=120)

    def wait_for_the_other_run(flow: Any, flow_run: FlowRun, state: State) -> None:
        both_running.wait()

    flow = flow.with_options(on_running=[wait_for_the_other_run])

    def run() -> Any:
        return flow(bucket, prompt=prompt, max_concurrency=4, return_state=True)

    states = _together(run, run)

    reports = [state.result() for state in states]  # neither failed
    assert not both_running.broken  # neither run gave up waiting for the other
    assert _overlap_seconds(states) > 1.0  # measured: 4.3-4.7 s of ~5 s
    for report in reports:
        assert sum(report.counts.values()) == IMAGES and not report.counts.get("failed")
        # Each run counts its own calls: one per image it described, none for a shared one.
        assert report.requests == report.counts.get("described", 0)
    _check_records(local_s3, bucket, images)
    # Single flight across the process plus the shared cache: each image is paid for once.
    assert describe_calls(env) == IMAGES
    assert sum(r.requests for r in reports) == IMAGES
    assert not [thread.name for thread in threading.enumerate()  # both runs closed their pools
                if thread.name.startswith(("ig1-call", "ig1-prepare"))]
    names = {report.run for report in reports}
    assert len(names) == (1 if same_name else 2)
    if not same_name:  # a shared name shares the outputs' folder: the last run's stay
        for report in reports:
            outputs = run_outputs(local_s3, bucket, report.outputs["run.json"].split("/")[-2])
            assert len(outputs["manifest.jsonl"].splitlines()) == report.new
            assert json.loads(outputs["run.json"])["counts"] == report.counts


def _overlap_seconds(states: list[Any]) -> float:
    """How long both flow runs were running at once, by the Prefect API's clock."""
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(state.state_details.flow_run_id) for state in states]
    starts = [run.start_time for run in runs]
    ends = [run.end_time for run in runs]
    assert all(starts) and all(ends)
    return float((min(ends) - max(starts)).total_seconds())  # type: ignore[type-var,operator]


@pytest.mark.slow
def test_two_processes_at_once_pay_for_few_images_twice(
        env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    """The realistic overlap: a nightly and an upload-triggered run, each in a process of
    its own, sharing only S3 and the response cache. Each run shuffles what it lists, so
    the later one mostly finds answers in the cache: well under two runs' cost."""
    images = distinct_pngs(48)
    put(local_s3, bucket, images)
    # 48 images at 4 in flight: ~4 s of calls per run. Replies wait until a fifth call is
    # in flight, so the runs overlap however late one process gets going.
    env.configure(latency=0.3, hold_until_in_flight=5)
    command = [sys.executable, "-m", "prefect_ig1.flows.describe_images", "--bucket", bucket,
               "--prefix", "in/", "--max-concurrency", "4"]
    process_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    runs = [subprocess.Popen(command, env=process_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        _, errors = run.communicate(timeout=180)
        assert run.returncode == 0, errors.decode()[-3000:]

    stats = env.stats
    assert stats.max_in_flight_seen > 4  # both processes were sending at the same time
    found = read_records(local_s3, bucket)
    assert set(found) == {f"in/{name}" for name, _ in images}
    assert all(record.text and record.error is None for record in found.values())
    # Unshuffled, both runs walk the keys in the same order and pay ~2x (96 here);
    # without the second cache look-up once a slot is held, 72. Measured: 55-58.
    assert stats.image_responses_ok < 1.5 * len(images)
    print(f"\ntwo processes: {stats.image_responses_ok} answers paid for {len(images)} images")
