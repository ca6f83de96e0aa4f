"""``make events-demo`` (``python -m prefect_ig1.sandbox.events_demo``): the README's event
section, run with real processes; every command it runs is one the README shows."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def events_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## Run it on a schedule / on events / on many machines")[1].split(
        "\n## ")[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_events_demo_runs_the_readme_and_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "IG1", "AWS_", "PYTEST_"))}
    done = subprocess.run([sys.executable, "-m", "prefect_ig1.sandbox.events_demo"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "1 run(s) of describe-images-on-upload for 10 uploads" in out
    assert re.search(r": COMPLETED; 10 records for 10 uploads, the last written \d+ s after", out)
    assert "The run's summary (s3://demo-photos/descriptions/_runs/" in out
    assert "# Image descriptions: run " in out and '"status": "completed"' in out
    # the README shows each command the demo ran (first words: program and subcommand)
    section = events_section()
    commands = [line[2:].removesuffix(" &") for line in out.splitlines()
                if line.startswith("$ ")]
    assert len(commands) >= 6
    for command in commands:
        head = " ".join(command.split()[:3])
        assert head in section, f"the README's event section lacks {head!r}"
    # everything it started is stopped: the Prefect server's port is closed
    port = int(re.search(r"prefect server start .*--port (\d+)", out).group(1))  # type: ignore[union-attr]
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
