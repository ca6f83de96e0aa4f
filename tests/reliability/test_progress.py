"""Progress of a long run: the Prefect progress artifact, the log lines, the terminal bar."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType
from prefect.settings import PREFECT_API_URL

from prefect_ig1.flows import describe_s3_images
from prefect_ig1.flows import progress as progress_module
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.helpers import distinct_pngs

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

LINE = re.compile(r"Describing images: (\d+)/(\d+) done \(\d+ %\); (\d+) described, (\d+) cached, "
                  r"(\d+) failed, (\d+) not attempted; (\d+) IG1 requests, ([\d,]+) tokens")


def test_a_long_run_moves_its_progress_artifact_and_logs_lines_that_add_up(
        env: EmulatorServer, bucket_with_images: Callable[..., str], prompt: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    bucket = bucket_with_images(distinct_pngs(200))
    env.configure(latency=0.05)
    monkeypatch.setattr(progress_module, "ARTIFACT_EVERY", 0.3)
    monkeypatch.setattr(progress_module, "LOG_EVERY", 1.0)
    seen: list[float] = []
    stop = threading.Event()
    started = time.time()

    def watch() -> None:  # a user watching the UI: the API's view of the artifact
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                for artifact in client.read_artifacts(
                        artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))):
                    if (artifact.created and artifact.created.timestamp() >= started - 1
                            and (artifact.description or "").startswith("Describing images")):
                        value = float(artifact.data)  # type: ignore[arg-type]
                        if not seen or seen[-1] != value:
                            seen.append(value)
                time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with caplog.at_level("INFO"):
            report = describe_s3_images(bucket, prompt=prompt, max_concurrency=2)
    finally:
        time.sleep(0.5)
        stop.set()
        watcher.join()
    assert report.counts == {"described": 200}
    assert seen[-1] == 100.0
    assert len([value for value in seen if 0 < value < 100]) >= 3, seen

    lines = [LINE.search(record.getMessage()) for record in caplog.records]
    found = [match for match in lines if match]
    assert len(found) >= 3
    done, total, described, cached, failed, not_attempted, requests, _ = found[-1].groups()
    assert (int(done), int(total)) == (200, 200)
    assert {"described": int(described)} == report.counts
    assert int(cached) == int(failed) == int(not_attempted) == 0
    assert int(requests) == report.requests
    assert "listing done, 200 listed, 200 to send" in caplog.text


def _cli(bucket: str, local_s3: LocalS3, env: EmulatorServer,
         terminal: bool) -> str:
    command = [sys.executable, "-m", "prefect_ig1.flows.describe_images", "--bucket", bucket,
               "--max-concurrency", "2"]
    environment = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                   "COLUMNS": "160"}
    if not terminal:
        done = subprocess.run(command, env=environment, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, env=environment, stdout=follower, stderr=follower,
                               stdin=subprocess.DEVNULL, close_fds=True)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=180) == 0, output[-2000:]
    os.close(leader)
    return output.decode("utf-8", "replace")


def test_the_cli_shows_a_bar_on_a_terminal_and_not_otherwise(
        env: EmulatorServer, local_s3: LocalS3, bucket_with_images: Callable[..., str]) -> None:
    env.configure(latency=0.02)
    on_terminal = _cli(bucket_with_images(distinct_pngs(30), prefix=""), local_s3, env, True)
    assert "━" in on_terminal and "30/30" in on_terminal
    piped = _cli(bucket_with_images(distinct_pngs(30), prefix=""), local_s3, env, False)
    assert "━" not in piped and "Describing images: 30/30 done" in piped
