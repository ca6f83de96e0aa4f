"""What an image costs in input tokens, the way IG1's vision models (Qwen2.5-VL, Qwen3-VL) bill it.

Their processors resize each image to a multiple of the patch size (``smart_resize``:
28 px for Qwen2.5-VL, 32 px for Qwen3-VL) within a pixel budget, and bill one token
per patch: a 12 MP photo sent as it is costs ~15 000 tokens, the same photo at
1024 px ~1 000. Only the size is needed, which Pillow reads from the header.
"""

from __future__ import annotations

import math

__all__ = ["MIN_IMAGE_TOKENS", "image_tokens", "smart_resize"]

MIN_IMAGE_TOKENS = 4
"""The processors' ``min_pixels`` (56x56 at 28 px): four patches."""
_MAX_ASPECT = 200


def smart_resize(height: int, width: int, *, patch: int, max_tokens: int) -> tuple[int, int]:
    """Qwen2.5-VL's ``smart_resize``: each side rounded to a multiple of ``patch``, the area
    kept between ``MIN_IMAGE_TOKENS`` and ``max_tokens`` patches, the aspect ratio kept."""
    if height < 1 or width < 1:
        raise ValueError(f"an image has a positive size, not {width}x{height}")
    min_pixels = MIN_IMAGE_TOKENS * patch * patch
    max_pixels = max(max_tokens, MIN_IMAGE_TOKENS) * patch * patch
    # The processors refuse a ratio over 200; clamp instead, the emulator only counts.
    height = max(height, math.ceil(width / _MAX_ASPECT))
    width = max(width, math.ceil(height / _MAX_ASPECT))
    h_bar = max(patch, round(height / patch) * patch)
    w_bar = max(patch, round(width / patch) * patch)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(patch, math.floor(height / beta / patch) * patch)
        w_bar = max(patch, math.floor(width / beta / patch) * patch)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / patch) * patch
        w_bar = math.ceil(width * beta / patch) * patch
    return h_bar, w_bar


def image_tokens(width: int, height: int, *, patch: int, max_tokens: int) -> int:
    """Input tokens of one ``width`` x ``height`` image: one per patch after ``smart_resize``."""
    h_bar, w_bar = smart_resize(height, width, patch=patch, max_tokens=max_tokens)
    return (h_bar // patch) * (w_bar // patch)
