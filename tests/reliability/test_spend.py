"""Spend you can see and cap: the ledger, the forecast, the caps, the events, the month view."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from pydantic import SecretStr

from prefect_ig1 import usage as usage_cli
from prefect_ig1.blocks import IG1Credentials, Prices, ResponsesModel
from prefect_ig1.client import AccountUsage, UsageDay
from prefect_ig1.flows import describe_s3_images
from prefect_ig1.flows.spend import OverBudget
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.tasks.ledger import SpendCapReached
from tests.helpers import TEST_KEY, describe_calls, distinct_pngs, run_outputs

pytestmark = pytest.mark.usefixtures("prefect_server")

PRICES = {"input_price_per_million": 0.5, "output_price_per_million": 2.0}


def _profile(emulator: EmulatorServer) -> ResponsesModel:
    credentials = IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=emulator.base_url)
    return ResponsesModel(credentials=credentials, **PRICES)


def test_the_ledger_adds_up_to_the_emulators_own_token_counts(
        env: EmulatorServer, bucket_with_images: Callable[..., str], prompt: str) -> None:
    bucket = bucket_with_images(distinct_pngs(6))
    report = describe_s3_images(bucket, prefix="in/", prompt=prompt, model=_profile(env),
                                max_concurrency=3)
    *models, total = report.spend
    stats = env.stats
    assert total.model == "all" and total.requests == stats.requests
    assert (total.input_tokens, total.output_tokens) == (stats.input_tokens, stats.output_tokens)
    expected = Prices(0.5, 2.0).cost(stats.input_tokens, stats.output_tokens)
    assert total.cost == pytest.approx(expected) and report.cost == pytest.approx(expected)
    assert [line.model for line in models] == ["qwen35-397b-a17b-instruct-general"]

    # The same images for another output prefix: every description from the cache. Only the
    # summary may be sent: its lines usually come in another order, a new call counted as
    # one; in the first run's order (CI met it once) it is a cache hit too.
    before, images_paid = env.stats.requests, env.stats.image_responses_ok
    cached = describe_s3_images(bucket, prefix="in/", prompt=prompt, model=_profile(env),
                                output_prefix="other/")
    assert cached.spend[-1].cache_hits >= 6 and cached.input_tokens == 0
    assert cached.summary_calls == 1 and env.stats.image_responses_ok == images_paid
    assert cached.spend[-1].requests == env.stats.requests - before
    assert cached.spend[-1].requests + cached.spend[-1].cache_hits == 6 + cached.summary_calls


@pytest.mark.slow  # two runs of 50 images
def test_the_forecast_is_close_to_what_a_run_of_uniform_images_spends(
        env: EmulatorServer, local_s3: LocalS3, bucket_with_images: Callable[..., str],
        prompt: str) -> None:
    images = distinct_pngs(100)
    bucket = bucket_with_images(images[:50], prefix="a/")
    first = describe_s3_images(bucket, prompt=prompt, max_concurrency=8)
    assert first.forecast is not None and first.forecast.basis == "default"
    client = local_s3.client()
    for name, data in images[50:]:
        client.put_object(Bucket=bucket, Key=f"a/{name}", Body=data)
    second = describe_s3_images(bucket, prompt=prompt, max_concurrency=8)
    forecast = second.forecast
    assert forecast is not None and forecast.basis == "last_run" and forecast.items == 50
    actual = second.input_tokens + second.output_tokens
    assert abs(forecast.tokens - actual) <= 0.2 * actual, (forecast.tokens, actual)


def test_dry_run_sends_nothing_and_returns_the_forecast(
        env: EmulatorServer, bucket_with_images: Callable[..., str], prompt: str) -> None:
    bucket = bucket_with_images(distinct_pngs(7))
    report = describe_s3_images(bucket, prompt=prompt, model=_profile(env), dry_run=True)
    assert report.dry_run and report.forecast is not None and report.forecast.items == 7
    assert report.forecast.cost is not None and report.forecast.budget_left is not None
    assert env.stats.requests == 0


def test_a_forecast_over_the_budget_left_refuses_to_start(
        env: EmulatorServer, bucket_with_images: Callable[..., str], prompt: str) -> None:
    bucket = bucket_with_images(distinct_pngs(10))
    env.configure(usage_commit=0.0001)  # almost nothing left this month
    with pytest.raises(OverBudget, match="allow_over_budget=True"):
        describe_s3_images(bucket, prompt=prompt, model=_profile(env))
    assert env.stats.requests == 0
    report = describe_s3_images(bucket, prompt=prompt, model=_profile(env),
                                allow_over_budget=True)
    assert report.counts == {"described": 10}


def test_max_tokens_stops_within_max_concurrency_calls_of_the_cap(
        env: EmulatorServer, local_s3: LocalS3, bucket_with_images: Callable[..., str],
        prompt: str) -> None:
    images = distinct_pngs(45)
    bucket = bucket_with_images(images[:5])  # a first run: the forecast's tokens per image
    first = describe_s3_images(bucket, prompt=prompt)
    per_image = (first.input_tokens + first.output_tokens) / 5
    client = local_s3.client()
    for name, data in images[5:]:
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=data)
    env.reset()
    cap = round(10 * per_image)
    with pytest.raises(SpendCapReached, match="max_tokens"):
        describe_s3_images(bucket, prompt=prompt, max_concurrency=4, max_tokens=cap,
                           retry_delay_seconds=0)
    calls = describe_calls(env)
    assert 10 - 4 <= calls <= 10 + 1, calls  # within max_concurrency calls of the cap
    # Calls in flight are reserved at the run's average, so the cap is passed at most by
    # how far real calls differ from it (images differ by a few tokens), never by a call.
    assert env.stats.input_tokens + env.stats.output_tokens <= cap + per_image
    folder = max({key.split("/")[2] for key in (
        obj["Key"] for obj in local_s3.client().list_objects_v2(
            Bucket=bucket, Prefix="descriptions/_runs/")["Contents"])})
    run = run_outputs(local_s3, bucket, folder)
    assert '"stopped_by": "SpendCapReached' in run["run.json"].replace("\n", "").replace(
        '":"', '": "') or "SpendCapReached" in run["run.json"]
    assert "not attempted" in run["summary.md"]


def _events(name: str, resource_prefix: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(
            event=EventNameFilter(name=[name]),
            resource=EventResourceFilter(id_prefix=[resource_prefix])), limit=50)
    return list(page.events)


def _wait_for(check: Callable[[], list[Any]], what: str) -> list[Any]:
    deadline = time.monotonic() + 30
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} event reached the server"
        time.sleep(0.5)
    return found


@pytest.mark.slow  # waits for the events to reach the server
def test_runs_emit_events_that_reach_a_real_prefect_server(
        env: EmulatorServer, bucket_with_images: Callable[..., str], prompt: str) -> None:
    bucket = bucket_with_images(distinct_pngs(3))
    env.configure(usage_commit=0.0035, cost_per_response=0.001)  # spent below: budget low
    state: Any = describe_s3_images(bucket, prompt=prompt, model=_profile(env),
                                    allow_over_budget=True, return_state=True)
    flow_run_id = str(state.state_details.flow_run_id)
    (event,) = _wait_for(lambda: _events("ig1.run.completed", f"prefect.flow-run.{flow_run_id}"),
                         "ig1.run.completed")
    assert event.payload["counts"] == {"described": 3} and event.payload["cost"] > 0
    env.configure(budget_requests=0)
    bucket2 = bucket_with_images(distinct_pngs(2))
    stopped: Any = describe_s3_images(bucket2, prompt=prompt, model=_profile(env),
                                      allow_over_budget=True, return_state=True)
    assert stopped.is_failed()
    _wait_for(lambda: _events("ig1.run.stopped",
                              f"prefect.flow-run.{stopped.state_details.flow_run_id}"),
              "ig1.run.stopped")
    low = _wait_for(lambda: _events("ig1.budget.low", "ig1.account."), "ig1.budget.low")
    assert all(TEST_KEY not in e.model_dump_json() for e in [event, *low])


def test_the_month_view_and_its_exit_code(emulator: EmulatorServer,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    history = [UsageDay(date="2026-11-01", model="m1", requests=10, cost=1.0),
               UsageDay(date="2026-11-10", model="m2", requests=5, cost=4.0),
               UsageDay(date="2026-10-31", model="m1", requests=99, cost=9.0)]
    out = io.StringIO()
    lasts = usage_cli.month_view(AccountUsage(current=5.0, commit=100.0), history,
                                 date(2026, 11, 10), out)
    text = out.getvalue()
    assert lasts and "2026-10-31" not in text and "m2" in text and "95.0000 left" in text
    assert not usage_cli.month_view(AccountUsage(current=50.0, commit=100.0), history,
                                    date(2026, 11, 10), io.StringIO())

    monkeypatch.setenv("IG1AI_API_KEY", TEST_KEY)
    monkeypatch.setenv("IG1AI_BASE_URL", emulator.base_url)
    emulator.configure(usage_commit=1000.0)
    assert usage_cli.main([]) == 0
    printed = capsys.readouterr().out
    assert "commit" in printed and TEST_KEY not in printed
    monkeypatch.setenv("IG1AI_API_KEY", "sk-wrong")
    assert usage_cli.main([]) == 2
