"""The call engine on the emulator: many calls, each paid once, within bounds, streamed back."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import BudgetExhaustedError, RequestValidationError
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.tasks import CallEngine, NotAttempted, prepare_call, respond_many


def _prompts(count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]  # the response cache lives as long as the session
    return [f"Classify ticket {i} [{tag}]" for i in range(count)]


def _engine_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ig1-call")]


def test_many_prompts_are_each_paid_once_and_a_rerun_is_free(
        emulator: EmulatorServer, credentials: IG1Credentials) -> None:
    prompts = _prompts(60)
    results = list(respond_many(prompts, credentials=credentials, max_concurrency=8,
                                retry_delay_seconds=0))
    assert sorted(int(r.key) for r in results) == list(range(60))
    assert all(r.ok and not r.from_cache for r in results)
    assert all(r.response is not None and prompts[int(r.key)] in r.response.output_text
               for r in results)
    assert emulator.stats.requests == 60 and emulator.stats.max_in_flight_seen <= 8
    assert sum(r.input_tokens for r in results) == emulator.stats.input_tokens
    again = list(respond_many(prompts, credentials=credentials))
    assert emulator.stats.requests == 60 and all(r.from_cache for r in again)
    assert _engine_threads() == []  # the engine it opened is closed


def test_answers_in_a_local_cache_come_back_without_a_worker_or_a_window(
        emulator: EmulatorServer, credentials: IG1Credentials,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun is mostly cache hits: each costs a file read, not a thread hop or a task."""
    prompts = _prompts(30)
    list(respond_many(prompts[:20], credentials=credentials, retry_delay_seconds=0))
    submitted: list[str] = []
    real_submit = CallEngine.submit

    def submit(self: CallEngine, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        submitted.append(args[1].key)  # (engine, job, results)
        return real_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(CallEngine, "submit", submit)
    with CallEngine(max_concurrency=4, retry_delay_seconds=0) as engine:
        assert engine.cache.is_local
        results = list(respond_many(prompts, credentials=credentials, engine=engine))
    assert sorted(submitted, key=int) == [str(i) for i in range(20, 30)]  # the misses only
    assert sum(r.from_cache for r in results) == 20 and all(r.ok for r in results)
    assert emulator.stats.requests == 30
    assert engine.ledger.rows()[0].cache_hits == 20


def test_results_stream_back_before_the_last_request_is_sent(
        emulator: EmulatorServer, credentials: IG1Credentials) -> None:
    emulator.configure(latency=0.05)
    results = respond_many(_prompts(40), credentials=credentials, max_concurrency=2)
    next(results)
    assert emulator.stats.requests < 40  # the first answer came back while most were queued
    assert len(list(results)) == 39


def test_an_invalid_request_is_a_result_naming_it_and_nothing_else_is_lost(
        emulator: EmulatorServer, credentials: IG1Credentials) -> None:
    prompts = _prompts(3)
    requests = [("a", prompts[0]), ("bad", prompts[1]), ("c", prompts[2])]
    results = {r.key: r for r in respond_many(requests, credentials=credentials,
                                              params={"temperature": 9})}
    assert all(isinstance(r.error, RequestValidationError) for r in results.values())
    good = prepare_call(prompts[0], credentials=credentials)
    mixed = {r.key: r for r in respond_many([("ok", good), ("bad", {"not": "an input"})],
                                            credentials=credentials)}
    assert mixed["ok"].ok and isinstance(mixed["bad"].error, RequestValidationError)
    assert emulator.stats.requests == 1


def test_the_same_request_at_once_is_sent_once(
        emulator: EmulatorServer, credentials: IG1Credentials) -> None:
    emulator.configure(latency=0.1)
    (prompt,) = _prompts(1)
    results = list(respond_many([prompt] * 10, credentials=credentials, max_concurrency=8))
    assert emulator.stats.requests == 1
    assert sum(not r.from_cache for r in results) == 1 and all(r.ok for r in results)


def test_a_402_stops_sending_within_max_concurrency_calls(
        emulator: EmulatorServer, credentials: IG1Credentials) -> None:
    emulator.configure(budget_requests=10)
    with CallEngine(max_concurrency=4, retry_delay_seconds=0) as engine:
        results = list(respond_many(_prompts(50), credentials=credentials, engine=engine))
        assert isinstance(engine.stop_reason, BudgetExhaustedError)
        assert engine.requests_sent == emulator.stats.requests
    errors = [type(r.error) for r in results if not r.ok]
    assert sum(r.ok for r in results) == 10
    assert emulator.stats.requests <= 10 + 4
    assert errors.count(BudgetExhaustedError) <= 4
    assert errors.count(NotAttempted) == 50 - 10 - errors.count(BudgetExhaustedError)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_your_own_flow_fans_out_1000_prompts(  # the README's "your own flow" example
        emulator: EmulatorServer, credentials: IG1Credentials) -> None:
    tickets = _prompts(1000)

    @flow
    def classify(tickets: list[str]) -> dict[str, str]:
        answers = {}
        for result in respond_many(((f"t{i}", text) for i, text in enumerate(tickets)),
                                   credentials=credentials, max_concurrency=16,
                                   instructions="Label each ticket: bug, question or praise."):
            answers[result.key] = (result.response.output_text if result.response
                                   else f"error: {result.error}")
        return answers

    state: Any = classify(tickets, return_state=True)
    answers = state.result()
    assert len(answers) == 1000 and all(a.startswith("Instructions: Label") for a in
                                        answers.values())
    assert emulator.stats.requests == 1000
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    windows = [run for run in runs if run.name.startswith("respond-window-")]
    assert len(windows) == 20  # one Prefect task per window of 50, not one per call
    assert _engine_threads() == []
