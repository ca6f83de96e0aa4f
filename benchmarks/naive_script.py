"""The baseline: the script a data engineer writes instead of the flow, without Prefect.

boto3 lists the bucket, a ThreadPoolExecutor with one worker per allowed call
fetches each image, sends it as it is (base64 data URL) in one httpx call, and
writes one JSON per image (with the reply's usage). No cache, no retries, no resizing,
no summary: the fastest honest thing, and the yardstick the flow's wall time is
divided by.

    python -m benchmarks.naive_script BUCKET PREFIX OUTPUT_PREFIX --workers 16
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import httpx

PROMPT = "Describe this image for a searchable catalogue."
MODEL = "qwen35-397b-a17b-instruct-general"


def describe_bucket(bucket: str, prefix: str, output_prefix: str, *, workers: int,
                    prompt: str = PROMPT) -> int:
    """Describe every image under ``prefix``; returns how many were described."""
    s3 = boto3.client("s3")
    keys = [item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])]
    base_url = os.environ["IG1AI_BASE_URL"].rstrip("/")
    headers = {"Authorization": f"Bearer {os.environ['IG1AI_API_KEY']}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120,
                      limits=httpx.Limits(max_connections=workers)) as ig1:

        def describe(key: str) -> None:
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            mime = mimetypes.guess_type(key)[0] or "image/jpeg"
            url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
            body: dict[str, Any] = {"model": MODEL, "input": [{"role": "user", "content": [
                {"type": "input_text", "text": prompt},
                {"type": "input_image", "image_url": url}]}]}
            reply = ig1.post("/responses", json=body)
            reply.raise_for_status()
            answer = reply.json()
            message = answer["output"][0]["content"]  # a list, or one object for images
            parts = message if isinstance(message, list) else [message]
            text = "".join(part.get("text", "") for part in parts)
            record = {"key": key, "description": text, "usage": answer.get("usage")}
            s3.put_object(Bucket=bucket, Key=f"{output_prefix}{key}.json",
                          Body=json.dumps(record).encode())

        with ThreadPoolExecutor(workers) as pool:
            return len(list(pool.map(describe, keys)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bucket")
    parser.add_argument("prefix")
    parser.add_argument("output_prefix")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    count = describe_bucket(args.bucket, args.prefix, args.output_prefix, workers=args.workers)
    print(f"described {count} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
