"""Model and credentials resolution: names of saved blocks, bare model ids, sync and async."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect import flow

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.tasks import acreate_response, resolve_model
from prefect_ig1.tasks.responses import aresolve_model

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_a_name_that_is_no_block_is_a_model_id_and_is_not_remembered() -> None:
    name = f"profile-{uuid.uuid4().hex[:8]}"
    assert resolve_model(name).model == name  # no such block yet: a model id
    ResponsesModel(model="saved-model").save(name)
    assert resolve_model(name).model == "saved-model"  # found at once, not 60 s later


def test_the_async_resolution_loads_with_the_async_api() -> None:
    name = f"profile-{uuid.uuid4().hex[:8]}"
    assert asyncio.run(aresolve_model(name)).model == name
    ResponsesModel(model="async-model").save(name)
    assert asyncio.run(aresolve_model(name)).model == "async-model"


def test_acreate_response_with_saved_block_names_inside_an_async_flow(
        emulator: EmulatorServer, credentials: IG1Credentials) -> None:
    suffix = uuid.uuid4().hex[:8]
    credentials.save(f"creds-{suffix}")
    ResponsesModel(model="m-async", credentials=credentials).save(f"profile-{suffix}")

    @flow
    async def ask() -> str:
        answer = await acreate_response(f"Hello [{suffix}]", model=f"profile-{suffix}",
                                        credentials=f"creds-{suffix}")
        return answer.output_text

    assert asyncio.run(ask()).startswith("Echo: Hello")
    assert emulator.stats.received[-1]["model"] == "m-async"
