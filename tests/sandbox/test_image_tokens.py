"""The image-token model alone: Qwen's smart_resize at its edges."""

from __future__ import annotations

import pytest

from prefect_ig1.sandbox._image_tokens import MIN_IMAGE_TOKENS, image_tokens, smart_resize


def test_sides_round_to_the_nearest_patch_multiple() -> None:
    assert smart_resize(768, 1024, patch=28, max_tokens=16384) == (756, 1036)
    assert smart_resize(1080, 1920, patch=28, max_tokens=16384) == (1092, 1932)
    assert image_tokens(1920, 1080, patch=28, max_tokens=16384) == 39 * 69


def test_a_tiny_image_costs_the_minimum() -> None:
    assert image_tokens(1, 1, patch=28, max_tokens=16384) == MIN_IMAGE_TOKENS == 4
    assert image_tokens(10, 10, patch=32, max_tokens=16384) == 4


@pytest.mark.parametrize(("width", "height"), [(100_000, 20), (20, 100_000), (30_000, 30_000)])
def test_no_size_costs_more_than_the_budget(width: int, height: int) -> None:
    for patch, budget in ((28, 16384), (32, 16384), (28, 256)):
        assert MIN_IMAGE_TOKENS <= image_tokens(width, height, patch=patch,
                                                max_tokens=budget) <= budget


def test_an_empty_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="positive size"):
        image_tokens(0, 10, patch=28, max_tokens=16384)
