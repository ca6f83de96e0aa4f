"""Both documented response shapes parse to one model; output_text is always there."""

from __future__ import annotations

import json
from pathlib import Path

from prefect_ig1.client import Response

# The two example bodies from IG1's page (shared/seed/ig1-responses-api.txt), copied
# verbatim except for the comma the page's image example lacks after "assistant".
SHAPES = json.loads((Path(__file__).parent / "seed_shapes.json").read_text())


def test_seed_text_shape() -> None:
    response = Response.model_validate(SHAPES["text"])
    assert response.output_text == "In a meadow bathed in moonlight,..."
    assert response.created_at == 1775114826 and response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens == 93
    assert response.output[0].content[0].text == "In a meadow bathed in moonlight..."


def test_seed_image_shape() -> None:
    response = Response.model_validate(SHAPES["image"])
    assert response.object == "responses"
    assert response.created_at == 1773745771
    assert response.output_text == "The image represents a portrait ..."
    assert response.finish_reason == "stop" and response.status == "completed"
    assert response.usage is not None and response.usage.input_tokens == 128


def test_image_shape_cut_by_length_is_incomplete() -> None:
    response = Response.model_validate({
        "id": "r", "object": "responses", "created": 1,
        "output": [{"type": "message", "role": "assistant", "finish_reason": "length",
                    "content": {"type": "output_text", "text": "A cat"}}],
    })
    assert response.status == "incomplete" and response.incomplete_reason == "max_output_tokens"


def test_output_text_joins_every_text_part() -> None:
    response = Response.model_validate({
        "id": "r", "output": [
            {"type": "reasoning", "content": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Hello, "},
                                            {"type": "refusal", "text": "no"},
                                            {"type": "output_text", "text": "world"}]}],
    })
    assert response.output_text == "Hello, world"


def test_unknown_fields_are_kept() -> None:
    response = Response.model_validate({"id": "r", "output": [], "service_tier": "auto"})
    assert response.model_extra == {"service_tier": "auto"}
    assert response.usage is None and response.output_text == ""


def test_refusal_is_its_own_property() -> None:
    response = Response.model_validate({"id": "r", "output": [{"type": "message", "content": [
        {"type": "refusal", "refusal": "I can't help with that.", "annotations": None}]}]})
    assert response.output_text == "" and response.refusal == "I can't help with that."
    assert Response.model_validate({"id": "r"}).refusal is None


def test_nulls_read_as_defaults_and_created_at_may_be_fractional() -> None:
    response = Response.model_validate({
        "id": "r", "created_at": 1754925861.734, "status": None, "output": [
            {"type": "message", "content": None},
            {"type": "message", "content": [None, {"type": "output_text", "text": "hi",
                                                   "annotations": None}]}],
        "usage": {"input_tokens": None, "output_tokens": 2, "input_tokens_details": None}})
    assert response.created_at == 1754925861.734 and response.status == "completed"
    assert response.output_text == "hi" and response.output[0].content == []
    assert response.usage is not None and response.usage.total_tokens == 2


def test_a_failed_status_is_a_failure_with_its_code() -> None:
    failed = Response.model_validate({"id": "r", "status": "failed",
                                      "error": {"code": "server_error", "message": "boom"}})
    assert failed.failure == ("boom", "server_error")
    assert Response.model_validate({"id": "r", "error": None}).failure is None
