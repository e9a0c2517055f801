"""Which map images a query is matched against: global retrieval, or the most similar images
near a prior pose (a KD-tree over camera centres, never an ``N x N`` matrix)."""
from __future__ import annotations

import faiss
import numpy as np
from scipy.spatial import cKDTree

from vloc.localization.result import Prior
from vloc.mapping.store import MapStore
from vloc.retrieval.index import search


class ImageRetriever:
    """Retrieval over one map layer: its FAISS index and the store's whitened rows and centres."""

    def __init__(self, store: MapStore, index: faiss.Index):
        if index.ntotal != len(store):
            raise ValueError(f"{store.directory}: the global index has {index.ntotal} rows for {len(store)} images")
        self.store, self.index = store, index
        self._tree = cKDTree(np.asarray(store.centres)) if len(store) else None

    def whiten(self, raw: np.ndarray) -> np.ndarray:
        """``(D_g,)`` or ``(1, D_g)`` raw global descriptor -> ``(1, d)`` row of this layer's index."""
        return self.store.whitening(raw)

    def _near(self, centre: np.ndarray, radius: float) -> np.ndarray:
        """Rows of the map images whose centres lie within ``radius`` of ``(3,)`` ``centre``.
        Any finite input works: a ball that misses the images' bounding box or holds all of it is
        settled without the KD-tree, whose squared distances overflow past ~1e154; a centre that
        overflowed to inf or nan (a prior with translations near 1e308) is near nothing."""
        centre = np.asarray(centre, np.float64)
        if self._tree is None or not np.all(np.isfinite(centre)):
            return np.zeros(0, np.int64)
        lo, hi = self._tree.mins, self._tree.maxes
        nearest = _norm(np.maximum(np.maximum(lo - centre, centre - hi), 0.0))
        farthest = _norm(np.maximum(np.abs(centre - lo), np.abs(centre - hi)))
        if radius < nearest:
            return np.zeros(0, np.int64)
        if radius >= farthest:
            return np.arange(self._tree.n, dtype=np.int64)
        if farthest > 1e150:  # far out, on the ball's edge: distances scaled, one pass over the centres
            d = np.linalg.norm((np.asarray(self.store.centres) - centre) / farthest, axis=1)
            return np.flatnonzero(d <= radius / farthest).astype(np.int64)
        return np.array(sorted(self._tree.query_ball_point(centre, radius)), np.int64)

    def retrievals(self, query: np.ndarray, k: int, prior: Prior | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``(mode, image rows, similarity scores)`` to try in order for the whitened ``(1, d)``
        ``query``: the ``k`` most similar images near the prior first (when there are any), then
        the global top-``k``."""
        scores, ids = search(self.index, query, k)
        found = ids[0] >= 0
        global_hits = ("global", ids[0][found], scores[0][found])
        if prior is None:
            return [global_hits]
        global_hits = ("global after prior", *global_hits[1:])
        near = self._near(prior.cam_from_world.inverse().translation, prior.radius)
        if len(near) == 0:
            return [global_hits]
        near_scores = np.asarray(self.store.global_whitened[near]) @ query[0]
        order = np.argsort(-near_scores, kind="stable")[:k]
        return [("prior", near[order], near_scores[order]), global_hits]


def _norm(v: np.ndarray) -> float:
    """Euclidean norm without overflow for any finite ``v``."""
    scale = float(np.max(np.abs(v))) if v.size else 0.0
    return 0.0 if scale == 0 else scale * float(np.linalg.norm(v / scale))
