"""The built wheel, as a user gets it: one import name, ``prefect.yaml`` inside, and no clash
with the ``flows/``, ``tasks/``, ``blocks/`` and ``deployments/`` of the user's own project."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.helpers import TEST_KEY

ROOT = Path(__file__).resolve().parents[1]
OLD_NAMES = ("blocks", "tasks", "flows", "deployments", "sandbox", "ig1")

pytestmark = pytest.mark.slow

USER_SCRIPT = textwrap.dedent("""
    import io, json, sys
    import importlib
    # The user's own packages, first on sys.path (imported by name: this is their code).
    blocks, deployments, flows, tasks = (importlib.import_module(name) for name in
                                         ("blocks", "deployments", "flows", "tasks"))
    import prefect_ig1
    from prefect_ig1 import describe_s3_images
    from prefect_ig1.blocks import IG1Credentials
    from PIL import Image
    import boto3

    assert flows.MINE and tasks.MINE and blocks.MINE and deployments.MINE
    assert prefect_ig1.flows.describe_images.__file__.startswith(sys.argv[1]), \\
        prefect_ig1.flows.describe_images.__file__
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="wheel-test")
    for i in range(3):
        out = io.BytesIO()
        Image.new("RGB", (32, 24), (40 * i, 90, 200)).save(out, "PNG")
        s3.put_object(Bucket="wheel-test", Key=f"in/{i}.png", Body=out.getvalue())
    report = describe_s3_images("wheel-test", prefix="in/", max_concurrency=2)
    assert s3.get_object(Bucket="wheel-test", Key=report.outputs["gallery.html"].split(
        "/", 3)[3])["Body"].read().count(b"<li data-s=") == 3
    print(json.dumps(report.counts))
""")


def _site_packages(venv: Path) -> Path:
    relative = Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    return venv / relative


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (built,) = out.glob("prefect_ig1-*.whl")
    return built


def test_the_wheel_holds_one_import_name_and_its_prefect_yaml(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "prefect_ig1", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "prefect_ig1/deployments/prefect.yaml" in names
    assert "prefect_ig1/flows/templates/gallery.html.j2" in names  # the gallery's template
    assert "prefect_ig1/py.typed" in names and "prefect_ig1/client/__init__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[prefect.collections]\nprefect_ig1 = prefect_ig1.blocks" in text


def test_no_module_imports_an_old_top_level_name() -> None:
    pattern = r"^\s*(from|import) (" + "|".join(OLD_NAMES) + r")\b"
    # USER_SCRIPT above imports a user's own top-level packages on purpose: not ours.
    found = subprocess.run(["git", "grep", "-nE", pattern, "--", "*.py",
                            ":(exclude)tests/test_wheel.py"], cwd=ROOT,
                           capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr  # 1: nothing found; else git failed
    assert found.stdout == "", found.stdout


def test_the_installed_wheel_runs_beside_a_users_own_packages(
        wheel: Path, tmp_path: Path, local_s3: LocalS3, emulator: EmulatorServer,
        prefect_server: None) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = _site_packages(venv)
    # The dependencies come from this environment (offline); the package only from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = venv / "bin" / "python"
    # --ignore-installed: the development install of this project, visible through deps.pth,
    # must not stand in for the wheel.
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q",
                    str(wheel)],
                   check=True, capture_output=True)

    project = tmp_path / "project"
    for name in ("blocks", "tasks", "flows", "deployments"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text("MINE = True\n")
    (project / "run.py").write_text(USER_SCRIPT)
    env = {**os.environ, **local_s3.env(), "IG1AI_API_KEY": TEST_KEY,
           "IG1AI_BASE_URL": emulator.base_url, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "PYTHONPATH": ""}
    done = subprocess.run([str(python), "run.py", str(site)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == '{"described": 3}'

    registered = subprocess.run(
        [str(python), "-m", "prefect", "block", "register", "-m", "prefect_ig1.blocks"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert "Successfully registered 2 blocks" in registered.stdout, registered.stdout
