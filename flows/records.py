"""The per-image record: what was described, from which bytes, by what, at what cost.

Records at ``{output_prefix}{key}.json`` ARE the job's state: an image is new
when its record is missing, its ETag changed, or its last attempt failed in a
way a later run can fix (a transient error, an exhausted budget).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from ig1 import AuthenticationError, BudgetExhaustedError, Response, is_transient

__all__ = [
    "ImageRecord",
    "ItemStatus",
    "RecordError",
    "is_run_stopping",
    "needs_description",
    "utc_now",
]


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
    request_id: str | None = None
    retryable: bool = Field(default=False, description="A later run tries this image again.")

    @classmethod
    def from_exception(cls, exc: BaseException) -> RecordError:
        # Transient faults, a spent budget or refused credentials are not the image's
        # fault: a later run tries again. A corrupt image or a 400 stays failed until
        # the object changes (its ETag).
        return cls(type=type(exc).__name__, message=str(getattr(exc, "message", exc))[:1000],
                   request_id=getattr(exc, "request_id", None),
                   retryable=is_transient(exc) or is_run_stopping(exc))


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

    @classmethod
    def described(cls, *, response: Response, cached: bool, **fields: Any) -> ImageRecord:
        usage = response.usage.model_dump(include={"input_tokens", "output_tokens",
                                                   "total_tokens"}) if response.usage else None
        return cls(text=response.output_text, usage=usage, cached=cached,
                   request_id=response.request_id, status=response.status, **fields)

    @classmethod
    def failed(cls, *, error: RecordError, **fields: Any) -> ImageRecord:
        return cls(error=error, **fields)


def needs_description(existing: dict[str, Any] | None, etag: str) -> bool:
    """True when there is no current record for this ETag, or its failure may not recur."""
    if not existing or existing.get("source_etag") != etag:
        return True
    error = existing.get("error")
    return bool(error and error.get("retryable"))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_run_stopping(exc: BaseException) -> bool:
    """401/403 and 402 stop the whole run: every further call would fail the same way."""
    return isinstance(exc, AuthenticationError | BudgetExhaustedError)
