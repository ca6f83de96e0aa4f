"""The emulator's seeded random faults, its payment counters and its restart on the same port."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from prefect_ig1.sandbox._settings import TRANSIENT_MIX, parse_mix
from prefect_ig1.sandbox.emulator import EmulatorServer, _parser
from prefect_ig1.sandbox.sample_images import small_png
from tests.helpers import MODEL, image_input


def outcome(client: httpx.Client, body: dict[str, object]) -> str:
    """The status of one POST, or "drop" when the connection was cut."""
    try:
        return str(client.post("/responses", json=body).status_code)
    except httpx.TransportError:
        return "drop"


def bodies(n: int) -> list[dict[str, object]]:
    return [{"model": MODEL, "input": f"request {i}"} for i in range(n)]


def test_a_fault_rate_fails_that_share_with_the_mix(emulator: EmulatorServer,
                                                    client: httpx.Client) -> None:
    emulator.configure(fault_rate=0.2, fault_seed=7)
    outcomes = Counter(outcome(client, body) for body in bodies(400))
    stats = emulator.stats
    served = sum(stats.faults_served.values())
    assert 50 <= served <= 110  # 80 expected; binomial sd 8
    assert set(stats.faults_served) == set(TRANSIENT_MIX)  # every kind of the default mix
    assert stats.requests == 400 and stats.responses_ok == 400 - served
    # malformed bodies are 200s that are not JSON: the status alone does not tell them apart
    assert outcomes["200"] == stats.responses_ok + stats.faults_served["malformed"]
    assert outcomes["drop"] == stats.faults_served["drop"]


def test_draws_depend_on_the_seed_and_the_request_not_on_arrival_order(
        emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.configure(fault_rate=0.3, fault_mix={"500": 1, "503": 1}, fault_seed=1)
    requests = bodies(60)
    first = {str(b["input"]): outcome(client, b) for b in requests}
    emulator.reset()
    emulator.configure(fault_rate=0.3, fault_mix={"500": 1, "503": 1}, fault_seed=1)
    shuffled = random.Random(3).sample(requests, len(requests))
    with ThreadPoolExecutor(8) as pool:
        again = dict(zip([str(b["input"]) for b in shuffled],
                         pool.map(lambda b: outcome(client, b), shuffled), strict=True))
    assert again == first and set(first.values()) == {"200", "500", "503"}
    emulator.reset()
    emulator.configure(fault_rate=0.3, fault_mix={"500": 1, "503": 1}, fault_seed=2)
    assert {str(b["input"]): outcome(client, b) for b in requests} != first


def test_the_same_request_sent_again_gets_a_fresh_draw(emulator: EmulatorServer,
                                                       client: httpx.Client) -> None:
    emulator.configure(fault_rate=0.5, fault_mix={"503": 1})
    body = {"model": MODEL, "input": "retry me"}
    tries = [outcome(client, body) for _ in range(20)]
    assert set(tries) == {"200", "503"}
    emulator.reset()
    emulator.configure(fault_rate=0.5, fault_mix={"503": 1})
    assert [outcome(client, body) for _ in range(20)] == tries


def test_queued_faults_come_first(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.configure(fault_rate=1.0, fault_mix={"500": 1})
    emulator.fail_next("429")
    assert [outcome(client, b) for b in bodies(3)] == ["429", "500", "500"]


def test_fault_settings_are_validated_and_reachable_by_the_control_endpoint(
        emulator: EmulatorServer) -> None:
    for bad in ({"fault_rate": 1.5}, {"fault_rate": True}, {"fault_mix": {"teapot": 1}},
                {"fault_mix": {"500": -1}}, {"fault_mix": {"500": 0}}, {"fault_mix": {}},
                {"fault_seed": 1.5}):
        with pytest.raises(ValueError):
            emulator.configure(**bad)
    url = emulator.url + "/_emulator/settings"
    patched = httpx.post(url, json={"fault_rate": 0.25, "fault_mix": {"hang": 1, "502": 3},
                                    "fault_seed": 9}).json()
    assert (patched["fault_rate"], patched["fault_mix"], patched["fault_seed"]) == (
        0.25, {"hang": 1.0, "502": 3.0}, 9)
    assert httpx.post(url, json={"fault_mix": {"nope": 1}}).status_code == 400
    emulator.reset()
    assert emulator.settings.fault_rate == 0 and emulator.settings.fault_mix == TRANSIENT_MIX


def test_command_line_fault_options() -> None:
    args = _parser().parse_args(["--fault-rate", "0.2", "--fault-mix", "429=2, 500,drop",
                                 "--fault-seed", "4"])
    assert (args.fault_rate, args.fault_mix, args.fault_seed) == (
        0.2, {"429": 2.0, "500": 1.0, "drop": 1.0}, 4)
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_mix("429,teapot")


def test_counters_tell_descriptions_and_repeat_payments_apart(
        emulator: EmulatorServer, client: httpx.Client) -> None:
    described = {"model": MODEL, "input": image_input(small_png()[1])}
    text = {"model": MODEL, "input": "hello"}
    for body in (described, text, described, text, text):
        assert client.post("/responses", json=body).status_code == 200
    stats = emulator.stats
    assert (stats.responses_ok, stats.image_responses_ok, stats.repeat_responses_ok) == (5, 2, 3)
    emulator.fail_next("500")
    client.post("/responses", json={"model": MODEL, "input": "new"})  # a fault is not paid
    client.post("/responses", json={"model": MODEL, "input": "new"})
    assert emulator.stats.repeat_responses_ok == 3


@pytest.mark.slow
def test_restart_serves_the_same_port_with_the_same_state() -> None:
    server = EmulatorServer(latency=0.0).start()
    try:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        base_url = server.base_url
        assert httpx.post(f"{base_url}/responses", headers=headers,
                          json={"model": MODEL, "input": "a"}).status_code == 200
        server.fail_next("503")
        server.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{base_url}/responses", headers=headers, json={"model": MODEL,
                                                                      "input": "b"})
        server.start()
        assert server.base_url == base_url
        statuses = [httpx.post(f"{base_url}/responses", headers=headers,
                               json={"model": MODEL, "input": "c"}).status_code
                    for _ in range(2)]
        assert statuses == [503, 200] and server.stats.responses_ok == 2
    finally:
        server.stop()
