"""Sample images are valid, distinct, deterministic and cover the awkward cases."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import pytest
from PIL import Image

from prefect_ig1.sandbox import sample_images as samples


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_good_samples_decode_and_are_distinct() -> None:
    good = samples.sample_images()
    assert len(good) == 9
    assert len({name for name, _ in good}) == len(good)
    assert len({hashlib.sha256(data).hexdigest() for _, data in good}) == len(good)
    for _, data in good:
        open_image(data)


def test_samples_are_deterministic() -> None:
    samples.photo_jpeg.cache_clear()
    first = samples.photo_jpeg()
    samples.photo_jpeg.cache_clear()
    assert samples.photo_jpeg() == first


@pytest.mark.parametrize(
    ("factory", "fmt", "mode", "size"),
    [
        (samples.small_png, "PNG", "RGB", (64, 48)),
        (samples.photo_jpeg, "JPEG", "RGB", (1600, 1200)),
        (samples.alpha_png, "PNG", "RGBA", (200, 150)),
        (samples.webp_image, "WEBP", "RGB", (320, 240)),
        (samples.cmyk_jpeg, "JPEG", "CMYK", (300, 200)),
        (samples.exif_rotated_jpeg, "JPEG", "RGB", (300, 200)),
        (samples.palette_png, "PNG", "P", (160, 120)),
    ],
)
def test_each_sample_is_what_it_says(
    factory: Callable[[], tuple[str, bytes]], fmt: str, mode: str, size: tuple[int, int]
) -> None:
    _, data = factory()
    image = open_image(data)
    assert (image.format, image.mode, image.size) == (fmt, mode, size)


def test_special_cases() -> None:
    gif = open_image(samples.animated_gif()[1])
    assert gif.format == "GIF" and getattr(gif, "n_frames", 1) == 2
    assert open_image(samples.exif_rotated_jpeg()[1]).getexif()[0x0112] == 6
    assert open_image(samples.gray16_png()[1]).mode.startswith("I;16")
    name, data = samples.large_jpeg(400, 300)
    assert name == "large_400x300.jpg" and open_image(data).size == (400, 300)


def test_broken_samples_do_not_decode() -> None:
    broken = dict(samples.broken_images())
    assert broken["empty.jpg"] == b""
    assert set(broken) == {"truncated.jpg", "not_an_image.jpg", "empty.jpg"}
    for data in broken.values():
        with pytest.raises(Exception):
            open_image(data)


def test_hostile_samples_are_what_they_say() -> None:
    bomb = samples.bomb_png()[1]
    assert len(bomb) < 60_000 and bomb[16:24] == (20_000).to_bytes(4, "big") * 2
    name, flat = samples.flat_image(10_000, 10_000, "PNG")
    assert name == "flat_10000x10000.png" and len(flat) < 50_000
    good, bad = samples.small_png()[1], samples.bad_crc_png()[1]
    assert len(good) == len(bad) and sum(a != b for a, b in zip(good, bad, strict=True)) == 1
    assert samples.heic_image()[1][4:12] == b"ftypheic"
    assert samples.svg_image()[1].startswith(b"<?xml") and len(samples.hostile_images()) == 9
