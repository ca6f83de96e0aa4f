"""The public surface is one import name, exported once per package, and changes only on purpose.

``public_api.json`` is the golden list: a name added or removed fails here until the list
is updated with ``IG1_UPDATE_PUBLIC_API=1 pytest tests/test_public_api.py`` and reviewed.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from pathlib import Path

import pytest

from prefect_ig1 import client as ig1

GOLDEN = Path(__file__).with_name("public_api.json")
PACKAGES = ["prefect_ig1", "prefect_ig1.blocks", "prefect_ig1.client", "prefect_ig1.tasks",
            "prefect_ig1.flows"]


def test_the_public_names_are_the_golden_list() -> None:
    names = {package: sorted(importlib.import_module(package).__all__) for package in PACKAGES}
    if os.environ.get("IG1_UPDATE_PUBLIC_API"):
        GOLDEN.write_text(json.dumps(names, indent=2) + "\n", encoding="utf-8")
    assert names == json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    loaded = importlib.import_module(package)
    assert [name for name in loaded.__all__ if getattr(loaded, name, None) is None] == []


def test_the_client_exports_everything_its_private_modules_export() -> None:
    exported = set(ig1.__all__)
    missing = [
        name
        for module in pkgutil.iter_modules(ig1.__path__)
        for name in getattr(importlib.import_module(f"{ig1.__name__}.{module.name}"),
                            "__all__", [])
        if name not in exported
    ]
    assert not missing, f"prefect_ig1.client.__all__ misses {missing}"
