"""The per-image record: what was described, from which bytes, by what, at what cost.

Records at ``{output_prefix}{key}.json`` ARE the job's state: an image is new
when its record is missing or unreadable, its ETag changed, or its last attempt
failed in a way a later run can fix. Only the image's or the request's own fault
(refused by preparation, too large, a 400/404/413/422 from IG1, an incomplete
answer) is lasting, and only while the run's settings stay the same: anything
else (an outage, a spent budget, a full disk, a bug) is tried again.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from prefect_aws import AwsCredentials
from pydantic import BaseModel, ConfigDict, Field

from prefect_ig1.blocks import IG1Credentials, ResponsesModel
from prefect_ig1.client import APIStatusError, Response, ResponseFailedError
from prefect_ig1.tasks.engine import is_run_stopping
from prefect_ig1.tasks.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_IMAGE_SIDE,
    DEFAULT_MAX_OBJECT_BYTES,
)

__all__ = [
    "DEFAULT_OUTPUT_PREFIX",
    "Candidate",
    "DescribeSettings",
    "ImageRecord",
    "ItemResult",
    "ItemStatus",
    "RecordError",
    "is_item_fault",
    "is_run_stopping",
    "utc_now",
]

DEFAULT_OUTPUT_PREFIX = "descriptions/"
"""Where records and run outputs go, beside the images (skipped when listing)."""
_ITEM_FAULT_STATUSES = frozenset({400, 404, 413, 422})


class ItemStatus(str, Enum):
    """What happened to one listed image in one run."""

    described = "described"          # answered by IG1 now
    cached = "cached"                # answered from the response cache: no API call
    unchanged = "unchanged"          # its record is current: nothing to do
    failed = "failed"                # an error record was written
    not_attempted = "not_attempted"  # the run stopped (401/403/402) before reaching it


class RecordError(BaseModel):
    """Why an image has no description."""

    type: str
    message: str
    code: str | int | None = Field(default=None, description="The server's error code, if any.")
    request_id: str | None = None
    retryable: bool = Field(default=False, description="A later run tries this image again.")

    @classmethod
    def from_exception(cls, exc: BaseException) -> RecordError:
        # Unknown errors are not the image's fault: a later run tries again (giving an
        # image up for good takes proof that the image or the request is to blame).
        message = str(getattr(exc, "message", exc)) or type(exc).__name__
        code = getattr(exc, "code", None)
        return cls(type=type(exc).__name__, message=message[:1000],
                   code=code if isinstance(code, str | int) else None,
                   request_id=getattr(exc, "request_id", None),
                   retryable=not is_item_fault(exc))


class ImageRecord(BaseModel):
    """One JSON record per image (``{output_prefix}{source_key}.json``)."""

    source_key: str
    source_etag: str
    sha256: str | None = Field(default=None, description="SHA-256 of the original bytes.")
    model: str
    text: str | None = None
    error: RecordError | None = None
    usage: dict[str, Any] | None = None
    cached: bool = False
    described_at: str = Field(default_factory=lambda: utc_now())
    request_id: str | None = None
    status: str | None = Field(default=None, description="IG1's status, e.g. 'incomplete'.")
    sent_width: int | None = None
    sent_height: int | None = None
    sent_bytes: int | None = None
    source_bytes: int | None = None
    flow_run: str | None = None
    settings: str | None = Field(
        default=None, description="Digest of the run settings a lasting failure holds for.")

    @classmethod
    def described(cls, *, response: Response, cached: bool, **fields: Any) -> ImageRecord:
        return cls(text=response.output_text, usage=_usage(response), cached=cached,
                   request_id=response.request_id, status=response.status, **fields)

    @classmethod
    def failed(cls, *, error: RecordError, response: Response | None = None,
               **fields: Any) -> ImageRecord:
        """An error record; an answer that was not a description keeps its status and usage."""
        if response is not None:
            fields.update(status=response.status, request_id=response.request_id,
                          usage=_usage(response))
        return cls(error=error, **fields)


def _usage(response: Response) -> dict[str, Any] | None:
    if response.usage is None:
        return None
    return response.usage.model_dump(include={"input_tokens", "output_tokens", "total_tokens"})


def is_item_fault(exc: BaseException) -> bool:
    """The request itself was refused (400/404/413/422, or a failed response whose code is
    not transient, e.g. ``invalid_image``): sending it again cannot help."""
    if isinstance(exc, ResponseFailedError):
        return not exc.retryable
    return isinstance(exc, APIStatusError) and exc.status in _ITEM_FAULT_STATUSES


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")




class Candidate(BaseModel):
    """A listed image that may need describing (no bytes: keys only cross task boundaries)."""

    key: str
    etag: str
    size: int
    record_etag: str | None = None
    """The ETag of its record as listed, if it has one."""


class ItemResult(BaseModel):
    """One line of the run's manifest."""

    key: str
    status: ItemStatus
    text: str | None = None
    error: RecordError | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    sent_bytes: int | None = None
    etag: str | None = None
    """The source's ETag, and the ETag of the record read or written for it (the index's)."""
    record_etag: str | None = None
    sha256: str | None = None
    """SHA-256 of the source bytes: names its gallery thumbnail."""
    thumbnail: bool | None = None
    """True when ``{output_prefix}_thumbs/<sha256>.jpg`` exists (written now or before)."""


class DescribeSettings(BaseModel):
    """Everything a window needs, resolved once per run."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    run_name: str  # shown in records and run outputs
    bucket: str
    output_prefix: str
    prompt: str
    profile: ResponsesModel
    credentials: IG1Credentials
    aws_credentials: AwsCredentials | None = None
    params: dict[str, Any] = {}
    detail: Literal["auto", "low", "high"] = "auto"
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    @property
    def digest(self) -> str:
        """What a lasting failure depends on besides the image: another value, another try."""
        material = {"base_url": self.credentials.base_url, "model": self.profile.model,
                    "prompt": self.prompt, "params": self.params, "detail": self.detail,
                    "max_image_side": self.max_image_side,
                    "max_object_bytes": self.max_object_bytes,
                    "max_image_pixels": self.max_image_pixels}
        canonical = json.dumps(material, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
