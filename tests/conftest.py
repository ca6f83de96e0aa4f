"""Shared fixtures: an isolated Prefect home, the IG1 emulator, instant retry backoff.

Everything is local: the emulator is a real HTTP server on 127.0.0.1 started
here and stopped here; Prefect runs against a temporary server and storage.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
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
from prefect_ig1.sandbox.emulator import EmulatorServer  # noqa: E402
from prefect_ig1.sandbox.local_s3 import LocalS3  # noqa: E402

TEST_KEY = "sk-test-0123456789abcdef-SECRET"


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
