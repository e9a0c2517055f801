"""Mutual nearest neighbour matching with Lowe's ratio test and a distance threshold."""
from __future__ import annotations

import functools
import logging
from enum import StrEnum

import numpy as np
import torch

from vloc.config import MatcherConf
from vloc.features.base import Features

logger = logging.getLogger(__name__)


class Precision(StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


class MutualNNMatcher:
    """Descriptors only: the localizer may match a query against any set of descriptors at once.
    The similarity products run on ``device``; ``auto`` precision is bfloat16 only on a CPU that
    multiplies it natively, float32 elsewhere (a GPU included)."""

    needs_keypoints = False
    candidates = 3  # bfloat16: best candidates per row whose distances are recomputed in float32
    block_rows = 256  # similarity rows reduced at once: a (256, M) block stays in the CPU's caches
    excluded_sim = -4.0  # guided matching's excluded pairs: below any unit-vector similarity (-1)

    def __init__(self, conf: MatcherConf, device: torch.device | str = "cpu"):
        try:
            precision = Precision(conf.precision)
        except ValueError:
            raise ValueError(f"matcher precision {conf.precision!r}; valid: {', '.join(p.value for p in Precision)}") \
                from None
        self.device = torch.device(device)
        if precision is Precision.AUTO:
            on_cpu = self.device.type == "cpu"
            precision = Precision.BFLOAT16 if on_cpu and native_bfloat16() else Precision.FLOAT32
        self.conf, self.bfloat16 = conf, precision is Precision.BFLOAT16
        logger.debug("mutual NN similarities in %s", precision)

    def __call__(self, feats0: Features, feats1: Features) -> np.ndarray:
        """-> ``(K, 2)`` int64 index pairs ``(i0, i1)``."""
        return self.match_descriptors(feats0.descriptors, feats1.descriptors)

    @torch.inference_mode()
    def match_descriptors(self, desc0: np.ndarray | torch.Tensor, desc1: np.ndarray | torch.Tensor,
                          allowed: np.ndarray | None = None) -> np.ndarray:
        """``desc0`` ``(N, D)``, ``desc1`` ``(M, D)``, unit norm -> ``(K, 2)`` int64 matches.
        ``allowed`` ``(N, M)`` bool: only these pairs are candidates (guided matching); the ratio
        test and the mutual check then run among them."""
        d0 = torch.as_tensor(desc0, dtype=torch.float32, device=self.device)
        d1 = torch.as_tensor(desc1, dtype=torch.float32, device=self.device)
        if len(d0) == 0 or len(d1) == 0:
            return np.zeros((0, 2), np.int64)
        if allowed is not None and allowed.shape != (len(d0), len(d1)):
            raise ValueError(f"allowed pairs {allowed.shape} for {len(d0)} x {len(d1)} descriptors")
        top_sim, top_idx, at_best, col_max = (t.cpu() for t in self._reduce(
            d0, d1, None if allowed is None else torch.from_numpy(np.ascontiguousarray(allowed)).to(self.device)))
        best1 = top_idx[:, 0]
        dist = torch.sqrt(torch.clamp(2 - 2 * top_sim, min=0))
        keep = dist[:, 0] <= self.conf.max_distance
        if dist.shape[1] > 1 and self.conf.ratio < 1.0:
            keep &= dist[:, 0] <= self.conf.ratio * dist[:, 1]
        # mutual: i is the best of its match's column (a column max, 3-6x cheaper than an argmax
        # across rows here); rows tied there (bfloat16 rounds) leave the one with the best exact score
        keep &= at_best >= col_max[best1]
        i0 = torch.nonzero(keep).squeeze(1).numpy()
        i1, score = best1.numpy()[i0], top_sim[:, 0].numpy()[i0]
        by_score = np.argsort(-score, kind="stable")
        _, first = np.unique(i1[by_score], return_index=True)
        one = np.sort(by_score[first])
        return np.stack([i0[one], i1[one]], axis=1).astype(np.int64)

    def _reduce(self, d0: torch.Tensor, d1: torch.Tensor,
                allowed: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Similarities ``d0 @ d1.T`` reduced block by block of rows (1.5x faster than the whole
        ``(N, M)`` matrix at 4,096 x 4,096) -> the best ``(N, k)`` similarities (exact, descending)
        and their columns, each row's similarity to its best column and each column's maximum,
        both in the matmul's precision (the mutual check compares like with like)."""
        dtype = torch.bfloat16 if self.bfloat16 else torch.float32
        a, bt = d0.to(dtype), d1.to(dtype).T.contiguous()
        k = min(self.candidates if self.bfloat16 else 2, len(d1))
        col_max = torch.full((len(d1),), -torch.inf, dtype=dtype, device=d0.device)
        sims, idxs, at_best = [], [], []
        for start in range(0, len(d0), self.block_rows):
            sim = a[start:start + self.block_rows] @ bt  # (B, M); squared L2 distance = 2 - 2 sim
            if allowed is not None:
                excluded = ~allowed[start:start + self.block_rows]
                sim.masked_fill_(excluded, self.excluded_sim)
            torch.maximum(col_max, sim.amax(dim=0), out=col_max)
            top_sim, top_idx = sim.topk(k, dim=1)
            if self.bfloat16:  # ~3 significant digits: re-score the candidates in float32
                top_sim = torch.einsum("nd,nkd->nk", d0[start:start + self.block_rows], d1[top_idx])
                if allowed is not None:  # a row with fewer allowed pairs than candidates
                    top_sim.masked_fill_(excluded.gather(1, top_idx), self.excluded_sim)
                top_sim, order = top_sim.sort(dim=1, descending=True)
                top_idx = top_idx.gather(1, order)
            sims.append(top_sim.float())
            idxs.append(top_idx)
            at_best.append(sim.gather(1, top_idx[:, :1]).squeeze(1))
        return torch.cat(sims), torch.cat(idxs), torch.cat(at_best), col_max
