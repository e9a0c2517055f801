"""The container every extractor returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Features:
    """Local features of one image.

    Attributes:
        keypoints: ``(N, 2)`` float32 pixel coordinates, COLMAP convention (top-left pixel
            centre at (0.5, 0.5)), in the original (unresized) image.
        descriptors: ``(N, D)`` float32, unit L2 norm.
        scores: ``(N,)`` float32 detector responses.
        image_size: ``(width, height)`` of the original image.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.keypoints)

    @staticmethod
    def empty(dim: int, image_size: tuple[int, int]) -> "Features":
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, dim), np.float32),
                        np.zeros((0,), np.float32), image_size)
