"""SIFT from OpenCV (measured faster than pycolmap's CPU SIFT here), optionally RootSIFT."""
from __future__ import annotations

import cv2
import numpy as np

from vloc.config import FeatureConf
from vloc.features.base import Features
from vloc.io.images import to_grayscale


OPENCV_UPSAMPLING_SHIFT = 0.25  # px of the detector's input, see SiftExtractor.__call__


class SiftExtractor:
    """OpenCV on the CPU: ``device`` is accepted like every extractor's and not used."""

    dim = 128
    cpu_only = True  # no torch model: the device choice does not apply

    def __init__(self, conf: FeatureConf, device: object = "cpu"):
        self.conf = conf
        # A lower contrast threshold than OpenCV's 0.04 keeps enough points on weakly textured
        # scenes (roads, walls); the keypoint budget then keeps the strongest responses.
        self._sift = cv2.SIFT_create(nfeatures=conf.max_keypoints, contrastThreshold=0.02)

    def __call__(self, image: np.ndarray) -> Features:
        gray = to_grayscale(image)
        height, width = gray.shape
        if self.conf.resize_max and max(width, height) > self.conf.resize_max:
            scale = self.conf.resize_max / max(width, height)
            gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        # OpenCV always doubles its input first. Fed the image at half size, its first octave has the
        # image's own resolution, as COLMAP's first_octave 0, for a quarter of the pixels (the detail
        # below that scale, which the doubled octave would resolve, is averaged away).
        detect_on = gray if self.conf.upsample else cv2.resize(
            gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)
        kps, desc = self._sift.detectAndCompute(detect_on, None)
        if not kps:
            return Features.empty(self.dim, (width, height))
        kps, desc = kps[: self.conf.max_keypoints], desc[: self.conf.max_keypoints]
        # OpenCV puts the top-left pixel centre at (0, 0); COLMAP at (0.5, 0.5). Its doubled first octave
        # maps input pixel x to 2x + 0.5, and it halves that back: every keypoint comes out 0.25 px to the
        # right of and below the feature (measured on blobs at known positions: tests/test_geometry.py).
        xy = cv2.KeyPoint_convert(kps).astype(np.float32) - OPENCV_UPSAMPLING_SHIFT
        xy = (xy + 0.5) / np.array([detect_on.shape[1] / width, detect_on.shape[0] / height], np.float32)
        scores = np.array([k.response for k in kps], dtype=np.float32)
        desc = desc.astype(np.float32)
        if self.conf.root_sift:
            desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12))
        desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return Features(xy, desc, scores, (width, height))
