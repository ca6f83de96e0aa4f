"""Public names are exported once, from each package's __init__, and the lists stay complete."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import ig1


def test_ig1_exports_everything_its_private_modules_export() -> None:
    exported = set(ig1.__all__)
    missing = [
        name
        for module in pkgutil.iter_modules(ig1.__path__)
        for name in getattr(importlib.import_module(f"ig1.{module.name}"), "__all__", [])
        if name not in exported
    ]
    assert not missing, f"ig1.__all__ misses {missing}"


@pytest.mark.parametrize("package", ["ig1", "blocks", "tasks", "flows"])
def test_every_exported_name_exists(package: str) -> None:
    loaded = importlib.import_module(package)
    assert [name for name in loaded.__all__ if not hasattr(loaded, name)] == []
