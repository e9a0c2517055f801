"""DELG global descriptor: GeM + whitening FC on conv5, over scales {0.707, 1, 1.414}, L2-normalised.

The weight file's ``extra["extraction"]`` picks the protocol: ``"vloc"`` (area-shrunk to
``resize_max``, antialiased pyramid) or ``"official"`` (PIL bilinear to ``resize_max``, 1024 in the
released configs, TF-style pyramid; :mod:`vloc.models.delg_official`). Both L2-normalise each scale's
descriptor, combine and L2-normalise again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vloc.config import GlobalConf
from vloc.features.delg import delg_from_conf, is_official, resize_longest, to_rgb
from vloc.models.delg import GLOBAL_SCALES, extract_global, preprocess
from vloc.models.delg_official import extract_official_global

if TYPE_CHECKING:
    import torch


class DelgGlobal:
    def __init__(self, conf: GlobalConf, device: "torch.device | str" = "cpu"):
        self.conf = conf
        self.model = delg_from_conf(conf.variant, conf.weights, "global_desc", device)
        self.dim = self.model.global_dim

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB (grey is replicated) -> ``(global_dim,)`` float32, unit norm."""
        if is_official(self.model):
            return extract_official_global(self.model, to_rgb(image), self.conf.resize_max)
        x = preprocess(self.model.variant, resize_longest(to_rgb(image), self.conf.resize_max))
        return extract_global(self.model, x, GLOBAL_SCALES, self.conf.bf16)[0].numpy().astype(np.float32)
