"""Models shared between localizers: maps served side by side with the same preset load its
extractor, matcher and global model once."""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable


class ModelCache:
    """Models by ``(kind, configuration)``; configurations are frozen dataclasses (hashable).

    A model is built by its factory the first time it is asked for and shared afterwards; the
    models vloc runs are used read-only at inference (torch modules in eval mode, OpenCV SIFT)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, Hashable], Any] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, conf: Hashable, factory: Callable[[Hashable], Any]) -> Any:
        with self._lock:
            key = (kind, conf)
            if key not in self._models:
                self._models[key] = factory(conf)
            return self._models[key]

    def __len__(self) -> int:
        return len(self._models)
