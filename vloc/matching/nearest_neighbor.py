"""Mutual nearest neighbour matching with Lowe's ratio test and a distance threshold."""
from __future__ import annotations

import numpy as np
import torch

from vloc.config import MatcherConf
from vloc.features.base import Features


class MutualNNMatcher:
    """Descriptors only: the localizer may match a query against any set of descriptors at once."""

    needs_keypoints = False

    def __init__(self, conf: MatcherConf):
        self.conf = conf

    def __call__(self, feats0: Features, feats1: Features) -> np.ndarray:
        """-> ``(K, 2)`` int64 index pairs ``(i0, i1)``."""
        return self.match_descriptors(feats0.descriptors, feats1.descriptors)

    @torch.inference_mode()
    def match_descriptors(self, desc0: np.ndarray | torch.Tensor, desc1: np.ndarray | torch.Tensor) -> np.ndarray:
        """``desc0`` ``(N, D)``, ``desc1`` ``(M, D)``, unit norm -> ``(K, 2)`` int64 matches."""
        d0 = torch.as_tensor(desc0, dtype=torch.float32)
        d1 = torch.as_tensor(desc1, dtype=torch.float32)
        if len(d0) == 0 or len(d1) == 0:
            return np.zeros((0, 2), np.int64)
        sim = d0 @ d1.T  # (N, M); squared L2 distance = 2 - 2 sim on unit vectors
        k = 2 if d1.shape[0] > 1 else 1
        top_sim, top_idx = sim.topk(k, dim=1)
        best1 = top_idx[:, 0]
        dist = torch.sqrt(torch.clamp(2 - 2 * top_sim, min=0))
        keep = dist[:, 0] <= self.conf.max_distance
        if k == 2 and self.conf.ratio < 1.0:
            keep &= dist[:, 0] <= self.conf.ratio * dist[:, 1]
        best0 = sim.argmax(dim=0)  # (M,)
        keep &= best0[best1] == torch.arange(len(d0))
        i0 = torch.nonzero(keep).squeeze(1)
        return torch.stack([i0, best1[i0]], dim=1).numpy().astype(np.int64)
