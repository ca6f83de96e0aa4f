"""One emulator per module, reset between tests, and a plain httpx client that talks to it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from prefect_ig1.sandbox.emulator import EmulatorServer


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_emulator(request: pytest.FixtureRequest) -> None:
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").reset()


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {emulator.api_key}"}
    with httpx.Client(base_url=emulator.base_url, headers=headers, timeout=5.0) as c:
        yield c
