"""The data-team batch on the IG1 emulator and moto's S3, both real HTTP on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import AuthenticationError, BudgetExhaustedError
from prefect_ig1.flows import run_batch
from prefect_ig1.flows.batch import main
from prefect_ig1.flows.batch_io import BatchInputError
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.sandbox.sample_images import sample_images

pytestmark = pytest.mark.usefixtures("prefect_server")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["label", "confidence"],
          "properties": {"label": {"type": "string", "enum": ["billing", "bug", "other"]},
                         "confidence": {"type": "number"}}}


class Ticket(BaseModel):
    """A ticket's class (a pydantic response_format named as 'module:Class')."""

    label: str
    urgent: bool


@pytest.fixture
def tag() -> str:
    """A word no other test's prompts hold: the response cache is shared by the session."""
    return uuid.uuid4().hex[:8]


def tickets(tag: str, n: int = 20) -> list[dict[str, str]]:
    return [{"ticket_id": f"T{i:03d}", "text": f"ticket {i} [{tag}]: my invoice is wrong"}
            for i in range(n)]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def batch(source: Path | str, credentials: IG1Credentials, **options: Any) -> Any:
    options.setdefault("max_concurrency", 4)
    return run_batch(str(source), credentials=credentials, **options)


def test_a_csv_with_a_schema_then_rerun_edit_and_reorder(
        tmp_path: Path, credentials: IG1Credentials, emulator: EmulatorServer, tag: str) -> None:
    rows = tickets(tag)
    source = write_csv(tmp_path / "tickets.csv", rows)
    report = batch(source, credentials, prompt="Classify: {text}", response_format=SCHEMA,
                   id_column="ticket_id", instructions="Answer as JSON.")
    assert emulator.stats.requests == 20 and report.counts == {"completed": 20}
    out = tmp_path / "tickets.results"
    results = lines(out / "results.jsonl")
    assert [r["custom_id"] for r in results] == [r["ticket_id"] for r in rows]  # input order
    first = results[0]
    assert set(first) == {"id", "custom_id", "response", "error", "status"}
    assert first["status"] == "completed" and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
    assert json.loads(first["response"]["body"]["output_text"])["label"] == "billing"
    table = pa.csv.read_csv(out / "results.csv")
    assert table.column_names == ["ticket_id", "text", "ig1_status", "ig1_output_text",
                                  "ig1_error", "ig1_label", "ig1_confidence"]
    assert table.column("ig1_label").to_pylist() == ["billing"] * 20
    assert pa.types.is_integer(table.schema.field("ig1_confidence").type)  # a number, as text
    run = json.loads((out / "run.json").read_text())
    assert run["counts"] == {"completed": 20} and run["requests"] == 20 and run["model"]
    assert run["input_tokens"] > 0 and "total_s" in run["timings"]

    emulator.reset()
    again = batch(source, credentials, prompt="Classify: {text}", response_format=SCHEMA,
                  id_column="ticket_id", instructions="Answer as JSON.")
    assert emulator.stats.requests == 0 and again.counts == {"cached": 20}
    assert [r["status"] for r in lines(out / "results.jsonl")] == ["cached"] * 20

    rows[7]["text"] += " (edited)"
    write_csv(source, rows[::-1])  # edited AND reordered
    emulator.reset()
    edited = batch(source, credentials, prompt="Classify: {text}", response_format=SCHEMA,
                   id_column="ticket_id", instructions="Answer as JSON.")
    assert emulator.stats.requests == 1 and edited.counts == {"cached": 19, "completed": 1}
    results = lines(out / "results.jsonl")
    assert [r["custom_id"] for r in results] == [r["ticket_id"] for r in rows[::-1]]
    assert next(r for r in results if r["custom_id"] == "T007")["status"] == "completed"


def test_a_parquet_table_keeps_its_types_and_row_numbers_are_the_ids(
        tmp_path: Path, credentials: IG1Credentials, emulator: EmulatorServer, tag: str) -> None:
    source = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"n": [1, 2, 3], "text": [f"doc {i} {tag}" for i in range(3)],
                             "price": [1.5, None, 3.25]}), source)
    out = tmp_path / "out"
    report = batch(source, credentials, output=str(out), prompt="Summarize {text} at {price}",
                   response_format=SCHEMA)
    assert report.counts == {"completed": 3} and emulator.stats.requests == 3
    table = pq.read_table(out / "results.parquet")
    assert table.schema.field("n").type == pa.int64()
    assert table.schema.field("ig1_confidence").type == pa.float64()
    assert table.column("price").to_pylist() == [1.5, None, 3.25]
    assert [r["custom_id"] for r in lines(out / "results.jsonl")] == ["0", "1", "2"]
    sent = [b["input"] for b in emulator.stats.received]
    assert f"Summarize doc 1 {tag} at " in sent  # a null renders as nothing


@pytest.mark.parametrize("suffix, table_name", [(".jsonl", "results.table.jsonl"),
                                                (".ndjson", "results.ndjson")])
def test_json_lines_tables(tmp_path: Path, credentials: IG1Credentials, tag: str,
                           suffix: str, table_name: str) -> None:
    source = tmp_path / f"rows{suffix}"
    source.write_text("".join(json.dumps({"q": f"{tag} {i}", "meta": {"i": i}}) + "\n"
                              for i in range(3)))
    report = batch(source, credentials, prompt="Answer {q}")
    assert report.counts == {"completed": 3} and report.kind == "table"
    out = tmp_path / "rows.results"
    rows = lines(out / table_name)
    assert rows[2]["meta"] == {"i": 2} and rows[2]["ig1_status"] == "completed"
    assert rows[2]["ig1_output_text"].startswith("Echo: Answer")
    assert len(lines(out / "results.jsonl")) == 3


def test_a_request_file_with_invalid_lines(tmp_path: Path, credentials: IG1Credentials,
                                           emulator: EmulatorServer, tag: str) -> None:
    good = {"custom_id": "r1", "method": "POST", "url": "/v1/responses",
            "body": {"input": f"hello {tag}", "temperature": 0.2}}
    structured = {"custom_id": "r4", "method": "POST", "url": "/v1/responses",
                  "body": {"model": "m2", "input": f"classify {tag}", "text": {"format": {
                      "type": "json_schema", "name": "t", "schema": SCHEMA}}}}
    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join([
        json.dumps(good),
        json.dumps({**good, "custom_id": "r2", "body": {"input": "x", "temprature": 1}}),
        "{not json",
        json.dumps(structured),
        json.dumps({**good, "custom_id": "r5", "body": {"input": "x", "top_p": 7}}),
    ]) + "\n")
    report = batch(source, credentials)
    assert report.kind == "requests" and emulator.stats.requests == 2
    results = lines(tmp_path / "requests.results" / "results.jsonl")
    assert [r["custom_id"] for r in results] == ["r1", "r2", "line-3", "r4", "r5"]
    assert [r["status"] for r in results] == ["completed", "failed", "failed", "completed",
                                              "failed"]
    assert results[1]["response"] is None and results[1]["error"]["code"] == "invalid_request"
    assert "temprature" in results[1]["error"]["message"]
    assert results[3]["response"]["body"]["model"] == "m2"
    assert not (tmp_path / "requests.results" / "results.table.jsonl").exists()


def test_s3_source_and_output_and_an_image_column(
        tmp_path: Path, credentials: IG1Credentials, emulator: EmulatorServer,
        local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch, tag: str) -> None:
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    s3 = local_s3.client()
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    (name_a, image_a), (name_b, image_b) = sample_images()[:2]
    s3.put_object(Bucket=bucket, Key=f"img/{name_a}", Body=image_a)
    local = tmp_path / name_b
    local.write_bytes(image_b)
    rows = [{"id": "a", "photo": f"s3://{bucket}/img/{name_a}", "q": tag},
            {"id": "b", "photo": str(local), "q": tag},
            {"id": "c", "photo": f"s3://{bucket}/img/missing.png", "q": tag},
            {"id": "d", "photo": "", "q": tag}]
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=["id", "photo", "q"]).writeheader()
    csv.DictWriter(buffer, fieldnames=["id", "photo", "q"]).writerows(rows)
    s3.put_object(Bucket=bucket, Key="in/photos.csv", Body=buffer.getvalue().encode())
    report = batch(f"s3://{bucket}/in/photos.csv", credentials, prompt="Describe ({q})",
                   image_column="photo", id_column="id")
    assert [report.n(s) for s in ("completed", "failed")] == [3, 1]
    assert emulator.stats.image_responses_ok == 2
    key = "in/photos.results/results.jsonl"
    results = [json.loads(line) for line in
               s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    assert [r["status"] for r in results] == ["completed", "completed", "failed", "completed"]
    assert "image" in results[0]["response"]["body"]["output_text"].lower()
    names = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="in/photos.results/")
             ["Contents"]}
    assert names == {f"in/photos.results/{n}" for n in ("results.jsonl", "results.csv",
                                                         "run.json")}
    assert report.outputs["results.csv"] == f"s3://{bucket}/in/photos.results/results.csv"


def test_invalid_output_is_a_row_and_not_cached(tmp_path: Path, credentials: IG1Credentials,
                                                emulator: EmulatorServer, tag: str) -> None:
    source = write_csv(tmp_path / "t.csv", tickets(tag, 3))
    emulator.configure(json_invalid=True)
    report = batch(source, credentials, prompt="Classify: {text}", response_format=SCHEMA)
    assert report.counts == {"invalid_output": 3}
    results = lines(tmp_path / "t.results" / "results.jsonl")
    assert results[0]["error"]["code"] == "invalid_output"
    assert "not JSON" in results[0]["error"]["message"]
    assert results[0]["response"]["body"]["output_text"].startswith("Sure!")
    table = pa.csv.read_csv(tmp_path / "t.results" / "results.csv")
    assert table.column("ig1_label").null_count == 3
    emulator.configure(json_invalid=False)
    emulator.reset()
    again = batch(source, credentials, prompt="Classify: {text}", response_format=SCHEMA)
    assert emulator.stats.requests == 3 and again.counts == {"completed": 3}


def test_a_pydantic_class_as_the_format(tmp_path: Path, credentials: IG1Credentials,
                                        emulator: EmulatorServer, tag: str) -> None:
    source = write_csv(tmp_path / "t.csv", tickets(tag, 2))
    report = batch(source, credentials, prompt="Classify: {text}",
                   response_format="tests.flows.test_batch:Ticket")
    assert report.counts == {"completed": 2}
    table = pa.csv.read_csv(tmp_path / "t.results" / "results.csv")
    assert table.column("ig1_urgent").type == pa.bool_()
    assert emulator.stats.received[0]["text"]["format"]["name"] == "Ticket"


def test_402_stops_within_the_bound_and_a_rerun_does_exactly_the_rest(
        tmp_path: Path, credentials: IG1Credentials, emulator: EmulatorServer, tag: str) -> None:
    source = write_csv(tmp_path / "t.csv", tickets(tag, 60))
    emulator.configure(budget_requests=10, latency=0.02)
    with pytest.raises(BudgetExhaustedError) as stopped:
        batch(source, credentials, prompt="Classify: {text}")
    message = str(stopped.value)
    assert "402" in message and "not attempted" in message and "exactly the rest" in message
    assert emulator.stats.requests <= 10 + 4
    results = lines(tmp_path / "t.results" / "results.jsonl")
    assert len(results) == 60
    statuses = [r["status"] for r in results]
    assert statuses.count("completed") == 10 and statuses.count("not_attempted") >= 40
    run = json.loads((tmp_path / "t.results" / "run.json").read_text())
    assert run["stopped_by"].startswith("BudgetExhaustedError")
    emulator.reset()
    report = batch(source, credentials, prompt="Classify: {text}")
    assert emulator.stats.requests == 50 and report.counts == {"cached": 10, "completed": 50}


def test_401_stops_at_once(tmp_path: Path, credentials: IG1Credentials,
                           emulator: EmulatorServer, tag: str) -> None:
    source = write_csv(tmp_path / "t.csv", tickets(tag, 30))
    emulator.fail_next("401", count=1000)
    with pytest.raises(AuthenticationError, match="rerun the same batch"):
        batch(source, credentials, prompt="Classify: {text}")
    assert emulator.stats.requests <= 4
    statuses = [r["status"] for r in lines(tmp_path / "t.results" / "results.jsonl")]
    assert statuses.count("not_attempted") >= 26 and len(statuses) == 30


@pytest.mark.parametrize("case, options, message", [
    ("rows.xlsx", {}, "unknown extension"),
    ("absent.csv", {}, "no such file"),
    ("broken.parquet", {}, "cannot read broken.parquet"),
    ("t.csv", {"prompt": "Classify: {body}"}, "['body']"),
    ("t.csv", {"prompt": "Classify: {}"}, "positional"),
    ("t.csv", {"response_format": {"type": "object", "properties": 3}}, "not a valid JSON Schema"),
    ("t.csv", {"response_format": "no_such_module:X"}, "no_such_module"),
    ("dup.csv", {"id_column": "ticket_id"}, "appears more than once"),
    ("t.csv", {"id_column": "nope"}, "is not a column"),
    ("t.csv", {"prompt": None}, "needs a prompt"),
])
def test_bad_input_is_an_error_before_any_call(
        tmp_path: Path, credentials: IG1Credentials, emulator: EmulatorServer, tag: str,
        case: str, options: dict[str, Any], message: str) -> None:
    rows = tickets(tag, 5)
    write_csv(tmp_path / "t.csv", rows)
    write_csv(tmp_path / "dup.csv", [*rows, rows[2]])
    (tmp_path / "rows.xlsx").write_bytes(b"PK")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    options = {"prompt": "Classify: {text}", **options}
    with pytest.raises(BatchInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        batch(tmp_path / case, credentials, **options)
    assert emulator.stats.requests == 0


def test_the_command_line(tmp_path: Path, ig1_env: EmulatorServer, tag: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    source = write_csv(tmp_path / "t.csv", tickets(tag, 2))
    assert main(["--source", str(source), "--prompt", "Classify: {text}",
                 "--max-concurrency", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"completed": 2}


def test_artifacts_escape_ids_and_show_the_usage(tmp_path: Path, credentials: IG1Credentials,
                                                 tag: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    rows = [{"ticket_id": "[x](https://evil.example/)", "text": tag},
            {"ticket_id": "plain", "text": f"{tag} 2"}]
    source = write_csv(tmp_path / "t.csv", rows)
    state = run_batch(str(source), credentials=credentials, prompt="Classify: {text}",
                      id_column="ticket_id", max_concurrency=2, return_state=True)
    report = state.result()
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        found = {key: client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=run_filter) for key in ("batch-results", "ig1-usage")}
    table = json.loads(found["batch-results"][0].data)
    assert [row["status"] for row in table] == ["completed", "completed"]
    assert table[0]["id"] == r"\[x\]\(https://evil\.example/\)"
    total = json.loads(found["ig1-usage"][0].data)[-1]  # by model, then the total
    assert total["model"] == "all"
    assert total["requests"] == report.requests == 2 and total["cache hits"] == 0


def test_the_batch_reports_progress_in_the_same_words(
        tmp_path: Path, credentials: IG1Credentials, emulator: EmulatorServer, tag: str,
        caplog: pytest.LogCaptureFixture) -> None:
    source = write_csv(tmp_path / "many.csv", tickets(tag, 60))
    with caplog.at_level("INFO"):
        report = batch(source, credentials, prompt="Classify: {text}")
    assert "Answering rows: listing done, 60 listed, 60 to send" in caplog.text
    last = [r.getMessage() for r in caplog.records if "Answering rows: 60/60 done" in
            r.getMessage()]
    assert last and "60 completed, 0 cached, 0 failed" in last[-1]
    assert f"{report.requests} IG1 requests" in last[-1]


def test_the_batch_keeps_a_ledger_forecasts_and_stops_at_its_cap(
        tmp_path: Path, credentials: IG1Credentials, emulator: EmulatorServer,
        tag: str) -> None:
    from prefect_ig1.blocks import ResponsesModel
    from prefect_ig1.tasks.ledger import SpendCapReached

    profile = ResponsesModel(credentials=credentials, input_price_per_million=1.0,
                             output_price_per_million=4.0)
    source = write_csv(tmp_path / "spend.csv", tickets(tag, 30))
    dry = batch(source, credentials, prompt="Classify: {text}", model=profile, dry_run=True)
    assert dry.dry_run and dry.forecast is not None and dry.forecast.items == 30
    assert emulator.stats.requests == 0

    report = batch(source, credentials, prompt="Classify: {text}", model=profile)
    total = report.spend[-1]
    assert (total.input_tokens, total.output_tokens) == (emulator.stats.input_tokens,
                                                         emulator.stats.output_tokens)
    assert report.cost == pytest.approx((total.input_tokens + 4 * total.output_tokens) / 1e6)

    emulator.reset()
    capped = write_csv(tmp_path / "capped.csv", tickets(tag + "-capped", 40))
    per_row = (total.input_tokens + total.output_tokens) / 30
    with pytest.raises(SpendCapReached, match="max_tokens"):
        batch(capped, credentials, prompt="Classify: {text}", model=profile,
              max_tokens=round(5 * per_row), max_concurrency=2)
    assert 5 - 2 <= emulator.stats.requests <= 5 + 1
    results = lines(tmp_path / "capped.results" / "results.jsonl")
    assert len(results) == 40 and results[-1]["status"] == "not_attempted"
