"""Prefect tasks: one IG1 Responses call each, cached by content and retried when transient;
plus the image and S3 steps the flows need."""

from .cache import (
    CACHE_KEY_PREFIX,
    ResponseCache,
    image_digest,
    is_cacheable,
    response_cache_key,
)
from .images import ImageRejected, PreparedImage, prepare_image
from .responses import (
    PreparedCall,
    acreate_response,
    asend_cached,
    create_response,
    prepare_call,
    resolve_model,
    retry_on_transient_failure,
    send_cached,
)

__all__ = [
    "CACHE_KEY_PREFIX",
    "ImageRejected",
    "PreparedCall",
    "PreparedImage",
    "ResponseCache",
    "acreate_response",
    "asend_cached",
    "create_response",
    "image_digest",
    "is_cacheable",
    "prepare_call",
    "prepare_image",
    "resolve_model",
    "response_cache_key",
    "retry_on_transient_failure",
    "send_cached",
]
