"""Issue 7, item 3: a bucket of hostile objects next to good images, in one run.

Every bad object gets an error record whose type says what it is and whose message
names the problem and the fix, with no IG1 call; every describable image is described
(and sent converted and downscaled); the emulator sees exactly one call per describable
image; a rerun fetches and sends nothing.
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, ImageChops, ImageStat

from prefect_ig1.flows import describe_s3_images
from prefect_ig1.flows.records import ImageRecord
from prefect_ig1.sandbox import sample_images as samples
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.helpers import (
    describe_calls,
    distinct_pngs,
    put,
    read_records,
    run_outputs,
    sent_image,
)

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

MAX_OBJECT_MB = 1.5
HUGE = ("huge_video.png", b"\x00" * (2 * 1024 * 1024))  # over MAX_OBJECT_MB, not an image

# Bad objects under bad/: (error type, words the message must contain: the problem and the fix).
REFUSED: dict[str, tuple[str, tuple[str, ...]]] = {
    "empty.jpg": ("empty", ("0 bytes", "re-upload")),
    "not_an_image.jpg": ("not_an_image", ("not an image", "check the object")),
    "truncated.jpg": ("corrupt", ("truncated or damaged", "re-export")),
    "bad_crc.png": ("corrupt", ("png", "damaged", "re-export")),
    "damaged.png": ("corrupt", ("truncated or damaged", "re-export")),
    "bomb_20000x20000.png": ("decompression_bomb", ("decompression bomb", "downscale")),
    # 100 MP is over Pillow's Image.MAX_IMAGE_PIXELS (~89.5 MP), the documented cap.
    "flat_10000x10000.png": ("decompression_bomb", ("decompression bomb", "downscale")),
    "drawing.svg": ("unsupported_format", ("svg", "convert it to jpeg or png")),
    "IMG_0001.HEIC": ("unsupported_format", ("heic", "convert it to jpeg or png")),
    "heic_named.jpg": ("unsupported_format", ("heic", "convert it to jpeg or png")),
    HUGE[0]: ("too_large", ("2,097,152 bytes", "max_object_mb")),
}
TRICKY_KEYS = ["with space.png", "été/图片.png", "a+b=c.png", "100%25 real%.png",
               "../dot-dot.png", "a..b.png", "./dot/./x.png", "~tilde&amp;.png"]


def corpus() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(bad objects, describable images), keyed relative to the bucket root."""
    bad = [*samples.hostile_images(), ("heic_named.jpg", samples.heic_image()[1]), HUGE]
    good = [
        *samples.sample_images(),  # PNG, JPEG, RGBA, animated GIF, WebP, CMYK, EXIF, 16-bit, P
        samples.flat_image(10_000, 8_000),  # 80 MP: under Pillow's cap, sent downscaled
        ("png_named.jpg", distinct_pngs(1, seed=9100)[0][1]),
        *[(key, data) for key, (_, data) in
          zip(TRICKY_KEYS, distinct_pngs(len(TRICKY_KEYS), seed=9200), strict=True)],
    ]
    return ([(f"bad/{name}", data) for name, data in bad],
            [(f"ok/{name}", data) for name, data in good])


def test_every_bad_object_gets_a_clear_error_record_and_the_run_goes_on(
        env: EmulatorServer, local_s3: LocalS3, bucket: str, prompt: str) -> None:
    bad, good = corpus()
    assert {key.removeprefix("bad/") for key, _ in bad} == set(REFUSED)
    put(local_s3, bucket, bad + good, prefix="")

    report = describe_s3_images(bucket, prompt=prompt, max_object_mb=MAX_OBJECT_MB,
                                max_concurrency=4)

    # One call per describable image, none for a bad object, no refusal by the API.
    assert describe_calls(env) == len(good)
    assert env.stats.requests == len(good) + report.summary_calls
    assert set(env.stats.by_status) == {200}
    assert report.listed == len(bad) + len(good) and report.skipped == {}
    assert report.counts == {"described": len(good), "failed": len(bad)}

    found = read_records(local_s3, bucket)
    assert set(found) == {key for key, _ in bad + good}  # exactly one record per object
    for key, _ in bad:
        error_type, words = REFUSED[key.removeprefix("bad/")]
        doc = found[key]
        assert doc.text is None and doc.error.type == error_type, (key, doc.error)
        message = doc.error.message.lower()
        assert all(word in message for word in words), (key, message)
        assert doc.error.retryable is False  # the object must change first
    for key, _ in good:
        doc = found[key]
        assert doc.error is None and doc.text.startswith("Echo: "), (key, doc)
        assert max(doc.sent_width, doc.sent_height) <= 1024

    folder = report.outputs["run.json"].split("/")[-2]
    manifest = [json.loads(line) for line in
                run_outputs(local_s3, bucket, folder)["manifest.jsonl"].splitlines()]
    assert sorted(item["key"] for item in manifest) == sorted(found)

    _sent_as_converted(env, found)

    # A rerun fetches nothing again and sends nothing: bad objects stay failed until they change.
    before = env.stats.requests
    again = describe_s3_images(bucket, prompt=prompt, max_object_mb=MAX_OBJECT_MB)
    assert again.counts == {"unchanged": len(bad) + len(good)}
    assert env.stats.requests == before


def _sent_as_converted(emulator: EmulatorServer, found: dict[str, ImageRecord]) -> None:
    """What reached the API: the first frame of a GIF, RGB from CMYK and 16-bit, downscaled."""
    gif = samples.animated_gif()[1]
    frames = []
    with Image.open(io.BytesIO(gif)) as animation:
        for index in range(2):
            animation.seek(index)
            frames.append(animation.convert("RGB"))
    sent = sent_image(emulator, found["ok/animated.gif"]).convert("RGB")
    assert sent.size == frames[0].size

    def blurred(image: Image.Image) -> Image.Image:  # averages out the GIF's dithering
        return image.resize((12, 9), Image.Resampling.BOX)

    distance = [sum(ImageStat.Stat(ImageChops.difference(blurred(sent), blurred(frame))).mean)
                for frame in frames]
    assert distance[0] < 10 < distance[1], distance  # the first frame, not the second

    cmyk = sent_image(emulator, found["ok/cmyk.jpg"])
    assert (cmyk.format, cmyk.mode) == ("JPEG", "RGB")

    gray = sent_image(emulator, found["ok/gray16.png"])
    assert (gray.format, gray.mode) == ("JPEG", "RGB")
    low, high = gray.convert("L").getextrema()  # type: ignore[misc]
    assert high - low > 200  # the 16-bit gradient survives (a naive conversion clips to white)

    big = found["ok/flat_10000x8000.jpg"]
    assert (big.sent_width, big.sent_height) == (1024, 819)
    assert sent_image(emulator, big).size == (1024, 819)
