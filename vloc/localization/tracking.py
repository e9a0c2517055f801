"""Sequential localization: each frame's retrieval is restricted to map images near the last pose."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import cv2
import pycolmap

from vloc.io.images import list_images
from vloc.localization.localizer import ImageInput, LocalizationResult, Localizer, Prior

logger = logging.getLogger(__name__)


class Tracker:
    """Feed frames in order. The prior is the last localized pose; after a failure (tracking
    lost) the next frame uses global retrieval, and a frame whose prior images fail is retried
    with global retrieval by the localizer itself."""

    def __init__(self, localizer: Localizer, radius: float | None = None, camera: pycolmap.Camera | dict | None = None):
        self.localizer = localizer
        self.radius = localizer.prior_radius if radius is None else radius
        self.camera = camera
        self.last: LocalizationResult | None = None

    def track(self, image: ImageInput, camera: pycolmap.Camera | dict | None = None,
              name: str | None = None) -> LocalizationResult:
        prior = Prior.from_result(self.last, self.radius) if self.last is not None else None
        result = self.localizer.localize(image, camera if camera is not None else self.camera, prior, name)
        self.last = result if result.success else None
        return result


def iter_frames(source: Path, fps: float) -> Iterator[tuple[float, str, ImageInput]]:
    """``(timestamp s, name, image)`` from a folder (sorted by name, ``index / fps``) or a video."""
    if source.is_dir():
        for i, name in enumerate(list_images(source)):
            yield i / fps, name, source / name
        return
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise ValueError(f"{source}: neither an image folder nor a video OpenCV can open")
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            yield stamp, f"frame_{index:06d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()
