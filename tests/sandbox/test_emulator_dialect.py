"""The emulator's real-server switches, read off the wire with plain httpx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from prefect_ig1.sandbox.emulator import EmulatorServer

MODEL = "m"


def frames(text: str) -> list[tuple[str | None, str]]:
    """(event name or None, raw data) of every SSE frame."""
    found = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((fields.get("event"), fields["data"]))
    return found


def post(client: httpx.Client, stream: bool = False) -> httpx.Response:
    return client.post("/responses", json={"model": MODEL, "input": "hello", "stream": stream})


def test_defaults_are_igs_documented_shape(client: httpx.Client) -> None:
    body = post(client).json()
    assert [item["type"] for item in body["output"]] == ["message"]
    assert isinstance(body["created_at"], int) and "error" not in body
    assert frames(post(client, stream=True).text)[-1][0] == "response.completed"


def test_switches_are_set_through_the_control_endpoint(emulator: EmulatorServer,
                                                       client: httpx.Client) -> None:
    changed = httpx.post(f"{emulator.url}/_emulator/settings",
                         json={"reasoning": True, "failed_code": "server_error",
                               "error_event": "data_only"}).json()
    assert (changed["reasoning"], changed["failed_code"], changed["error_event"]) == (
        True, "server_error", "data_only")
    refused = httpx.post(f"{emulator.url}/_emulator/settings", json={"error_event": "nope"})
    assert refused.status_code == 400 and emulator.settings.error_event == "data_only"


def test_reasoning_and_function_call_items(emulator: EmulatorServer,
                                           client: httpx.Client) -> None:
    emulator.configure(reasoning=True, function_call=True)
    body = post(client).json()
    assert [item["type"] for item in body["output"]] == ["reasoning", "function_call", "message"]
    assert body["output"][0]["content"][0]["type"] == "reasoning_text"
    events = [json.loads(data) for _, data in frames(post(client, stream=True).text)]
    types = [event["type"] for event in events]
    assert "response.reasoning_text.delta" in types
    assert types.index("response.reasoning_text.done") < types.index(
        "response.output_text.delta")
    message_added = [e for e in events if e["type"] == "response.output_item.added"][-1]
    assert message_added["output_index"] == 2
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "function_call", "message"]


def test_done_marker_fractional_created_and_nulls(emulator: EmulatorServer,
                                                  client: httpx.Client) -> None:
    emulator.configure(done_marker=True, fractional_created=True, null_fields=True)
    body = post(client).json()
    assert isinstance(body["created_at"], float)
    assert body["output"][0]["content"][0]["annotations"] is None
    assert body["output"][-1]["content"] is None
    assert body["usage"]["input_tokens_details"] is None
    streamed = frames(post(client, stream=True).text)
    assert streamed[-1] == (None, "[DONE]")
    assert streamed[-2][0] == "response.completed"


@pytest.mark.parametrize(("style", "last"), [
    ("response.failed", ("response.failed", "response")),
    ("error", ("error", "code")),
    ("data_only", (None, "error")),
])
def test_failed_replies_in_each_shape(emulator: EmulatorServer, client: httpx.Client,
                                      style: str, last: tuple[str | None, str]) -> None:
    emulator.configure(failed_code="server_error", error_event=style)
    body = post(client).json()
    assert body["status"] == "failed" and body["error"]["code"] == "server_error"
    name, data = frames(post(client, stream=True).text)[-1]
    assert name == last[0] and last[1] in json.loads(data)
    assert emulator.stats.responses_ok == 0


def test_json_reply_to_a_stream_request(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.configure(json_for_stream=True)
    reply = post(client, stream=True)
    assert reply.headers["content-type"] == "application/json"
    body: dict[str, Any] = reply.json()
    assert body["output_text"] == "Echo: hello" and emulator.stats.responses_ok == 1


def test_image_shape_gets_a_fractional_created(emulator: EmulatorServer,
                                               client: httpx.Client) -> None:
    emulator.configure(shape="image", fractional_created=True, null_fields=True)
    body = post(client).json()
    assert isinstance(body["created"], float)
    assert body["output"][0]["content"]["annotations"] is None
