"""Local feature extractors behind one registry.

Every extractor maps an image (``(H, W)`` or ``(H, W, 3)`` uint8) to :class:`Features` whose
keypoints use COLMAP's pixel convention: the centre of the top-left pixel is at (0.5, 0.5).
"""
from __future__ import annotations

from typing import Callable

from vloc.config import FeatureConf
from vloc.features.base import Features
from vloc.features.sift import SiftExtractor

EXTRACTORS: dict[str, Callable[[FeatureConf], Callable]] = {
    "sift": SiftExtractor,
}


def make_extractor(conf: FeatureConf):
    try:
        factory = EXTRACTORS[conf.name]
    except KeyError:
        raise ValueError(f"Unknown feature extractor {conf.name!r}; valid: {', '.join(sorted(EXTRACTORS))}") from None
    return factory(conf)


__all__ = ["EXTRACTORS", "Features", "make_extractor"]
