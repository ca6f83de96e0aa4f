"""The request model: every documented field, validated before sending, sent only when set."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from prefect_ig1.client import (
    InputImage,
    InputMessage,
    InputText,
    RequestValidationError,
    ResponsesRequest,
    build_request,
)
from tests.helpers import EVERY_PARAMETER


def png_bytes(size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_documented_parameter_is_sent_as_set() -> None:
    payload = build_request(model="m", input="hi", **EVERY_PARAMETER).payload()
    assert payload == {"model": "m", "input": "hi", **EVERY_PARAMETER}


def test_the_fifteen_vllm_extras_are_all_fields() -> None:
    extras = {"use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty",
              "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
              "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
              "prompt_logprobs", "allowed_token_ids", "bad_words"}
    assert len(extras) == 15
    assert extras <= set(ResponsesRequest.model_fields)


def test_only_what_was_set_is_sent() -> None:
    assert build_request(model="m", input="hi", temperature=None).payload() == {
        "model": "m", "input": "hi"}


def test_max_tokens_is_sent_under_the_name_given() -> None:
    assert build_request(model="m", input="x", max_tokens=5).payload()["max_tokens"] == 5
    assert "max_output_tokens" not in build_request(model="m", input="x", max_tokens=5).payload()


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("top_p", 1.5, "top_p"),
    ("top_p", -0.1, "top_p"),
    ("min_p", 2.0, "min_p"),
    ("repetition_penalty", 0.9, "repetition_penalty"),
    ("top_k", 0, "top_k must be >= 1, or -1"),
    ("top_k", -2, "top_k"),
    ("temperature", -1.0, "temperature"),
    ("length_penalty", -0.5, "length_penalty"),
    ("max_output_tokens", 0, "max_output_tokens"),
    ("truncate_prompt_tokens", 0, "truncate_prompt_tokens"),
    ("min_tokens", -1, "min_tokens"),
    ("use_beam_search", "yes", "use_beam_search"),
    ("top_k", "40", "top_k"),
    ("temperature", "0.5", "temperature"),
    ("stop_token_ids", [1, -3], "stop_token_ids"),
    ("bad_words", "darn", "bad_words"),
])
def test_invalid_values_are_refused_naming_the_field(field: str, value: object,
                                                     needle: str) -> None:
    with pytest.raises(RequestValidationError, match=needle):
        build_request(model="m", input="x", **{field: value})


def test_top_k_minus_one_disables_it() -> None:
    assert build_request(model="m", input="x", top_k=-1).payload()["top_k"] == -1


def test_max_tokens_and_max_output_tokens_are_never_both_sent() -> None:
    with pytest.raises(RequestValidationError, match="not both"):
        build_request(model="m", input="x", max_tokens=5, max_output_tokens=5)


def test_min_tokens_above_the_limit_is_refused() -> None:
    with pytest.raises(RequestValidationError, match=r"min_tokens \(9\) exceeds"):
        build_request(model="m", input="x", min_tokens=9, max_output_tokens=3)


def test_unknown_parameter_is_refused_with_the_fix() -> None:
    with pytest.raises(RequestValidationError, match=r"'frequency_penaltyy'.*extra_body"):
        build_request(model="m", input="x", frequency_penaltyy=1.0)


def test_extra_body_passes_unknown_parameters_explicitly() -> None:
    payload = build_request(model="m", input="x", extra_body={"seed": 7}).payload()
    assert payload["seed"] == 7 and "extra_body" not in payload


def test_extra_body_cannot_smuggle_a_validated_field() -> None:
    with pytest.raises(RequestValidationError, match="top_p"):
        build_request(model="m", input="x", extra_body={"top_p": 9})


def test_stateful_parameters_explain_zero_retention() -> None:
    with pytest.raises(RequestValidationError, match="zero retention"):
        build_request(model="m", input="x", previous_response_id="resp_1")


def test_empty_input_and_model_are_refused() -> None:
    with pytest.raises(RequestValidationError, match="input"):
        build_request(model="m", input="")
    with pytest.raises(RequestValidationError, match="model"):
        build_request(model="", input="x")


def test_messages_mix_text_and_image_parts() -> None:
    data = png_bytes()
    message = InputMessage(role="user", content=[InputText(text="Describe this image"),
                                                 InputImage.from_bytes(data)])
    payload = build_request(model="m", input=[message]).payload()
    parts = payload["input"][0]["content"]
    assert parts[0] == {"type": "input_text", "text": "Describe this image"}
    assert parts[1]["type"] == "input_image" and parts[1]["detail"] == "auto"
    prefix, encoded = parts[1]["image_url"].split(",", 1)
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(encoded) == data


def test_messages_given_as_plain_dicts_are_validated() -> None:
    request = build_request(model="m", input=[{"role": "user", "content": "Write a poem."}])
    assert request.payload()["input"] == [{"role": "user", "content": "Write a poem."}]
    with pytest.raises(RequestValidationError, match="role"):
        build_request(model="m", input=[{"role": "robot", "content": "x"}])


def test_image_part_from_path_detects_jpeg_and_detail(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "photo.bin"
    Image.new("RGB", (5, 5)).save(path, format="JPEG")
    part = InputImage.from_path(path, detail="high")
    assert part.image_url.startswith("data:image/jpeg;base64,") and part.detail == "high"


def test_image_part_refuses_non_images_and_empty_bytes() -> None:
    with pytest.raises(RequestValidationError, match="not an image"):
        InputImage.from_bytes(b"hello, not a picture")
    with pytest.raises(RequestValidationError, match="empty"):
        InputImage.from_bytes(b"")


def test_image_part_repr_never_dumps_base64() -> None:
    part = InputImage.from_bytes(png_bytes((64, 64)))
    assert len(repr(part)) < 120
    assert len(repr(build_request(model="m", input=[
        InputMessage(role="user", content=[part])]))) < 200
