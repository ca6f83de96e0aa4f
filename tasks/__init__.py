"""Prefect tasks: one IG1 Responses call each (cached by content, retried when transient),
the call engine for many calls at once, and image preparation.

Internals stay in their modules (the cache store and key: ``prefect_ig1.tasks.cache``);
S3 I/O and the key layout belong to the flows (``prefect_ig1.flows.storage``).
"""

from .engine import CallEngine, CallResult, NotAttempted, respond_many
from .images import ImageRejected, PreparedImage, prepare_image
from .responses import (
    PreparedCall,
    acreate_response,
    create_response,
    prepare_call,
    resolve_credentials,
    resolve_model,
    retry_on_transient_failure,
)

__all__ = [
    "CallEngine",
    "CallResult",
    "ImageRejected",
    "NotAttempted",
    "PreparedCall",
    "PreparedImage",
    "acreate_response",
    "create_response",
    "prepare_call",
    "prepare_image",
    "resolve_credentials",
    "resolve_model",
    "respond_many",
    "retry_on_transient_failure",
]
