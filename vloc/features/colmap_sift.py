"""COLMAP's own SIFT, for maps imported from COLMAP projects (``vloc map import colmap``).

COLMAP extracts with its SIFT (L1-root normalisation, first octave -1, up to 8,192 features) and
stores each descriptor in its database as uint8: ``min(255, round(512 x))`` of the unit float
vector. vloc's ``sift`` is OpenCV's SIFT with RootSIFT: a close cousin, but not the same vectors
(another scale space and orientation binning), so a query described by it matches a COLMAP map's
descriptors worse than one described by COLMAP. This extractor runs pycolmap's extractor (on the
CPU) and quantizes exactly as COLMAP's database does; both the imported uint8 descriptors and
these become unit float vectors through :func:`unit_descriptors`, so a query and a map image are
described by the same numbers for the same pixels. Keypoints: COLMAP's pixel convention already.
"""
from __future__ import annotations

import numpy as np
import pycolmap

from vloc.config import FeatureConf
from vloc.features.base import Features


def colmap_uint8(descriptors: np.ndarray) -> np.ndarray:
    """``(N, 128)`` unit float descriptors -> COLMAP's stored uint8 (``min(255, round(512 x))``)."""
    return np.minimum(255, np.round(512.0 * np.asarray(descriptors, np.float32))).astype(np.uint8)


def unit_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """``(N, D)`` uint8 (COLMAP's stored SIFT) or float descriptors -> unit-norm float32 rows."""
    d = np.asarray(descriptors, np.float32)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


class ColmapSiftExtractor:
    """``conf.max_keypoints`` (COLMAP's ``max_num_features``) and ``conf.resize_max`` (its
    ``max_image_size``: the image is shrunk by COLMAP's own bilinear rescale, the keypoints scaled
    back) as in the project being imported. Scores: COLMAP's order (it sorts by scale), as ranks.
    ``device`` is accepted like every extractor's; pycolmap's CPU extractor runs."""

    dim = 128
    cpu_only = True  # no torch model: the device choice does not apply

    def __init__(self, conf: FeatureConf, device: object = "cpu"):
        self.conf = conf
        options = pycolmap.FeatureExtractionOptions()
        options.sift.max_num_features = conf.max_keypoints
        options.max_image_size = conf.resize_max if conf.resize_max else 1 << 30
        self._extractor = pycolmap.FeatureExtractor.create(options, device=pycolmap.Device.cpu)

    def __call__(self, image: np.ndarray) -> Features:
        height, width = image.shape[:2]
        bitmap = pycolmap.Bitmap.from_array(np.ascontiguousarray(image))
        bitmap = bitmap if bitmap.is_grey else bitmap.clone_as_grey()  # COLMAP's own grey conversion
        scale = (1.0, 1.0)
        if self.conf.resize_max and max(width, height) > self.conf.resize_max:
            factor = self.conf.resize_max / max(width, height)
            new = (max(1, round(width * factor)), max(1, round(height * factor)))
            bitmap.rescale(*new)
            scale = (width / new[0], height / new[1])
        keypoints, descriptors = self._extractor.extract(bitmap)
        if len(keypoints) == 0:
            return Features.empty(self.dim, (width, height))
        xy = np.array([(k.x, k.y) for k in keypoints], np.float32) * np.array(scale, np.float32)
        desc = unit_descriptors(np.asarray(descriptors.data))
        ranks = 1.0 - np.arange(len(xy), dtype=np.float32) / len(xy)
        return Features(xy, desc, ranks, (width, height))
