"""vloc: visual localization against prebuilt maps.

``vloc.Localizer``, ``vloc.LocalizationResult``, ``vloc.Prior`` and ``vloc.Tracker`` are loaded
on first access, so ``import vloc`` stays cheap and has no side effects.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Localizer": "vloc.localization.localizer",
    "LocalizationResult": "vloc.localization.localizer",
    "Prior": "vloc.localization.localizer",
    "Tracker": "vloc.localization.tracking",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vloc' has no attribute {name!r}")
