"""Prefect flows that chain IG1 tasks into jobs: describe new S3 images, then summarise; run
one prompt over every row of a table or every line of a Batch request file."""

from prefect_ig1.flows.storage import BucketNotFound, S3AccessDenied, S3Error

from .batch import run_batch
from .batch_report import BatchReport
from .describe_images import DEFAULT_PROMPT, ItemErrors, describe_s3_images
from .records import ImageRecord, ItemStatus, RecordError
from .reporting import RunReport
from .summary import DEFAULT_SUMMARY_PROMPT

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_SUMMARY_PROMPT",
    "BatchReport",
    "BucketNotFound",
    "ImageRecord",
    "ItemErrors",
    "ItemStatus",
    "RecordError",
    "RunReport",
    "S3AccessDenied",
    "S3Error",
    "describe_s3_images",
    "run_batch",
]
