"""Deterministic sample images (good and broken) so tests and the demo need no network or files.

Every generator is seeded and cached: the same bytes on every call and every machine
with the same Pillow, and each good image has distinct content (distinct sha256).
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib

from PIL import Image, ImageDraw

__all__ = [
    "alpha_png",
    "animated_gif",
    "bad_crc_png",
    "bomb_png",
    "broken_images",
    "cmyk_jpeg",
    "damaged_png",
    "empty",
    "exif_rotated_jpeg",
    "flat_image",
    "gray16_png",
    "heic_image",
    "hostile_images",
    "large_jpeg",
    "not_an_image",
    "palette_png",
    "photo_jpeg",
    "sample_images",
    "small_png",
    "svg_image",
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


# --- hostile inputs: what a real bucket holds besides photos ------------------------------

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.cache
def bad_crc_png() -> Sample:
    """A PNG with one bit flipped in its IHDR chunk: the chunk's CRC no longer matches."""
    data = bytearray(small_png()[1])
    data[8 + 8 + 3] ^= 0x01  # after the signature, IHDR's length and type: width 64 -> 65
    return "bad_crc.png", bytes(data)


@functools.cache
def damaged_png() -> Sample:
    """A PNG whose compressed pixel data (IDAT) is damaged: the header parses, decoding fails."""
    data = bytearray(small_png()[1])
    start = data.index(b"IDAT") + 4
    for offset in range(8, 24):
        data[start + offset] ^= 0xFF
    return "damaged.png", bytes(data)


@functools.cache
def bomb_png(side: int = 20_000) -> Sample:
    """A valid 1-bit PNG of side x side pixels (400 MP by default) in ~50 KB: a decompression
    bomb."""
    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))
    return f"bomb_{side}x{side}.png", data


@functools.cache
def flat_image(width: int, height: int, fmt: str = "JPEG") -> Sample:
    """A flat grey picture of any size: 100 MP stays small in bytes (a PNG of ~30 KB)."""
    mode = "1" if fmt == "PNG" else "L"
    image = Image.new(mode, (width, height), 1 if mode == "1" else 128)
    extension = {"JPEG": "jpg", "PNG": "png"}[fmt]
    return f"flat_{width}x{height}.{extension}", _encode(image, fmt)


def svg_image() -> Sample:
    """A vector drawing: Pillow cannot rasterise SVG."""
    return "drawing.svg", (b'<?xml version="1.0" encoding="UTF-8"?>\n'
                           b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48">'
                           b'<rect width="64" height="48" fill="teal"/></svg>\n')


def heic_image() -> Sample:
    """The start of an iPhone HEIC photo (an ISO-BMFF ``ftyp`` box, brand ``heic``)."""
    ftyp = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    meta = struct.pack(">I", 40) + b"meta" + bytes(32)
    return "IMG_0001.HEIC", ftyp + meta


def hostile_images() -> list[Sample]:
    """Objects that must each become an error record (no IG1 call), never a crash."""
    return [*broken_images(), bad_crc_png(), damaged_png(), bomb_png(),
            flat_image(10_000, 10_000, "PNG"), svg_image(), heic_image()]
