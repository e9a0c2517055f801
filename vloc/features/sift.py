"""SIFT from OpenCV (measured faster than pycolmap's CPU SIFT here), optionally RootSIFT."""
from __future__ import annotations

import cv2
import numpy as np

from vloc.config import FeatureConf
from vloc.features.base import Features
from vloc.io.images import to_grayscale


class SiftExtractor:
    dim = 128

    def __init__(self, conf: FeatureConf):
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
        kps, desc = self._sift.detectAndCompute(gray, None)
        if not kps:
            return Features.empty(self.dim, (width, height))
        kps, desc = kps[: self.conf.max_keypoints], desc[: self.conf.max_keypoints]
        # OpenCV puts the top-left pixel centre at (0, 0); COLMAP at (0.5, 0.5).
        xy = cv2.KeyPoint_convert(kps).astype(np.float32)
        xy = (xy + 0.5) / np.array([gray.shape[1] / width, gray.shape[0] / height], np.float32)
        scores = np.array([k.response for k in kps], dtype=np.float32)
        desc = desc.astype(np.float32)
        if self.conf.root_sift:
            desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12))
        desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return Features(xy, desc, scores, (width, height))
