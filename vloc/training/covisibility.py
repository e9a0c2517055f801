"""Image-level labels for a COLMAP model: clusters of images that see the same part of the scene.

Rule (complete linkage on covisibility): two registered images are *covisible* when they observe
at least ``min_shared`` common 3D points and these are at least ``min_ratio`` of the points seen by
the one of the two that sees fewer (``shared / min(n_i, n_j)``). Images are merged
agglomeratively so that **every two images of a cluster are covisible** (complete linkage on the
distance ``1 - ratio``, with ratio 0 below ``min_shared``, cut at ``1 - min_ratio``). Connected
components would chain a whole drive or walk into one label; complete linkage keeps each label to
a place that all its images see, which is what an image-level retrieval label means. Images
covisible with no other image stay singletons.

Cost: the image x image count matrix is computed from a sparse incidence matrix; the linkage
needs the dense ``N x N`` condensed distances (fine up to a few tens of thousands of images).
"""
from __future__ import annotations

import numpy as np
import pycolmap
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix
from scipy.spatial.distance import squareform


def shared_points(reconstruction: pycolmap.Reconstruction) -> tuple[list[str], np.ndarray]:
    """Registered image names (sorted) and the ``(N, N)`` int matrix of 3D points each pair
    observes in common (the diagonal holds each image's own count)."""
    images = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    names = [im.name for im in images]
    point_ids = sorted(reconstruction.points3D)
    column = {int(pid): c for c, pid in enumerate(point_ids)}
    rows, cols = [], []
    for r, im in enumerate(images):
        ids = {int(p.point3D_id) for p in im.points2D if p.has_point3D()}
        rows.extend([r] * len(ids))
        cols.extend(column[i] for i in ids)
    incidence = csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(len(images), len(point_ids)))
    return names, np.asarray((incidence @ incidence.T).todense(), dtype=np.int64)


def covisibility_clusters(reconstruction: pycolmap.Reconstruction, min_ratio: float = 0.5,
                          min_shared: int = 20) -> dict[str, int]:
    """``{image name: label}`` for every registered image; labels are ``0..K-1``, ordered by the
    first image name of each cluster. See the module docstring for the rule."""
    names, shared = shared_points(reconstruction)
    if len(names) == 0:
        raise ValueError("the reconstruction has no registered images")
    return dict(zip(names, cluster_shared(shared, min_ratio, min_shared).tolist(), strict=True))


def cluster_shared(shared: np.ndarray, min_ratio: float = 0.5, min_shared: int = 20) -> np.ndarray:
    """``(N,)`` labels ``0..K-1`` (in order of first appearance) from an ``(N, N)`` shared-point
    matrix whose diagonal holds each image's point count."""
    if not 0 < min_ratio <= 1 or min_shared < 1:
        raise ValueError(f"need 0 < min_ratio <= 1 and min_shared >= 1, got {min_ratio}, {min_shared}")
    n = len(shared)
    if n < 2:
        return np.zeros(n, np.int64)
    own = np.diag(shared).astype(np.float64)
    ratio = shared / np.maximum(np.minimum(own[:, None], own[None, :]), 1.0)
    ratio[shared < min_shared] = 0.0
    distance = 1.0 - ratio
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="complete")
    raw = fcluster(tree, t=1.0 - min_ratio + 1e-9, criterion="distance")
    relabel: dict[int, int] = {}
    return np.array([relabel.setdefault(int(r), len(relabel)) for r in raw], np.int64)
