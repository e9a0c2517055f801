"""Models shared between localizers: maps served side by side with the same preset load its
extractor, matcher and global model once, on the cache's device."""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, Iterator

from vloc.device import resolve_device


class ModelCache:
    """Models by ``(kind, configuration)``; configurations are frozen dataclasses (hashable).

    A model is built by its factory the first time it is asked for and shared afterwards; the
    models vloc runs are used read-only at inference (torch modules in eval mode, OpenCV SIFT).
    ``device`` (:func:`vloc.device.resolve_device`'s choices, default ``auto``): every model of
    this cache runs there; a process serving on two devices keeps one cache per device."""

    def __init__(self, device: Any = "auto") -> None:
        self.device = resolve_device(device) if device is None or isinstance(device, str) else device
        self._models: dict[tuple[str, Hashable], Any] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, conf: Hashable, factory: Callable[..., Any]) -> Any:
        """``factory(conf, device=self.device)`` the first time ``(kind, conf)`` is asked for."""
        with self._lock:
            key = (kind, conf)
            if key not in self._models:
                self._models[key] = factory(conf, device=self.device)
            return self._models[key]

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[Any]:
        """The models built so far."""
        with self._lock:
            return iter(list(self._models.values()))
