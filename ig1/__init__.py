"""A typed client for IG1 AI's OpenAI-compatible ``POST /v1/responses``.

The Prefect-facing packages (``blocks``, ``tasks``, ``flows``) stay thin over it.
"""

from ._client import DEFAULT_BASE_URL, AccountUsage, AsyncIG1Client, IG1Client
from ._exceptions import (
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    IG1ConnectionError,
    IG1Error,
    IG1TimeoutError,
    IncompleteStreamError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    RequestValidationError,
    ResponseFailedError,
    ServerError,
    StructuredOutputError,
    TruncatedResponseError,
    is_transient_code,
    status_error_class,
)
from ._request import (
    SAMPLING_PARAMETERS,
    InputImage,
    InputMessage,
    InputText,
    JsonSchemaFormat,
    OutputTextPart,
    ResponsesRequest,
    TextConfig,
    build_request,
)
from ._response import OutputContent, OutputItem, Response, TokenUsage
from ._retry import RetryPolicy, is_transient, parse_retry_after
from ._shared import shared_async_client, shared_client
from ._stream import StreamEvent
from ._structured import (
    json_schema_text_config,
    json_schema_violation,
    parse_structured,
    strict_json_schema,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "SAMPLING_PARAMETERS",
    "APIError",
    "APIStatusError",
    "AccountUsage",
    "AsyncIG1Client",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExhaustedError",
    "IG1Client",
    "IG1ConnectionError",
    "IG1Error",
    "IG1TimeoutError",
    "IncompleteStreamError",
    "InputImage",
    "InputMessage",
    "InputText",
    "JsonSchemaFormat",
    "MalformedResponseError",
    "NotFoundError",
    "OutputContent",
    "OutputItem",
    "OutputTextPart",
    "RateLimitError",
    "RequestValidationError",
    "Response",
    "ResponseFailedError",
    "ResponsesRequest",
    "RetryPolicy",
    "ServerError",
    "StreamEvent",
    "StructuredOutputError",
    "TextConfig",
    "TokenUsage",
    "TruncatedResponseError",
    "build_request",
    "is_transient",
    "is_transient_code",
    "json_schema_text_config",
    "json_schema_violation",
    "parse_retry_after",
    "parse_structured",
    "shared_async_client",
    "shared_client",
    "status_error_class",
    "strict_json_schema",
]
