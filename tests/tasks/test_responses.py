"""create_response in real flows: cached across runs and processes, retried only when transient."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.filesystems import LocalFileSystem, WritableFileSystem
from pydantic import BaseModel, SecretStr

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import (
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    IG1ConnectionError,
    InputImage,
    InputMessage,
    InputText,
    NotFoundError,
    RateLimitError,
    Response,
    ServerError,
)
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from prefect_ig1.sandbox.sample_images import sample_images
from prefect_ig1.tasks import acreate_response, create_response, prepare_call
from prefect_ig1.tasks.cache import ResponseCache
from tests.helpers import TEST_KEY, pickled_record

pytestmark = pytest.mark.usefixtures("prefect_server")

PHOTO = sample_images()[1][1]


class Caption(BaseModel):
    """A caption and a count."""

    caption: str
    objects: int


@pytest.fixture
def prompt(request: pytest.FixtureRequest) -> str:
    """A prompt no other test (or earlier run) has cached."""
    return f"{request.node.name} {uuid.uuid4().hex}"


@flow
def ask(input: Any, credentials: IG1Credentials, **params: Any) -> Response:
    return create_response(input, credentials=credentials, **params)


def image_input(data: bytes) -> list[InputMessage]:
    return [InputMessage(role="user", content=[InputText(text="Describe this image"),
                                                InputImage.from_bytes(data)])]


@pytest.mark.slow
def test_second_flow_run_is_a_cache_hit_with_no_http_call(
        credentials: IG1Credentials, emulator: EmulatorServer, prompt: str) -> None:
    first = ask(prompt, credentials, temperature=0.2, top_k=5)
    second = ask(prompt, credentials, temperature=0.2, top_k=5)
    assert emulator.stats.requests == 1
    assert second.output_text == first.output_text == f"Echo: {prompt}"
    assert second.request_id == first.request_id


@pytest.mark.slow
def test_same_image_under_another_name_is_a_hit(credentials: IG1Credentials,
                                                emulator: EmulatorServer, tmp_path: Path,
                                                prompt: str) -> None:
    (tmp_path / "a.jpg").write_bytes(PHOTO)
    (tmp_path / "copy of a.jpeg").write_bytes(PHOTO)

    def message(path: Path) -> list[InputMessage]:
        return [InputMessage(role="user", content=[InputText(text=prompt),
                                                    InputImage.from_path(path)])]

    first = ask(message(tmp_path / "a.jpg"), credentials)
    second = ask(message(tmp_path / "copy of a.jpeg"), credentials)
    assert emulator.stats.requests == 1 and "1600x1200" in second.output_text
    assert first.output_text == second.output_text


@pytest.mark.slow
@pytest.mark.parametrize("change", [
    {"temperature": 0.3}, {"top_p": 0.5}, {"top_k": 3}, {"repetition_penalty": 1.2},
    {"max_output_tokens": 50}, {"instructions": "Be brief."}, {"response_format": Caption},
])
def test_changing_any_parameter_is_a_miss(credentials: IG1Credentials, emulator: EmulatorServer,
                                          prompt: str, change: dict[str, Any]) -> None:
    ask(prompt, credentials)
    ask(prompt, credentials, **change)
    assert emulator.stats.requests == 2


def test_changing_the_model_is_a_miss(credentials: IG1Credentials, emulator: EmulatorServer,
                                      prompt: str) -> None:
    @flow
    def two_models() -> None:
        create_response(prompt, model=ResponsesModel(model="m-a"), credentials=credentials)
        create_response(prompt, model=ResponsesModel(model="m-b"), credentials=credentials)

    two_models()
    assert [body["model"] for body in emulator.stats.received] == ["m-a", "m-b"]


@pytest.mark.slow
def test_expiration_and_refresh_are_task_options(credentials: IG1Credentials,
                                                 emulator: EmulatorServer, prompt: str) -> None:
    # (timedelta(0) is falsy, so with_options would ignore it)
    expired_at_once = create_response.with_options(cache_expiration=timedelta(microseconds=1))
    refresh = create_response.with_options(refresh_cache=True)
    long_lived = create_response.with_options(cache_expiration=timedelta(days=1))

    @flow
    def run(task: Any) -> Response:
        result: Response = task(prompt, credentials=credentials)
        return result

    run(expired_at_once)
    run(expired_at_once)
    assert emulator.stats.requests == 2      # expired: a miss each time
    run(long_lived)
    run(long_lived)
    assert emulator.stats.requests == 3      # cached for a day
    run(refresh)
    assert emulator.stats.requests == 4      # refresh pays again and rewrites
    run(create_response)
    assert emulator.stats.requests == 4


@pytest.mark.slow
def test_a_new_process_with_the_same_storage_hits(credentials: IG1Credentials,
                                                  emulator: EmulatorServer, prompt: str) -> None:
    from prefect.settings import PREFECT_API_URL

    script = (
        "import sys\n"
        "from prefect import flow\n"
        "from tasks import create_response\n"
        "@flow\n"
        "def once(p):\n"
        "    return create_response(p).output_text\n"
        "print('ANSWER', once(sys.argv[1]))\n"
    )
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "IG1AI_API_KEY": TEST_KEY, "IG1AI_BASE_URL": emulator.base_url}
    outputs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script, prompt], env=env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
        assert TEST_KEY not in done.stdout + done.stderr
    assert emulator.stats.requests == 1
    assert all(f"ANSWER Echo: {prompt}" in out for out in outputs)


def test_the_window_store_and_the_task_share_one_cache(credentials: IG1Credentials,
                                                       emulator: EmulatorServer,
                                                       prompt: str) -> None:
    profile = ResponsesModel(model="m")
    paid_by_batch = prepare_call(prompt + " batch", model=profile, credentials=credentials)
    answer = credentials.get_client().send(paid_by_batch.request)

    @flow
    def batch_then_task() -> tuple[Response, Response | None]:
        ResponseCache.for_task(create_response).put(paid_by_batch.cache_key, answer)
        from_task = create_response(prompt + " batch", model=profile, credentials=credentials)
        paid_by_task = create_response(prompt + " task", model=profile, credentials=credentials)
        key = prepare_call(prompt + " task", model=profile, credentials=credentials).cache_key
        seen = ResponseCache.for_task(create_response).get(key)
        assert seen is not None and seen.output_text == paid_by_task.output_text
        return from_task, seen

    from_task, _ = batch_then_task()
    assert from_task.output_text == answer.output_text
    assert emulator.stats.requests == 2  # the batch call and the task's own miss
    outside = ResponseCache.for_task(create_response).get(paid_by_batch.cache_key)
    assert outside is not None and outside.request_id == answer.request_id


@pytest.mark.slow
def test_structured_output_through_the_task(credentials: IG1Credentials,
                                            emulator: EmulatorServer, prompt: str) -> None:
    result = ask(prompt, credentials, response_format=Caption)
    assert isinstance(result.parsed, Caption) and result.parsed.caption.startswith("Echo:")
    again = ask(prompt, credentials, response_format=Caption)
    assert emulator.stats.requests == 1  # a hit, parsed again from the cached text
    assert isinstance(again.parsed, Caption) and again.parsed == result.parsed


def plant_pickle(storage: WritableFileSystem, key: str, marker: Path) -> None:
    """What anyone able to write to the result storage could leave under a known key."""
    v1_key = "ig1-response-v1-" + key.rpartition("-")[2]
    for planted in {key, v1_key}:
        storage.write_path(planted, pickled_record(planted, marker),
                           _sync=True)  # type: ignore[call-arg]


def assert_json_entry(storage: WritableFileSystem, key: str, text: str) -> None:
    import json

    entry = json.loads(storage.read_path(key, _sync=True))  # type: ignore[call-arg]
    assert entry["kind"] == "ig1-response" and entry["response"]["output_text"] == text


@pytest.mark.slow
def test_a_planted_pickle_record_is_a_miss_that_runs_nothing(
        credentials: IG1Credentials, emulator: EmulatorServer, prompt: str,
        tmp_path: Path, every_log_record: list[logging.LogRecord]) -> None:
    first = ask(prompt, credentials)
    assert ask(prompt, credentials).request_id == first.request_id
    assert emulator.stats.requests == 1
    key = prepare_call(prompt, credentials=credentials).cache_key
    storage = LocalFileSystem(basepath=os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    marker = tmp_path / "marker"
    plant_pickle(storage, key, marker)

    again = ask(prompt, credentials)
    assert not marker.exists()
    assert emulator.stats.requests == 2 and again.output_text == first.output_text
    warned = [r.getMessage() for r in set(every_log_record)  # (seen by every ancestor logger)
              if r.levelno == logging.WARNING and key in r.getMessage()]
    assert len(warned) == 1 and "never deserialized" in warned[0]
    assert_json_entry(storage, key, first.output_text)  # the answer replaced the plant
    ask(prompt, credentials)
    assert emulator.stats.requests == 2


@pytest.mark.slow
def test_the_cache_is_json_in_an_s3_result_storage(
        credentials: IG1Credentials, emulator: EmulatorServer, local_s3: LocalS3,
        prompt: str, tmp_path: Path) -> None:
    from prefect_aws import AwsCredentials, S3Bucket

    results = f"results-{uuid.uuid4().hex[:12]}"
    local_s3.client().create_bucket(Bucket=results)
    storage = S3Bucket(bucket_name=results, bucket_folder="ig1-cache", credentials=AwsCredentials(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
        aws_client_parameters={"endpoint_url": local_s3.endpoint_url}))
    storage.save(results)  # Prefect takes only saved blocks as result storage
    on_s3 = create_response.with_options(result_storage=storage)

    @flow
    def run() -> Response:
        return on_s3(prompt, credentials=credentials)

    first = run()
    key = prepare_call(prompt, credentials=credentials).cache_key
    listed = local_s3.client().list_objects_v2(Bucket=results)
    assert [obj["Key"] for obj in listed["Contents"]] == [f"ig1-cache/{key}"]
    assert_json_entry(storage, key, first.output_text)
    assert run().request_id == first.request_id and emulator.stats.requests == 1

    marker = tmp_path / "marker"
    plant_pickle(storage, key, marker)
    assert run().output_text == first.output_text
    assert not marker.exists() and emulator.stats.requests == 2
    assert_json_entry(storage, key, first.output_text)


@pytest.mark.slow
@pytest.mark.parametrize(("params", "status"), [({"max_output_tokens": 1}, "incomplete")])
def test_an_unfinished_answer_is_not_cached(credentials: IG1Credentials,
                                            emulator: EmulatorServer, prompt: str,
                                            params: dict[str, Any], status: str) -> None:
    assert ask(prompt + " and more words", credentials, **params).status == status
    ask(prompt + " and more words", credentials, **params)
    assert emulator.stats.requests == 2


def test_images_and_streaming_through_the_task(credentials: IG1Credentials,
                                               emulator: EmulatorServer) -> None:
    result = ask(image_input(sample_images()[0][1]), credentials, stream=True)
    assert "Image" in result.output_text and emulator.stats.received[-1]["stream"] is True


def test_model_given_as_a_saved_block_name(credentials: IG1Credentials,
                                           emulator: EmulatorServer, prompt: str) -> None:
    ResponsesModel(credentials=credentials, model="profile-model", temperature=0.1,
                   parameters={"top_k": 9}).save("test-profile", overwrite=True)

    @flow
    def by_name() -> Response:
        return create_response(prompt, model="test-profile", top_k=2)

    by_name()
    sent = emulator.stats.received[-1]
    assert (sent["model"], sent["temperature"], sent["top_k"]) == ("profile-model", 0.1, 2)


def test_model_given_as_a_model_id(ig1_env: EmulatorServer, prompt: str) -> None:
    @flow
    def by_id() -> Response:
        return create_response(prompt, model="qwen-other-model")

    by_id()
    assert ig1_env.stats.received[-1]["model"] == "qwen-other-model"


def test_async_task_in_an_async_flow(credentials: IG1Credentials, emulator: EmulatorServer,
                                     prompt: str) -> None:
    @flow
    async def concurrently() -> list[Response]:
        return list(await asyncio.gather(*[
            acreate_response(f"{prompt} {i}", credentials=credentials) for i in range(3)]))

    answers = asyncio.run(concurrently())
    assert sorted(a.output_text for a in answers) == [f"Echo: {prompt} {i}" for i in range(3)]
    asyncio.run(concurrently())
    assert emulator.stats.requests == 3


def test_retry_condition_is_a_plain_function() -> None:
    # Prefect silently never retries with a partial or a callable object.
    assert inspect.isfunction(create_response.retry_condition_fn)
    assert inspect.isfunction(acreate_response.retry_condition_fn)


# (fault, error, HTTP attempts) with 2 client retries and 1 task retry: transient
# failures cost (1 + 2) * (1 + 1) = 6 attempts, permanent ones exactly 1.
ATTEMPTS = [
    ("503", ServerError, 6),
    ("502", ServerError, 6),
    ("429", RateLimitError, 6),
    ("drop", IG1ConnectionError, 6),
    ("400", BadRequestError, 1),
    ("422", BadRequestError, 1),
    ("401", AuthenticationError, 1),
    ("403", AuthenticationError, 1),
    ("404", NotFoundError, 1),
]


@pytest.mark.parametrize(("fault", "error", "attempts"), ATTEMPTS)
def test_exact_http_attempts_per_failure_mode(credentials: IG1Credentials,
                                              emulator: EmulatorServer, prompt: str,
                                              fault: str, error: type[Exception],
                                              attempts: int) -> None:
    once_more = create_response.with_options(retries=1, retry_delay_seconds=0)

    @flow
    def failing() -> Response:
        return once_more(prompt, credentials=credentials)

    emulator.fail_next(fault, count=100)
    state = failing(return_state=True)
    assert state.is_failed()
    with pytest.raises(error):
        state.result()
    assert emulator.stats.requests == attempts


def test_402_is_never_retried(credentials: IG1Credentials, emulator: EmulatorServer,
                              prompt: str) -> None:
    emulator.configure(budget_requests=0)
    state = flow(lambda: create_response.with_options(retries=3, retry_delay_seconds=0)(
        prompt, credentials=credentials))(return_state=True)
    with pytest.raises(BudgetExhaustedError):
        state.result()
    assert emulator.stats.requests == 1


def test_task_retry_recovers_after_the_client_gives_up(credentials: IG1Credentials,
                                                       emulator: EmulatorServer,
                                                       prompt: str) -> None:
    emulator.fail_next("503", count=3)  # exhausts the client's 3 attempts
    retrying = create_response.with_options(retries=1, retry_delay_seconds=0)
    result = flow(lambda: retrying(prompt, credentials=credentials))()
    assert result.output_text == f"Echo: {prompt}" and emulator.stats.requests == 4


@pytest.fixture
def every_log_record() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    names = ["", *logging.root.manager.loggerDict]
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.mark.slow
def test_the_key_is_absent_from_logs_results_and_storage(
        credentials: IG1Credentials, emulator: EmulatorServer, prompt: str,
        every_log_record: list[logging.LogRecord]) -> None:
    ok = ask(prompt, credentials)
    emulator.fail_next("401", count=5)
    failed = flow(lambda: create_response(prompt + " denied", credentials=credentials))(
        return_state=True)
    assert failed.is_failed()
    texts = [record.getMessage() for record in every_log_record]
    texts += [str(record.__dict__) for record in every_log_record]
    texts += [repr(ok), ok.model_dump_json(), str(failed), repr(failed.data)]
    assert len(texts) > 5
    assert not [text for text in texts if TEST_KEY in text]
    storage = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    stored = [path for path in storage.rglob("*") if path.is_file()]
    assert stored and not [p for p in stored if TEST_KEY.encode() in p.read_bytes()]


def test_credentials_object_is_not_stored_in_the_cached_result(
        credentials: IG1Credentials, prompt: str) -> None:
    result = ask(prompt, credentials)
    assert SecretStr not in {type(value) for value in result.__dict__.values()}
