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

    def retrievals(self, query: np.ndarray, k: int, prior: Prior | None) -> list[tuple[str, np.ndarray]]:
        """``(mode, image rows)`` to try in order for the whitened ``(1, d)`` ``query``: the ``k``
        most similar images near the prior first (when there are any), then the global top-``k``."""
        _, ids = search(self.index, query, k)
        global_rows = ids[0][ids[0] >= 0]
        if prior is None:
            return [("global", global_rows)]
        centre = prior.cam_from_world.inverse().translation
        found = self._tree.query_ball_point(centre, prior.radius) if self._tree is not None else []
        near = np.array(sorted(found), np.int64)
        if len(near) == 0:
            return [("global after prior", global_rows)]
        scores = np.asarray(self.store.global_whitened[near]) @ query[0]
        best = near[np.argsort(-scores, kind="stable")[:k]]
        return [("prior", best), ("global after prior", global_rows)]
