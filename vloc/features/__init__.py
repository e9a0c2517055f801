"""Local feature extractors behind one registry.

Every extractor maps an image (``(H, W)`` or ``(H, W, 3)`` uint8) to :class:`Features` whose
keypoints use COLMAP's pixel convention: the centre of the top-left pixel is at (0.5, 0.5).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

from vloc.config import FeatureConf
from vloc.features.base import Features
from vloc.features.colmap_sift import ColmapSiftExtractor
from vloc.features.delg import DelgExtractor
from vloc.features.learned import AlikedExtractor, DiskExtractor, XFeatExtractor
from vloc.features.sift import SiftExtractor
from vloc.registry import create

EXTRACTORS: dict[str, Callable[[FeatureConf], Callable]] = {
    "sift": SiftExtractor,
    "colmap-sift": ColmapSiftExtractor,  # COLMAP's SIFT, for maps imported from COLMAP projects
    "aliked-n16": AlikedExtractor,
    "aliked-n16rot": AlikedExtractor,
    "aliked-n32": AlikedExtractor,
    "disk": DiskExtractor,
    "xfeat": XFeatExtractor,
    "delg": DelgExtractor,  # local features of DELG (vloc/models/delg.py); needs FeatureConf.weights
}


def make_extractor(conf: FeatureConf, device: "torch.device | str" = "cpu"):
    """The extractor ``conf`` names, its network on ``device`` (SIFT runs on the CPU whatever it is)."""
    return create(EXTRACTORS, conf, "feature extractor", device=device)


__all__ = ["EXTRACTORS", "Features", "make_extractor"]
