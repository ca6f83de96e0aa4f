"""Server-side trouble mid-run: IG1 down then back on the same port, S3 down then back.

The promises (README, "Guarantees, and the tests that prove them"): an IG1 outage
shorter than the retries is ridden out; a longer one leaves retryable error records and
the run completes; S3 trouble leaves the images it hit without a new record (never a half
or a wrong one); in every case the next run finishes the job without paying for an
answer twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.flows import describe_s3_images
from prefect_ig1.flows.records import ImageRecord
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.helpers import TEST_KEY, distinct_pngs, put, read_records

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

IMAGES = 60
CONCURRENCY = 4
OUTAGE_AFTER = 15  # description replies sent before the server goes down


@contextmanager
def outage(when: Callable[[], bool], stop: Callable[[], Any], start: Callable[[], Any],
           down_for: float) -> Iterator[dict[str, float]]:
    """Once ``when()`` holds, ``stop()``, wait ``down_for`` seconds, ``start()`` (a thread)."""
    happened: dict[str, float] = {}
    done = threading.Event()

    def run() -> None:
        while not when() and not done.is_set():
            time.sleep(0.01)
        if done.is_set():
            return
        stop()
        happened["down_at"] = time.monotonic()
        time.sleep(down_for)
        start()
        happened["up_at"] = time.monotonic()

    thread = threading.Thread(target=run, name="outage", daemon=True)
    thread.start()
    try:
        yield happened
    finally:
        done.set()
        thread.join(timeout=30)
    assert happened.get("up_at"), "the run ended before the outage: nothing was tested"


@pytest.fixture
def own_emulator() -> Iterator[EmulatorServer]:
    """An emulator of this test's own, which it may stop and start."""
    with EmulatorServer(api_key=TEST_KEY, latency=0.1) as server:
        yield server


def profile(server: EmulatorServer) -> ResponsesModel:
    # A short timeout: a connection queued on a server that is shutting down waits for it.
    return ResponsesModel(credentials=IG1Credentials(
        api_key=SecretStr(TEST_KEY), base_url=server.base_url, timeout=2.0))


@pytest.mark.parametrize(("down_for", "retry_delay"), [(1.0, 3.0), (2.0, 0.3)],
                         ids=["shorter-than-retries", "longer-than-retries"])
def test_ig1_down_then_back_on_the_same_port(
        local_s3: LocalS3, own_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch,
        bucket: str, down_for: float, retry_delay: float) -> None:
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    emulator = own_emulator
    images = distinct_pngs(IMAGES)
    put(local_s3, bucket, images)
    options: dict[str, Any] = {"prefix": "in/", "model": profile(emulator),
                               "max_concurrency": CONCURRENCY,
                               "retry_delay_seconds": retry_delay}
    with outage(lambda: emulator.stats.image_responses_ok >= OUTAGE_AFTER,
                emulator.stop, emulator.start, down_for):
        first = describe_s3_images(bucket, **options)

    records = read_records(local_s3, bucket)
    assert set(records) == {f"in/{name}" for name, _ in images}  # every image has one
    failed = {key: r for key, r in records.items() if r.error}
    assert first.counts.get("failed", 0) == len(failed)
    assert first.counts.get("described", 0) == IMAGES - len(failed)
    if retry_delay > down_for:  # the flow's second chance comes after the outage
        assert not failed
    else:  # the images the outage hit wait, retryable, for the next run
        assert failed
        assert all(r.error.retryable and r.error.type in ("IG1ConnectionError",
                                                         "IG1TimeoutError")
                   for r in failed.values())

    second = describe_s3_images(bucket, **options)
    assert second.counts == {key: n for key, n in {
        "unchanged": IMAGES - len(failed), "described": len(failed)}.items() if n}
    final = read_records(local_s3, bucket)
    assert all(r.text and r.error is None for r in final.values()) and len(final) == IMAGES
    stats = emulator.stats
    # A reply cut by the shutdown may be paid again: at most one per call slot.
    assert stats.repeat_responses_ok <= CONCURRENCY
    assert stats.image_responses_ok == IMAGES + stats.repeat_responses_ok
    print(f"\nIG1 down {down_for} s (second chance after {retry_delay} s): first run "
          f"{first.counts}, rerun {second.counts}, {stats.repeat_responses_ok} paid twice")


@pytest.mark.parametrize(("down_for", "retry_delay"), [(2.0, 3.0), (2.5, 1.0)],
                         ids=["shorter-than-retries", "longer-than-retries"])
def test_s3_down_then_back_leaves_no_half_or_wrong_record(
        env: EmulatorServer, local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch,
        bucket: str, down_for: float, retry_delay: float) -> None:
    emulator = env
    emulator.configure(latency=0.1)
    images = distinct_pngs(IMAGES)
    put(local_s3, bucket, images)  # on the session's moto; same state on any port
    options: dict[str, Any] = {"prefix": "in/", "max_concurrency": CONCURRENCY,
                               "retry_delay_seconds": retry_delay}
    with LocalS3() as s3:  # a server of this test's own, which it may stop and start
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        with outage(lambda: emulator.stats.image_responses_ok >= OUTAGE_AFTER,
                    s3.stop, s3.start, down_for):
            first = describe_s3_images(bucket, return_state=True, **options)
        # The workers waiting out S3 keep the run from ending before S3 is back, so it
        # writes its own outputs and completes.
        assert first.is_completed()
        report = first.result()
        paid_first = emulator.stats.image_responses_ok

        # The images S3 failed on twice have no record at all; the others a whole, good one.
        records = read_records(local_s3, bucket)
        assert all(r.text and r.error is None for r in records.values())
        hit = IMAGES - len(records)
        assert report.counts.get("failed", 0) == hit
        assert report.counts.get("described", 0) + report.counts.get("cached", 0) == len(records)
        if retry_delay > down_for:  # the second chance comes after the outage
            assert hit == 0
        else:
            assert hit >= 1
        manifest = s3.client().get_object(Bucket=bucket, Key=report.outputs[
            "manifest.jsonl"].split(f"{bucket}/", 1)[1])["Body"].read().decode()
        failures = [line for line in map(json.loads, manifest.splitlines())
                    if line["status"] == "failed"]
        assert len(failures) == hit and all(f["error"]["retryable"] for f in failures)

        second = describe_s3_images(bucket, **options)
    final = read_records(local_s3, bucket)
    assert set(final) == {f"in/{name}" for name, _ in images}
    assert all(isinstance(r, ImageRecord) and r.text for r in final.values())
    # Answers paid before S3 failed were cached: nothing is paid twice, and the rerun
    # writes those without a call.
    stats = emulator.stats
    assert stats.repeat_responses_ok == 0 and stats.image_responses_ok == IMAGES
    assert second.counts == {key: n for key, n in {
        "unchanged": len(records), "cached": paid_first - len(records),
        "described": IMAGES - paid_first}.items() if n}
    print(f"\nS3 down {down_for} s (second chance after {retry_delay} s): first run "
          f"{report.counts}, rerun {second.counts}, 0 paid twice")
