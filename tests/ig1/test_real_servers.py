"""The client against the emulator speaking like real servers: one test per case of the issue.

A 200 has been billed, so every test counts the POSTs: a parse failure of a
billed body must never be paid for again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import (
    AsyncIG1Client,
    IG1Client,
    IncompleteStreamError,
    MalformedResponseError,
    Response,
    ResponseFailedError,
    TruncatedResponseError,
    build_request,
)
from prefect_ig1.sandbox.emulator import EmulatorServer
from tests.helpers import TEST_KEY


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[IG1Client]:
    with_client = IG1Client(api_key=TEST_KEY, base_url=emulator.base_url, max_retries=2)
    yield with_client
    with_client.close()


@pytest.mark.parametrize("stream", [False, True])
def test_fractional_created_at_parses_once(client: IG1Client, emulator: EmulatorServer,
                                          stream: bool) -> None:
    emulator.configure(fractional_created=True)
    response = client.send(build_request(model="m", input="hi", stream=stream))
    assert response.created_at is not None and response.created_at % 1 == pytest.approx(0.734)
    assert response.output_text == "Echo: hi" and emulator.stats.requests == 1


@pytest.mark.parametrize("stream", [False, True])
def test_nulls_and_null_content_parse_once(client: IG1Client, emulator: EmulatorServer,
                                           stream: bool) -> None:
    emulator.configure(null_fields=True)
    response = client.send(build_request(model="m", input="hi", stream=stream))
    assert response.output_text == "Echo: hi" and response.output[-1].content == []
    assert response.output[0].content[0].annotations == []
    assert emulator.stats.requests == 1


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_and_function_call_items_leave_the_text(
        client: IG1Client, emulator: EmulatorServer, stream: bool) -> None:
    emulator.configure(reasoning=True, function_call=True)
    response = client.send(build_request(model="m", input="hi", stream=stream))
    assert [item.type for item in response.output] == ["reasoning", "function_call", "message"]
    assert response.output_text == "Echo: hi" and emulator.stats.requests == 1


def test_done_after_completed_returns_the_answer(client: IG1Client,
                                                 emulator: EmulatorServer) -> None:
    emulator.configure(done_marker=True, reasoning=True)
    with client.stream(build_request(model="m", input="hi there")) as events:
        deltas = list(events.text_deltas())
    assert "".join(deltas) == events.result().output_text == "Echo: hi there"
    assert emulator.stats.requests == 1


@pytest.mark.parametrize(("style", "code", "retryable", "posts"), [
    ("response.failed", "server_error", True, 3),
    ("response.failed", "invalid_prompt", False, 1),
    ("error", "rate_limit_exceeded", True, 3),
    ("error", "conversation_not_found", False, 1),
    ("data_only", "BadRequestError", False, 1),
    ("data_only", "server_error", True, 3),
])
def test_stream_errors_are_typed_with_the_servers_message(
        client: IG1Client, emulator: EmulatorServer, style: str, code: str, retryable: bool,
        posts: int) -> None:
    emulator.configure(failed_code=code, error_event=style)
    with pytest.raises(ResponseFailedError) as caught:
        client.send(build_request(model="m", input="hi", stream=True))
    assert not isinstance(caught.value, IncompleteStreamError)
    assert f"The model failed to answer ({code})" in caught.value.message
    assert caught.value.code == code and caught.value.retryable is retryable
    assert caught.value.request_id and emulator.stats.requests == posts


@pytest.mark.parametrize(("code", "retryable", "posts"), [
    ("server_error", True, 3), ("invalid_image", False, 1)])
def test_a_200_with_status_failed_is_a_typed_error(client: IG1Client, emulator: EmulatorServer,
                                                   code: str, retryable: bool,
                                                   posts: int) -> None:
    emulator.configure(failed_code=code)
    with pytest.raises(ResponseFailedError) as caught:
        client.send(build_request(model="m", input="hi"))
    assert caught.value.code == code and caught.value.retryable is retryable
    assert caught.value.status == 200 and caught.value.request_id
    assert emulator.stats.requests == posts


def test_a_stream_request_answered_with_json_is_parsed(client: IG1Client,
                                                       emulator: EmulatorServer) -> None:
    emulator.configure(json_for_stream=True)
    with client.stream(build_request(model="m", input="as json")) as events:
        deltas = list(events.text_deltas())
    assert deltas == ["Echo: as json"] and events.result().output_text == "Echo: as json"
    assert client.send(build_request(model="m", input="x", stream=True)).output_text == "Echo: x"
    assert emulator.stats.requests == 2


def test_cut_body_is_retried_but_unfit_json_is_not(client: IG1Client,
                                                   emulator: EmulatorServer) -> None:
    emulator.fail_next("malformed", count=5)
    with pytest.raises(TruncatedResponseError) as cut:
        client.send(build_request(model="m", input="x"))
    assert cut.value.retryable and emulator.stats.requests == 3
    assert isinstance(cut.value, MalformedResponseError) and TEST_KEY not in str(cut.value)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("stream", [False, True])
def test_create_response_never_caches_a_failed_reply(credentials: IG1Credentials,
                                                     emulator: EmulatorServer,
                                                     stream: bool) -> None:
    from prefect import flow

    from prefect_ig1.tasks import create_response

    prompt = f"never cached {uuid.uuid4().hex}"
    once_more = create_response.with_options(retries=1, retry_delay_seconds=0)

    @flow
    def ask() -> Response:
        return once_more(prompt, credentials=credentials, stream=stream)

    emulator.configure(failed_code="invalid_prompt")
    with pytest.raises(ResponseFailedError):
        ask(return_state=True).result()
    assert emulator.stats.requests == 1  # not transient: neither the client nor the task retries
    emulator.configure(failed_code=None)
    assert ask().output_text == f"Echo: {prompt}" and emulator.stats.requests == 2


def test_async_client_reads_the_same_dialects(emulator: EmulatorServer) -> None:
    async def scenario() -> None:
        client = AsyncIG1Client(api_key=TEST_KEY, base_url=emulator.base_url, max_retries=2)
        try:
            emulator.configure(json_for_stream=True, fractional_created=True)
            async with client.stream(build_request(model="m", input="a")) as events:
                assert [delta async for delta in events.text_deltas()] == ["Echo: a"]
            emulator.configure(json_for_stream=False, done_marker=True, reasoning=True)
            streamed = await client.send(build_request(model="m", input="b", stream=True))
            assert streamed.output_text == "Echo: b"
            emulator.configure(failed_code="server_error", error_event="data_only")
            with pytest.raises(ResponseFailedError) as caught:
                await client.send(build_request(model="m", input="c", stream=True))
            assert caught.value.retryable
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert emulator.stats.requests == 1 + 1 + 3
