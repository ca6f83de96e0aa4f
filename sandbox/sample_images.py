"""Deterministic sample images (good and broken) so tests and the demo need no network or files.

Every generator is seeded and cached: the same bytes on every call and every machine
with the same Pillow, and each good image has distinct content (distinct sha256).
"""

from __future__ import annotations

import functools
import io
import random

from PIL import Image, ImageDraw

__all__ = [
    "alpha_png",
    "animated_gif",
    "broken_images",
    "cmyk_jpeg",
    "empty",
    "exif_rotated_jpeg",
    "gray16_png",
    "large_jpeg",
    "not_an_image",
    "palette_png",
    "photo_jpeg",
    "sample_images",
    "small_png",
    "truncated_jpeg",
    "webp_image",
]

Sample = tuple[str, bytes]
_EXIF_ORIENTATION = 0x0112


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _scene(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB picture: smooth gradients plus seeded shapes (fast at 12 MP)."""
    size = (width, height)
    red = Image.linear_gradient("L").resize(size)
    green = Image.linear_gradient("L").rotate(90).resize(size)
    blue = Image.radial_gradient("L").resize(size)
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    rng = random.Random(seed)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = min(width - 1, x0 + rng.randrange(1, max(2, width // 4)))
        y1 = min(height - 1, y0 + rng.randrange(1, max(2, height // 4)))
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=color)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=color)
    return image


@functools.cache
def small_png() -> Sample:
    """64x48 RGB PNG: the cheapest valid input."""
    return "small.png", _encode(_scene(64, 48, seed=1), "PNG")


@functools.cache
def photo_jpeg() -> Sample:
    """1600x1200 JPEG, larger than most models need: exercises downscaling."""
    return "photo.jpg", _encode(_scene(1600, 1200, seed=2), "JPEG", quality=85)


@functools.cache
def alpha_png() -> Sample:
    """RGBA PNG with a transparency gradient: JPEG re-encoding must flatten it."""
    image = _scene(200, 150, seed=3).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((200, 150)))
    return "alpha.png", _encode(image, "PNG")


@functools.cache
def animated_gif() -> Sample:
    """Two-frame GIF: only the first frame should be described."""
    frames = [_scene(120, 90, seed=4).convert("P"), _scene(120, 90, seed=5).convert("P")]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    return "animated.gif", data


@functools.cache
def webp_image() -> Sample:
    """320x240 WebP: a format some APIs refuse, so clients may re-encode it."""
    return "photo.webp", _encode(_scene(320, 240, seed=6), "WEBP", quality=80)


@functools.cache
def cmyk_jpeg() -> Sample:
    """CMYK JPEG (print workflows): must be converted to RGB before re-encoding."""
    return "cmyk.jpg", _encode(_scene(300, 200, seed=7).convert("CMYK"), "JPEG", quality=85)


@functools.cache
def exif_rotated_jpeg() -> Sample:
    """300x200 stored, EXIF orientation 6 (rotate 90° CW): displays as 200x300."""
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6
    data = _encode(_scene(300, 200, seed=8), "JPEG", quality=85, exif=exif.tobytes())
    return "exif_rotated.jpg", data


@functools.cache
def gray16_png() -> Sample:
    """256x64 16-bit grayscale PNG ("I;16"): a mode JPEG cannot hold."""
    width, height = 256, 64
    raw = b"".join(
        ((x * 257 + y * 97) % 65536).to_bytes(2, "little")
        for y in range(height)
        for x in range(width)
    )
    return "gray16.png", _encode(Image.frombytes("I;16", (width, height), raw), "PNG")


@functools.cache
def palette_png() -> Sample:
    """Palette ("P") PNG with 16 colours: must be converted before JPEG."""
    image = _scene(160, 120, seed=9).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return "palette.png", _encode(image, "PNG")


@functools.cache
def large_jpeg(width: int = 4000, height: int = 3000) -> Sample:
    """A 12 MP photo by default: tests size limits and downscaling cost."""
    return f"large_{width}x{height}.jpg", _encode(
        _scene(width, height, seed=10), "JPEG", quality=85
    )


def sample_images() -> list[Sample]:
    """The good samples, one per awkward case, each with distinct content."""
    return [
        small_png(),
        photo_jpeg(),
        alpha_png(),
        animated_gif(),
        webp_image(),
        cmyk_jpeg(),
        exif_rotated_jpeg(),
        gray16_png(),
        palette_png(),
    ]


@functools.cache
def truncated_jpeg() -> Sample:
    """A JPEG cut in half: the header parses, decoding fails."""
    data = _encode(_scene(320, 240, seed=11), "JPEG", quality=85)
    return "truncated.jpg", data[: len(data) // 2]


def not_an_image() -> Sample:
    """Text bytes wearing a .jpg name: the extension must not be trusted."""
    return "not_an_image.jpg", b"This is plain text, not a JPEG.\n"


def empty() -> Sample:
    """A zero-byte object, as a failed upload leaves behind."""
    return "empty.jpg", b""


def broken_images() -> list[Sample]:
    """Inputs that must become error records, never crashes."""
    return [truncated_jpeg(), not_an_image(), empty()]
