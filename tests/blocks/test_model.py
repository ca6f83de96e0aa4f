"""ResponsesModel: defaults that per-call arguments override, validated on creation."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from prefect_ig1.blocks import DEFAULT_MODEL, IG1Credentials, ResponsesModel
from prefect_ig1.client import RequestValidationError
from tests.blocks.offline_suite import OfflineBlockStandardTestSuite
from tests.helpers import TEST_KEY


class TestResponsesModelBlock(OfflineBlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[ResponsesModel]:
        return ResponsesModel


def test_default_model() -> None:
    assert ResponsesModel().model == DEFAULT_MODEL == "qwen35-397b-a17b-instruct-general"


def test_call_arguments_override_the_profile() -> None:
    profile = ResponsesModel(temperature=0.2, max_output_tokens=100, instructions="Be terse.",
                             parameters={"top_k": 40, "min_p": 0.1})
    payload = profile.build_request("hi", temperature=0.9, top_k=5).payload()
    assert payload == {"model": DEFAULT_MODEL, "input": "hi", "instructions": "Be terse.",
                       "temperature": 0.9, "max_output_tokens": 100, "top_k": 5, "min_p": 0.1}
    assert profile.build_request("hi", instructions="Other.").instructions == "Other."


def test_max_tokens_per_call_replaces_the_profiles_max_output_tokens() -> None:
    payload = ResponsesModel(max_output_tokens=100).build_request("hi", max_tokens=5).payload()
    assert payload["max_tokens"] == 5 and "max_output_tokens" not in payload


@pytest.mark.parametrize("parameters", [{"top_kk": 3}, {"min_p": 3.0}, {"model": "x"}])
def test_bad_default_parameters_are_refused_on_creation(parameters: dict[str, object]) -> None:
    with pytest.raises((ValidationError, RequestValidationError)):
        ResponsesModel(parameters=parameters)


def test_bad_call_arguments_are_refused() -> None:
    with pytest.raises(RequestValidationError, match="top_p"):
        ResponsesModel().build_request("hi", top_p=3)
    with pytest.raises(RequestValidationError, match="response_format"):
        ResponsesModel().build_request("hi", response_format=42)  # type: ignore[arg-type]


def test_credentials_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IG1AI_API_KEY", TEST_KEY)
    assert ResponsesModel().get_credentials().api_key.get_secret_value() == TEST_KEY
    own = IG1Credentials(api_key=SecretStr("sk-own"))
    assert ResponsesModel(credentials=own).get_credentials() is own


@pytest.mark.usefixtures("prefect_server")
def test_save_and_load_round_trip_with_nested_credentials() -> None:
    credentials = IG1Credentials(api_key=SecretStr(TEST_KEY), base_url="http://127.0.0.1:1/v1")
    ResponsesModel(credentials=credentials, model="m-1", temperature=0.3,
                   parameters={"top_k": 7}).save("profile-round-trip", overwrite=True)
    loaded = ResponsesModel.load("profile-round-trip")
    assert (loaded.model, loaded.temperature, loaded.parameters) == ("m-1", 0.3, {"top_k": 7})
    assert loaded.credentials is not None
    assert loaded.credentials.api_key.get_secret_value() == TEST_KEY
