"""The cache key (what determines the answer, images by content, never the key) and the
cache store (JSON only: nothing else under a key is ever deserialized)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.filesystems import LocalFileSystem
from pydantic import BaseModel, SecretStr

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import InputImage, InputMessage, InputText, Response, build_request
from prefect_ig1.sandbox.sample_images import sample_images
from prefect_ig1.tasks import prepare_call
from prefect_ig1.tasks.cache import (
    CACHE_KEY_PREFIX,
    ResponseCache,
    image_digest,
    is_cacheable,
    response_cache_key,
)
from tests.helpers import pickled_record

BASE = "http://127.0.0.1:1/v1"
PHOTO = sample_images()[1][1]
PROFILE = ResponsesModel(model="m")  # an object: a bare string would look up a saved block


def key(**fields: object) -> str:
    return response_cache_key(build_request(**{"model": "m", "input": "x", **fields}),
                              base_url=BASE)


def image_input(image: InputImage, text: str = "Describe") -> list[InputMessage]:
    return [InputMessage(role="user", content=[InputText(text=text), image])]


def test_key_is_stable_across_processes_and_versions() -> None:
    # A golden value: changing how keys are computed invalidates every user's cache,
    # so it must be a deliberate change (bump CACHE_KEY_PREFIX).
    assert key(temperature=0.5) == CACHE_KEY_PREFIX + (
        "c0a89901571f932557626c13aabac9a8dafe0b48f36f5f9391fff0abf04884d6")


def test_every_parameter_changes_the_key() -> None:
    variants = [dict(temperature=0.5), dict(top_p=0.5), dict(top_k=3), dict(min_p=0.1),
                dict(max_output_tokens=9), dict(max_tokens=9), dict(instructions="Be brief."),
                dict(model="other"), dict(input="y"), dict(bad_words=["no"]),
                dict(extra_body={"seed": 1})]
    keys = {key(**variant) for variant in variants} | {key()}
    assert len(keys) == len(variants) + 1
    assert response_cache_key(build_request(model="m", input="x"), base_url=BASE + "2") != key()


def test_stream_flag_does_not_change_the_key() -> None:
    assert key(stream=True) == key()


def test_the_same_image_bytes_are_the_same_key_whatever_the_label() -> None:
    a = build_request(model="m", input=image_input(InputImage.from_bytes(PHOTO)))
    b = build_request(model="m", input=image_input(
        InputImage.from_bytes(PHOTO, mime_type="image/jpg")))
    other = build_request(model="m", input=image_input(
        InputImage.from_bytes(sample_images()[0][1])))
    high = build_request(model="m", input=image_input(
        InputImage.from_bytes(PHOTO, detail="high")))
    assert response_cache_key(a, base_url=BASE) == response_cache_key(b, base_url=BASE)
    assert len({response_cache_key(r, base_url=BASE) for r in (a, other, high)}) == 3


def test_image_digest_is_the_sha256_of_the_bytes() -> None:
    import hashlib

    digest = image_digest(InputImage.from_bytes(PHOTO).image_url)
    assert digest == "sha256:" + hashlib.sha256(PHOTO).hexdigest()
    assert image_digest("https://example.com/a.png") == "https://example.com/a.png"


def test_structured_format_class_is_part_of_the_key() -> None:
    class A(BaseModel):
        x: int

    class B(BaseModel):
        x: int

    credentials = IG1Credentials(api_key=SecretStr("k"), base_url=BASE)
    a = prepare_call("x", model=PROFILE, credentials=credentials, response_format=A).cache_key
    b = prepare_call("x", model=PROFILE, credentials=credentials, response_format=B).cache_key
    assert a != b


def test_the_api_key_is_not_in_the_key_and_does_not_change_it() -> None:
    one = IG1Credentials(api_key=SecretStr("sk-one-secret"), base_url=BASE)
    two = IG1Credentials(api_key=SecretStr("sk-two-secret"), base_url=BASE)
    a = prepare_call("x", model=PROFILE, credentials=one).cache_key
    assert a == prepare_call("x", model=PROFILE, credentials=two).cache_key
    assert "secret" not in a


def answer(text: str = "hello", **fields: object) -> Response:
    return Response.model_validate({"id": "r1", "output_text": text, "output": [], **fields})


@pytest.fixture
def storage(tmp_path: Path) -> LocalFileSystem:
    return LocalFileSystem(basepath=str(tmp_path / "storage"))


def test_round_trip_and_expiry(storage: LocalFileSystem) -> None:
    lasting = ResponseCache(storage, expiration=timedelta(days=1))
    assert lasting.get("absent-key") is None
    assert lasting.put("k1", answer()) is True
    assert lasting.get("k1") == answer()
    fleeting = ResponseCache(storage, expiration=timedelta(milliseconds=1))
    fleeting.put("k2", answer())
    time.sleep(0.01)
    assert fleeting.get("k2") is None
    forever = ResponseCache(storage)
    forever.put("k3", answer())
    assert forever.get("k3") == answer()


def test_entries_are_plain_json(storage: LocalFileSystem) -> None:
    class Caption(BaseModel):
        caption: str

    cache = ResponseCache(storage, expiration=timedelta(days=1))
    parsed = answer('{"caption": "a cat"}').model_copy(update={"parsed": Caption(caption="a cat")})
    cache.put("k", parsed)
    entry = json.loads(storage.read_path("k", _sync=True))  # type: ignore[call-arg]
    assert entry["kind"] == "ig1-response" and entry["expires_at"]
    assert entry["response"]["output_text"] == '{"caption": "a cat"}'
    assert "parsed" not in entry["response"]  # instances are never stored ...
    hit = cache.get("k", text_format=Caption)  # ... but rebuilt from the text
    assert hit is not None and hit.parsed == Caption(caption="a cat")
    assert cache.get("k") == answer('{"caption": "a cat"}')


@pytest.mark.parametrize("status", ["failed", "incomplete", "in_progress"])
def test_only_a_completed_answer_with_text_is_stored(storage: LocalFileSystem,
                                                     status: str) -> None:
    cache = ResponseCache(storage)
    for response in (answer(status=status), answer(""), answer("  \n")):
        assert not is_cacheable(response)
        assert cache.put("k", response) is False
    assert not list(Path(storage.basepath).rglob("*"))
    assert is_cacheable(answer()) and is_cacheable(answer("", parsed={"x": 1}))


def test_an_answer_invalid_for_the_asked_schema_is_not_stored(storage: LocalFileSystem) -> None:
    """A dict json_schema is not checked by the client: the cache checks before keeping it."""
    schema = {"type": "object", "properties": {"label": {"type": "string"}},
              "required": ["label"], "additionalProperties": False}
    cache = ResponseCache(storage)
    for text in ('Sure! {"label": "x"', '{"label": 3}', '{"other": "x"}'):
        assert not is_cacheable(answer(text), schema=schema)
        assert cache.put("k", answer(text), schema=schema) is False
    assert cache.put("k", answer('{"label": "x"}'), schema=schema) is True


def test_a_planted_pickle_record_is_a_miss_and_never_runs(
        storage: LocalFileSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    credentials = IG1Credentials(api_key=SecretStr("k"), base_url=BASE)
    key = prepare_call("x", model=PROFILE, credentials=credentials).cache_key
    v1_key = "ig1-response-v1-" + key.rpartition("-")[2]
    marker = tmp_path / "marker"
    for planted in {key, v1_key}:
        storage.write_path(planted, pickled_record(planted, marker),
                           _sync=True)  # type: ignore[call-arg]
    cache = ResponseCache(storage)
    with caplog.at_level(logging.DEBUG, logger="prefect_ig1.tasks.cache"):
        assert cache.get(key) is None
        assert cache.get(key) is None
        assert cache.get(v1_key) is None
    assert not marker.exists()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().count(key) for r in warnings if key in r.getMessage()] == [1]
    assert len(warnings) == 2  # once per key, naming the key, not the content
    assert not [r for r in warnings if "touch" in r.getMessage()]
    assert cache.put(key, answer()) and cache.get(key) == answer()  # overwritten by an answer


@pytest.mark.parametrize("content", [
    b"not a record", b"\x80\x04\x95garbage", b'{"metadata": {}, "result": "x"}',
    b'{"kind": "ig1-response", "response": {"id": "r"}, "extra": 1}', b"[]", b"null"])
def test_anything_else_under_a_key_is_a_miss(storage: LocalFileSystem, content: bytes,
                                             caplog: pytest.LogCaptureFixture) -> None:
    storage.write_path("k", content, _sync=True)  # type: ignore[call-arg]
    with caplog.at_level(logging.WARNING, logger="prefect_ig1.tasks.cache"):
        assert ResponseCache(storage).get("k") is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_an_empty_file_is_a_quiet_miss(storage: LocalFileSystem,
                                       caplog: pytest.LogCaptureFixture) -> None:
    storage.write_path("k", b"", _sync=True)  # type: ignore[call-arg]
    with caplog.at_level(logging.WARNING, logger="prefect_ig1.tasks.cache"):
        assert ResponseCache(storage).get("k") is None
    assert not caplog.records


def test_cached_text_that_no_longer_parses_is_a_miss(storage: LocalFileSystem) -> None:
    class Caption(BaseModel):
        caption: str

    cache = ResponseCache(storage)
    cache.put("k", answer("not json"))
    assert cache.get("k") is not None and cache.get("k", text_format=Caption) is None


def test_async_twins(storage: LocalFileSystem) -> None:
    cache = ResponseCache(storage)
    assert asyncio.run(cache.aput("k", answer())) is True
    assert asyncio.run(cache.aget("k")) == answer()


def test_a_local_folder_is_read_directly_but_never_through_a_link_a_fifo_or_a_huge_file(
        storage: LocalFileSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Keys of ours are read straight from the folder (the storage block resolves both paths
    on every read); whatever else sits under such a key is a miss, and nothing blocks."""
    import os

    from prefect_ig1.tasks.cache import MAX_ENTRY_BYTES

    cache = ResponseCache(storage)
    own = [CACHE_KEY_PREFIX + f"{n:064x}" for n in range(4)]
    assert cache.put(own[0], answer("direct")) and cache.get(own[0]) == answer("direct")
    folder = Path(storage.basepath)
    outside = tmp_path / "outside-entry"
    outside.write_bytes((folder / own[0]).read_bytes())
    (folder / own[1]).symlink_to(outside)  # someone else's entry, planted as a link
    os.mkfifo(folder / own[2])  # a reader that trusted the name would wait forever
    (folder / own[3]).write_bytes(b'{"kind": "ig1-response", "response": {"id": "'
                                  + b"x" * MAX_ENTRY_BYTES + b'"}}')
    with caplog.at_level(logging.WARNING, logger="prefect_ig1.tasks.cache"):
        assert [cache.get(k) for k in own[1:]] == [None, None, None]
    assert [r.getMessage() for r in caplog.records] == [
        f"IG1 cache entry {own[3]} is over {MAX_ENTRY_BYTES} bytes, larger than any answer: "
        "ignored as a miss, not read"]
