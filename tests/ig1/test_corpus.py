"""Replies of real servers (corpus/real_servers.json, sources named) through the public client.

Each case is served over HTTP on 127.0.0.1 by a tiny server that answers every
POST with the same reply, so the POST count shows exactly what a reply costs:
one for an answer or a permanent error, 1 + max_retries for a transient one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_ig1 import client as ig1
from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import IG1Error, build_request
from tests.helpers import TEST_KEY

CORPUS = json.loads((Path(__file__).parent / "corpus" / "real_servers.json").read_text())
CASES: list[dict[str, Any]] = CORPUS["cases"]
MAX_RETRIES = 2


class ReplayServer(ThreadingHTTPServer):
    """Answers every POST /v1/responses with the current case's reply and counts them."""

    daemon_threads = True
    reply: dict[str, Any] = {}
    posts = 0


class ReplayHandler(BaseHTTPRequestHandler):
    server: ReplayServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.posts += 1
        status, content_type, body = render(self.server.reply)
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-request-id", f"req_corpus_{self.server.posts}")
        self.end_headers()
        self.wfile.write(body)


def render(reply: dict[str, Any]) -> tuple[int, str, bytes]:
    """(status, content type, body) of a case's reply; ``{API_KEY}`` becomes the test key."""
    if "events" in reply:
        frames = [event if isinstance(event, str) else f"data: {json.dumps(event)}\n\n"
                  for event in reply["events"]]
        text, content_type = "".join(frames), "text/event-stream"
    elif "json" in reply:
        text, content_type = json.dumps(reply["json"]), "application/json"
    elif "html" in reply:
        text, content_type = reply["html"], "text/html"
    else:
        text, content_type = reply["raw"], "application/json"
    return reply["status"], content_type, text.replace("{API_KEY}", TEST_KEY).encode()


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    server = ReplayServer(("127.0.0.1", 0), ReplayHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_corpus_is_large_and_every_case_names_its_source() -> None:
    assert len(CASES) >= 40
    assert all(case["source"].strip() for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_real_reply_through_the_public_client(replay: ReplayServer, case: dict[str, Any]) -> None:
    replay.reply, replay.posts = case["reply"], 0
    port = replay.server_address[1]
    client = IG1Credentials(api_key=SecretStr(TEST_KEY), base_url=f"http://127.0.0.1:{port}/v1",
                            max_retries=MAX_RETRIES).get_client()
    expect = case["expect"]
    request = build_request(model="m", input="hi", stream=case["stream"] or None)
    if expect["error"] is None:
        response = client.send(request)
        usage = response.usage
        assert response.output_text == expect["text"]
        assert response.status == expect["status"]
        assert ([usage.input_tokens, usage.output_tokens, usage.total_tokens] if usage
                else None) == expect["usage"]
        assert response.refusal == expect.get("refusal")
    else:
        with pytest.raises(IG1Error) as caught:
            client.send(request)
        error = caught.value
        assert type(error) is getattr(ig1, expect["error"]), repr(error)
        assert error.retryable is expect["retryable"]
        assert expect.get("message", "") in error.message
        if "code" in expect:
            assert getattr(error, "code", None) == expect["code"]
        assert TEST_KEY not in f"{error} {error!r} {vars(error)}"
    assert replay.posts == expect["posts"]
