"""IG1Credentials: Prefect's block conventions, the key kept secret, one client per process."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest
from pydantic import SecretStr, ValidationError

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import DEFAULT_BASE_URL, IG1Error
from prefect_ig1.sandbox.emulator import EmulatorServer
from tests.blocks.offline_suite import OfflineBlockStandardTestSuite
from tests.helpers import TEST_KEY


class TestIG1CredentialsBlock(OfflineBlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[IG1Credentials]:
        return IG1Credentials


def test_the_key_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    credentials = IG1Credentials(api_key=SecretStr(TEST_KEY))
    profile = ResponsesModel(credentials=credentials)
    logging.getLogger("test").warning("credentials %s %r", credentials, profile)
    shown = [repr(credentials), str(credentials), repr(profile), str(profile),
             str(credentials.model_dump()), credentials.model_dump_json(),
             str(profile.model_dump()), profile.model_dump_json(), caplog.text,
             repr(credentials.get_client())]
    assert not [text for text in shown if TEST_KEY in text]
    assert credentials.api_key.get_secret_value() == TEST_KEY


def test_defaults() -> None:
    credentials = IG1Credentials(api_key=SecretStr("k"))
    assert credentials.base_url == DEFAULT_BASE_URL == "https://api.ig1.ai/v1"
    assert credentials.max_retries >= 0 and credentials.timeout > 0


def test_one_client_per_process_for_the_same_settings(emulator: EmulatorServer) -> None:
    a = IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=emulator.base_url)
    b = IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=emulator.base_url)
    other = IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=emulator.base_url, timeout=5)
    assert a.get_client() is b.get_client()
    assert a.get_client() is not other.get_client()

    async def per_loop() -> tuple[object, object]:
        return a.get_async_client(), b.get_async_client()

    first, second = asyncio.run(per_loop())
    assert first is second
    assert asyncio.run(per_loop())[0] is not first  # a new loop gets its own pool


def test_usage_reads_the_root_endpoint(credentials: IG1Credentials,
                                      emulator: EmulatorServer) -> None:
    emulator.configure(max_throughput=12, usage_commit=100.0)
    usage = credentials.usage()
    assert (usage.max_throughput, usage.commit) == (12, 100.0)
    assert asyncio.run(credentials.ausage()).max_throughput == 12
    assert emulator.stats.usage_requests == 2


def test_environment_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IG1AI_API_KEY", TEST_KEY)
    monkeypatch.setenv("IG1AI_BASE_URL", "http://127.0.0.1:9/v1")
    credentials = IG1Credentials.from_env()
    assert credentials.api_key.get_secret_value() == TEST_KEY
    assert credentials.base_url == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("IG1AI_BASE_URL")
    assert IG1Credentials.from_env().base_url == DEFAULT_BASE_URL


@pytest.mark.parametrize("url", [
    "http://api.ig1.ai/v1", "http://remote-host:8000/v1", "http://10.0.0.5/v1",
    "http://[2001:db8::1]/v1", "http://127.0.0.1.evil.example/v1", "http://localhost.evil/v1",
    "HTTP://remote-host/v1", "ftp://api.ig1.ai/v1", "api.ig1.ai/v1", "https:///v1",
])
def test_the_key_never_travels_in_clear(url: str) -> None:
    with pytest.raises(ValidationError, match="base_url") as refused:
        IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=url)
    assert TEST_KEY not in str(refused.value)
    credentials = IG1Credentials(api_key=SecretStr(TEST_KEY))
    with pytest.raises(ValidationError, match="base_url"):
        credentials.base_url = url  # set after creation: checked as well
    assert credentials.base_url == DEFAULT_BASE_URL


@pytest.mark.parametrize("url", [
    "https://api.ig1.ai/v1", "https://10.0.0.5:8443/v1", "http://127.0.0.1:9/v1",
    "http://127.8.9.10/v1", "http://localhost:8000/v1", "http://LOCALHOST/v1",
    "http://[::1]:8000/v1",
])
def test_https_anywhere_and_plain_http_on_loopback_only(url: str) -> None:
    assert IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=url).base_url == url


def test_environment_with_a_plain_http_remote_url_fails_clearly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IG1AI_API_KEY", TEST_KEY)
    monkeypatch.setenv("IG1AI_BASE_URL", "http://remote-host/v1")
    with pytest.raises(IG1Error, match=r"IG1AI_BASE_URL.*plain http.*'remote-host'") as refused:
        IG1Credentials.from_env()
    assert TEST_KEY not in str(refused.value)


def test_missing_environment_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IG1AI_API_KEY", raising=False)
    with pytest.raises(IG1Error, match="IG1AI_API_KEY"):
        IG1Credentials.from_env()


@pytest.mark.usefixtures("prefect_server")
def test_save_and_load_round_trip() -> None:
    IG1Credentials(api_key=SecretStr(TEST_KEY), base_url="http://127.0.0.1:1/v1",
                   timeout=7.5, max_retries=4).save("round-trip", overwrite=True)
    loaded = IG1Credentials.load("round-trip")
    assert loaded.api_key.get_secret_value() == TEST_KEY
    assert (loaded.base_url, loaded.timeout, loaded.max_retries) == (
        "http://127.0.0.1:1/v1", 7.5, 4)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_registered_with_prefect_block_register() -> None:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run([sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([sys.executable, "-m", "prefect", "block", "type", "ls"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert "ig1-credentials" in listed.stdout and "ig1-responses-model" in listed.stdout
