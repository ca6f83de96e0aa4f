"""Issue 7, item 4: a spent budget (402) and refused credentials (401/403) stop the run.

Counted from the emulator: after the first 402/401 no item may send again, so the calls
that got it are at most the ones already in flight (``max_concurrency``). Counted in S3:
what was described, what got the error (retryable), what was never attempted; the run
outputs and the summary say why the run stopped and how many images were not attempted.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from prefect_ig1.client import AuthenticationError, BudgetExhaustedError
from prefect_ig1.flows import describe_s3_images
from prefect_ig1.flows.records import ImageRecord
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.tasks import CallEngine
from tests.helpers import all_keys, distinct_pngs, put, read_records, run_outputs

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

IMAGES = 24
CONCURRENCY = 4


@pytest.fixture
def slow_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """An item that got the 402/401 is descheduled for 50 ms before it flips the stop switch:
    the bound must hold by construction, not because threads happen to run in order."""
    original = CallEngine.stop

    def stop(self: CallEngine, reason: BaseException) -> None:
        time.sleep(0.05)
        original(self, reason)

    monkeypatch.setattr(CallEngine, "stop", stop)


def _run(bucket: str, prompt: str, concurrency: int = CONCURRENCY) -> Any:
    return describe_s3_images(bucket, prompt=prompt, max_concurrency=concurrency,
                              retry_delay_seconds=0, return_state=True)


def _by_outcome(found: dict[str, ImageRecord]) -> dict[str, int]:
    outcome: dict[str, int] = {}
    for doc in found.values():
        name = "described" if doc.text else doc.error.type
        outcome[name] = outcome.get(name, 0) + 1
    return outcome


def _summary_artifact(flow_run_id: Any) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["image-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert len(found) == 1
    return str(found[0].data)


@pytest.mark.parametrize("concurrency", [1, CONCURRENCY])
def test_budget_402_stops_sending_within_the_concurrency_bound_and_says_so(
        env: EmulatorServer, local_s3: LocalS3, bucket: str, prompt: str, concurrency: int,
        slow_stop: None) -> None:
    budget = 6
    put(local_s3, bucket, distinct_pngs(IMAGES, seed=9300))
    env.configure(budget_requests=budget, latency=0.02)

    state = _run(bucket, prompt, concurrency)

    with pytest.raises(BudgetExhaustedError) as raised:
        state.result()
    stats = env.stats
    refused = stats.by_status[402]
    # The first 402 and those already in flight; nothing after, not even a summary call.
    assert 1 <= refused <= concurrency
    assert stats.responses_ok == budget and stats.requests == budget + refused
    not_attempted = IMAGES - budget - refused

    found = read_records(local_s3, bucket)
    assert _by_outcome(found) == {"described": budget, "BudgetExhaustedError": refused}
    assert all(doc.error.retryable for doc in found.values() if doc.error)

    run = json.loads(_outputs(local_s3, bucket)["run.json"])
    assert run["counts"] == {"described": budget, "failed": refused,
                             "not_attempted": not_attempted}
    assert run["requests"] == budget + refused and run["summary_calls"] == 0
    stop = f"{not_attempted} image(s) not attempted"
    assert "budget exhausted (402)" in run["stopped_by"] and stop in run["stopped_by"]
    summary = _outputs(local_s3, bucket)["summary.md"]
    assert "budget exhausted (402)" in summary and stop in summary
    assert "budget exhausted (402)" in _summary_artifact(state.state_details.flow_run_id)
    assert stop in str(raised.value) and "Raise the commit and rerun" in str(raised.value)

    # Budget raised: the rerun describes exactly what is missing.
    env.reset()
    again = describe_s3_images(bucket, prompt=prompt, max_concurrency=concurrency)
    assert again.counts == {"unchanged": budget, "described": IMAGES - budget}
    assert env.stats.requests == IMAGES - budget + again.summary_calls


@pytest.mark.parametrize(("status", "after"), [(401, 5), (403, 0)])
def test_refused_credentials_stop_at_once_with_one_clear_error(
        env: EmulatorServer, local_s3: LocalS3, bucket: str, prompt: str, status: int,
        after: int, slow_stop: None, caplog: pytest.LogCaptureFixture) -> None:
    """401 after 5 calls (a key revoked mid-run) or 403 on the first (an inactive key)."""
    put(local_s3, bucket, distinct_pngs(IMAGES, seed=9400))
    env.configure(latency=0.02)
    if status == 401:
        env.configure(revoke_key_after=after)
    else:
        env.fail_next("403", count=1000)

    state = _run(bucket, prompt)

    assert state.is_failed()
    with pytest.raises(AuthenticationError) as raised:
        state.result()
    assert "refused the credentials" in str(raised.value)
    assert "Check the IG1Credentials block or IG1AI_API_KEY" in str(raised.value)
    stats = env.stats
    refused = stats.by_status[status]
    assert 1 <= refused <= CONCURRENCY  # the first refusal, plus at most those in flight
    assert stats.responses_ok == after and stats.requests == after + refused

    found = read_records(local_s3, bucket)
    assert _by_outcome(found) == ({"described": after} if after else {}) | {
        "AuthenticationError": refused}
    run = json.loads(_outputs(local_s3, bucket)["run.json"])
    assert run["counts"].get("not_attempted") == IMAGES - after - refused
    # One error for the run: no task run failed, only the flow, with the clear message.
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert task_runs and not [t for t in task_runs if t.state and t.state.is_failed()]
    assert "refused the credentials" in str(state.message)

    time.sleep(0.3)  # nothing keeps sending once the run has ended
    assert env.stats.requests == after + refused


def _outputs(local_s3: LocalS3, bucket: str) -> dict[str, str]:
    """The outputs of the bucket's only run."""
    runs = {key.split("/")[2] for key in all_keys(local_s3, bucket)
            if key.startswith("descriptions/_runs/")}
    assert len(runs) == 1, runs
    return run_outputs(local_s3, bucket, runs.pop())
