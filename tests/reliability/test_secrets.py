"""Issue 7, item 6: the API key never leaves the Authorization header.

The flows run with a recognisable key on an emulator that accepts only that key (so every
200 proves the key was sent), through success, transient faults, bad images, a spent
budget and a revoked key. Then everything the runs left behind is scanned for the key,
its secret part, its first 12 characters, and its base64 / hex / header forms: logs
(pytest's and Prefect's API logs), exceptions (str, repr, traceback, pickle), artifacts,
flow and task runs (parameters, states) from the Prefect API, the Prefect server's
database, result and cache files, and every record and run output in S3.
"""

from __future__ import annotations

import base64
import gzip
import logging
import os
import pickle
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter
from prefect.client.schemas.filters import LogFilterFlowRunId as LogRunId
from prefect.logging.handlers import APILogHandler
from prefect.settings import (
    PREFECT_HOME,
    PREFECT_LOCAL_STORAGE_PATH,
    PREFECT_LOGGING_TO_API_ENABLED,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    temporary_settings,
)
from pydantic import SecretStr

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import AuthenticationError, BudgetExhaustedError
from prefect_ig1.flows import describe_s3_images
from prefect_ig1.sandbox import sample_images as samples
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.tasks import create_response
from tests.helpers import all_keys, distinct_pngs, put, s3_of

pytestmark = pytest.mark.usefixtures("prefect_server")

SECRET_PART = "q7Zt3Vb9Kx2Mw8Rn4Pd6Hj1LcY5s"
CANARY = f"sk-LEAKCANARY-{SECRET_PART}"


def leak_forms(secret: str) -> dict[str, bytes]:
    """The key as it could leak: whole, its secret part or a prefix of it, encoded."""
    raw = secret.encode()
    part = raw.rsplit(b"-", 1)[-1]
    forms = {"key": raw, "secret part": part, "first 12 of the secret part": part[:12],
             "hex": raw.hex().encode()}
    for name, text in (("key", raw), ("bearer header", b"Bearer " + raw)):
        for shift in range(3):  # base64 of a longer text: every alignment of the key in it
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                encoded = encode(b"\0" * shift + text)
                forms[f"base64 of the {name} (+{shift}, {encode.__name__})"] = encoded[4:-4]
    return forms


FORMS = leak_forms(CANARY)


def leaks(blob: bytes | str) -> list[str]:
    data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
    return [name for name, form in FORMS.items() if form in data]


def test_the_scanner_finds_every_form() -> None:
    """The scan can fail: each form is found when it is there, and none in innocent text."""
    assert leaks(f"x {CANARY} y") and leaks(SECRET_PART[:12])
    for shift in range(3):
        assert leaks(base64.b64encode(b"?" * shift + b"Bearer " + CANARY.encode() + b"!"))
    assert leaks(CANARY.encode().hex()) and not leaks("sk-LEAKCANARY-... [secure] **********")


@pytest.fixture(scope="module")
def canary_emulator() -> Iterator[EmulatorServer]:
    """An emulator that answers only ``Authorization: Bearer <CANARY>``."""
    with EmulatorServer(api_key=CANARY) as server:
        yield server


@pytest.fixture
def canary_env(canary_emulator: EmulatorServer, local_s3: LocalS3,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    canary_emulator.reset()
    monkeypatch.setenv("IG1AI_API_KEY", CANARY)
    monkeypatch.setenv("IG1AI_BASE_URL", canary_emulator.base_url)
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: True}):
        yield canary_emulator


@pytest.mark.slow
def test_the_key_appears_nowhere_but_in_the_header(
        canary_env: EmulatorServer, local_s3: LocalS3, bucket: str, prompt: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    emulator = canary_env
    credentials = IG1Credentials(api_key=SecretStr(CANARY), base_url=emulator.base_url)
    put(local_s3, bucket, distinct_pngs(6, seed=9700) + samples.broken_images(), prefix="a/")
    put(local_s3, bucket, distinct_pngs(12, seed=9720), prefix="b/")
    put(local_s3, bucket, distinct_pngs(12, seed=9740), prefix="c/")
    states: list[Any] = []
    errors: list[BaseException] = []

    # 1. Success with faults on the way: credentials from the environment.
    emulator.fail_next("503")
    emulator.fail_next("drop")
    states.append(describe_s3_images(bucket, prefix="a/", prompt=prompt, retry_delay_seconds=0,
                                     max_concurrency=2, return_state=True))
    # 2. The key inside a block passed as a flow parameter (stored and shown by Prefect).
    profile = ResponsesModel(credentials=credentials)
    states.append(describe_s3_images(bucket, prefix="a/", output_prefix="by-block/",
                                     model=profile, prompt=prompt + " again",
                                     return_state=True))
    # 3. A spent budget, then 4. a key revoked mid-run: the errors a user sees.
    emulator.configure(budget_requests=emulator.stats.responses_ok + 3)
    states.append(describe_s3_images(bucket, prefix="b/", prompt=prompt, max_concurrency=2,
                                     return_state=True))
    emulator.configure(budget_requests=None, revoke_key_after=emulator.stats.requests + 3)
    states.append(describe_s3_images(bucket, prefix="c/", prompt=prompt, max_concurrency=2,
                                     return_state=True))
    emulator.configure(revoke_key_after=None)
    # 5. One create_response call with the credentials block as a task parameter (cached).
    states.append(flow(name="one-call")(
        lambda: create_response(prompt, credentials=credentials))(return_state=True))

    for state, expected in zip(states, [None, None, BudgetExhaustedError, AuthenticationError,
                                        None], strict=True):
        if expected is None:
            state.result()
        else:
            with pytest.raises(expected) as raised:
                state.result()
            errors.append(raised.value)
    # The scan is meaningful: the emulator, which checks the whole header, let the key in.
    assert emulator.stats.responses_ok >= 6 + 6 + 3 + 3 + 1
    assert emulator.stats.by_status[402] and emulator.stats.by_status[401]

    run_ids = [state.state_details.flow_run_id for state in states]
    found = {
        "pytest logs": caplog.text,
        "exceptions": _exception_texts(errors),
        "prefect api": _prefect_api_dump(run_ids),
        "s3 objects": _s3_dump(local_s3, bucket),
        "prefect home (results, cache, settings)": _files_dump(Path(PREFECT_HOME.value())),
        "result storage": _files_dump(Path(PREFECT_LOCAL_STORAGE_PATH.value())),
        "prefect server database": _files_dump(_database_dir()),
    }
    assert all(len(blob) > 1000 for blob in found.values()), {k: len(v) for k, v in found.items()}
    assert {where: leaks(blob) for where, blob in found.items() if leaks(blob)} == {}


def _exception_texts(errors: list[BaseException]) -> bytes:
    assert len(errors) == 2
    texts = []
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error)),
                  repr(vars(error))]
    return "\n".join(texts).encode() + b"".join(pickle.dumps(error) for error in errors)


def _prefect_api_dump(run_ids: list[Any]) -> bytes:
    """Flow runs (parameters, states), their task runs, artifacts and logs, from the API."""
    APILogHandler().flush()
    runs = FlowRunFilter(id=FlowRunFilterId(any_=run_ids))
    with get_client(sync_client=True) as client:
        flow_runs = [client.read_flow_run(run_id) for run_id in run_ids]
        states = [s for run_id in run_ids for s in client.read_flow_run_states(run_id)]
        task_runs = client.read_task_runs(flow_run_filter=runs)
        artifacts = client.read_artifacts(flow_run_filter=runs)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogRunId(any_=run_ids)))
    assert any(run.parameters.get("model") for run in flow_runs)  # the block, as stored
    assert len(task_runs) >= len(run_ids) and len(artifacts) >= 3 and len(logs) >= 10
    return "\n".join(item.model_dump_json() for item in
                     [*flow_runs, *states, *task_runs, *artifacts, *logs]).encode()


def _s3_dump(local_s3: LocalS3, bucket: str) -> bytes:
    """Every object's key and bytes, gzip-compressed ones (the record index) unpacked."""
    keys = all_keys(local_s3, bucket)
    assert any(k.endswith("run.json") for k in keys) and any("manifest" in k for k in keys)
    assert any(k.endswith(".gz") for k in keys)

    def body(key: str) -> bytes:
        data = s3_of(local_s3).get_object(Bucket=bucket, Key=key)["Body"].read()
        return gzip.decompress(data) if key.endswith(".gz") else data

    return b"\n".join(key.encode() + b"\n" + body(key) for key in keys)


def _files_dump(root: Path) -> bytes:
    """Names and bytes of every file under ``root`` (cache keys are file names)."""
    assert root.is_dir(), root
    chunks = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            chunks += [str(path).encode(), path.read_bytes()]
    return b"\n".join(chunks)


def _database_dir() -> Path:
    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    assert url.startswith("sqlite+aiosqlite:///"), url
    return Path(url.removeprefix("sqlite+aiosqlite:///")).parent
