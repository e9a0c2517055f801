"""LightGlue (ALIKED, DISK) and LighterGlue (XFeat): kornia's network, offline weights.

Adaptive depth (early stopping) and point pruning stay on where the weights were trained for
them; on a CPU kornia prunes at any keypoint count.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from kornia.feature import LightGlue

from vloc.config import MatcherConf
from vloc.features.base import Features
from vloc.models.weights import load_checkpoint, load_into

# conf.features -> (kornia configuration name, weight name)
WEIGHTS_FOR = {
    "aliked": ("aliked", "aliked-lightglue"),
    "disk": ("disk", "disk-lightglue"),
    "xfeat": ("xfeat", "xfeat-lighterglue"),
}


def _kornia_keys(state: dict) -> dict:
    """Checkpoint keys -> kornia's: drop LighterGlue's ``matcher.`` prefix (and its bundled
    extractor) and the DISK release's unused ``log_assignment.N.r`` scalars, and rename the
    original release's ``self_attn.N`` / ``cross_attn.N``."""
    if any(k.startswith("matcher.") for k in state):
        state = {k[len("matcher."):]: v for k, v in state.items() if k.startswith("matcher.")}
    state = {k: v for k, v in state.items() if not re.fullmatch(r"log_assignment\.\d+\.r", k)}
    return {re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", k): v for k, v in state.items()}


class LightGlueMatcher:
    """Matches two :class:`Features` with their keypoints; ``conf.features`` picks the weights."""

    needs_keypoints = True

    def __init__(self, conf: MatcherConf, device: torch.device | str = "cpu"):
        if conf.features not in WEIGHTS_FOR:
            raise ValueError(f"LightGlue has no weights for features {conf.features!r}; "
                             f"valid: {', '.join(sorted(WEIGHTS_FOR))}")
        self.conf = conf
        kornia_name, weight_name = WEIGHTS_FOR[conf.features]
        settings = dict(LightGlue.features[kornia_name])
        settings.pop("weights")
        for key in ("depth_confidence", "width_confidence", "filter_threshold"):
            if getattr(conf, key) is not None:
                settings[key] = getattr(conf, key)
        self.model = LightGlue(None, **settings)
        load_into(self.model, _kornia_keys(load_checkpoint(weight_name)), weight_name,
                  derived={"confidence_thresholds"})
        self.device = torch.device(device)
        self.model.to(self.device)

    def _image(self, feats: Features) -> dict[str, torch.Tensor]:
        # COLMAP convention -> pixel frame; LightGlue normalises by the image size anyway.
        return dict(keypoints=torch.from_numpy(feats.keypoints - 0.5)[None].to(self.device),
                    descriptors=torch.from_numpy(feats.descriptors)[None].to(self.device),
                    image_size=torch.tensor([feats.image_size], dtype=torch.float32, device=self.device))

    @torch.inference_mode()
    def __call__(self, feats0: Features, feats1: Features) -> np.ndarray:
        """-> ``(K, 2)`` int64 index pairs ``(i0, i1)``."""
        if len(feats0) == 0 or len(feats1) == 0:
            return np.zeros((0, 2), np.int64)
        out = self.model({"image0": self._image(feats0), "image1": self._image(feats1)})
        return out["matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2)

    def match_many(self, query: Features, others: list[Features]) -> list[np.ndarray]:
        """``query`` against each of ``others``: one network call per pair, so that point pruning
        stays on (kornia cannot prune inside a batch). One padded batch without pruning was not
        reliably faster on 2 loaded cores (docs/benchmarks.md, "Presets and learned features").
        """
        return [self(query, other) for other in others]
