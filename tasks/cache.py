"""Content-addressed cache of IG1 responses: one key function, one store, two granularities.

The ``create_response`` task uses the key through its ``CachePolicy`` and the
store through Prefect's transaction; batch code (the flagship flow's windows)
calls ``response_cache_key`` and ``ResponseCache`` directly. Both read and
write the same records in the same result storage, so a response paid for by
either path is a hit for the other.

The key covers what determines the answer: base URL, model, every sampling
parameter, instructions, format and the input, with each inline image
replaced by the SHA-256 of its bytes (the same picture under another name is
a hit). Never the API key, never a client object.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from prefect.context import TaskRunContext
from prefect.results import ResultStore, get_result_store
from prefect.tasks import Task
from pydantic import BaseModel

from ig1 import Response, ResponsesRequest

__all__ = ["CACHE_KEY_PREFIX", "ResponseCache", "image_digest", "response_cache_key"]

CACHE_KEY_PREFIX = "ig1-response-v1-"
logger = logging.getLogger("tasks.cache")


def image_digest(image_url: str) -> str:
    """``sha256:<hex>`` of an inline image's bytes; a remote URL stands for itself."""
    if not image_url.startswith("data:"):
        return image_url
    _, _, encoded = image_url.partition(",")
    try:
        data = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        data = encoded.encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _with_image_digests(value: Any) -> Any:
    if isinstance(value, list):
        return [_with_image_digests(item) for item in value]
    if isinstance(value, dict):
        if value.get("type") == "input_image" and isinstance(value.get("image_url"), str):
            return {**value, "image_url": image_digest(value["image_url"])}
        return {key: _with_image_digests(item) for key, item in value.items()}
    return value


def response_cache_key(
    request: ResponsesRequest,
    *,
    base_url: str,
    text_format: type[BaseModel] | None = None,
) -> str:
    """The cache key of one Responses call (stable across processes and machines)."""
    body = request.payload()
    body.pop("stream", None)  # streamed or not, the answer is the same
    material = {
        "base_url": base_url.rstrip("/"),
        "request": _with_image_digests(body),
        # `.parsed` is an instance of this class: another class is another result.
        "parsed_as": f"{text_format.__module__}.{text_format.__qualname__}"
        if text_format else None,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CACHE_KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    """Read and write cached responses in a Prefect result store, without a task run per call."""

    def __init__(self, store: ResultStore, *, expiration: timedelta | None = None) -> None:
        self.store = store
        self.expiration = expiration

    @classmethod
    def for_task(cls, task: Task[Any, Any]) -> ResponseCache:
        """The store ``task`` itself would use here, honouring its storage and expiration."""
        context = TaskRunContext.get()
        if context is not None and context.task is task:
            store = context.result_store
        else:
            store = cast(ResultStore, get_result_store().update_for_task(
                task, _sync=True))  # type: ignore[call-arg]
        return cls(store, expiration=task.cache_expiration)

    def get(self, key: str) -> Response | None:
        """The cached response, or None when absent, expired or unreadable (one read)."""
        try:
            record = self.store.read(key)
        except Exception as exc:  # absent (each storage says so its own way) or corrupt
            logger.debug("IG1 cache miss for %s (%s)", key, type(exc).__name__)
            return None
        expiration = record.metadata.expiration
        if expiration is not None and expiration <= datetime.now(timezone.utc):
            return None
        value = record.result
        return value if isinstance(value, Response) else None

    def put(self, key: str, response: Response) -> None:
        """Store ``response`` under ``key`` (with the configured expiration)."""
        expiration = (datetime.now(timezone.utc) + self.expiration) if self.expiration else None
        self.store.write(response, key=key, expiration=cast(Any, expiration))
