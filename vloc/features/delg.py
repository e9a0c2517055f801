"""DELG local features: attention-selected, 128-D, from a 7-scale image pyramid (see :mod:`vloc.models.delg`)."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from vloc.config import FeatureConf
from vloc.features.base import Features
from vloc.models.delg import DELG, HOW_TO_GET_WEIGHTS, LOCAL_DIM, LOCAL_SCALES, extract_local, load_delg, preprocess
from vloc.models.delg_official import extract_official_local

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int, device: str) -> DELG:
    return load_delg(path).to(device)


def delg_from_conf(variant: str, weights: str, what: str, device: torch.device | str = "cpu") -> DELG:
    """The DELG model a config names on ``device`` (shared between the local and global extractors
    of one process)."""
    if not weights:
        raise ValueError(f"{what}: DELG needs a weights file (set 'weights'); {HOW_TO_GET_WEIGHTS}")
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: DELG weights {path} not found; {HOW_TO_GET_WEIGHTS}")
    model = _cached(str(path), path.stat().st_mtime_ns, str(device))
    if variant and model.variant != variant:
        raise ValueError(f"{what}: {path} holds a DELG {model.variant!r} model but the config asks for {variant!r}")
    return model


def is_official(model: DELG) -> bool:
    """Whether the weight file asks for the released extractor's protocol (``extra["extraction"]``)."""
    return model.extra.get("extraction", "vloc") == "official"


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> ``(H, W, 3)`` uint8 RGB (grey is replicated)."""
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    return image


def resize_longest(image: np.ndarray, resize_max: int) -> np.ndarray:
    h, w = image.shape[:2]
    if resize_max and max(h, w) > resize_max:
        scale = resize_max / max(h, w)
        image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return image


class DelgExtractor:
    """``conf.max_keypoints`` DELG features; keypoints in COLMAP's convention in the original image,
    descriptors the L2-normalised 128-D autoencoder codes, scores the attention. The attention
    threshold is the weight file's ``extra["attention_threshold"]`` (0 when absent).

    The file's ``extra["extraction"]`` picks the protocol: ``"vloc"`` (:func:`extract_local`: stride-16
    cells at their receptive-field centres, antialiased pyramid, the image first shrunk to
    ``resize_max`` with area interpolation) or ``"official"`` (:mod:`vloc.models.delg_official`:
    stride-32 box centres, TF-style pyramid, PIL bilinear to ``resize_max``; the released configs use
    1024 and 1000 features)."""

    dim = LOCAL_DIM

    def __init__(self, conf: FeatureConf, device: torch.device | str = "cpu"):
        self.conf = conf
        self.model = delg_from_conf(conf.variant, conf.weights, "features", device)
        self.threshold = float(self.model.extra.get("attention_threshold", 0.0))

    def __call__(self, image: np.ndarray) -> Features:
        rgb = to_rgb(image)
        height, width = rgb.shape[:2]
        if is_official(self.model):
            found = extract_official_local(self.model, rgb, self.threshold, self.conf.max_keypoints, self.conf.resize_max)
            if not len(found.keypoints):
                return Features.empty(self.dim, (width, height))
            return Features(found.keypoints, found.descriptors, found.scores, (width, height))
        small = resize_longest(rgb, self.conf.resize_max)
        x = preprocess(self.model.variant, small)
        found = extract_local(self.model, x, LOCAL_SCALES, self.threshold, self.conf.max_keypoints, self.conf.bf16)[0]
        if not len(found.keypoints):
            return Features.empty(self.dim, (width, height))
        ratio = np.array([width / small.shape[1], height / small.shape[0]], np.float32)
        return Features(found.keypoints * ratio, found.descriptors, found.scores, (width, height))
