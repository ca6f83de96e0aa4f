"""Offline stand-ins for the demo and the tests: the IG1 emulator and sample images.

`prefect_ig1.sandbox.emulator` (EmulatorServer) and `prefect_ig1.sandbox.sample_images`
(sample_images(), broken_images(), ...). The emulator's names are re-exported lazily, so
`python -m prefect_ig1.sandbox.emulator` does not import the module twice; `sample_images` stays
the module's name only (its function of the same name would shadow it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .emulator import FAULT_KINDS, EmulatorServer, EmulatorSettings, EmulatorStats

__all__ = ["FAULT_KINDS", "EmulatorServer", "EmulatorSettings", "EmulatorStats"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    return getattr(importlib.import_module(".emulator", __name__), name)
