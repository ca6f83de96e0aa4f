"""Content-addressed cache of IG1 responses: one key function, one JSON store.

``create_response`` and batch code (the flagship flow's windows) both call
``response_cache_key`` and ``ResponseCache``, so a response paid for by either
path is a hit for the other, across processes sharing the result storage.

The key covers what determines the answer: base URL, model, every sampling
parameter, instructions, format and the input, with each inline image
replaced by the SHA-256 of its bytes (the same picture under another name is
a hit). Never the API key, never a client object.

Entries are JSON written straight to the result storage block (local folder or
S3 bucket), never through Prefect's ``ResultStore.read``, which unpickles
whatever a stored record names: the keys are predictable and the storage may be
shared, so anything under a key that is not our JSON is a miss, never loaded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, cast

from prefect import get_run_logger
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.filesystems import LocalFileSystem, WritableFileSystem
from prefect.results import ResultStore, get_default_result_storage, get_result_store
from prefect.tasks import Task
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from prefect_ig1.client import (
    JsonSchemaFormat,
    Response,
    ResponsesRequest,
    StructuredOutputError,
    json_schema_violation,
    parse_structured,
)

__all__ = [
    "CACHE_KEY_PREFIX",
    "ResponseCache",
    "answer_schema",
    "image_digest",
    "is_cacheable",
    "response_cache_key",
]

# v2: JSON entries. v1 keys held pickled Prefect result records and are never read.
CACHE_KEY_PREFIX = "ig1-response-v2-"
logger = logging.getLogger("prefect_ig1.tasks.cache")


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


def answer_schema(request: ResponsesRequest) -> dict[str, Any] | None:
    """The JSON Schema the request asks the answer to follow, if any."""
    fmt = request.text.format if request.text is not None else None
    return fmt.schema_ if isinstance(fmt, JsonSchemaFormat) else None


def is_cacheable(response: Response, *, schema: dict[str, Any] | None = None) -> bool:
    """Only a whole answer is worth keeping: ``completed``, with text or a parsed value, and
    valid for ``schema`` when one was asked for (an invalid answer is paid for, but a rerun
    must ask again rather than be served the same invalid answer)."""
    if response.status != "completed":
        return False
    if response.parsed is not None:
        return True
    if not response.output_text.strip():
        return False
    return schema is None or json_schema_violation(response.output_text, schema) is None


class _CacheEntry(BaseModel):
    """What one cache key holds: a response and when it stops counting (stored as JSON)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ig1-response"] = "ig1-response"
    expires_at: AwareDatetime | None = None
    response: Response


_OWN_KEY = re.compile(re.escape(CACHE_KEY_PREFIX) + "[0-9a-f]{64}")
MAX_ENTRY_BYTES = 16 * 1024 * 1024
"""Largest cache entry read from a local folder; anything bigger is not one of ours."""


class ResponseCache:
    """Cached responses as JSON files in a result storage block, without a task run per call.

    Reads never deserialize anything but this JSON: a pickled record, a Prefect
    result record or garbage under a key is a miss, warned about once per key.
    """

    def __init__(self, storage: WritableFileSystem, *,
                 expiration: timedelta | None = None) -> None:
        self.storage = storage
        self.expiration = expiration
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        # A local folder is read directly: ``LocalFileSystem.read_path`` resolves its base
        # path and the key with ``realpath`` on every call, most of a warm rerun's CPU.
        self._folder = (Path(storage.basepath or ".").expanduser().resolve()
                        if type(storage) is LocalFileSystem else None)

    @classmethod
    def for_task(cls, task: Task[Any, Any]) -> ResponseCache:
        """The storage ``task`` would use here (its own, its flow's or the default),
        with its expiration."""
        context = TaskRunContext.get()
        if context is not None and context.task is task:
            store = context.result_store
        else:
            store = cast(ResultStore, get_result_store().update_for_task(
                task, _sync=True))  # type: ignore[call-arg]
        storage = store.result_storage or cast(
            WritableFileSystem, get_default_result_storage(_sync=True))  # type: ignore[call-arg]
        return cls(storage, expiration=task.cache_expiration)

    @property
    def is_local(self) -> bool:
        """Whether entries are files on this machine (a lookup costs microseconds)."""
        return self._folder is not None

    def get(self, key: str, *, text_format: type[BaseModel] | None = None) -> Response | None:
        """The cached response, or None when absent, expired or not ours (one read).

        With ``text_format``, ``parsed`` is rebuilt from the cached text (instances are
        never stored)."""
        try:
            content = self._read(key)
        except Exception as exc:  # absent: each storage says so its own way
            logger.debug("IG1 cache miss for %s (%s)", key, type(exc).__name__)
            return None
        if not content:  # a local file being written right now
            return None
        if len(content) > MAX_ENTRY_BYTES:
            self._warn_once(key, "IG1 cache entry %s is over %d bytes, larger than any answer: "
                            "ignored as a miss, not read", key, MAX_ENTRY_BYTES)
            return None
        try:
            entry = _CacheEntry.model_validate_json(content)
        except ValidationError:
            self._warn_once(key, "IG1 cache entry %s is not a JSON response entry (pickled, "
                            "foreign or corrupt): ignored as a miss, never deserialized", key)
            return None
        if entry.expires_at is not None and entry.expires_at <= datetime.now(timezone.utc):
            return None
        if text_format is None:
            return entry.response
        try:
            parsed = parse_structured(entry.response, text_format)
        except StructuredOutputError:
            self._warn_once(key, "IG1 cache entry %s does not parse as %s: ignored as a miss",
                            key, text_format.__qualname__)
            return None
        return entry.response.model_copy(update={"parsed": parsed})

    def _read(self, key: str) -> bytes:
        """The bytes under ``key``; from a local folder at most ``MAX_ENTRY_BYTES`` + 1."""
        if self._folder is not None and _OWN_KEY.fullmatch(key):
            # Not through a planted symlink, nor blocked on a FIFO: a regular file or a miss.
            fd = os.open(self._folder / key, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as file:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode):
                    raise FileNotFoundError(key)
                # Sized by the file (a read of the cap itself would allocate 16 MB each time).
                return file.read(min(status.st_size, MAX_ENTRY_BYTES) + 1)
        read = cast(Callable[..., bytes], self.storage.read_path)
        return read(key, _sync=True)  # sync whatever the caller's context

    def put(self, key: str, response: Response, *,
            schema: dict[str, Any] | None = None) -> bool:
        """Store ``response`` under ``key`` if it is worth keeping (``is_cacheable``)."""
        if not is_cacheable(response, schema=schema):
            logger.debug("IG1 answer %s not cached (status %s, %d characters)",
                         key, response.status, len(response.output_text))
            return False
        expires_at = (datetime.now(timezone.utc) + self.expiration
                      if self.expiration is not None else None)
        entry = _CacheEntry(expires_at=expires_at, response=response)
        content = entry.model_dump_json(exclude={"response": {"parsed"}}).encode()
        write = cast(Callable[..., Any], self.storage.write_path)
        write(key, content, _sync=True)
        return True

    async def aget(self, key: str, *,
                   text_format: type[BaseModel] | None = None) -> Response | None:
        """``get`` off the event loop (storage reads block)."""
        return await asyncio.to_thread(self.get, key, text_format=text_format)

    async def aput(self, key: str, response: Response) -> bool:
        """``put`` off the event loop."""
        return await asyncio.to_thread(self.put, key, response)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        try:
            get_run_logger().warning(message, *args)
        except MissingContextError:  # batch code's own threads
            logger.warning(message, *args)
