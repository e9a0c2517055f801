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
        centre = prior.cam_from_world.inverse().translation
        near = np.array(sorted(self._tree.query_ball_point(centre, prior.radius) if self._tree is not None else []),
                        np.int64)
        if len(near) == 0:
            return [global_hits]
        near_scores = np.asarray(self.store.global_whitened[near]) @ query[0]
        order = np.argsort(-near_scores, kind="stable")[:k]
        return [("prior", near[order], near_scores[order]), global_hits]
