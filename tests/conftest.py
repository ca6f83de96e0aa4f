"""Shared fixtures: an isolated Prefect home, the IG1 emulator, moto's S3, instant retry
backoff, a bucket per test, credentials from the environment and a fresh prompt.

Everything is local: the emulator and moto are real HTTP servers on 127.0.0.1 started
here and stopped here; Prefect runs against a temporary server and storage. Plain
helpers (and the ``slow`` marker policy) are in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="ig1-tests-prefect-"))
os.environ.update({
    "PREFECT_HOME": str(_PREFECT_HOME),
    "PREFECT_LOCAL_STORAGE_PATH": str(_PREFECT_HOME / "storage"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
})
for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "IG1AI_API_KEY", "IG1AI_BASE_URL"):
    os.environ.pop(name, None)

import pytest  # noqa: E402
import stamina  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from prefect_ig1.blocks import IG1Credentials  # noqa: E402
from prefect_ig1.flows.describe_images import DEFAULT_PROMPT  # noqa: E402
from prefect_ig1.sandbox.emulator import EmulatorServer  # noqa: E402
from prefect_ig1.sandbox.local_s3 import LocalS3  # noqa: E402
from tests.helpers import TEST_KEY, Images, put, s3_of  # noqa: E402

# A test without the ``slow`` mark that takes longer than this is named after the run.
QUICK_LIMIT_SECONDS = 5.0


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(api_key=TEST_KEY) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Iterator[EmulatorServer]:
    """The session's emulator with counters, faults and settings reset."""
    emulator_server.reset()
    yield emulator_server
    emulator_server.reset()


@pytest.fixture(autouse=True)
def instant_backoff() -> Iterator[None]:
    """No waiting between retries; attempt counts stay exactly as configured."""
    stamina.set_testing(True, attempts=1000, cap=True)
    yield
    stamina.set_testing(False)


@pytest.fixture
def real_waits() -> Iterator[None]:
    """Backoff and throttle as in production, for the tests of waiting itself."""
    stamina.set_testing(False)
    yield
    stamina.set_testing(True, attempts=1000, cap=True)


@pytest.fixture
def credentials(emulator: EmulatorServer) -> IG1Credentials:
    return IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=emulator.base_url)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server for the whole session (started only if a test needs it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def ig1_env(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """Credentials from the environment, pointing at the emulator."""
    monkeypatch.setenv("IG1AI_API_KEY", TEST_KEY)
    monkeypatch.setenv("IG1AI_BASE_URL", emulator.base_url)
    return emulator


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3]:
    """moto's S3 (and SQS) server on 127.0.0.1 for the whole session; buckets are per test."""
    with LocalS3() as server:
        yield server


@pytest.fixture
def bucket(local_s3: LocalS3) -> str:
    """A new, empty bucket per test: isolation without resetting moto's shared state."""
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3_of(local_s3).create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket_with_images(local_s3: LocalS3) -> Callable[..., str]:
    """``bucket_with_images(images, prefix="in/")``: a new bucket holding them, its name
    (for tests that need more than one bucket)."""

    def create(images: Images, prefix: str = "in/") -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        s3_of(local_s3).create_bucket(Bucket=name)
        put(local_s3, name, images, prefix=prefix)
        return name

    return create


@pytest.fixture
def env(local_s3: LocalS3, ig1_env: EmulatorServer,
        monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """boto3's default chain on the session's moto server and IG1 credentials on the
    emulator, both from the environment, as a user would run the flow."""
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    return ig1_env


@pytest.fixture
def prompt() -> str:
    """A prompt no other test sends: the response cache is shared by the whole session."""
    return f"{DEFAULT_PROMPT} [{uuid.uuid4().hex[:8]}]"


# --- the marker policy, kept: quick tests that are not ---------------------------------------

_TOO_LONG: list[tuple[float, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "slow" not in report.keywords \
            and report.duration > QUICK_LIMIT_SECONDS:
        _TOO_LONG.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TOO_LONG:
        terminalreporter.section("quick tests that were slow (mark them slow or speed them up)")
        for seconds, nodeid in sorted(_TOO_LONG, reverse=True):
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")
