"""Images for the benchmarks, unique per key so no two share a cache entry."""

from __future__ import annotations

import functools
import io
import random

from PIL import Image, ImageDraw

from prefect_ig1.sandbox.sample_images import _scene

__all__ = ["MIX_KINDS", "hd_jpeg", "hd_png", "large_png", "mixed_image", "photo",
           "small_image"]


def small_image(key: str) -> bytes:
    """A 64x48 PNG of noise seeded by ``key``: distinct even after re-encoding."""
    buffer = io.BytesIO()
    Image.frombytes("L", (64, 48), random.Random(key).randbytes(64 * 48)).save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache
def _base_scene(width: int, height: int) -> Image.Image:
    return _scene(width, height, seed=42)


@functools.cache
def _grain(width: int, height: int) -> Image.Image:
    return Image.merge("RGB", [Image.effect_noise((width, height), 40) for _ in range(3)])


def _marked(key: str, width: int, height: int) -> Image.Image:
    """The shared scene with sensor-like grain (so it compresses like a photo, not like a
    gradient) and a mark of its own, so each picture's bytes and pixels differ."""
    image = Image.blend(_base_scene(width, height), _grain(width, height), 0.2)
    rng = random.Random(key)
    x, y = rng.randrange(width - 200), rng.randrange(height - 200)
    ImageDraw.Draw(image).rectangle((x, y, x + 199, y + 199), fill=(
        rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return image


def photo(key: str, width: int = 4000, height: int = 3000) -> bytes:
    """A 12 MP (4000x3000) JPEG by default, at quality 90, as a phone camera would write it."""
    buffer = io.BytesIO()
    _marked(key, width, height).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def large_png(key: str) -> bytes:
    """A 3000x2000 RGB PNG, like an exported screenshot or scan."""
    buffer = io.BytesIO()
    _marked(key, 3000, 2000).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def hd_jpeg(key: str) -> bytes:
    """A 1080p (1920x1080) JPEG at quality 90: a video frame or a downsized photo."""
    buffer = io.BytesIO()
    _marked(key, 1920, 1080).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def hd_png(key: str) -> bytes:
    """A 720p (1280x720) RGB PNG: a screen capture or an exported frame."""
    buffer = io.BytesIO()
    _marked(key, 1280, 720).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


MIX_KINDS = {"12mp.jpg": photo, "1080p.jpg": hd_jpeg, "720p.png": hd_png}
"""The mixed set's kinds, by the key suffix that names them: a third of each."""


def mixed_image(key: str) -> bytes:
    """The image of the kind ``key`` ends with (see ``MIX_KINDS``)."""
    return next(make(key) for suffix, make in MIX_KINDS.items() if key.endswith(suffix))
