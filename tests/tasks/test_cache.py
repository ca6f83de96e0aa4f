"""The cache key: what determines the answer, images by content, never the key."""

from __future__ import annotations

from pydantic import BaseModel, SecretStr

from blocks import IG1Credentials, ResponsesModel
from ig1 import InputImage, InputMessage, InputText, build_request
from sandbox.sample_images import sample_images
from tasks import CACHE_KEY_PREFIX, image_digest, prepare_call, response_cache_key

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


def test_response_cache_round_trip_and_expiry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import time
    from datetime import timedelta

    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    from ig1 import Response
    from tasks import ResponseCache

    store = ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path)))
    answer = Response.model_validate({"id": "r1", "output_text": "hello", "output": []})
    lasting = ResponseCache(store, expiration=timedelta(days=1))
    assert lasting.get("absent-key") is None
    lasting.put("k1", answer)
    assert lasting.get("k1") == answer
    fleeting = ResponseCache(ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path)),
                                         cache_result_in_memory=False),
                             expiration=timedelta(milliseconds=1))
    fleeting.put("k2", answer)
    time.sleep(0.01)
    assert fleeting.get("k2") is None
    (tmp_path / "corrupt").write_bytes(b"not a record")
    assert lasting.get("corrupt") is None
