"""create_response in a user's own flow keeps the run's ``ig1-usage`` artifact up to date."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.tasks import acreate_response, create_response

pytestmark = pytest.mark.usefixtures("prefect_server")


def _usage(state: Any) -> list[dict[str, Any]]:
    """The newest version of the flow run's ``ig1-usage`` table."""
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        versions = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ig1-usage"])),
            flow_run_filter=run_filter)
    newest = max(versions, key=lambda artifact: artifact.created or 0)
    return list(json.loads(str(newest.data)))


def test_create_response_calls_are_counted_in_the_flow_runs_usage_artifact(
        emulator: EmulatorServer, credentials: IG1Credentials) -> None:
    profile = ResponsesModel(credentials=credentials, input_price_per_million=1.0,
                             output_price_per_million=2.0)
    tag = uuid.uuid4().hex[:8]

    @flow
    def mine() -> None:
        for prompt in (f"a [{tag}]", f"b [{tag}]", f"a [{tag}]"):  # the third is a cache hit
            create_response(prompt, model=profile)

    state = mine(return_state=True)
    total = _usage(state)[-1]
    assert total["model"] == "all" and total["requests"] == 2 and total["cache hits"] == 1
    stats = emulator.stats
    assert total["input tokens"] == stats.input_tokens
    assert total["cost"] == pytest.approx((stats.input_tokens + 2 * stats.output_tokens) / 1e6,
                                          abs=1e-6)


def test_acreate_response_counts_too(emulator: EmulatorServer,
                                     credentials: IG1Credentials) -> None:
    tag = uuid.uuid4().hex[:8]

    @flow
    async def mine() -> None:
        await acreate_response(f"async [{tag}]", credentials=credentials)

    state = asyncio.run(mine(return_state=True))  # type: ignore[arg-type]
    assert _usage(state)[-1]["requests"] == 1
