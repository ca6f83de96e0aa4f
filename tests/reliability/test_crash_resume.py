"""Crash and resume: SIGKILL the flow's process mid-run, run it again, count what was paid.

The promise (README, "outputs are the state"): a crash loses at most the calls in flight;
the rerun does exactly what is missing; a response paid for before the crash and stored
in the response cache is never paid again; records are whole or absent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from prefect.settings import PREFECT_API_URL

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import InputImage, InputMessage, InputText
from prefect_ig1.flows import describe_s3_images
from prefect_ig1.flows.describe_images import DEFAULT_PROMPT
from prefect_ig1.sandbox._settings import body_digest
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.tasks import create_response, prepare_call
from prefect_ig1.tasks.cache import ResponseCache
from prefect_ig1.tasks.images import prepare_image
from tests.helpers import TEST_KEY, distinct_pngs, put, read_records

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

IMAGES = 40
CONCURRENCY = 4
LATENCY = 0.4  # 4 calls in flight, 0.4 s each: the first run would take ~4 s
KILL_AFTER = 12  # description replies the emulator has sent (and one record written)


def request_identity(data: bytes, base_url: str) -> tuple[str, str]:
    """(cache key, emulator body digest) of the description call the flow makes for data."""
    prepared = prepare_image(data)
    message = InputMessage(role="user", content=[
        InputText(text=DEFAULT_PROMPT),
        InputImage.from_bytes(prepared.data, mime_type=prepared.mime_type, detail="auto")])
    call = prepare_call([message], credentials=IG1Credentials(api_key=TEST_KEY,
                                                              base_url=base_url))
    return call.cache_key, body_digest(json.loads(json.dumps(call.request.payload())), b"")


def test_a_killed_run_resumes_without_paying_twice(
        env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    emulator = env
    images = distinct_pngs(IMAGES)  # new pixels: nothing cached yet, whatever ran before
    put(local_s3, bucket, images)
    identity = {f"in/{name}": request_identity(data, emulator.base_url)
                for name, data in images}
    emulator.configure(latency=LATENCY)
    s3 = local_s3.client()

    # The CLI in its own process; it shares PREFECT_HOME and PREFECT_LOCAL_STORAGE_PATH
    # (the response cache) with this one through the environment.
    command = [sys.executable, "-m", "prefect_ig1.flows.describe_images", "--bucket", bucket,
               "--prefix", "in/", "--max-concurrency", str(CONCURRENCY)]
    process_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    process = subprocess.Popen(command, env=process_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while (emulator.stats.image_responses_ok < KILL_AFTER
               or not s3.list_objects_v2(Bucket=bucket, Prefix="descriptions/")["KeyCount"]):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    in_flight_at_kill = emulator.stats.in_flight
    while emulator.stats.in_flight:  # the server still answers (and bills) those
        time.sleep(0.02)
    paid_before = emulator.stats.image_responses_ok
    assert process.returncode == -signal.SIGKILL

    # What the killed run left: whole records, each with its response in the cache.
    at_kill = read_records(local_s3, bucket)
    cache = ResponseCache.for_task(create_response)
    cached = {key for key, (cache_key, _) in identity.items() if cache.get(cache_key)}
    assert at_kill and len(at_kill) < IMAGES
    assert all(r.text and r.error is None for r in at_kill.values())
    assert set(at_kill) <= cached

    emulator.configure(latency=0)
    mark = emulator.stats.requests
    report = describe_s3_images(bucket, prefix="in/", max_concurrency=CONCURRENCY)
    stats = emulator.stats

    # The rerun did exactly what was missing: recorded images untouched, cached answers
    # written without a call, the rest described; nothing requested twice that was cached.
    assert report.counts == {key: n for key, n in {
        "unchanged": len(at_kill), "cached": len(cached) - len(at_kill),
        "described": IMAGES - len(cached)}.items() if n}
    asked_again = {body_digest(body, b"") for body in stats.received[mark - stats.requests:]}
    assert not {identity[key][1] for key in cached} & asked_again

    # Paid twice: only answers the killed process had not saved yet. A call keeps its slot
    # until its answer is in the cache, so that is at most one per slot: the concurrency
    # bound. (The emulator's own in-flight gauge is no bound: it has let go of a request
    # once its reply is sent, while the client may not have read or saved it.)
    repeats = stats.repeat_responses_ok
    assert repeats == paid_before - len(cached)
    assert repeats <= CONCURRENCY
    assert stats.image_responses_ok == IMAGES + repeats

    final = read_records(local_s3, bucket)
    assert set(final) == set(identity)
    assert all(r.text and r.error is None for r in final.values())
    print(f"\ncrash: killed after {paid_before} paid ({in_flight_at_kill} in flight), "
          f"{len(at_kill)} records and {len(cached)} cached at the kill; rerun "
          f"{report.counts}, {repeats} paid twice")
