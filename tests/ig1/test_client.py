"""The sync and async clients over real HTTP to the emulator: shapes, streams, errors, retries."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
import stamina
from pydantic import BaseModel

from prefect_ig1.client import (
    APIStatusError,
    AsyncIG1Client,
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    IG1Client,
    IG1ConnectionError,
    IG1Error,
    IG1TimeoutError,
    IncompleteStreamError,
    InputImage,
    InputMessage,
    InputText,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StructuredOutputError,
    build_request,
    json_schema_text_config,
)
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.sample_images import sample_images
from tests.helpers import EVERY_PARAMETER, TEST_KEY


class Animal(BaseModel):
    """An animal seen in the prompt."""

    name: str
    legs: int


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[IG1Client]:
    with_client = IG1Client(api_key=TEST_KEY, base_url=emulator.base_url, max_retries=2)
    yield with_client
    with_client.close()


def image_message(data: bytes) -> list[InputMessage]:
    return [InputMessage(role="user", content=[InputText(text="Describe this image"),
                                                InputImage.from_bytes(data)])]


def test_text_shape(client: IG1Client, emulator: EmulatorServer) -> None:
    emulator.configure(shape="text")
    response = client.send(build_request(model="m", input="hello there"))
    assert response.object == "response"
    assert response.output_text == "Echo: hello there"
    assert response.request_id and response.request_id.startswith("req_")
    assert response.usage is not None and response.usage.output_tokens > 0


def test_image_shape(client: IG1Client, emulator: EmulatorServer) -> None:
    emulator.configure(shape="image")
    _, data = sample_images()[1]
    response = client.send(build_request(model="m", input=image_message(data)))
    assert response.object == "responses" and response.finish_reason == "stop"
    assert "Image 1600x1200 JPEG" in response.output_text
    assert response.created_at is not None and response.status == "completed"


def test_every_parameter_reaches_the_server_as_set(client: IG1Client,
                                                   emulator: EmulatorServer) -> None:
    request = build_request(model="m", input="x", **EVERY_PARAMETER)
    client.send(request)
    assert emulator.stats.received[-1] == {"model": "m", "input": "x", **EVERY_PARAMETER}


def test_truncated_answer_is_marked_incomplete(client: IG1Client) -> None:
    response = client.send(build_request(model="m", input="one two three four five six",
                                         max_output_tokens=2))
    assert response.incomplete_reason == "max_output_tokens"


def test_stream_yields_deltas_and_folds_into_the_same_response(client: IG1Client) -> None:
    request = build_request(model="m", input="a rather long prompt to stream back")
    with client.stream(request) as events:
        deltas = list(events.text_deltas())
    streamed = events.result()
    plain = client.send(request)
    assert len(deltas) > 1 and "".join(deltas) == streamed.output_text == plain.output_text


def test_cut_stream_is_an_error_not_a_short_answer(client: IG1Client,
                                                   emulator: EmulatorServer) -> None:
    emulator.fail_next("stream_cut")
    with pytest.raises(IncompleteStreamError) as caught, client.stream(
            build_request(model="m", input="one two three four five six seven")) as events:
        for _ in events:
            pass
        events.result()
    assert caught.value.retryable


def test_send_with_stream_retries_a_cut_stream(client: IG1Client,
                                               emulator: EmulatorServer) -> None:
    emulator.fail_next("stream_cut")
    response = client.send(build_request(model="m", input="alpha beta", stream=True))
    assert response.output_text == "Echo: alpha beta"
    assert emulator.stats.requests == 2


def test_structured_output_is_parsed(client: IG1Client) -> None:
    request = build_request(model="m", input="a dog", text=json_schema_text_config(Animal))
    response = client.send(request, text_format=Animal)
    assert isinstance(response.parsed, Animal)
    sent = request.payload()["text"]["format"]
    assert sent["type"] == "json_schema" and sent["strict"] is True
    assert sent["schema"]["additionalProperties"] is False


def test_invalid_structured_reply_keeps_the_raw_text(client: IG1Client,
                                                     emulator: EmulatorServer) -> None:
    emulator.configure(json_invalid=True)
    with pytest.raises(StructuredOutputError, match="not valid JSON for Animal") as caught:
        client.send(build_request(model="m", input="a dog",
                                  text=json_schema_text_config(Animal)), text_format=Animal)
    assert caught.value.raw_text and caught.value.request_id


NEVER_RETRIED = [
    ("400", BadRequestError, 400),
    ("422", BadRequestError, 422),
    ("401", AuthenticationError, 401),
    ("403", AuthenticationError, 403),
    ("404", NotFoundError, 404),
    ("openai_error", BadRequestError, 400),
    ("string_error", AuthenticationError, 401),
]
RETRIED = [
    ("429", RateLimitError, 429),
    ("500", ServerError, 500),
    ("502", ServerError, 502),
    ("503", ServerError, 503),
    ("504", ServerError, 504),
    ("408", ServerError, 408),
    ("409", ServerError, 409),
    ("malformed", MalformedResponseError, 200),
    ("drop", IG1ConnectionError, None),
]


@pytest.mark.parametrize(("kind", "error", "status"), NEVER_RETRIED)
def test_permanent_errors_are_typed_and_sent_once(client: IG1Client, emulator: EmulatorServer,
                                                  kind: str, error: type[IG1Error],
                                                  status: int) -> None:
    emulator.fail_next(kind, count=5)
    with pytest.raises(error) as caught:
        client.send(build_request(model="m", input="x"))
    assert emulator.stats.requests == 1
    assert isinstance(caught.value, APIStatusError) and caught.value.status == status
    assert caught.value.request_id and caught.value.message
    assert not caught.value.retryable


@pytest.mark.parametrize(("kind", "error", "status"), RETRIED)
def test_transient_errors_are_retried_exactly_max_retries_times(
        client: IG1Client, emulator: EmulatorServer, kind: str, error: type[IG1Error],
        status: int | None) -> None:
    emulator.fail_next(kind, count=10)
    with pytest.raises(error) as caught:
        client.send(build_request(model="m", input="x"))
    assert emulator.stats.requests == 3  # 1 + max_retries
    assert caught.value.retryable
    if status is not None:
        assert getattr(caught.value, "status", None) == status


@pytest.mark.parametrize(("kind", "error", "status"), RETRIED)
def test_transient_errors_then_success(client: IG1Client, emulator: EmulatorServer, kind: str,
                                       error: type[IG1Error], status: int | None) -> None:
    emulator.fail_next(kind, count=2)
    assert client.send(build_request(model="m", input="ok")).output_text == "Echo: ok"
    assert emulator.stats.requests == 3


def test_402_budget_is_not_retried(client: IG1Client, emulator: EmulatorServer) -> None:
    emulator.configure(budget_requests=1)
    client.send(build_request(model="m", input="first"))
    with pytest.raises(BudgetExhaustedError, match="Commit exceeded") as caught:
        client.send(build_request(model="m", input="second"))
    assert emulator.stats.requests == 2 and caught.value.status == 402


@pytest.mark.parametrize(("kind", "message", "code"), [
    ("400", "Bad request", 400),                 # IG1's {"message","code","request_id"}
    ("openai_error", None, "bad_param"),         # OpenAI's {"error": {...}}
    ("string_error", "Unauthorized", None),      # {"error": "Unauthorized"}
    ("502", "502 Bad Gateway", None),            # an HTML page from the gateway
])
def test_every_error_body_shape_is_parsed(client: IG1Client, emulator: EmulatorServer, kind: str,
                                          message: str | None, code: object) -> None:
    emulator.configure()
    emulator.fail_next(kind, count=3)
    with pytest.raises(APIStatusError) as caught:
        client.send(build_request(model="m", input="x"))
    if message:
        assert message in caught.value.message
    assert "<" not in caught.value.message  # no raw HTML in messages
    assert caught.value.code == code
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_retry_after_is_honoured(client: IG1Client, emulator: EmulatorServer) -> None:
    stamina.set_testing(False)
    waits: list[float] = []
    stamina.instrumentation.set_on_retry_hooks([lambda details: waits.append(details.wait_for)])
    try:
        emulator.configure(retry_after=0.25)
        emulator.fail_next("429")
        client.send(build_request(model="m", input="x"))
    finally:
        stamina.instrumentation.set_on_retry_hooks(None)
    assert waits == [pytest.approx(0.25, abs=0.01)]
    assert emulator.stats.requests == 2


def test_retry_after_beyond_the_cap_gives_up_at_once(emulator: EmulatorServer) -> None:
    impatient = IG1Client(api_key=TEST_KEY, base_url=emulator.base_url,
                          retry_policy=RetryPolicy(max_retries=5, max_retry_after=1.0))
    emulator.configure(retry_after=30)
    emulator.fail_next("429", count=5)
    with pytest.raises(RateLimitError) as caught:
        impatient.send(build_request(model="m", input="x"))
    assert caught.value.retry_after == 30 and emulator.stats.requests == 1


def test_total_deadline_bounds_the_retries(emulator: EmulatorServer) -> None:
    stamina.set_testing(False)
    bounded = IG1Client(api_key=TEST_KEY, base_url=emulator.base_url, retry_policy=RetryPolicy(
        max_retries=50, deadline=0.3, wait_initial=0.1, wait_max=0.1, wait_jitter=0))
    emulator.fail_next("503", count=100)
    with pytest.raises(ServerError):
        bounded.send(build_request(model="m", input="x"))
    assert 2 <= emulator.stats.requests <= 5


def test_hang_times_out(emulator: EmulatorServer) -> None:
    emulator.configure(hang_seconds=3)
    emulator.fail_next("hang")
    quick = IG1Client(api_key=TEST_KEY, base_url=emulator.base_url, timeout=0.3, max_retries=0)
    with pytest.raises(IG1TimeoutError):
        quick.send(build_request(model="m", input="x"))


def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nobody = IG1Client(api_key=TEST_KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(IG1ConnectionError):
        nobody.send(build_request(model="m", input="x"))


def test_wrong_key_is_an_authentication_error(emulator: EmulatorServer) -> None:
    wrong = IG1Client(api_key="sk-wrong", base_url=emulator.base_url)
    with pytest.raises(AuthenticationError):
        wrong.send(build_request(model="m", input="x"))
    assert emulator.stats.requests <= 1


def test_usage_is_read_from_the_host_root(client: IG1Client, emulator: EmulatorServer) -> None:
    emulator.configure(usage_commit=50.0, max_throughput=8)
    usage = client.usage()
    assert client.usage_url == emulator.url + "/usage"
    assert (usage.commit, usage.max_throughput) == (50.0, 8)
    assert usage.remaining == usage.commit - usage.current


def test_the_key_never_shows_in_errors_or_reprs(client: IG1Client,
                                               emulator: EmulatorServer) -> None:
    seen = [repr(client), str(client)]
    for kind in [k for k, _, _ in NEVER_RETRIED + RETRIED]:
        emulator.fail_next(kind, count=3)
        with pytest.raises(IG1Error) as caught:
            client.send(build_request(model="m", input="x"))
        seen += [str(caught.value), repr(caught.value), repr(vars(caught.value))]
    assert not [text for text in seen if TEST_KEY in text]


def test_async_client_shapes_stream_and_retries(emulator: EmulatorServer) -> None:
    async def scenario() -> None:
        client = AsyncIG1Client(api_key=TEST_KEY, base_url=emulator.base_url, max_retries=2)
        try:
            plain = await client.send(build_request(model="m", input="async hello"))
            assert plain.output_text == "Echo: async hello"
            async with client.stream(build_request(model="m", input="async hello")) as events:
                deltas = [delta async for delta in events.text_deltas()]
            assert "".join(deltas) == events.result().output_text == plain.output_text
            emulator.fail_next("503", count=2)
            await client.send(build_request(model="m", input="after faults"))
            emulator.fail_next("401")
            with pytest.raises(AuthenticationError):
                await client.send(build_request(model="m", input="denied"))
            parsed = await client.send(build_request(
                model="m", input="a cat", text=json_schema_text_config(Animal)),
                text_format=Animal)
            assert isinstance(parsed.parsed, Animal)
            assert (await client.usage()).max_throughput == 16
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert emulator.stats.requests == 2 + 3 + 1 + 1  # plain+stream, 2 faults+ok, 401, parsed


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after": "3"}, 3.0),
    ({"retry-after": "0.25", "retry-after-ms": "oops"}, 0.25),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a past date: no wait
    ({"retry-after": "soon"}, None),
    ({}, None),
])
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    from prefect_ig1.client import parse_retry_after

    assert parse_retry_after(headers) == expected
