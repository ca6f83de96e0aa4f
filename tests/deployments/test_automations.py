"""The example automations: a stopped run and a low budget reach a notification block."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events import emit_event

from prefect_ig1.deployments.automations import BUDGET_LOW, RUN_STOPPED, create_automations

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local webhook receiver: its URL and the JSON bodies it got."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(json.loads(body or b"{}"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


def test_a_stopped_run_is_notified(webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    name = f"ig1-alerts-{uuid.uuid4().hex[:6]}"
    CustomWebhookNotificationBlock(
        name="ig1", url=url, json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save(name)
    ids = create_automations(f"custom-webhook/{name}")
    assert len(ids) == 2
    assert len(create_automations(f"custom-webhook/{name}")) == 2  # replaced, not doubled
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name(RUN_STOPPED)) == 1
        assert len(client.read_automations_by_name(BUDGET_LOW)) == 1

    run_name = f"run-{uuid.uuid4().hex[:6]}"
    emit_event(event="ig1.run.stopped",
               resource={"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}",
                         "prefect.resource.name": run_name},
               payload={"stopped_by": "BudgetExhaustedError: IG1 budget exhausted (402)",
                        "counts": {"described": 3, "not_attempted": 7},
                        "input_tokens": 10, "output_tokens": 5, "cost": 0.01})
    deadline = time.monotonic() + 60
    while not any(run_name in json.dumps(body) for body in received):
        assert time.monotonic() < deadline, f"no notification reached the webhook: {received}"
        time.sleep(0.5)
    body = next(body for body in received if run_name in json.dumps(body))
    assert "budget exhausted (402)" in body["body"] and "rerun" in body["body"].lower()
