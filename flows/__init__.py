"""Prefect flows that chain IG1 tasks into jobs; first: describe new S3 images, then summarise."""

from prefect_ig1.tasks.s3 import BucketNotFound, S3AccessDenied, S3Error

from .describe_images import DEFAULT_PROMPT, ItemErrors, describe_s3_images
from .records import ImageRecord, ItemStatus, RecordError
from .reporting import RunReport
from .summary import DEFAULT_SUMMARY_PROMPT

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_SUMMARY_PROMPT",
    "BucketNotFound",
    "ImageRecord",
    "ItemErrors",
    "ItemStatus",
    "RecordError",
    "RunReport",
    "S3AccessDenied",
    "S3Error",
    "describe_s3_images",
]
