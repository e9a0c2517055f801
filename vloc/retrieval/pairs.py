"""Image pairs for map building: global-descriptor top-k plus optional sequential neighbours."""
from __future__ import annotations

import numpy as np


def select_pairs(descriptors: np.ndarray, num_retrieved: int, num_sequential: int = 0) -> list[tuple[int, int]]:
    """Unordered pairs ``(i, j)``, ``i < j``, over ``(N, d)`` unit descriptors (rows in name order).

    Uses the full ``N x N`` similarity, which is fine for the map sizes this stage targets
    (tens of thousands of images at most); each image keeps its ``num_retrieved`` best others.
    """
    n = len(descriptors)
    pairs: set[tuple[int, int]] = set()
    if n < 2:
        return []
    sim = descriptors @ descriptors.T
    np.fill_diagonal(sim, -np.inf)
    k = min(num_retrieved, n - 1)
    if k > 0:
        top = np.argsort(-sim, axis=1)[:, :k]
        for i, row in enumerate(top):
            pairs.update((min(i, int(j)), max(i, int(j))) for j in row)
    for i in range(n):
        for j in range(i + 1, min(n, i + 1 + num_sequential)):
            pairs.add((i, j))
    return sorted(pairs)


def spatial_pairs(positions: np.ndarray, num_neighbours: int, max_distance: float) -> list[tuple[int, int]]:
    """Unordered pairs ``(i, j)``, ``i < j``: each of the ``(N, 3)`` positions (metres; a row of NaN
    is an image without one) with its ``num_neighbours`` nearest others within ``max_distance``
    (``map build --gps``: images near each other on Earth, which retrieval may miss)."""
    from scipy.spatial import cKDTree

    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    known = np.flatnonzero(np.all(np.isfinite(positions), axis=1))
    if len(known) < 2 or num_neighbours < 1:
        return []
    k = min(num_neighbours + 1, len(known))
    distances, rows = cKDTree(positions[known]).query(positions[known], k=k, distance_upper_bound=max_distance)
    pairs = {(min(int(known[a]), int(known[b])), max(int(known[a]), int(known[b])))
             for a, (row, dist) in enumerate(zip(rows, distances, strict=True))
             for b, d in zip(row, dist, strict=True) if b != a and np.isfinite(d)}
    return sorted(pairs)
