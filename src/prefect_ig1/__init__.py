"""Prefect blocks, tasks and flows for IG1 AI's Responses API, under one import name.

    from prefect_ig1 import IG1Credentials, ResponsesModel, create_response, describe_s3_images

Subpackages: ``prefect_ig1.blocks`` (credentials, model profiles; registered with
``prefect block register -m prefect_ig1.blocks``), ``prefect_ig1.tasks`` (one call per
task, the response cache, image preparation), ``prefect_ig1.flows`` (the jobs),
``prefect_ig1.deployments`` (``prefect.yaml``, serve, the S3-events bridge) and
``prefect_ig1.client`` (the typed HTTP client). ``prefect_ig1.sandbox`` (emulator, local
S3, demo) needs the ``sandbox`` extra.

Names below are imported on first use, so ``import prefect_ig1.blocks`` (which every
Prefect process does through the ``prefect.collections`` entry point) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_ig1.blocks import IG1Credentials, ResponsesModel
    from prefect_ig1.client import (
        APIError,
        APIStatusError,
        AuthenticationError,
        BadRequestError,
        BudgetExhaustedError,
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
        RequestValidationError,
        Response,
        ResponseFailedError,
        ServerError,
        StructuredOutputError,
        TokenUsage,
        TruncatedResponseError,
    )
    from prefect_ig1.flows import (
        BucketNotFound,
        ImageRecord,
        ItemErrors,
        RunReport,
        S3AccessDenied,
        describe_s3_images,
    )
    from prefect_ig1.tasks import (
        CallEngine,
        CallResult,
        NotAttempted,
        acreate_response,
        create_response,
        prepare_image,
        respond_many,
    )

__version__ = "0.1.0"

_WHERE = {
    "IG1Credentials": "blocks",
    "ResponsesModel": "blocks",
    **dict.fromkeys(["CallEngine", "CallResult", "NotAttempted", "acreate_response",
                     "create_response", "prepare_image", "respond_many"], "tasks"),
    **dict.fromkeys(["BucketNotFound", "ImageRecord", "ItemErrors", "RunReport",
                     "S3AccessDenied", "describe_s3_images"], "flows"),
    **dict.fromkeys([
        "APIError", "APIStatusError", "AuthenticationError", "BadRequestError",
        "BudgetExhaustedError", "IG1ConnectionError", "IG1Error", "IG1TimeoutError",
        "IncompleteStreamError", "InputImage", "InputMessage", "InputText",
        "MalformedResponseError", "NotFoundError", "RateLimitError", "RequestValidationError",
        "Response", "ResponseFailedError", "ServerError", "StructuredOutputError",
        "TokenUsage", "TruncatedResponseError",
    ], "client"),
}

__all__ = [
    "APIError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "BucketNotFound",
    "BudgetExhaustedError",
    "CallEngine",
    "CallResult",
    "IG1ConnectionError",
    "IG1Credentials",
    "IG1Error",
    "IG1TimeoutError",
    "ImageRecord",
    "IncompleteStreamError",
    "InputImage",
    "InputMessage",
    "InputText",
    "ItemErrors",
    "MalformedResponseError",
    "NotAttempted",
    "NotFoundError",
    "RateLimitError",
    "RequestValidationError",
    "Response",
    "ResponseFailedError",
    "ResponsesModel",
    "RunReport",
    "S3AccessDenied",
    "ServerError",
    "StructuredOutputError",
    "TokenUsage",
    "TruncatedResponseError",
    "__version__",
    "acreate_response",
    "create_response",
    "describe_s3_images",
    "prepare_image",
    "respond_many",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'prefect_ig1' has no attribute {name!r}")
    return getattr(importlib.import_module(f"prefect_ig1.{_WHERE[name]}"), name)
