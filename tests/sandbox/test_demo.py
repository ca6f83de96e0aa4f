"""``make demo`` (``python -m prefect_ig1.sandbox.demo``): the README's first command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_describes_summarises_and_reruns_for_free(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "IG1AI_", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])  # this checkout first
    done = subprocess.run([sys.executable, "-m", "prefect_ig1.sandbox.demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    first, rerun = out.split("== first run: ")[1], out.split("== rerun, nothing new: ")[1]
    assert " 0 failed" not in first.splitlines()[0]  # the broken files are counted failed
    assert "0 new" in rerun.splitlines()[0] and "0 HTTP call(s) to IG1" in rerun
    assert "Summary of the first run (s3://demo-photos/descriptions/_runs/" in out
    assert "# Image descriptions: run " in out and '"error": {' in out
    page = Path(unquote(out.split("Gallery of the first run")[1].split("file://")[1].split()[0]))
    assert page.is_file() and '<li data-s="described">' in page.read_text(encoding="utf-8")
    assert list((tmp_path / ".demo/gallery/descriptions/_thumbs").glob("*.jpg"))
    batch, batch_rerun = (out.split("== batch, first run: ")[1],
                          out.split("== batch rerun, nothing changed: ")[1])
    assert "20 completed" in batch.splitlines()[0] and "20 HTTP call(s)" in batch
    assert "20 cached" in batch_rerun.splitlines()[0] and "0 HTTP call(s)" in batch_rerun
    assert "'ig1_label': 'billing'" in out
