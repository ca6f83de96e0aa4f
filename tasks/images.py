"""Prepare one image for a vision model: refuse what must not be sent, shrink, re-encode the rest.

Pure functions, safe to call from a thread pool (Pillow releases the GIL while
decoding). Refusals raise ``ImageRejected`` with a short machine ``reason`` so
the flow can write an error record and go on. The output is deterministic:
the same bytes and options give the same bytes, whose SHA-256 is a cache key. Every image is
decoded (a truncated file fails there) and re-encoded, even one already small enough: Pillow
cannot drop EXIF/GPS from a file without re-encoding it, and the encode is ~1.3 ms of a
~3.5 ms small JPEG (``benchmarks/prepare_images.py``).

    Exception
     └── ImageRejected  (reason: empty | too_large | too_many_pixels | not_an_image
                                 | unsupported_format | corrupt | decompression_bomb)

Running out of memory is never the image's verdict: ``MemoryError`` propagates, so
the caller can try the image again later instead of recording it as corrupt.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "THUMBNAIL_MAX_BYTES", "ImageRejected", "PreparedImage", "prepare_image", "thumbnail_jpeg",
]

Reason = Literal[
    "empty", "too_large", "too_many_pixels", "not_an_image", "unsupported_format", "corrupt",
    "decompression_bomb",
]

THUMBNAIL_MAX_BYTES = 15 * 1024
"""A gallery thumbnail's budget: 500 cards stay a light page."""

DEFAULT_MAX_IMAGE_SIDE = 1024
"""Longest side sent: about 1,000 tokens an image on Qwen2.5-VL, a tenth of a 12 MP photo's."""
DEFAULT_MAX_OBJECT_BYTES = 50 * 1024 * 1024
"""Largest object read; larger ones are refused before download."""
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
"""Pixels decoded per image (a JPEG counts at its draft size). A 370 KB PNG of 9,400 x 9,400
takes ~1.1 GB and ~4 s to decode: bytes alone do not bound the work."""
DRAFT_FLOOR = 0.9
"""A JPEG is decoded at 1/2, 1/4 or 1/8 scale, and any image averaged by k x k blocks, when its
longest side stays at least this fraction of ``max_image_side``: what is sent may be up to 10 %
under it. A 4000x3000 photo decodes at 1000x750 (1/4) instead of 2000x1500 then a resize, half
the CPU; 1920x1080 at 960x540; a 3000x2000 PNG is averaged to 1000x667."""

# Formats a bucket of photos plausibly holds. Restricting ``Image.open`` to them
# keeps exotic plugins (EPS runs Ghostscript, for one) away from untrusted bytes.
# (Multi-picture "MPO" files from phones are opened by the JPEG plugin.)
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# What Pillow could not identify is named by its first bytes, so the record says what to do:
# the start of an accepted format means a damaged file; these pictures need converting.
_ACCEPTED_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"),
                        (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"),
                        (b"MM\x00*", "TIFF"))
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_JPEG_XL = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")

# ``warnings.catch_warnings`` swaps process-global state: serialise our own
# entries so concurrent calls never restore each other's filters. Only the
# header parse runs under it, so decoding stays parallel.
_OPEN_LOCK = threading.Lock()


class ImageRejected(Exception):
    """An object that will not be sent: ``reason`` is a short machine tag, ``message`` says why
    and the fix."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(reason, message)  # args match __init__, so it pickles across processes
        self.reason: Reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class PreparedImage:
    """What is sent (re-encoded, metadata stripped) and what it came from, for records."""

    data: bytes = field(repr=False)  # never dump image bytes into logs
    mime_type: str
    width: int
    height: int
    source_format: str
    source_width: int  # as stored, before EXIF orientation
    source_height: int


def prepare_image(
    data: bytes,
    *,
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    jpeg_quality: int = 85,
) -> PreparedImage:
    """Validate, decode, orient, shrink to ``max_image_side``, re-encode as JPEG (PNG with alpha).

    Raises ``ImageRejected`` for anything that should become an error record instead.
    """
    return _prepare(
        data,
        max_image_side=max_image_side,
        max_object_bytes=max_object_bytes,
        max_image_pixels=max_image_pixels,
        jpeg_quality=jpeg_quality,
        use_draft=True,
    )


def _prepare(
    data: bytes,
    *,
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    jpeg_quality: int = 85,
    use_draft: bool = True,
    draft_floor: float = DRAFT_FLOOR,
) -> PreparedImage:
    """``prepare_image`` with JPEG draft decoding switchable, so the benchmark can compare."""
    if max_image_side < 1:
        raise ValueError(f"max_image_side must be >= 1, got {max_image_side}")
    _check_size(data, max_object_bytes)
    with _open(data) as source:
        source_format = source.format or "unknown"
        source_width, source_height = source.size
        if use_draft:
            _draft(source, max_image_side, draft_floor)
        if source.width * source.height > max_image_pixels:
            raise _too_many_pixels((source_width, source_height), source.size, max_image_pixels)
        image = _decode(source)
    image = _shrink(_to_rgb_or_rgba(image), max_image_side, draft_floor if use_draft else 1.0)
    payload, mime_type = _encode(image, jpeg_quality)
    return PreparedImage(
        data=payload,
        mime_type=mime_type,
        width=image.width,
        height=image.height,
        source_format=source_format,
        source_width=source_width,
        source_height=source_height,
    )


def _check_size(data: bytes, max_object_bytes: int) -> None:
    """Refuse before Pillow sees the bytes: the cheapest checks first."""
    if len(data) == 0:
        raise ImageRejected(
            "empty", "The object is empty (0 bytes), as a failed upload leaves; re-upload it."
        )
    if len(data) > max_object_bytes:
        raise ImageRejected(
            "too_large",
            f"The object is {len(data):,} bytes, over the {max_object_bytes:,}-byte cap; shrink it "
            "before upload or raise the cap with prepare_image(..., max_object_bytes=...).",
        )


def _too_many_pixels(size: tuple[int, int], decoded: tuple[int, int],
                     max_image_pixels: int) -> ImageRejected:
    pixels = decoded[0] * decoded[1]
    scaled = "" if decoded == size else f", {decoded[0]}x{decoded[1]} when drafted"
    return ImageRejected(
        "too_many_pixels",
        f"The image is {size[0]}x{size[1]} pixels{scaled} = {pixels:,} to decode, over this "
        f"max_image_pixels ({max_image_pixels:,}): refused before decoding. Downscale it "
        "before upload, or raise max_image_pixels (about 30 bytes of memory per pixel).",
    )


def _draft(source: Image.Image, max_image_side: int, floor: float) -> None:
    """Let the JPEG decoder scale by the largest of 1/8, 1/4, 1/2 that keeps the longest side
    at least ``floor`` x ``max_image_side`` (the resize after it only ever shrinks).

    Pillow picks the largest power of two that keeps BOTH sides >= the box asked, from the
    floor-divided ratios: ``size // scale`` asks for exactly ``scale`` (never more)."""
    if source.format not in ("JPEG", "MPO"):
        return
    longest = max(source.size)
    for scale in (8, 4, 2):
        if -(-longest // scale) >= floor * max_image_side:  # Pillow's size: rounded up
            source.draft("RGB", (max(1, source.width // scale), max(1, source.height // scale)))
            return


def _shrink(image: Image.Image, max_image_side: int, floor: float) -> Image.Image:
    """Average k x k blocks (``reduce``, a fraction of a resize's CPU) while the longest side
    stays >= ``floor`` x ``max_image_side``, as the JPEG draft does; resize what is still over
    (bicubic, as vision preprocessors use; never upscales)."""
    longest = max(image.size)
    factor = int(longest // (floor * max_image_side)) + 1
    while factor > 1 and -(-longest // factor) < floor * max_image_side:  # reduce rounds up
        factor -= 1
    if factor > 1:
        image = image.reduce(factor)
    image.thumbnail((max_image_side, max_image_side), Image.Resampling.BICUBIC)
    return image


def _open(data: bytes) -> Image.Image:
    """Parse the header only, and refuse a bomb by its declared size before any pixel is decoded."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow does not tell us the size here; the message carries only its pixel count.
        raise ImageRejected(
            "decompression_bomb",
            f"Pillow refused the image as a possible decompression bomb "
            f"({type(exc).__name__}, over Image.MAX_IMAGE_PIXELS); if it is trusted, "
            "downscale it first.",
        ) from None
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except MemoryError:
        raise
    except Exception as exc:  # a header so broken that a plugin crashed on it
        raise _corrupt(exc) from None
    return image


def _unidentified(data: bytes) -> ImageRejected:
    """Why Pillow could not open the bytes: a damaged accepted format, a format we do not send,
    or not an image at all."""
    accepted = ", ".join(ACCEPTED_FORMATS)
    damaged = next((name for magic, name in _ACCEPTED_SIGNATURES if data.startswith(magic)), None)
    if damaged is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        damaged = "WEBP"
    if damaged is not None:
        return ImageRejected(
            "corrupt",
            f"The bytes start like a {damaged} image but its header is damaged (Pillow cannot "
            "parse it, e.g. a failed checksum); re-export or re-upload it.",
        )
    unsupported = _unsupported_format(data)
    if unsupported is not None:
        return ImageRejected(
            "unsupported_format",
            f"The object is in {unsupported} format, which is not sent to the model (accepted: "
            f"{accepted}); convert it to JPEG or PNG, then re-upload it.",
        )
    return ImageRejected(
        "not_an_image",
        f"The bytes are not an image in an accepted format ({accepted}); check the object, "
        "not its name.",
    )


def _unsupported_format(data: bytes) -> str | None:
    """The name of a picture format we recognise but do not send (HEIC, AVIF, JPEG XL, SVG)."""
    if data[4:8] == b"ftyp":  # ISO-BMFF: the major brand, then compatible brands
        size = int.from_bytes(data[:4], "big")
        brands = {data[i:i + 4] for i in range(8, min(max(size, 16), 64), 4)}
        if brands & {b"avif", b"avis"}:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIC/HEIF"
    if data.startswith(_JPEG_XL):
        return "JPEG XL"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _corrupt(exc: BaseException) -> ImageRejected:
    # Only the class name: Pillow's own messages may quote raw bytes from the file.
    return ImageRejected(
        "corrupt",
        f"The image could not be decoded ({type(exc).__name__}): it is truncated or damaged; "
        "re-export or re-upload it.",
    )


def _decode(source: Image.Image) -> Image.Image:
    """Decode the first frame fully (a truncated file fails here) and apply EXIF orientation."""
    try:
        source.seek(0)
        source.load()
        # exif_transpose returns a copy, detached from the file, even without a rotation.
        oriented = ImageOps.exif_transpose(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # A GIF frame larger than its declared screen is checked only while seeking.
        raise ImageRejected(
            "decompression_bomb",
            f"A frame exceeds Pillow's Image.MAX_IMAGE_PIXELS ({type(exc).__name__}): "
            "refused as a possible decompression bomb; if it is trusted, downscale it first.",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise _corrupt(exc) from None
    return oriented


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Bring any mode to RGB, or RGBA only when some pixel is actually see-through."""
    try:
        mode = image.mode
        if mode.startswith("I;16") or mode == "I":
            image = _sixteen_to_l(image)
        elif mode == "F":
            image = image.convert("L")
        if mode == "P" and "transparency" not in image.info:
            return image.convert("RGB")
        if "A" in image.getbands() or "a" in image.getbands() or mode == "P":
            rgba = image if image.mode == "RGBA" else image.convert("RGBA")
            low, _ = _band_range(rgba.getchannel("A"))
            return rgba if low < 255 else rgba.convert("RGB")
        return image if image.mode == "RGB" else image.convert("RGB")
    except MemoryError:
        raise
    except Exception as exc:  # a mode Pillow cannot convert is as good as undecodable
        raise _corrupt(exc) from None


def _sixteen_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit samples to 8 bits: Pillow's own conversion clips all above 255 to white."""
    wide = image.convert("I")
    low, high = _band_range(wide)
    if image.mode == "I" and low >= 0 and high <= 255:
        return wide.convert("L")  # 32-bit container holding 8-bit data
    return wide.point(lambda value: value / 256).convert("L")


def _band_range(band: Image.Image) -> tuple[float, float]:
    """(min, max) of a single-band image, typed for mypy."""
    low, high = band.getextrema()
    assert isinstance(low, (int, float)) and isinstance(high, (int, float))
    return low, high


def _encode(image: Image.Image, jpeg_quality: int) -> tuple[bytes, str]:
    """JPEG for opaque pictures, PNG when alpha matters; no metadata carried over.

    No ``optimize``: its extra pass costs ~1-2 ms a JPEG (40 % of a small one) and ~5x a PNG's
    encode, for 12-17 % fewer bytes; the model bills pixels, not bytes."""
    image.info = {}  # PNG would otherwise copy the ICC profile; EXIF must not leak either
    out = io.BytesIO()
    if image.mode == "RGBA":
        image.save(out, format="PNG")
        return out.getvalue(), "image/png"
    image.save(out, format="JPEG", quality=jpeg_quality)
    return out.getvalue(), "image/jpeg"


def thumbnail_jpeg(prepared: PreparedImage, *, size: int = 256, quality: int = 70) -> bytes:
    """A small JPEG of what was sent, for the run's gallery: made from the prepared image (at
    most ``size`` px, down to 0.9 x ``size`` as ``DRAFT_FLOOR`` allows), so the source is never
    read twice; at most ``THUMBNAIL_MAX_BYTES`` (lower quality, then fewer pixels, for noisy
    pictures)."""
    with Image.open(io.BytesIO(prepared.data)) as source:
        _draft(source, size, DRAFT_FLOOR)  # JPEG: 1000x750 decodes at 1/4, 250x188 (~1 ms)
        image = source.convert("RGBA") if source.mode in ("RGBA", "LA", "P") else source.copy()
    if image.mode == "RGBA":  # a see-through PNG: flatten on white, as a page shows it
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    out = io.BytesIO()
    for side in (size, size * 3 // 4, size // 2, size // 4):
        image.thumbnail((side, side), Image.Resampling.BICUBIC)
        for attempt in (quality, 50, 35):
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=attempt, optimize=True)
            if out.tell() <= THUMBNAIL_MAX_BYTES:
                return out.getvalue()
    return out.getvalue()  # 64 px at quality 35 is ~2 KB: not reached in practice
