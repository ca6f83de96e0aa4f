"""One pause for every worker under a limit: a 429 in one process holds the others' sends
until its Retry-After moment, through a Prefect Variable (and never fails a call)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, VariableCreate
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import IG1Client, ResponsesRequest, Throttle
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.tasks import CallEngine, respond_many
from prefect_ig1.tasks.pause import SharedPause, pause_variable_name
from tests.helpers import TEST_KEY


def _variable(name: str) -> Any:
    with get_client(sync_client=True) as client:
        variable = client.read_variable_by_name(name)
    return None if variable is None else variable.value


def _until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Wait for an event of another thread (a bound on a hang, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


@pytest.fixture
def limit_name(prefect_server: None) -> Iterator[str]:
    """A global concurrency limit of its own (16 slots) on the test server."""
    name = f"ig1-rl-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=16))
    yield name


def test_variable_names_are_valid_prefect_names_one_per_limit() -> None:
    names = ["ig1", "IG1 budget/EU", "ig1 budget eu", "x" * 300, "ig1_budget-eu"]
    variables = [pause_variable_name(name) for name in names]
    assert variables[0] == "ig1-pause-ig1" and variables[4] == "ig1-pause-ig1_budget-eu"
    assert len(set(variables)) == len(names)  # slugs that collide keep apart by digest
    for variable in variables:
        VariableCreate(name=variable, value=1)  # Prefect's own validation
        assert re.fullmatch(r"[a-z0-9_-]{1,255}", variable)


@pytest.mark.usefixtures("real_waits")
def test_a_burst_is_one_write_the_moment_never_moves_back_and_others_hold(
        limit_name: str) -> None:
    moment = time.time() + 30

    def announce_from_a_worker(*moments: float) -> SharedPause:
        with SharedPause(limit_name) as worker:
            worker.watch(Throttle())
            for at in moments:
                worker.announce(at - time.time())
        return worker  # closed: what was pending is published

    first = announce_from_a_worker(*(moment + i / 100 for i in range(20)))  # one burst
    value = _variable(first.variable)
    assert first.writes == 1 and moment <= value["until"] <= moment + 0.2
    assert set(value) == {"until", "until_utc"}  # two timestamps, nothing else
    assert TEST_KEY not in json.dumps(value)

    earlier = announce_from_a_worker(moment - 10)  # another worker's shorter 429
    assert earlier.writes == 0 and _variable(first.variable) == value

    later = announce_from_a_worker(moment + 2)
    assert later.writes == 1
    assert _variable(first.variable)["until"] == pytest.approx(moment + 2, abs=0.01)

    throttle = Throttle()
    with SharedPause(limit_name) as reader:
        reader.watch(throttle)
        _until(lambda: reader.until > 0, "the reader reads the moment")
        before = time.time()
        delay = throttle.turn()
    assert reader.writes == 0 and reader.until == pytest.approx(moment + 2, abs=0.01)
    assert moment + 1 - before < delay <= moment + 2.01 - before  # held until that moment
    assert throttle.interval == 0.0  # held, not slowed: its own 429s set its pace


@pytest.mark.slow
@pytest.mark.usefixtures("real_waits")
def test_after_a_429_in_one_worker_the_other_sends_nothing_before_its_moment(
        emulator: EmulatorServer, limit_name: str) -> None:
    # Two workers: separate clients (own throttles) and engines, sharing only Prefect.
    workers = [IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=emulator.base_url,
                              max_connections=connections) for connections in (8, 9)]
    assert workers[0].get_client() is not workers[1].get_client()
    tag = uuid.uuid4().hex[:8]
    engine_a = CallEngine(max_concurrency=4, concurrency_limit_name=limit_name,
                          retry_delay_seconds=0.1)
    engine_b = CallEngine(max_concurrency=4, concurrency_limit_name=limit_name)
    with engine_a, engine_b, ThreadPoolExecutor(1) as background:
        [warm_up] = respond_many([f"b0 [{tag}]"], credentials=workers[1], engine=engine_b)
        assert warm_up.ok  # B is sending under the limit, and listening
        emulator.configure(retry_after=4)
        emulator.fail_next("429")
        a = background.submit(lambda: list(respond_many(
            [f"a1 [{tag}]"], credentials=workers[0], engine=engine_a)))
        pause = engine_b.shared_pause
        assert pause is not None
        _until(lambda: _variable(pause.variable), "A publishes its 429's moment")
        moment = _variable(pause.variable)["until"]
        _until(lambda: pause.until >= moment, "B reads the moment")
        [b] = respond_many([f"b1 [{tag}]"], credentials=workers[1], engine=engine_b)
        [a1] = a.result()
    stats = emulator.stats
    assert a1.ok and b.ok and stats.faults_served["429"] == 1 and stats.requests == 4
    # b0, A's 429, then A's retry and B's call, whichever first: both at the moment or after.
    assert stats.arrived_at[1] + 3.99 < moment and min(stats.arrived_at[2:]) >= moment


@pytest.mark.slow  # Prefect's client retries a refused connection for ~1.5 s
def test_an_unreachable_prefect_api_costs_the_sharing_not_a_call(
        emulator: EmulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    client = IG1Client(api_key=TEST_KEY, base_url=emulator.base_url)
    emulator.configure(retry_after=0.2)
    emulator.fail_next("429", count=2)
    caplog.set_level(logging.DEBUG, logger="prefect_ig1.tasks.pause")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        pause = SharedPause("ig1-nowhere", refresh_seconds=0.01)  # takes the settings along
    try:
        pause.watch(client.throttle)
        response = client.send(ResponsesRequest(model="m", input="hello"))
        _until(lambda: pause.reads >= 2, "failed reads")
    finally:
        pause.close()
        client.close()
    assert response.output_text and emulator.stats.faults_served["429"] == 2
    warnings = [r for r in caplog.records
                if r.name == "prefect_ig1.tasks.pause" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ig1-pause-ig1-nowhere" in warnings[0].getMessage()
    assert pause.writes == 0 and pause.until == 0.0
    assert TEST_KEY not in caplog.text


@pytest.mark.parametrize("value", [
    None, "soon", ["x"], {"until": "1e12"}, {"until": True}, {"until": float("nan")},
    {"until": float("inf")}, {"until": None}])
def test_a_variable_someone_else_wrote_badly_is_no_moment(value: object) -> None:
    from types import SimpleNamespace

    from prefect_ig1.tasks.pause import _moment

    assert _moment(SimpleNamespace(value=value)) == 0.0
    assert _moment(SimpleNamespace(value={"until": 1234.5})) == 1234.5
