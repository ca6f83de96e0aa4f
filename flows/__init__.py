"""Prefect flows that chain IG1 tasks into jobs; first: describe new S3 images, then summarise."""

from .describe_images import DEFAULT_PROMPT, describe_s3_images
from .records import ImageRecord, ItemStatus, RecordError
from .reporting import RunReport
from .summary import DEFAULT_SUMMARY_PROMPT

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_SUMMARY_PROMPT",
    "ImageRecord",
    "ItemStatus",
    "RecordError",
    "RunReport",
    "describe_s3_images",
]
