"""The emulator over real HTTP with plain httpx: shapes, SSE, faults, limits and counters."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
from PIL import Image

from prefect_ig1.sandbox.emulator import FAULT_KINDS, EmulatorServer
from prefect_ig1.sandbox.sample_images import broken_images, sample_images, small_png
from tests.helpers import MODEL, image_input


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# --- shapes -----------------------------------------------------------------------------


def test_text_input_gets_the_text_shape(client: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "input": "Write me a poem",
        "instructions": "Be brief",
        "temperature": 0.3,
        "top_p": 0.9,
    }
    r = client.post("/responses", json=body)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "response" and "created_at" in data and "created" not in data
    assert data["status"] == "completed" and data["incomplete_details"] is None
    assert data["output_text"] == "Instructions: Be brief\nEcho: Write me a poem"
    content = data["output"][0]["content"]
    assert isinstance(content, list) and content[0]["type"] == "output_text"
    assert content[0]["text"] == data["output_text"]
    assert (data["temperature"], data["top_p"], data["instructions"]) == (0.3, 0.9, "Be brief")
    usage = data["usage"]
    assert usage["output_tokens"] == len(data["output_text"].split())
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert data["model"] == MODEL and data["id"].startswith("resp_")


def test_image_input_gets_the_image_shape_naming_what_was_sent(client: httpx.Client) -> None:
    _, png = small_png()
    r = client.post("/responses", json={"model": MODEL, "input": image_input(png)})
    data = r.json()
    assert r.status_code == 200
    assert data["object"] == "responses" and "created" in data
    assert "output_text" not in data and "status" not in data
    item = data["output"][0]
    assert isinstance(item["content"], dict) and item["finish_reason"] == "stop"
    digest = hashlib.sha256(png).hexdigest()[:16]
    expected = f"Echo: Describe this image\nImage 64x48 PNG sha256:{digest} detail:auto"
    assert item["content"]["text"] == expected
    assert data["usage"]["input_tokens_details"] == {"cached_tokens": 0}


def test_shape_setting_forces_either_shape(emulator: EmulatorServer, client: httpx.Client) -> None:
    _, png = small_png()
    emulator.settings.shape = "text"
    r = client.post("/responses", json={"model": MODEL, "input": image_input(png, detail=None)})
    assert r.json()["object"] == "response"
    assert r.json()["output_text"].endswith("detail:none")
    emulator.configure(shape="image")
    assert client.post("/responses", json={"model": MODEL, "input": "hi"}).json()["object"] == (
        "responses"
    )


@pytest.mark.parametrize(("name", "data"), sample_images(), ids=lambda v: str(v)[:20])
def test_every_sample_image_is_described_with_its_size_and_format(
    client: httpx.Client, name: str, data: bytes
) -> None:
    with Image.open(io.BytesIO(data)) as img:
        size, fmt = img.size, img.format
    r = client.post("/responses", json={"model": MODEL, "input": image_input(data)})
    assert r.status_code == 200, r.text
    assert f"Image {size[0]}x{size[1]} {fmt} sha256:" in r.json()["output"][0]["content"]["text"]


@pytest.mark.parametrize(("name", "data"), broken_images(), ids=lambda v: str(v)[:20])
def test_undecodable_images_are_refused_by_position(
    client: httpx.Client, name: str, data: bytes
) -> None:
    r = client.post("/responses", json={"model": MODEL, "input": image_input(data)})
    assert r.status_code == 400
    assert r.json()["message"].startswith("input[0].content[1]: image could not be decoded")


# --- usage: text by its bytes, images by their patches (Qwen2.5-VL / Qwen3-VL) ---------


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "JPEG")
    return buffer.getvalue()


def _input_tokens(client: httpx.Client, images: list[bytes], text: str = "Describe") -> int:
    """The reply's input tokens, less the text's ~4 bytes a token (the body without its
    data URLs, serialised here so its length is known exactly)."""
    content: list[dict[str, Any]] = [{"type": "input_text", "text": text}]
    urls = [f"data:image/jpeg;base64,{base64.b64encode(data).decode()}" for data in images]
    content += [{"type": "input_image", "image_url": url} for url in urls]
    raw = json.dumps({"model": MODEL, "input": [{"role": "user", "content": content}]}).encode()
    r = client.post("/responses", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    text_tokens = max(1, (len(raw) - sum(map(len, urls))) // 4)
    tokens: int = r.json()["usage"]["input_tokens"]
    return tokens - text_tokens


def test_a_12_mp_photo_bills_one_token_per_28_px_patch(client: httpx.Client) -> None:
    # smart_resize: 3000 -> 107 x 28, 4000 -> 143 x 28; 2996 x 4004 px is within the
    # 16384-patch budget (12 845 056 px), so it bills 107 x 143 patches.
    expected = round(3000 / 28) * round(4000 / 28)
    assert expected == 15301 and expected <= 16384
    assert _input_tokens(client, [_jpeg(4000, 3000)]) == expected


def test_an_image_beyond_the_budget_is_billed_as_scaled_to_fit(
    emulator: EmulatorServer, client: httpx.Client
) -> None:
    # 6000 x 4500 would be 161 x 214 patches: scaled by beta = sqrt(27e6 / 16384 / 28**2),
    # each side floored to a multiple of 28.
    beta = math.sqrt(6000 * 4500 / (16384 * 28 * 28))
    expected = math.floor(4500 / beta / 28) * math.floor(6000 / beta / 28)
    assert expected == 110 * 147 and expected <= 16384
    assert _input_tokens(client, [_jpeg(6000, 4500)]) == expected
    emulator.configure(max_image_tokens=1000)
    beta = math.sqrt(4000 * 3000 / (1000 * 28 * 28))
    assert _input_tokens(client, [_jpeg(4000, 3000)]) == (
        math.floor(3000 / beta / 28) * math.floor(4000 / beta / 28)) == 27 * 36


def test_a_1024_px_image_costs_about_a_thousand_tokens(
    emulator: EmulatorServer, client: httpx.Client
) -> None:
    assert _input_tokens(client, [_jpeg(1024, 768)]) == round(768 / 28) * round(1024 / 28) == (
        27 * 37)
    emulator.configure(image_patch_size=32)  # Qwen3-VL
    assert _input_tokens(client, [_jpeg(1024, 768)]) == (768 // 32) * (1024 // 32) == 768
    assert _input_tokens(client, [_jpeg(4000, 3000)]) == round(3000 / 32) * round(4000 / 32)


def test_every_image_of_a_request_is_billed_and_counted(
    emulator: EmulatorServer, client: httpx.Client
) -> None:
    images = [_jpeg(1024, 768), _jpeg(64, 48)]
    # 64 x 48 rounds to 56 x 56 (2 x 2 patches), the processors' minimum.
    assert _input_tokens(client, images) == 27 * 37 + 2 * 2
    # The counter holds the same bill: both images and ~30 text tokens.
    assert 27 * 37 + 4 < emulator.stats.input_tokens < 27 * 37 + 4 + 100


def test_text_only_requests_bill_their_bytes_as_before(client: httpx.Client) -> None:
    raw = json.dumps({"model": MODEL, "input": "Write me a poem " * 20}).encode()
    r = client.post("/responses", content=raw, headers={"content-type": "application/json"})
    assert r.json()["usage"]["input_tokens"] == len(raw) // 4


@pytest.mark.parametrize("name", ["image_patch_size", "max_image_tokens"])
def test_image_token_settings_must_be_positive_integers(
    emulator: EmulatorServer, name: str
) -> None:
    for bad in (0, -28, 2.5, True, "28"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            emulator.configure(**{name: bad})


def test_history_and_system_messages(client: httpx.Client) -> None:
    history = [
        {"role": "system", "content": "Answer in French"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "ignored"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
    ]
    text = client.post("/responses", json={"model": MODEL, "input": history}).json()["output_text"]
    assert text == "Instructions: Answer in French\nEcho: first second"


# --- structured output and truncation ---------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "description": {"type": "string"},
        "count": {"type": "integer", "minimum": 0},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "mood": {"enum": ["calm", "busy"]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
        "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
    },
    "required": ["description", "count", "score", "ok", "mood", "tags", "note"],
    "additionalProperties": False,
    "$defs": {
        "Tag": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": False,
        }
    },
}


def test_json_schema_reply_conforms_and_reveals_the_input(client: httpx.Client) -> None:
    fmt = {"type": "json_schema", "name": "Desc", "schema": SCHEMA, "strict": True}
    body = {"model": MODEL, "input": "a cat", "text": {"format": fmt}}
    data = client.post("/responses", json=body).json()
    value = json.loads(data["output_text"])
    jsonschema.validate(value, SCHEMA)
    assert value["description"] == "Echo: a cat" and value["mood"] == "calm"
    assert data["text"] == {"format": fmt}


def test_json_invalid_setting_breaks_structured_replies(
    emulator: EmulatorServer, client: httpx.Client
) -> None:
    emulator.settings.json_invalid = True
    fmt = {"type": "json_schema", "name": "Desc", "schema": SCHEMA, "strict": True}
    text = client.post(
        "/responses", json={"model": MODEL, "input": "x", "text": {"format": fmt}}
    ).json()["output_text"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_word_cap_marks_both_shapes_incomplete(client: httpx.Client) -> None:
    body = {"model": MODEL, "input": "one two three four five", "max_output_tokens": 3}
    data = client.post("/responses", json=body).json()
    assert data["output_text"] == "Echo: one two"
    assert data["status"] == "incomplete"
    assert data["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["usage"]["output_tokens"] == 3 and data["max_output_tokens"] == 3
    body = {"model": MODEL, "input": image_input(small_png()[1]), "max_tokens": 2}
    item = client.post("/responses", json=body).json()["output"][0]
    assert item["finish_reason"] == "length" and item["content"]["text"] == "Echo: Describe"


# --- streaming --------------------------------------------------------------------------

STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
STREAM_END = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_stream_sends_the_responses_event_sequence(client: httpx.Client) -> None:
    words = " ".join(f"w{i}" for i in range(10))
    r = client.post("/responses", json={"model": MODEL, "input": words, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    types = [name for name, _ in events]
    assert types[:4] == STREAM_ORDER and types[-4:] == STREAM_END
    assert set(types[4:-4]) == {"response.output_text.delta"} and len(types[4:-4]) >= 3
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    text = "".join(data["delta"] for name, data in events if name.endswith(".delta"))
    final = events[-1][1]["response"]
    assert text == events[-4][1]["text"] == final["output_text"] == f"Echo: {words}"
    assert final["status"] == "completed" and final["object"] == "response"


def test_stream_cut_ends_without_completed(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.fail_next("stream_cut")
    r = client.post("/responses", json={"model": MODEL, "input": "a b c d e f", "stream": True})
    assert r.status_code == 200
    types = [name for name, _ in sse(r.text)]
    assert "response.output_text.delta" in types and "response.completed" not in types
    assert emulator.stats.responses_ok == 0


def test_stream_cut_on_a_plain_request_drops_the_connection(
    emulator: EmulatorServer, client: httpx.Client
) -> None:
    emulator.fail_next("stream_cut")
    with pytest.raises(httpx.TransportError):
        client.post("/responses", json={"model": MODEL, "input": "x"})


# --- faults -----------------------------------------------------------------------------

JSON_FAULTS = ["400", "401", "403", "404", "408", "409", "422", "429", "500", "503"]


@pytest.mark.parametrize("kind", JSON_FAULTS)
def test_status_faults_send_ig1_error_bodies(
    emulator: EmulatorServer, client: httpx.Client, kind: str
) -> None:
    emulator.fail_next(kind)
    r = client.post("/responses", json={"model": MODEL, "input": "x"})
    assert r.status_code == int(kind)
    body = r.json()
    assert body["code"] == int(kind) and body["message"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert client.post("/responses", json={"model": MODEL, "input": "x"}).status_code == 200


@pytest.mark.parametrize("kind", ["502", "504"])
def test_gateway_faults_send_html(
    emulator: EmulatorServer, client: httpx.Client, kind: str
) -> None:
    emulator.fail_next(kind)
    r = client.post("/responses", json={"model": MODEL, "input": "x"})
    assert r.status_code == int(kind)
    assert r.headers["content-type"].startswith("text/html")
    assert r.text.startswith("<html>") and kind in r.text


def test_other_error_shapes(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.fail_next("openai_error")
    emulator.fail_next("string_error")
    first = client.post("/responses", json={"model": MODEL, "input": "x"})
    assert first.status_code == 400
    assert first.json()["error"]["type"] == "invalid_request_error"
    assert first.json()["error"]["code"] == "bad_param"
    second = client.post("/responses", json={"model": MODEL, "input": "x"})
    assert (second.status_code, second.json()) == (401, {"error": "Unauthorized"})


def test_429_fault_carries_retry_after(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.settings.retry_after = 1.5
    emulator.fail_next("429")
    r = client.post("/responses", json={"model": MODEL, "input": "x"})
    assert r.status_code == 429
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("2", "1500")


def test_a_rate_limit_window_refuses_until_it_ends_and_records_arrivals(
        emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.configure(rate_limit_rps=1, rate_limit_window=30)  # 30 requests a window
    before = time.time()
    statuses = [client.post("/responses", json={"model": MODEL, "input": f"q{i}"})
                for i in range(31)]
    assert [r.status_code for r in statuses] == [200] * 30 + [429]
    assert 0 < int(statuses[-1].headers["retry-after-ms"]) <= 30_000  # the window's end
    stats = emulator.stats
    assert stats.rate_limited == 1 and len(stats.arrived_at) == 31
    assert before <= stats.arrived_at[0] and stats.arrived_at == sorted(stats.arrived_at)


def test_drop_is_a_transport_error(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.fail_next("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/responses", json={"model": MODEL, "input": "x"})
    assert client.post("/responses", json={"model": MODEL, "input": "x"}).status_code == 200
    assert emulator.stats.faults_served["drop"] == 1


def test_malformed_is_a_200_with_broken_json(
    emulator: EmulatorServer, client: httpx.Client
) -> None:
    emulator.fail_next("malformed")
    r = client.post("/responses", json={"model": MODEL, "input": "x"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_hang_makes_the_client_time_out(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.settings.hang_seconds = 3
    emulator.fail_next("hang")
    with pytest.raises(httpx.ReadTimeout):
        client.post("/responses", json={"model": MODEL, "input": "x"}, timeout=0.3)
    assert client.post("/responses", json={"model": MODEL, "input": "x"}).status_code == 200


def test_faults_are_fifo_then_normal(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.fail_next("500", count=2)
    emulator.fail_next("503")
    statuses = [
        client.post("/responses", json={"model": MODEL, "input": "x"}).status_code for _ in range(4)
    ]
    assert statuses == [500, 500, 503, 200]
    assert set(FAULT_KINDS) >= {"drop", "hang", "malformed", "stream_cut", "429"}
    with pytest.raises(ValueError):
        emulator.fail_next("teapot")


# --- limits, auth, validation -----------------------------------------------------------


def test_in_flight_cap_answers_429_immediately(emulator: EmulatorServer) -> None:
    emulator.configure(latency=0.4, max_in_flight=2, retry_after=0.25)
    headers = {"Authorization": f"Bearer {emulator.api_key}"}

    def post(_: int) -> httpx.Response:
        return httpx.post(
            f"{emulator.base_url}/responses",
            headers=headers,
            json={"model": MODEL, "input": "x"},
            timeout=5,
        )

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(post, range(6)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 429, 429, 429, 429]
    limited = next(r for r in replies if r.status_code == 429)
    assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == ("1", "250")
    stats = emulator.stats
    assert stats.max_in_flight_seen == 2 and stats.in_flight == 0
    assert stats.by_status[429] == 4


def test_hold_keeps_replies_until_enough_requests_are_in_flight(emulator: EmulatorServer) -> None:
    """What the overlap tests stand on: a client alone is held; a second one releases both."""
    emulator.configure(hold_until_in_flight=2)
    headers = {"Authorization": f"Bearer {emulator.api_key}"}

    def post(stream: bool) -> httpx.Response:
        return httpx.post(f"{emulator.base_url}/responses", headers=headers, timeout=10,
                          json={"model": MODEL, "input": "x", "stream": stream})

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, True)
        deadline = time.monotonic() + 5
        while emulator.stats.in_flight < 1:
            assert time.monotonic() < deadline, "the first request never arrived"
            time.sleep(0.01)
        time.sleep(0.3)
        assert not first.done()  # held: it is alone
        second = pool.submit(post, False)
        replies = [first.result(timeout=10), second.result(timeout=10)]
    assert [reply.status_code for reply in replies] == [200, 200]
    assert "response.completed" in replies[0].text
    assert emulator.stats.max_in_flight_seen == 2
    with pytest.raises(ValueError, match="hold_until_in_flight"):
        emulator.configure(hold_until_in_flight=-1)

    emulator.configure(hold_until_in_flight=1_000)  # a gate: held until the setting clears
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(post, False)
        time.sleep(0.5)
        assert not held.done()
        emulator.configure(hold_until_in_flight=None)
        assert held.result(timeout=5).status_code == 200


def test_budget_gives_402_after_n_successes(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.settings.budget_requests = 2
    statuses = [
        client.post("/responses", json={"model": MODEL, "input": "x"}).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 402, 402]
    r = client.post("/responses", json={"model": MODEL, "input": "x"})
    assert r.json() == {
        "message": "Commit exceeded",
        "code": 402,
        "request_id": r.headers["x-request-id"],
    }


def test_a_key_revoked_mid_run_gets_401(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.configure(revoke_key_after=2)
    statuses = [
        client.post("/responses", json={"model": MODEL, "input": "x"}).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 401, 401]
    assert emulator.stats.requests == 4 and emulator.stats.by_status[401] == 2


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_every_endpoint_needs_the_key(emulator: EmulatorServer, headers: dict[str, str]) -> None:
    for method, path in [("POST", "/v1/responses"), ("GET", "/usage"), ("GET", "/usage/history")]:
        r = httpx.request(
            method, emulator.url + path, headers=headers, json={"model": MODEL, "input": "x"}
        )
        assert r.status_code == 401
        assert r.json()["message"] == "Invalid API key"
        assert r.json()["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"input": "x"}).encode(), 400, "model"),
        (json.dumps({"model": MODEL}).encode(), 400, "input"),
        (json.dumps({"model": MODEL, "input": 3}).encode(), 400, "input"),
        (
            json.dumps({"model": MODEL, "input": "x", "previous_response_id": "r"}).encode(),
            404,
            "zero retention",
        ),
        (json.dumps({"model": "unknown-model", "input": "x"}).encode(), 404, "model not found"),
        (
            json.dumps({"model": MODEL, "input": "x", "max_output_tokens": 0}).encode(),
            400,
            "max_output_tokens",
        ),
    ],
)
def test_bad_requests(client: httpx.Client, content: bytes, status: int, needle: str) -> None:
    r = client.post("/responses", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert needle in r.json()["message"]


def test_unsupported_endpoints_are_404(client: httpx.Client) -> None:
    r = client.get("/responses/resp_1")
    assert r.status_code == 404 and r.json()["code"] == 404


# --- usage, ids, counters, control ------------------------------------------------------


def test_usage_reports_spend_commit_and_throughput(
    emulator: EmulatorServer, client: httpx.Client
) -> None:
    emulator.configure(usage_commit=50.0, max_throughput=4)
    for _ in range(2):
        client.post("/responses", json={"model": MODEL, "input": "x"})
    usage = client.get(emulator.url + "/usage").json()
    assert usage == {"current": 0.002, "commit": 50.0, "max_throughput": 4}
    history = client.get(emulator.url + "/usage/history").json()
    assert history[0]["model"] == MODEL and history[0]["requests"] == 2
    assert emulator.stats.usage_requests == 2


def test_every_reply_has_a_unique_request_id(
    emulator: EmulatorServer, client: httpx.Client
) -> None:
    emulator.fail_next("502")
    replies = [
        client.post("/responses", json={"model": MODEL, "input": "x"}),
        client.post("/responses", json={"model": MODEL, "input": "x"}),
        client.post("/responses", json={"model": MODEL}),
        client.get(emulator.url + "/usage"),
        client.get(emulator.url + "/_emulator/stats"),
        client.get(emulator.url + "/nowhere"),
        httpx.post(emulator.base_url + "/responses", json={}),
    ]
    ids = [r.headers["x-request-id"] for r in replies]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)


def test_counters(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.fail_next("500")
    bodies = [{"model": MODEL, "input": f"n{i}"} for i in range(3)]
    for body in bodies:
        client.post("/responses", json=body)
    stats = emulator.stats
    assert (stats.requests, stats.responses_ok, stats.in_flight) == (3, 2, 0)
    assert stats.by_status == {500: 1, 200: 2}
    assert stats.received == bodies and stats.max_in_flight_seen == 1
    emulator.reset()
    assert emulator.stats.requests == 0 and emulator.stats.received == []


def test_control_endpoints_need_no_key(emulator: EmulatorServer) -> None:
    url = emulator.url + "/_emulator"
    patched = httpx.post(f"{url}/settings", json={"latency": 0.01, "shape": "image"}).json()
    assert patched["shape"] == "image" and emulator.settings.latency == 0.01
    assert httpx.post(f"{url}/settings", json={"nope": 1}).status_code == 400
    assert httpx.post(f"{url}/settings", json={"shape": "square"}).status_code == 400
    assert httpx.post(f"{url}/faults", json={"kind": "500", "count": 2}).json() == {
        "queued": ["500", "500"]
    }
    assert httpx.post(f"{url}/faults", json={"kind": "teapot"}).status_code == 400
    headers = {"Authorization": f"Bearer {emulator.api_key}"}
    httpx.post(f"{emulator.base_url}/responses", headers=headers, json={"model": "m", "input": "x"})
    stats = httpx.get(f"{url}/stats").json()
    assert stats["requests"] == 1 and stats["by_status"] == {"500": 1}
    assert "received" not in stats
    assert httpx.post(f"{url}/reset").status_code == 200
    assert emulator.settings.shape == "auto" and emulator.pending_faults == []
    assert httpx.get(f"{url}/stats").json()["requests"] == 0


# --- server mechanics -------------------------------------------------------------------


def test_listening_socket_has_tcp_nodelay(emulator: EmulatorServer, client: httpx.Client) -> None:
    sock = emulator.listening_socket
    assert sock is not None and sock.proto == socket.IPPROTO_TCP
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    # The latency this prevents (~40 ms per kept-alive request) is measured by
    # benchmarks/, not asserted here.


@pytest.mark.slow
def test_stop_is_prompt_while_a_request_hangs() -> None:
    server = EmulatorServer(hang_seconds=30).start()
    server.fail_next("hang")
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            httpx.post,
            f"{server.base_url}/responses",
            headers=headers,
            json={"model": MODEL, "input": "x"},
            timeout=10,
        )
        time.sleep(0.2)
        server.stop()  # must not wait out the 30 s hang
        assert future.result(timeout=10).status_code == 504


@pytest.mark.slow
def test_cli_serves_until_terminated() -> None:
    command = [sys.executable, "-m", "prefect_ig1.sandbox.emulator"]
    command += ["--port", "0", "--api-key", "k", "--shape", "text", "--image-patch-size", "32",
                "--max-image-tokens", "1024"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            r = httpx.post(
                f"{base_url}/responses",
                headers={"Authorization": "Bearer k"},
                json={"model": MODEL, "input": "hi"},
            )
            assert r.json()["output_text"] == "Echo: hi"
            settings = httpx.get(base_url.removesuffix("/v1") + "/_emulator/settings").json()
            assert (settings["image_patch_size"], settings["max_image_tokens"]) == (32, 1024)
        finally:
            proc.terminate()
            _, errors = proc.communicate(timeout=5)
        assert proc.returncode == 0, errors
