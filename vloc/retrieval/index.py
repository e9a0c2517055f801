"""PCA-whitening learned from the map's own descriptors, and a FAISS inner-product index."""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class Whitening:
    """``y = normalize(projection @ (x - mean))``. ``projection``: ``(d, D)``; ``mean``: ``(D,)``."""

    mean: np.ndarray
    projection: np.ndarray

    @staticmethod
    def learn(descriptors: np.ndarray, dim: int, shrinkage: float = 0.1) -> "Whitening":
        """Learn from ``(N, D)`` unit descriptors. The output size is clipped to ``N - 1``;
        eigenvalues are shrunk toward their mean so that a small map does not amplify noise."""
        n, full = descriptors.shape
        mean = descriptors.mean(axis=0)
        centred = (descriptors - mean).astype(np.float64)
        dim = max(1, min(dim, n - 1, full))
        if n < 2:
            return Whitening(mean.astype(np.float32), np.eye(full, dtype=np.float32))
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        eig = s[:dim] ** 2 / max(n - 1, 1)
        eig = eig + shrinkage * eig.mean()
        projection = vt[:dim] / np.sqrt(eig)[:, None]
        return Whitening(mean.astype(np.float32), projection.astype(np.float32))

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:
        y = (np.atleast_2d(descriptors) - self.mean) @ self.projection.T
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def build_index(descriptors: np.ndarray) -> faiss.Index:
    """Exact inner-product index over ``(N, d)`` unit descriptors."""
    index = faiss.IndexFlatIP(descriptors.shape[1])
    index.add(np.ascontiguousarray(descriptors, dtype=np.float32))
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (clipped to the index size) -> ``(scores, ids)``, each ``(Q, k)``."""
    k = min(k, index.ntotal)
    if k == 0:
        q = len(np.atleast_2d(queries))
        return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
    return index.search(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k)
