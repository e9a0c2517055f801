"""DELG extraction as the released extractor does it (``../shared/docs/delg-official-weights.md`` 1.4, 1.5, 2.4).

For a uint8 RGB image:

1. if its longest side exceeds 1024, PIL bilinear resize to ``round(w * f), round(h * f)``
   (``scale_factors = (new_h / h, new_w / w)``);
2. ``(x - 128) / 128``; for each of the seven scales ``s`` a TF-style bilinear resize (half-pixel
   centres, no antialiasing) to ``round(H * s), round(W * s)`` (float32 product, round half to even);
3. local: every cell ``(i, j)`` of the stride-32 block3 map is a candidate at box centre
   ``(32 i / s, 32 j / s)`` in the official ``(y, x)`` order, kept when its attention is ``>=`` the
   model's threshold; then the top ``max_features`` by attention over all scales (the released
   NMS at IoU 1.0 removes nothing); descriptors the L2-normalised 128-D codes;
4. global: the raw descriptors of scales 3, 4, 5 (0.707, 1, 1.414), each L2-normalised, summed, L2.

Keypoints are returned in vloc's convention: ``(x, y)`` in the original image's pixels, top-left
pixel centre at (0.5, 0.5). The official location is read as a pixel index (top-left pixel centre at
0), divided by the scale factors, then shifted by 0.5. It is the box centre, not the receptive field's
true centre (which for delf's Keras ResNet is 3 or 2 pixels further, :func:`vloc.models.delg.rf_centres`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vloc.models.delg import DELG, LocalCandidates, gem, model_device, preprocess

SCALES = (0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0)
GLOBAL_SCALES_IND = (3, 4, 5)
MAX_IMAGE_SIZE = 1024
MAX_FEATURES = 1000
STRIDE = 32.0
# score_threshold of the official configurations, by release (delg/*_config.pbtxt, lines 11-15)
RELEASE_THRESHOLDS = {"r50delg_gld_20200814": 175.0, "r101delg_gld_20200814": 166.1,
                      "r50delg_gldv2clean_20200914": 454.6, "r101delg_gldv2clean_20200914": 357.48}


@dataclass
class OfficialOutput:
    """What the released signature returns, for an image given as it is (no step 1)."""

    locations: np.ndarray  # (N, 2) float32 box centres (y, x), pixel indices of the given image
    descriptors: np.ndarray  # (N, 128) float32, raw codes (not normalised), highest attention first
    scores: np.ndarray  # (N,) float32 attention
    scales: np.ndarray  # (N,) float32, 1 / pyramid scale
    global_raw: np.ndarray  # (len(global_scales_ind), D) float32, per-scale embeddings, not normalised


def resize_like_tf(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``tf.image.resize(image, round(float32([H, W]) * scale))``: bilinear, half-pixel centres, no antialias."""
    h, w = x.shape[-2:]
    size = tuple(int(v) for v in np.round(np.array([h, w], np.float32) * np.float32(scale)))
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


@torch.inference_mode()
def run_signature(model: DELG, image: np.ndarray, threshold: float, max_features: int = MAX_FEATURES,
                  scales: Sequence[float] = SCALES, global_scales_ind: Sequence[int] = GLOBAL_SCALES_IND,
                  with_local: bool = True) -> OfficialOutput:
    """Steps 2-4 on ``image`` (uint8 RGB ``(H, W, 3)``, already at most 1024 px): the released
    ``ExtractFeatures`` signature's outputs (global ones raw, as the signature returns them)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    x = preprocess(model.variant, image).contiguous().to(model_device(model))
    wanted_global = set(global_scales_ind)
    if not wanted_global <= set(range(len(scales))):
        raise ValueError(f"global scale indices {sorted(wanted_global)} outside the {len(scales)} scales")
    parts, globals_ = [], {}
    for k, s in enumerate(scales):
        if not with_local and k not in wanted_global:
            continue
        feats = model.backbone(resize_like_tf(x, s), with_conv5=k in wanted_global)
        if k in wanted_global:
            globals_[k] = model.whiten(gem(feats["conv5"], model.gem_p))[0]
        if not with_local:
            continue
        out = model.local_head(feats["conv4"][..., ::2, ::2])  # the stride-32 block3 map
        prob, codes = out["attention"][0, 0].cpu(), out["codes"][0].cpu()
        iy, ix = torch.nonzero(prob >= threshold, as_tuple=True)
        loc = torch.stack([iy.float() * STRIDE / np.float32(s), ix.float() * STRIDE / np.float32(s)], dim=1)
        parts.append((loc.numpy(), codes[:, iy, ix].T.numpy(), prob[iy, ix].numpy(),
                      np.full(len(iy), 1.0 / np.float32(s), np.float32)))
    global_raw = torch.stack([globals_[k] for k in global_scales_ind]).cpu().numpy() if global_scales_ind else \
        np.zeros((0, model.global_dim), np.float32)
    if not with_local or not parts:
        empty = np.zeros((0, 2), np.float32)
        return OfficialOutput(empty, np.zeros((0, 128), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                              global_raw)
    loc, desc, score, scale = (np.concatenate(p).astype(np.float32) for p in zip(*parts, strict=True))
    top = np.argsort(-score, kind="stable")[:max_features]
    return OfficialOutput(loc[top], np.ascontiguousarray(desc[top]), score[top], scale[top], global_raw)


def official_global(global_raw: np.ndarray) -> np.ndarray:
    """Per-scale L2 normalisation, sum, L2: ``(G, D) -> (D,)``."""
    rows = global_raw / np.maximum(np.linalg.norm(global_raw, axis=1, keepdims=True), 1e-12)
    total = rows.sum(axis=0)
    return (total / max(float(np.linalg.norm(total)), 1e-12)).astype(np.float32)


def limit_size(image: np.ndarray, max_size: int = MAX_IMAGE_SIZE) -> tuple[np.ndarray, tuple[float, float]]:
    """Step 1: ``(resized, (new_h / h, new_w / w))``; PIL bilinear, as the released extractor."""
    h, w = image.shape[:2]
    if not max_size or max(h, w) <= max_size:
        return image, (1.0, 1.0)
    f = max_size / max(h, w)
    size = (round(w * f), round(h * f))
    resized = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))  # a writable copy
    return resized, (size[1] / h, size[0] / w)


def extract_official_local(model: DELG, image: np.ndarray, threshold: float, max_features: int = MAX_FEATURES,
                           max_size: int = MAX_IMAGE_SIZE) -> LocalCandidates:
    """Local features of a uint8 RGB image by the official protocol; keypoints as the module docstring
    says. ``max_size`` 0: no step 1."""
    small, (fy, fx) = limit_size(image, max_size)
    out = run_signature(model, small, threshold, max_features, global_scales_ind=())
    keypoints = np.stack([out.locations[:, 1] / fx, out.locations[:, 0] / fy], axis=1) + 0.5
    norms = np.maximum(np.linalg.norm(out.descriptors, axis=1, keepdims=True), 1e-12)
    return LocalCandidates(keypoints.astype(np.float32), (out.descriptors / norms).astype(np.float32), out.scores,
                           (1.0 / out.scales).astype(np.float32))


def extract_official_global(model: DELG, image: np.ndarray, max_size: int = MAX_IMAGE_SIZE) -> np.ndarray:
    """The global descriptor of a uint8 RGB image by the official protocol: ``(D,)`` float32, unit
    norm. ``max_size`` 0: no step 1."""
    small, _ = limit_size(image, max_size)
    return official_global(run_signature(model, small, 0.0, with_local=False).global_raw)
