"""2D-3D matching strategies: how a query's features meet the 3D points of the retrieved images.

Both return ``(K, 2)`` int64 pairs (query keypoint index, point3D id) and read the retrieved
images' features from the store when asked, nothing before.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from vloc.features.base import Features
from vloc.mapping.store import MapStore


class Matching2D3D(Protocol):
    def __call__(self, query: Features, rows: np.ndarray) -> np.ndarray:
        """``rows``: retrieved map image rows, best first -> ``(K, 2)`` (keypoint index, point3D id)."""


class PointMatching:
    """Descriptor-only matchers (mutual NN): the query meets the retrieved images' 3D points in one
    call, one descriptor per point (from the best-ranked image that sees it), so the ratio test
    never compares a point with itself."""

    def __init__(self, matcher, store: MapStore):
        self.matcher, self.store = matcher, store

    def candidate_points(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Descriptors ``(M, D)`` float32 and point3D ids ``(M,)`` of the points the images observe."""
        if len(rows) == 0:
            return np.zeros((0, self.store.descriptor_dim), np.float32), np.zeros((0,), np.int64)
        obs = [self.store.observations(int(r)) for r in rows]
        ids = np.concatenate([o.point3D_ids for o in obs])
        _, first = np.unique(ids, return_index=True)
        first.sort()
        return np.concatenate([o.descriptors for o in obs])[first], ids[first]

    def __call__(self, query: Features, rows: np.ndarray) -> np.ndarray:
        desc, point_ids = self.candidate_points(rows)
        matches = self.matcher.match_descriptors(query.descriptors, desc)
        return np.stack([matches[:, 0], point_ids[matches[:, 1]]], axis=1)


class PairwiseMatching:
    """Matchers that look at keypoints (LightGlue): the query is matched with each retrieved image
    in turn and the correspondences are pooled (a query keypoint may vote for several 3D points;
    RANSAC decides)."""

    def __init__(self, matcher, store: MapStore):
        self.matcher, self.store = matcher, store

    def __call__(self, query: Features, rows: np.ndarray) -> np.ndarray:
        rows = [int(r) for r in rows]
        pairs = [np.zeros((0, 2), np.int64)]
        others = [self.store.features(r) for r in rows]
        for row, matches in zip(rows, self.matcher.match_many(query, others), strict=True):
            ids = self.store.image_point3D_ids(row)[matches[:, 1]]
            pairs.append(np.stack([matches[ids >= 0, 0], ids[ids >= 0]], axis=1))
        return np.unique(np.concatenate(pairs), axis=0)


def make_matching(matcher, store: MapStore) -> Matching2D3D:
    return PairwiseMatching(matcher, store) if matcher.needs_keypoints else PointMatching(matcher, store)
