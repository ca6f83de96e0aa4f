"""The flagship flow on moto's S3 server and the IG1 emulator, both real HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from typing import Any

import prefect.utilities.engine as engine_utilities
import pytest
from PIL import Image
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.context import FlowRunContext
from pydantic import SecretStr

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import (
    AuthenticationError,
    BudgetExhaustedError,
    InputImage,
    InputMessage,
    InputText,
)
from prefect_ig1.flows import describe_s3_images
from prefect_ig1.flows.describe_images import DEFAULT_PROMPT
from prefect_ig1.flows.records import ItemResult
from prefect_ig1.flows.storage import BucketNotFound
from prefect_ig1.flows.window import WindowResults
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.sandbox.sample_images import broken_images, large_jpeg, sample_images
from prefect_ig1.tasks import create_response
from prefect_ig1.tasks.images import prepare_image
from tests.helpers import TEST_KEY, all_keys, describe_calls, distinct_pngs, put, read_record

pytestmark = pytest.mark.usefixtures("prefect_server")

GOOD = sample_images()
TRICKY_KEYS = ["with space/été 2024.png", "plus+sign.png", "100%25 real%.png",
               "a/b/c/d/e/f/deep.png", "ünïcødé/图片.png"]


@pytest.fixture(autouse=True)
def fresh_prompt(prompt: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test sends its own prompt (the response cache is shared by the whole session)."""
    monkeypatch.setattr(sys.modules[__name__], "PROMPT", prompt)
    return prompt


PROMPT = DEFAULT_PROMPT


def describe(bucket: str, **options: Any) -> Any:
    """The flow with this test's fresh prompt."""
    return describe_s3_images(bucket, prompt=PROMPT, **options)


@pytest.mark.slow
def test_records_carry_every_field(env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    import hashlib

    name, data = GOOD[1]  # the 1600x1200 JPEG
    put(local_s3, bucket, [(name, data)])
    report = describe(bucket, prefix="in/", max_image_side=800)
    doc = read_record(local_s3, bucket, f"in/{name}")
    etag = local_s3.client().head_object(Bucket=bucket, Key=f"in/{name}")["ETag"].strip('"')
    assert doc["source_key"] == f"in/{name}" and doc["source_etag"] == etag
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["model"] == "qwen35-397b-a17b-instruct-general"
    assert doc["text"].startswith("Echo: " + PROMPT) and doc["error"] is None
    assert "Image 800x600 JPEG" in doc["text"]
    assert (doc["sent_width"], doc["sent_height"]) == (800, 600)
    assert 0 < doc["sent_bytes"] < len(data)
    assert doc["usage"]["total_tokens"] > 0 and doc["cached"] is False
    assert doc["described_at"].startswith("20") and doc["request_id"].startswith("req_")
    assert report.counts.get("described", 0) == 1 and report.requests == 1


@pytest.mark.slow
def test_every_sample_described_bad_ones_refused_without_a_call(
        env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")
    bad = [*broken_images(), ("bomb.png", bomb.getvalue()), ("huge.jpg", large_jpeg()[1])]
    put(local_s3, bucket, GOOD + bad)
    report = describe(bucket, prefix="in/", max_object_mb=0.25)
    assert report.counts.get("described", 0) == len(GOOD)
    assert describe_calls(env) == len(GOOD)
    reasons = {name: read_record(local_s3, bucket, f"in/{name}")["error"]["type"]
               for name, _ in bad}
    truncated, not_image, empty = (name for name, _ in broken_images())
    assert reasons == {truncated: "corrupt", not_image: "not_an_image", empty: "empty",
                       "bomb.png": "decompression_bomb", "huge.jpg": "too_large"}
    assert report.counts["failed"] == len(bad)


@pytest.mark.slow
def test_a_12_megapixel_photo_is_sent_small(env: EmulatorServer, local_s3: LocalS3,
                                            bucket: str) -> None:
    original = large_jpeg()[1]
    put(local_s3, bucket, [("big.jpg", original)])
    describe(bucket, prefix="in/")
    doc = read_record(local_s3, bucket, "in/big.jpg")
    assert (doc["sent_width"], doc["sent_height"]) == (1000, 750)  # 1/4 scale, within 10 %
    assert doc["sent_bytes"] < 0.15 * len(original)


@pytest.mark.slow
def test_rerun_makes_no_call_and_writes_only_its_run_outputs(
        env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    put(local_s3, bucket, GOOD[:4] + broken_images()[:1])
    describe(bucket, prefix="in/")
    before, calls = set(all_keys(local_s3, bucket)), env.stats.requests
    report = describe(bucket, prefix="in/")
    assert env.stats.requests == calls
    written = set(all_keys(local_s3, bucket)) - before
    assert written == {url.removeprefix(f"s3://{bucket}/") for url in report.outputs.values()}
    assert {key.rsplit("/", 1)[1] for key in written} == {"summary.md", "manifest.jsonl",
                                                         "run.json", "gallery.html"}
    assert all(key.split("/")[2].endswith(f"Z-{report.run}") for key in written)
    assert report.counts == {"unchanged": 5} and report.requests == 0


@pytest.fixture
def record_reads(env: EmulatorServer) -> list[str]:
    """Keys the flow's S3 client GETs (it is one client per process and AWS environment)."""
    from prefect_ig1.flows.storage import s3_client

    keys: list[str] = []

    def seen(params: dict[str, Any], **_: Any) -> None:
        keys.append(params["Key"])

    events = s3_client().meta.events
    events.register("provide-client-params.s3.GetObject", seen, unique_id="record-reads")
    yield keys
    events.unregister("provide-client-params.s3.GetObject", unique_id="record-reads")


@pytest.mark.slow
def test_rerun_reads_no_record_thanks_to_the_index(
        env: EmulatorServer, local_s3: LocalS3, bucket: str, record_reads: list[str]) -> None:
    put(local_s3, bucket, GOOD[:4] + broken_images()[:1])
    describe(bucket, prefix="in/")
    record_reads.clear()
    report = describe(bucket, prefix="in/")
    assert report.counts == {"unchanged": 5}
    assert record_reads == ["descriptions/_state/record-index.jsonl.gz"]


@pytest.mark.slow
def test_a_record_rewritten_behind_the_index_is_read_again(
        env: EmulatorServer, local_s3: LocalS3, bucket: str, record_reads: list[str]) -> None:
    put(local_s3, bucket, GOOD[:2])
    describe(bucket, prefix="in/")
    key = f"in/{GOOD[0][0]}"
    doc = read_record(local_s3, bucket, key)
    doc.update(text=None, error={"type": "ServerError", "message": "503", "retryable": True})
    local_s3.client().put_object(Bucket=bucket, Key=f"descriptions/{key}.json",
                                 Body=json.dumps(doc).encode())
    record_reads.clear()
    env.reset()
    report = describe(bucket, prefix="in/")
    assert report.counts == {"unchanged": 1, "cached": 1}  # retried: from the cache, unpaid
    assert f"descriptions/{key}.json" in record_reads and describe_calls(env) == 0
    assert read_record(local_s3, bucket, key)["error"] is None


@pytest.mark.slow
def test_an_unreadable_index_only_costs_record_reads(
        env: EmulatorServer, local_s3: LocalS3, bucket: str, record_reads: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    put(local_s3, bucket, GOOD[:3])
    describe(bucket, prefix="in/")
    index_key = "descriptions/_state/record-index.jsonl.gz"
    local_s3.client().put_object(Bucket=bucket, Key=index_key, Body=b"not gzip")
    record_reads.clear()
    env.reset()
    with caplog.at_level(logging.WARNING):
        report = describe(bucket, prefix="in/")
    assert report.counts == {"unchanged": 3} and env.stats.requests == 0
    assert len([k for k in record_reads if k.startswith("descriptions/in/")]) == 3
    assert "unreadable record index" in caplog.text
    record_reads.clear()
    describe(bucket, prefix="in/")
    assert record_reads == [index_key]  # the second rerun has a good index again


@pytest.mark.slow
def test_new_and_changed_images_only(env: EmulatorServer, local_s3: LocalS3,
                                     bucket: str) -> None:
    put(local_s3, bucket, GOOD[:3])
    describe(bucket, prefix="in/")
    put(local_s3, bucket, [(GOOD[0][0], GOOD[5][1]), ("added.png", GOOD[6][1])])
    env.reset()
    report = describe(bucket, prefix="in/")
    assert report.counts == {"unchanged": 2, "described": 2}
    assert describe_calls(env) == 2
    assert read_record(local_s3, bucket, f"in/{GOOD[0][0]}")["sha256"] == __import__(
        "hashlib").sha256(GOOD[5][1]).hexdigest()


def test_the_flow_run_does_not_hold_a_result_per_image(env: EmulatorServer, local_s3: LocalS3,
                                                       bucket: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect remembers what each task returned until the flow run ends: a window's
    results come back as one object, so that memory grows per window, not per image."""
    remembered: list[int] = []  # entries each describe-window task run added
    link = engine_utilities.link_state_to_result

    def counting_link(state: Any, result: Any, *args: Any, **kwargs: Any) -> None:
        context = FlowRunContext.get()
        before = len(context.run_results) if context else 0
        link(state, result, *args, **kwargs)
        if context is not None and (isinstance(result, WindowResults) or (
                isinstance(result, list) and isinstance(result[0], ItemResult))):
            remembered.append(len(context.run_results) - before)

    monkeypatch.setattr(engine_utilities, "link_state_to_result", counting_link)
    put(local_s3, bucket, distinct_pngs(24))
    report = describe(bucket, prefix="in/", max_concurrency=4, window_size=4)
    assert report.counts == {"described": 24}
    assert len(remembered) == 6 and max(remembered) <= 2  # the object and its one field


def test_duplicate_image_under_two_keys_is_one_call(env: EmulatorServer, local_s3: LocalS3,
                                                    bucket: str) -> None:
    photo = GOOD[1][1]
    put(local_s3, bucket, [("one.jpg", photo), ("deep/copy.jpg", photo)])
    report = describe(bucket, prefix="in/", max_concurrency=4)
    assert describe_calls(env) == 1
    docs = [read_record(local_s3, bucket, key) for key in ("in/one.jpg", "in/deep/copy.jpg")]
    assert docs[0]["text"] == docs[1]["text"] and sorted(d["cached"] for d in docs) == [
        False, True]
    assert report.counts == {"described": 1, "cached": 1}


@pytest.mark.slow
def test_create_response_and_the_flow_share_one_cache(env: EmulatorServer, local_s3: LocalS3,
                                                      bucket: str) -> None:
    name, data = GOOD[2]
    prepared = prepare_image(data)
    message = [InputMessage(role="user", content=[
        InputText(text=PROMPT),
        InputImage.from_bytes(prepared.data, mime_type=prepared.mime_type)])]
    flow(lambda: create_response(message))()
    assert env.stats.requests == 1
    put(local_s3, bucket, [(name, data)])
    describe(bucket, prefix="in/")
    assert describe_calls(env) == 1 and read_record(local_s3, bucket, f"in/{name}")["cached"]


@pytest.mark.slow
def test_listing_past_1000_keys_counts_skips(env: EmulatorServer, local_s3: LocalS3,
                                             bucket: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = local_s3.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"in/a/{i:05d}.txt",
                                                  Body=b"x"), range(1100)))
    put(local_s3, bucket, GOOD[:2], prefix="in/z/")  # listed after the first 1000 keys
    report = describe(bucket, prefix="in/")
    assert report.listed == 1102 and report.skipped == {"not_an_image_extension": 1100}
    assert report.counts.get("described", 0) == 2


@pytest.mark.slow
def test_tricky_keys_round_trip(env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    put(local_s3, bucket, [(key, GOOD[0][1]) for key in TRICKY_KEYS])
    report = describe(bucket, prefix="in/")
    for key in TRICKY_KEYS:
        assert read_record(local_s3, bucket, f"in/{key}")["source_key"] == f"in/{key}"
    assert report.counts == {"described": 1, "cached": len(TRICKY_KEYS) - 1}


@pytest.mark.slow
def test_output_prefix_inside_the_source_prefix_is_skipped(
        env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    put(local_s3, bucket, GOOD[:2], prefix="")
    describe(bucket, prefix="", output_prefix="descriptions/")
    report = describe(bucket, prefix="", output_prefix="descriptions/")
    assert report.counts == {"unchanged": 2}
    assert report.skipped["output"] >= 5  # 2 records + the first run's 3 outputs


def test_transient_faults_still_describe_every_image(env: EmulatorServer, local_s3: LocalS3,
                                                     bucket: str) -> None:
    put(local_s3, bucket, GOOD)
    for kind in ("429", "500", "502", "503", "drop", "malformed"):
        env.fail_next(kind)
    # More attempts per image than queued faults: one image may meet all six in a row.
    patient = IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=env.base_url, max_retries=6)
    report = describe(bucket, prefix="in/", max_concurrency=2, retry_delay_seconds=0,
                      credentials=patient)
    assert report.counts.get("described", 0) == len(GOOD) and not report.counts.get("failed")


def test_concurrency_bound_is_respected(env: EmulatorServer, local_s3: LocalS3,
                                       bucket: str) -> None:
    put(local_s3, bucket, GOOD + [(f"more{i}.png", GOOD[i][1][:-1] + b"\0") for i in (0, 3)])
    # Replies wait until 3 calls are in flight, so the bound is reached however slow the
    # machine; a fourth would show.
    env.configure(latency=0.1, hold_until_in_flight=3)
    describe(bucket, prefix="in/", max_concurrency=3, summary_chunk_chars=100_000)
    assert env.stats.max_in_flight_seen == 3


def test_concurrency_defaults_from_usage(env: EmulatorServer, local_s3: LocalS3,
                                         bucket: str) -> None:
    put(local_s3, bucket, GOOD[:1])
    env.configure(max_throughput=5)
    assert describe(bucket, prefix="in/").max_concurrency == 5


@pytest.mark.slow
def test_global_concurrency_limit_is_shared(env: EmulatorServer, local_s3: LocalS3,
                                           bucket: str) -> None:
    name = f"ig1-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2))
    put(local_s3, bucket, GOOD)
    env.configure(latency=0.1)
    describe(bucket, prefix="in/", max_concurrency=6, concurrency_limit_name=name)
    assert env.stats.max_in_flight_seen <= 2


def test_auth_failure_stops_at_once(env: EmulatorServer, local_s3: LocalS3,
                                    bucket: str) -> None:
    put(local_s3, bucket, GOOD * 1 + [(f"x{i}.png", GOOD[0][1]) for i in range(30)])
    env.fail_next("401", count=1000)
    state = describe(bucket, prefix="in/", max_concurrency=3, return_state=True)
    assert state.is_failed()
    with pytest.raises(AuthenticationError, match="refused the credentials"):
        state.result()
    assert env.stats.requests <= 3


@pytest.mark.slow
def test_wrong_key_fails_before_any_description(env: EmulatorServer, local_s3: LocalS3,
                                                bucket: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IG1AI_API_KEY", "sk-wrong")
    put(local_s3, bucket, GOOD[:2])
    state = describe(bucket, prefix="in/", return_state=True)
    with pytest.raises(AuthenticationError):
        state.result()
    assert env.stats.requests == 0


@pytest.mark.slow
def test_budget_stop_within_the_concurrency_bound(env: EmulatorServer, local_s3: LocalS3,
                                                  bucket: str) -> None:
    distinct = distinct_pngs(40)
    put(local_s3, bucket, distinct)
    env.configure(budget_requests=5, latency=0.02)
    state = describe(bucket, prefix="in/", max_concurrency=4, return_state=True)
    with pytest.raises(BudgetExhaustedError, match="not attempted"):
        state.result()
    assert env.stats.requests <= 5 + 4
    runs = [k for k in all_keys(local_s3, bucket) if k.startswith("descriptions/_runs/")]
    assert {k.rsplit("/", 1)[1] for k in runs} == {"summary.md", "manifest.jsonl", "run.json",
                                                   "gallery.html"}
    run = json.loads(local_s3.client().get_object(
        Bucket=bucket, Key=next(k for k in runs if k.endswith("run.json")))["Body"].read())
    assert run["counts"]["described"] == 5 and run["counts"]["not_attempted"] > 0
    assert run["new"] == 40 and run["listed"] == 40 and run["timings"]["total_s"] > 0
    env.configure(budget_requests=None)
    again = describe(bucket, prefix="in/", max_concurrency=4)
    assert again.counts.get("unchanged") == 5 and again.counts.get("described", 0) == 35


@pytest.mark.slow
def test_summary_map_reduces_past_one_prompt(env: EmulatorServer, local_s3: LocalS3,
                                             bucket: str) -> None:
    put(local_s3, bucket, distinct_pngs(12))
    report = describe(bucket, prefix="in/", summary_chunk_chars=600)
    assert report.summary_calls > 2
    summary = local_s3.client().get_object(
        Bucket=bucket, Key=report.outputs["summary.md"].removeprefix(f"s3://{bucket}/"))["Body"].read().decode()
    assert summary.startswith(f"# Image descriptions: run {report.run}")
    prompts = [b for b in env.stats.received if "input_image" not in json.dumps(b)]
    assert prompts and all(len(b["input"]) <= 600 for b in prompts)


@pytest.mark.slow
def test_artifacts_and_no_key_anywhere(env: EmulatorServer, local_s3: LocalS3, bucket: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    put(local_s3, bucket, GOOD[:3] + broken_images()[:1])
    state = describe(bucket, prefix="in/", return_state=True)
    report = state.result()
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        artifacts = {key: client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=run_filter)
            for key in ("described-images", "image-summary", "ig1-usage")}
    assert all(artifacts.values())
    table = json.loads(artifacts["described-images"][0].data)
    assert len(table) == 4 and {row["status"] for row in table} == {"described", "failed"}
    texts = [json.dumps([a.model_dump(mode="json") for a in found]) for found in
             artifacts.values()]
    client = local_s3.client()
    texts += [client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", "replace")
              for key in all_keys(local_s3, bucket) if key.startswith("descriptions/")]
    texts += [caplog.text, report.model_dump_json()]
    assert not [text for text in texts if TEST_KEY in text]


def test_missing_bucket_fails_the_run(env: EmulatorServer) -> None:
    state = describe("no-such-bucket-here", return_state=True)
    with pytest.raises(BucketNotFound, match="no-such-bucket-here"):
        state.result()


def test_fail_on_item_errors(env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    put(local_s3, bucket, GOOD[:1] + broken_images()[:1])
    state = describe(bucket, prefix="in/", fail_on_item_errors=True,
                               return_state=True)
    assert state.is_failed()


@pytest.mark.slow
def test_command_line(env: EmulatorServer, local_s3: LocalS3, bucket: str) -> None:
    from prefect.settings import PREFECT_API_URL

    # Images no other test sends with the default prompt (the cache is session-wide).
    put(local_s3, bucket, distinct_pngs(2), prefix="cli/")
    done = subprocess.run(
        [sys.executable, "-m", "prefect_ig1.flows.describe_images", "--bucket", bucket,
         "--prefix", "cli/"],
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["counts"] == {"described": 2}
    assert TEST_KEY not in done.stdout + done.stderr


def test_a_run_over_budget_warns(env: EmulatorServer, local_s3: LocalS3, bucket: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    put(local_s3, bucket, GOOD[:1])
    env.configure(usage_commit=0.0)
    describe(bucket, prefix="in/")
    assert "budget already spent" in caplog.text


def test_loads_as_a_prefect_entrypoint() -> None:
    from prefect.flows import load_flow_from_entrypoint

    loaded = load_flow_from_entrypoint("prefect_ig1.flows.describe_images:describe_s3_images")
    assert loaded.name == "describe-s3-images"
    assert {"bucket", "prefix", "output_prefix", "model", "max_concurrency",
            "concurrency_limit_name", "max_image_side"} <= set(loaded.parameters.properties)
