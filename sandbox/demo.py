"""End-to-end demo of the flagship job on embedded defaults: no key, no cloud.

Starts the IG1 emulator and moto's S3 server on 127.0.0.1, uploads generated
images (several formats and sizes, a 12 MP photo, a duplicate, broken files),
runs ``describe_s3_images`` in Prefect's ephemeral mode, prints the summary
and where the records are, then reruns it to show that nothing is paid twice.
Then the data-team batch: 20 support tickets in a CSV classified into a JSON schema,
the results table's first rows, and a rerun that makes no call.
``python -m prefect_ig1.sandbox.demo``
"""

from __future__ import annotations

import csv
import os
import posixpath
import re
import time
from pathlib import Path
from typing import Any

from .emulator import EmulatorServer
from .local_s3 import LocalS3
from .sample_images import broken_images, large_jpeg, sample_images

DEMO_KEY = "sk-demo-not-a-real-key"
BUCKET = "demo-photos"
_THUMBNAIL_SRC = re.compile(r'<img src="([^"]*_thumbs/[0-9a-f]{64}\.jpg)"')


def _prepare_environment(emulator: EmulatorServer, s3: LocalS3) -> None:
    home = Path(".demo/prefect").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "storage"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.update(s3.env())
    os.environ["IG1AI_API_KEY"] = DEMO_KEY
    os.environ["IG1AI_BASE_URL"] = emulator.base_url


def _upload(s3: LocalS3) -> int:
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    images = sample_images()
    uploads = [(f"incoming/{name}", data) for name, data in images]
    uploads.append(("incoming/2026/summer trip/IMG_0001.jpg", large_jpeg()[1]))
    uploads.append(("incoming/duplicates/copy of photo.jpg", images[1][1]))
    uploads += [(f"incoming/broken/{name}", data) for name, data in broken_images()]
    uploads.append(("incoming/README.txt", b"not an image: skipped, and counted"))
    for key, data in uploads:
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return len(uploads)


def download_gallery(client: Any, bucket: str, gallery_key: str, dest: Path) -> Path:
    """Copy a run's gallery pages and the thumbnails they show into ``dest``, in the bucket's
    layout (relative URLs keep working); returns the first page's path."""
    run_folder = gallery_key.rsplit("/", 1)[0] + "/"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=run_folder + "gallery")
    for key in sorted(obj["Key"] for obj in listed.get("Contents", [])):
        page = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(page)
        for src in set(_THUMBNAIL_SRC.findall(page.decode("utf-8"))):
            thumb_key = posixpath.normpath(posixpath.join(run_folder, src))
            thumb = dest / thumb_key
            if not thumb.exists():
                thumb.parent.mkdir(parents=True, exist_ok=True)
                thumb.write_bytes(client.get_object(Bucket=bucket, Key=thumb_key)["Body"].read())
    return (dest / gallery_key).resolve()


TICKET_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["label", "confidence"],
    "properties": {"label": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
                   "confidence": {"type": "number"}}}
_TICKETS = ["I was charged twice this month", "The export button crashes the app",
            "How do I change my e-mail address?", "Invoice #{n} shows the wrong VAT",
            "Login page is blank on Safari"]


def _run_batch_demo(emulator: EmulatorServer) -> None:
    """20 tickets in a CSV, classified into a schema; the rerun pays nothing."""
    import pyarrow.csv as pacsv

    from prefect_ig1.flows import run_batch

    folder = Path(".demo/batch").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "tickets.csv"
    with source.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["ticket_id", "text"])
        writer.writerows([f"T{n:03d}", _TICKETS[n % len(_TICKETS)].format(n=n) + f" (#{n})"]
                         for n in range(20))
    for attempt in ("batch, first run", "batch rerun, nothing changed"):
        before = emulator.stats.requests
        started = time.perf_counter()
        report = run_batch(str(source), prompt="Classify this support ticket: {text}",
                           response_format=TICKET_SCHEMA, id_column="ticket_id",
                           max_concurrency=8)
        print(f"\n== {attempt}: {report.headline()}")
        print(f"   {emulator.stats.requests - before} HTTP call(s) to IG1, "
              f"{time.perf_counter() - started:.1f} s")
    table = pacsv.read_csv(report.outputs["results.csv"])
    print(f"\nResults table {report.outputs['results.csv']} (first rows):")
    for row in table.select(["ticket_id", "ig1_status", "ig1_label", "ig1_confidence"]
                            ).slice(0, 5).to_pylist():
        print("  ", row)
    print(f"Batch output lines: {report.outputs['results.jsonl']}")


def main() -> int:
    with EmulatorServer(api_key=DEMO_KEY, latency=0.05) as emulator, LocalS3() as s3:
        _prepare_environment(emulator, s3)
        from prefect_ig1.flows import describe_s3_images
        from prefect_ig1.flows.progress import bar_on_terminal

        uploaded = _upload(s3)
        print(f"Uploaded {uploaded} objects to s3://{BUCKET}/incoming/ (moto at "
              f"{s3.endpoint_url}); IG1 emulator at {emulator.base_url}")
        reports = []
        for attempt in ("first run", "rerun, nothing new"):
            before = emulator.stats.requests
            started = time.perf_counter()
            with bar_on_terminal():  # the live progress bar when run from a terminal
                reports.append(describe_s3_images(BUCKET, prefix="incoming/"))
            print(f"\n== {attempt}: {reports[-1].headline()}")
            print(f"   {emulator.stats.requests - before} HTTP call(s) to IG1, "
                  f"{time.perf_counter() - started:.1f} s")
        first_summary = reports[0].outputs["summary.md"].removeprefix(f"s3://{BUCKET}/")
        body = s3.client().get_object(Bucket=BUCKET, Key=first_summary)["Body"].read()
        print(f"\nSummary of the first run (s3://{BUCKET}/{first_summary}):\n")
        print(body.decode())
        print(f"Records: s3://{BUCKET}/descriptions/<image key>.json, e.g. "
              f"s3://{BUCKET}/descriptions/incoming/photo.jpg.json")
        record = s3.client().get_object(Bucket=BUCKET, Key="descriptions/incoming/broken/"
                                        + broken_images()[0][0] + ".json")["Body"].read()
        print(f"An error record:\n{record.decode()}")
        gallery = reports[0].outputs["gallery.html"].removeprefix(f"s3://{BUCKET}/")
        page = download_gallery(s3.client(), BUCKET, gallery, Path(".demo/gallery"))
        print(f"\nGallery of the first run (s3://{BUCKET}/{gallery}), with its thumbnails:\n"
              f"  {page.as_uri()}")
        _run_batch_demo(emulator)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
