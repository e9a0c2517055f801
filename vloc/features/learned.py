"""Learned local features from kornia's implementations, with weights from the offline manager.

ALIKED (n16, n16rot, n32), DISK and XFeat. kornia returns keypoints in its pixel frame (the
centre of the top-left pixel at (0, 0)) on the resized network input; :class:`Features` holds
them in COLMAP's convention on the original image.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from kornia.feature import ALIKED, DISK, XFeat

from vloc.config import FeatureConf
from vloc.features.base import Features
from vloc.models.weights import load_checkpoint, load_into

logger = logging.getLogger(__name__)


class LearnedExtractor:
    """Shared resizing, batching and keypoint bookkeeping; subclasses run the network.

    ``__call__`` takes one ``(H, W)`` or ``(H, W, 3)`` uint8 image; :meth:`batch` takes a list
    and runs images of the same size together through the network on ``device`` (the features
    come back to the CPU as numpy arrays).
    """

    dim: int
    size_multiple = 1  # network input sides are rounded to a multiple of this
    model: torch.nn.Module

    def __init__(self, conf: FeatureConf, device: torch.device | str = "cpu"):
        self.conf = conf
        self.device = torch.device(device)

    def _input_size(self, width: int, height: int) -> tuple[int, int]:
        scale = min(1.0, self.conf.resize_max / max(width, height)) if self.conf.resize_max else 1.0
        m = self.size_multiple
        return max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m)

    def _to_tensor(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """``(3, h, w)`` float RGB in [0, 1] at the network input ``size`` = ``(w, h)``."""
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0

    def __call__(self, image: np.ndarray) -> Features:
        return self.batch([image])[0]

    @torch.inference_mode()
    def batch(self, images: list[np.ndarray]) -> list[Features]:
        out: list[Features | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((image.shape[1], image.shape[0]), []).append(i)
        for (width, height), idx in groups.items():
            size = self._input_size(width, height)
            x = torch.stack([self._to_tensor(images[i], size) for i in idx]).to(self.device)
            for i, (kps, desc, scores) in zip(idx, self._detect(x), strict=True):
                out[i] = self._features(kps, desc, scores, size, (width, height))
        return out

    def _detect(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(B, 3, h, w)`` -> per image ``(keypoints (N, 2) kornia pixel frame, descriptors, scores)``."""
        raise NotImplementedError

    def _features(self, kps: torch.Tensor, desc: torch.Tensor, scores: torch.Tensor,
                  size: tuple[int, int], image_size: tuple[int, int]) -> Features:
        if len(kps) == 0:
            return Features.empty(self.dim, image_size)
        kps, desc, scores = kps.cpu(), desc.cpu(), scores.cpu()
        order = torch.argsort(scores.float(), descending=True)[: self.conf.max_keypoints]
        xy = kps[order].float().numpy()
        # kornia: top-left pixel centre at (0, 0) of the network input; COLMAP: (0.5, 0.5) of the original.
        xy = (xy + 0.5) * np.array([image_size[0] / size[0], image_size[1] / size[1]], np.float32)
        d = torch.nn.functional.normalize(desc[order].float(), dim=1)
        return Features(xy.astype(np.float32), d.numpy().astype(np.float32),
                        scores[order].float().numpy().astype(np.float32), image_size)


class AlikedExtractor(LearnedExtractor):
    """ALIKED; ``conf.name`` is the weight name (``aliked-n16``, ``aliked-n16rot``, ``aliked-n32``).
    Top-k mode: the ``max_keypoints`` strongest strict maxima of the score map."""

    dim = 128

    def __init__(self, conf: FeatureConf, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        self.model = ALIKED(conf.name, max_num_keypoints=conf.max_keypoints, detection_threshold=0.0)
        load_into(self.model, load_checkpoint(conf.name), conf.name, derived={"dkd.hw_grid"})
        self.model.to(self.device)

    def _detect(self, x):
        return [(f.keypoints, f.descriptors, f.keypoint_scores) for f in self.model(x)]


class DiskExtractor(LearnedExtractor):
    """DISK (the "depth" weights): the ``max_keypoints`` strongest maxima of the heatmap (5x5 NMS)."""

    dim = 128

    def __init__(self, conf: FeatureConf, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        self.model = DISK()
        load_into(self.model, load_checkpoint("disk")["extractor"], "disk")
        self.model.to(self.device)

    def _detect(self, x):
        feats = self.model(x, n=self.conf.max_keypoints, window_size=5, pad_if_not_divisible=True)
        return [(f.keypoints, f.descriptors, f.detection_scores) for f in feats]


class XFeatExtractor(LearnedExtractor):
    """XFeat sparse keypoints (64-D descriptors). Inputs are resized to multiples of 32 here, so
    kornia does not resize again and its keypoints are in the input's pixel frame."""

    dim = 64
    size_multiple = 32

    def __init__(self, conf: FeatureConf, device: torch.device | str = "cpu"):
        super().__init__(conf, device)
        self.model = XFeat(top_k=conf.max_keypoints, detection_threshold=0.05)
        load_into(self.model.net, load_checkpoint("xfeat"), "xfeat")
        self.model.to(self.device)

    def _detect(self, x):
        return [(f["keypoints"], f["descriptors"], f["scores"]) for f in self.model.detectAndCompute(x)]
