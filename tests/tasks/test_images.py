"""prepare_image: every good sample is sent small and clean, every bad one is refused by reason."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image, ImageChops, ImageFile, ImageStat

from prefect_ig1.sandbox import sample_images as samples
from prefect_ig1.tasks.images import (
    ImageRejected,
    PreparedImage,
    _prepare,
    prepare_image,
    thumbnail_jpeg,
)


def _open(prepared: PreparedImage) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.data))
    image.load()
    return image


def _png(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _declared_png(width: int, height: int, idat: bytes = b"") -> bytes:
    """A 1-bit grey PNG declaring any size; the pixel data may be absent (header-only)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat or zlib.compress(b"\x00"))
        + _chunk(b"IEND", b"")
    )


@functools.cache
def _real_bomb() -> bytes:
    """A complete, valid 20000x20000 PNG (400 MP) that compresses to ~50 KB."""
    side = 20_000
    row = b"\x00" * (1 + side // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return _declared_png(side, side, idat)


GOOD = samples.sample_images()
BAD_REASONS = {
    samples.truncated_jpeg()[0]: "corrupt",
    samples.not_an_image()[0]: "not_an_image",
    samples.empty()[0]: "empty",
}


# 1-2, 4: every good sample prepares; every broken one is refused with its reason.
@pytest.mark.parametrize(("name", "data"), GOOD, ids=[name for name, _ in GOOD])
def test_every_good_sample_prepares(name: str, data: bytes) -> None:
    prepared = prepare_image(data)
    image = _open(prepared)
    assert image.size == (prepared.width, prepared.height)
    assert max(image.size) <= 1024
    assert image.mode in ("RGB", "RGBA")
    expected_format = {"image/jpeg": "JPEG", "image/png": "PNG"}[prepared.mime_type]
    assert image.format == expected_format
    assert prepared.source_format == Image.open(io.BytesIO(data)).format
    assert "exif" not in image.info and "icc_profile" not in image.info


@pytest.mark.parametrize(("name", "data"), samples.broken_images(), ids=BAD_REASONS)
def test_every_broken_sample_is_rejected_with_its_reason(name: str, data: bytes) -> None:
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data)
    assert caught.value.reason == BAD_REASONS[name]
    assert caught.value.message and caught.value.reason in str(caught.value)


def test_too_large_says_the_size_the_cap_and_the_fix() -> None:
    _, data = samples.small_png()
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, max_object_bytes=len(data) - 1)
    assert caught.value.reason == "too_large"
    assert f"{len(data):,}" in caught.value.message
    assert f"{len(data) - 1:,}" in caught.value.message
    assert "max_object_bytes" in caught.value.message
    assert prepare_image(data, max_object_bytes=len(data)).width == 64  # the cap is inclusive


def test_a_truncated_png_is_corrupt_and_the_message_names_the_error_not_the_bytes() -> None:
    data = samples.photo_jpeg()[1]
    png = _png(Image.open(io.BytesIO(data)))
    with pytest.raises(ImageRejected) as caught:
        prepare_image(png[: len(png) // 2])
    assert caught.value.reason == "corrupt"
    assert "Error" in caught.value.message  # the exception class, e.g. OSError
    assert "\\x" not in caught.value.message and "b'" not in caught.value.message


def test_formats_outside_the_allowlist_are_not_opened() -> None:
    """EPS would run Ghostscript on untrusted bytes: it is refused as not an image."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageRejected) as caught:
        prepare_image(eps)
    assert caught.value.reason == "not_an_image"


@pytest.mark.parametrize(("data", "named"), [
    (samples.heic_image()[1], "HEIC/HEIF"),
    (struct.pack(">I", 20) + b"ftypavif" + bytes(4) + b"mif1", "AVIF"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(16), "JPEG XL"),
    (samples.svg_image()[1], "SVG"),
    (b"\xef\xbb\xbf  <svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
])
def test_known_unsupported_formats_are_named_with_the_fix(data: bytes, named: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data)
    assert caught.value.reason == "unsupported_format"
    assert f"in {named} format" in caught.value.message
    assert "convert it to JPEG or PNG" in caught.value.message


@pytest.mark.parametrize("data", [samples.bad_crc_png()[1], b"GIF89a" + bytes(5),
                                  b"RIFF\x10\x00\x00\x00WEBPVP8 junk"])
def test_a_damaged_header_of_an_accepted_format_is_corrupt_not_a_non_image(data: bytes) -> None:
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data)
    assert caught.value.reason == "corrupt"
    assert "damaged" in caught.value.message and "re-upload" in caught.value.message


# 2: decompression bombs are refused by their declared size, before decoding.
def test_a_real_400_megapixel_bomb_is_refused() -> None:
    data = _real_bomb()
    assert len(data) < 200_000  # the point of a bomb: tiny on disk
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data)
    assert caught.value.reason == "decompression_bomb"


def test_the_pixel_cap_is_checked_before_any_pixel_is_decoded() -> None:
    """The pixel data is missing: decoding would say "corrupt", the header check says too many."""
    data = _declared_png(5000, 4000)
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, max_image_pixels=10_000_000)
    assert caught.value.reason == "too_many_pixels"
    assert "5000x4000" in caught.value.message and "20,000,000" in caught.value.message
    message = caught.value.message.lower()
    assert "max_image_pixels" in message and "downscale" in message
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data)  # under the default cap it is decoded, and found broken
    assert caught.value.reason == "corrupt"


def test_a_small_file_of_many_pixels_is_refused_by_the_default_cap() -> None:
    """A 9,400 x 9,400 flat PNG is a few hundred KB, but ~1.1 GB to decode: not decoded."""
    from prefect_ig1.sandbox.sample_images import flat_image
    _, data = flat_image(9400, 9400, "PNG")
    assert len(data) < 1_000_000
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data)
    assert caught.value.reason == "too_many_pixels"
    assert "88,360,000" in caught.value.message


def test_a_jpeg_counts_at_its_draft_size() -> None:
    """An 80 MP JPEG decodes at 1/8 scale (1.25 MP) for a 1024 px target: within the cap."""
    buffer = io.BytesIO()
    Image.new("L", (10_000, 8_000), 128).save(buffer, "JPEG")
    prepared = prepare_image(buffer.getvalue(), max_image_pixels=2_000_000)
    assert (prepared.width, prepared.height) == (1024, 819)
    with pytest.raises(ImageRejected) as caught:  # asked for full size, it is 80 MP
        prepare_image(buffer.getvalue(), max_image_side=10_000, max_image_pixels=2_000_000)
    assert caught.value.reason == "too_many_pixels"


def test_running_out_of_memory_is_not_a_verdict_on_the_image(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MemoryError propagates (the caller tries again later): never recorded as corrupt."""
    def exhausted(self: Image.Image) -> None:
        raise MemoryError

    monkeypatch.setattr(Image.Image, "load", exhausted)
    from PIL import PngImagePlugin
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", exhausted)
    with pytest.raises(MemoryError):
        prepare_image(_png(Image.new("RGB", (64, 48))))


def test_pillows_bomb_warning_is_an_error_here_and_only_here() -> None:
    """95 MP is under max_image_pixels but over Image.MAX_IMAGE_PIXELS, where Pillow only warns."""
    data = _declared_png(9500, 10_000)
    assert Image.MAX_IMAGE_PIXELS is not None
    assert Image.MAX_IMAGE_PIXELS < 95_000_000 < 100_000_000
    filters_before = list(warnings.filters)
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data)
    assert caught.value.reason == "decompression_bomb"
    assert list(warnings.filters) == filters_before
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow itself still just warns
        Image.open(io.BytesIO(data))


# 3, 7: downscale to max_image_side, never upscale; a 12 MP photo is sent as a small fraction.
@pytest.mark.parametrize(
    ("max_image_side", "expected"), [(1024, (64, 48)), (64, (64, 48)), (32, (32, 24)), (1, (1, 1))]
)
def test_small_images_are_never_upscaled(max_image_side: int, expected: tuple[int, int]) -> None:
    prepared = prepare_image(samples.small_png()[1], max_image_side=max_image_side)
    assert (prepared.width, prepared.height) == expected


def test_photo_is_downscaled_keeping_its_aspect() -> None:
    prepared = prepare_image(samples.photo_jpeg()[1], max_image_side=800)
    assert (prepared.width, prepared.height) == (800, 600)
    assert (prepared.source_width, prepared.source_height) == (1600, 1200)


def test_a_12_megapixel_jpeg_is_sent_as_a_small_fraction() -> None:
    """Decoded at 1/4 scale (1000x750), not at 1/2 then resized: within 10 % of 1024 px."""
    _, data = samples.large_jpeg()
    prepared = prepare_image(data)
    assert (prepared.source_width, prepared.source_height) == (4000, 3000)
    assert (prepared.width, prepared.height) == (1000, 750)
    assert prepared.mime_type == "image/jpeg"
    assert len(prepared.data) < 0.25 * len(data)


def _flat(width: int, height: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("size", "max_image_side", "sent"), [
    ((4000, 3000), 1024, (1000, 750)),  # 1/4
    ((3000, 4000), 1024, (750, 1000)),
    ((4032, 3024), 1024, (1008, 756)),  # an iPhone photo, 1/4
    ((1920, 1080), 1024, (960, 540)),  # 1/2
    ((1843, 1000), 1024, (922, 500)),  # 1/2 lands exactly on 0.9 x 1024 (921.6, rounded up)
    ((1840, 1000), 1024, (1024, 557)),  # 1/2 would be 920 px, under 0.9 x 1024: resized
    ((4608, 3456), 1024, (1024, 768)),  # 1/4 is 1152 px, then resized
    ((6000, 4000), 1024, (1024, 683)),  # 1/8 would be 750 px: 1/4, then resized
    ((1280, 720), 1024, (1024, 576)),  # 1/2 would be 640 px
    ((10_000, 8000), 1024, (1024, 819)),  # 1/8 is 1250 px, then resized
    ((5000, 7), 1024, (1024, 2)),  # a thin strip: its short side does not stop the draft
    ((4000, 3000), 500, (500, 375)),  # 1/8
    ((4000, 3000), 4000, (4000, 3000)),  # within the limit: not drafted
])
def test_the_longest_side_sent_is_within_10_percent_under_the_limit(
        size: tuple[int, int], max_image_side: int, sent: tuple[int, int]) -> None:
    prepared = prepare_image(_flat(*size), max_image_side=max_image_side)
    assert (prepared.width, prepared.height) == sent
    assert _open(prepared).size == sent
    assert 0.9 * max_image_side <= max(sent) <= max_image_side


@pytest.mark.parametrize(("size", "sent"), [
    ((3000, 2000), (1000, 667)),  # 3 x 3 blocks averaged, no resize
    ((2048, 1536), (1024, 768)),  # 2 x 2
    ((2100, 1000), (1024, 488)),  # 2 x 2 to 1050 px, then resized
    ((1280, 720), (1024, 576)),  # 2 x 2 would be 640 px: resized
    ((1843, 1000), (922, 500)),  # 2 x 2 lands exactly on 0.9 x 1024, rounded up
    ((4000, 3), (1000, 1)),  # a thin strip
])
def test_other_formats_follow_the_same_10_percent_rule(
        size: tuple[int, int], sent: tuple[int, int]) -> None:
    prepared = prepare_image(_flat(*size, fmt="PNG"))
    assert (prepared.width, prepared.height) == sent
    assert _open(prepared).size == sent
    assert 0.9 * 1024 <= max(sent) <= 1024


def test_a_see_through_image_keeps_its_alpha_when_blocks_are_averaged() -> None:
    image = Image.new("RGB", (3000, 2000), (40, 90, 160))
    prepared = prepare_image(_png(_with_alpha(image)))
    sent = _open(prepared)
    assert (prepared.mime_type, sent.mode, sent.size) == ("image/png", "RGBA", (1000, 667))
    low, high = sent.getchannel("A").getextrema()  # type: ignore[misc]
    assert low < 10 and high > 245  # the gradient survives
    pixel = sent.getpixel((500, 333))  # half see-through: colour kept (premultiplied rounding)
    assert isinstance(pixel, tuple)
    assert all(abs(got - want) <= 2 for got, want in zip(pixel[:3], (40, 90, 160), strict=True))


@pytest.mark.parametrize(("size", "fmt", "thumbnail"), [
    ((4000, 3000), "JPEG", (250, 188)),  # sent as 1000x750, whose 1/4 scale is the thumbnail
    ((1280, 720), "JPEG", (256, 144)),  # sent as 1024x576: 1/4 scale
    ((800, 600), "JPEG", (256, 192)),  # 1/4 would be 200 px: 1/2, then resized
    ((3000, 2000), "PNG", (250, 167)),  # sent as a 1000x667 JPEG
])
def test_a_gallery_thumbnail_follows_the_same_10_percent_rule(
        size: tuple[int, int], fmt: str, thumbnail: tuple[int, int]) -> None:
    prepared = prepare_image(_flat(*size, fmt=fmt))
    with Image.open(io.BytesIO(thumbnail_jpeg(prepared))) as image:
        assert (image.format, image.size) == ("JPEG", thumbnail)


def test_the_pixel_cap_counts_the_tolerant_draft_size() -> None:
    """4000x3000 decodes at 1000x750 = 750,000 pixels: that is what the cap compares."""
    data = _flat(4000, 3000)
    assert prepare_image(data, max_image_pixels=750_000).width == 1000
    with pytest.raises(ImageRejected) as caught:
        prepare_image(data, max_image_pixels=749_999)
    assert caught.value.reason == "too_many_pixels"
    assert "1000x750 when drafted" in caught.value.message


def test_draft_decoding_changes_speed_not_the_picture() -> None:
    """Drafted to 1000x750 or decoded whole and resized to 1024x768: the same picture."""
    _, data = samples.large_jpeg()
    drafted, full = _prepare(data, use_draft=True), _prepare(data, use_draft=False)
    assert (drafted.width, drafted.height) == (1000, 750)
    assert (full.width, full.height) == (1024, 768)
    resized = _open(full).resize(_open(drafted).size, Image.Resampling.BICUBIC)
    difference = ImageStat.Stat(ImageChops.difference(_open(drafted), resized)).mean
    assert max(difference) < 8  # the same picture, within JPEG noise


def test_gps_and_other_metadata_never_reach_the_output() -> None:
    """EXIF (GPS included), comments and ICC profiles are dropped, drafted or not."""
    exif = Image.Exif()
    exif[0x010F] = "PhoneMakerName"  # Make
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    for size in ((4000, 3000), (1920, 1080), (640, 480)):
        buffer = io.BytesIO()
        Image.new("RGB", size, (200, 100, 50)).save(
            buffer, "JPEG", exif=exif, comment=b"CommentSecret", icc_profile=b"IccSecret" * 16)
        data = buffer.getvalue()
        assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the source has GPS
        prepared = prepare_image(data)
        sent = _open(prepared)
        assert len(sent.getexif()) == 0 and not sent.getexif().get_ifd(0x8825)
        assert not {"exif", "comment", "icc_profile", "xmp"} & set(sent.info)
        for secret in (b"PhoneMakerName", b"CommentSecret", b"IccSecret", b"Exif\x00"):
            assert secret not in prepared.data


# 4: the first frame of an animation.
def test_an_animated_gif_sends_its_first_frame() -> None:
    """Each frame saved alone as a PNG prepares to exact bytes: the GIF's are frame 0's."""
    _, data = samples.animated_gif()
    alone = []
    with Image.open(io.BytesIO(data)) as gif:
        for index in range(2):
            gif.seek(index)
            alone.append(prepare_image(_png(gif)).data)
    assert alone[0] != alone[1]
    assert prepare_image(data).data == alone[0]


# 5: EXIF orientation is applied, then dropped.
def test_exif_orientation_swaps_dimensions_and_is_not_carried_over() -> None:
    prepared = prepare_image(samples.exif_rotated_jpeg()[1])
    assert (prepared.source_width, prepared.source_height) == (300, 200)
    assert (prepared.width, prepared.height) == (200, 300)
    image = _open(prepared)
    assert image.size == (200, 300)
    assert len(image.getexif()) == 0


# 6: modes become RGB, or RGBA only when the alpha channel matters.
@pytest.mark.parametrize(
    ("sample", "mime_type", "mode"),
    [
        (samples.cmyk_jpeg, "image/jpeg", "RGB"),
        (samples.palette_png, "image/jpeg", "RGB"),
        (samples.gray16_png, "image/jpeg", "RGB"),
        (samples.alpha_png, "image/png", "RGBA"),
        (samples.webp_image, "image/jpeg", "RGB"),
    ],
    ids=["cmyk", "palette", "gray16", "alpha", "webp"],
)
def test_sample_modes_are_converted(
    sample: Callable[[], samples.Sample], mime_type: str, mode: str
) -> None:
    _, data = sample()
    prepared = prepare_image(data)
    assert prepared.mime_type == mime_type
    assert _open(prepared).mode == mode


def test_16_bit_samples_are_scaled_not_clipped_to_white() -> None:
    sent = _open(prepare_image(samples.gray16_png()[1])).convert("L")
    assert 64 < ImageStat.Stat(sent).mean[0] < 192  # clipping at 255 would be ~255


def _scene(mode: str) -> Image.Image:
    """The 16-colour palette sample in another mode ("P" as it is)."""
    image = Image.open(io.BytesIO(samples.palette_png()[1]))
    return image if mode == "P" else image.convert(mode)


def _tiff(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="TIFF")  # PNG cannot hold 32-bit "I"
    return out.getvalue()


@pytest.mark.parametrize(
    ("make", "mime_type"),
    [
        (lambda: _png(_scene("L")), "image/jpeg"),
        (lambda: _png(_scene("1")), "image/jpeg"),
        (lambda: _png(_scene("RGBA")), "image/jpeg"),  # opaque alpha does not matter
        (lambda: _png(_scene("LA")), "image/jpeg"),
        (lambda: _png(_with_alpha(_scene("LA"))), "image/png"),
        (lambda: _png(_scene("P"), transparency=0), "image/png"),
        (lambda: _png(Image.new("P", (8, 8), 1), transparency=0), "image/jpeg"),  # index unused
        (lambda: _png(Image.new("I;16", (8, 8), 40_000)), "image/jpeg"),
        (lambda: _tiff(Image.new("I", (8, 8), 40_000)), "image/jpeg"),
        (lambda: _tiff(Image.new("I", (8, 8), 200)), "image/jpeg"),
        (lambda: _tiff(Image.new("F", (8, 8), 100.0)), "image/jpeg"),
    ],
    ids=[
        "L",
        "1",
        "opaque-RGBA",
        "opaque-LA",
        "LA",
        "P-transparent",
        "P-unused-tRNS",
        "I;16",
        "I-16-bit",
        "I-8-bit",
        "F",
    ],
)
def test_alpha_is_kept_only_when_some_pixel_is_see_through(
    make: Callable[[], bytes], mime_type: str
) -> None:
    data = make()
    prepared = prepare_image(data)
    assert prepared.mime_type == mime_type
    assert _open(prepared).mode == {"image/jpeg": "RGB", "image/png": "RGBA"}[mime_type]


def _with_alpha(image: Image.Image) -> Image.Image:
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


@pytest.mark.parametrize(
    ("data", "grey"),
    [
        (_png(Image.new("I;16", (8, 8), 40_000)), 40_000 / 256),
        (_tiff(Image.new("I", (8, 8), 40_000)), 40_000 / 256),
        (_tiff(Image.new("I", (8, 8), 200)), 200),  # 8-bit data in a 32-bit container
    ],
    ids=["I;16", "I-16-bit", "I-8-bit"],
)
def test_wide_grey_keeps_its_brightness(data: bytes, grey: float) -> None:
    sent = _open(prepare_image(data)).convert("L")
    assert abs(ImageStat.Stat(sent).mean[0] - grey) < 3


# 9: deterministic, so the sha256 of what is sent is a cache key.
@pytest.mark.parametrize(("name", "data"), GOOD, ids=[name for name, _ in GOOD])
def test_output_is_byte_identical_for_the_same_input(name: str, data: bytes) -> None:
    first, second = prepare_image(data), prepare_image(bytes(data))
    assert hashlib.sha256(first.data).digest() == hashlib.sha256(second.data).digest()
    assert first == second


def test_a_drafted_photo_is_byte_identical_too() -> None:
    _, data = samples.large_jpeg()
    assert prepare_image(data).data == prepare_image(bytes(data)).data


def test_distinct_inputs_or_options_give_distinct_outputs() -> None:
    digests = {hashlib.sha256(prepare_image(data).data).hexdigest() for _, data in GOOD}
    assert len(digests) == len(GOOD)
    _, photo = samples.photo_jpeg()
    assert prepare_image(photo, jpeg_quality=60).data != prepare_image(photo).data


# Errors and values are safe to log and to ship between processes.
def test_rejections_pickle_and_results_do_not_print_their_bytes() -> None:
    error = ImageRejected("corrupt", "broken")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.message) == ("corrupt", "broken")
    prepared = prepare_image(samples.small_png()[1])
    assert "data" not in repr(prepared) and "b'" not in repr(prepared)


def test_pillow_globals_are_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for _, data in [*GOOD, *samples.broken_images(), ("bomb", _declared_png(9500, 10_000))]:
        with contextlib.suppress(ImageRejected):
            prepare_image(data)
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    assert after == before


def test_max_side_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_image_side"):
        prepare_image(samples.small_png()[1], max_image_side=0)


def test_concurrent_calls_agree_and_leave_warning_filters_alone() -> None:
    """The flow calls this from a thread pool: same bytes out, no filter leaked."""
    inputs = [data for _, data in GOOD] + [_declared_png(9500, 10_000)] * 4
    filters_before = list(warnings.filters)

    def digest(data: bytes) -> str:
        try:
            return hashlib.sha256(prepare_image(data).data).hexdigest()
        except ImageRejected as rejected:
            return rejected.reason

    expected = [digest(data) for data in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(digest, inputs)) == expected
    assert list(warnings.filters) == filters_before
