"""One feature layer of a map: its store, retrieval, extractor, 2D-3D matching and pose settings.

A map has one layer, or two when its preset has a fallback (``MAP/fallback/``). A layer localizes
a query given the query's raw global descriptor, which the caller computes once for all layers
that share a global model.
"""
from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pycolmap

from vloc.config import Preset
from vloc.features import Features, make_extractor
from vloc.localization.matching import make_matching
from vloc.localization.models import ModelCache
from vloc.localization.pose import estimate_absolute_pose
from vloc.localization.result import LocalizationResult, Prior
from vloc.localization.retriever import ImageRetriever
from vloc.localization.verify import check_pose, check_stability, check_views
from vloc.mapping.map_dir import global_conf_in_map, open_map
from vloc.matching import make_matcher


class Layer:
    """Use :meth:`open`. Holds no per-image object: features are read for the retrieved images."""

    def __init__(self, directory: Path, preset: str | Preset | None = None, models: ModelCache | None = None):
        self.store, self.manifest, self.preset = open_map(directory, preset)  # adapted maps bring their model
        self.directory = Path(directory)
        self.retriever = ImageRetriever(self.store, self.store.read_index())
        models = models if models is not None else ModelCache()
        self.extractor = models.get("extractor", self.preset.query_features, make_extractor)
        self.matching = make_matching(models.get("matcher", self.preset.query_matcher, make_matcher), self.store)
        self.global_conf = global_conf_in_map(self.preset.global_desc, self.directory)

    @classmethod
    def open(cls, directory: Path | str, preset: str | Preset | None = None,
             models: ModelCache | None = None) -> "Layer":
        return cls(Path(directory), preset, models)

    @property
    def prior_radius(self) -> float:
        return self.manifest.prior_radius

    def localize(self, image: np.ndarray | None, camera: pycolmap.Camera, source: str, name: str,
                 raw_global: np.ndarray | Future, prior: Prior | None,
                 feats: Features | None = None) -> LocalizationResult:
        """Localize with this layer's features (extracted here unless ``feats`` is given).

        ``raw_global`` is the query's ``(D_g,)`` raw global descriptor, or a future of it (it runs
        beside the local features); the ``global`` timing is the part not hidden behind them."""
        conf = self.preset.pose
        res = LocalizationResult(name, False, intrinsics_source=source, layer=self.preset.name)
        t = time.perf_counter()
        if feats is None:
            feats = self.extractor(image)
        res.num_keypoints = len(feats)
        res.timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        raw = raw_global.result() if isinstance(raw_global, Future) else raw_global
        query = self.retriever.whiten(raw)
        res.timings["global"] = time.perf_counter() - t
        if len(feats) < conf.min_inliers:
            res.reason = f"too few keypoints ({len(feats)} < {conf.min_inliers})"
            return res
        tried: list[str] = []
        for mode, rows, scores in self.retriever.retrievals(query, conf.num_retrieved, prior):
            retrieved = [self.store.name(int(r)) for r in rows]
            if retrieved == tried:
                continue  # the prior's images were the global ones: nothing new to try
            res.retrieval, res.retrieved, tried = mode, retrieved, retrieved
            res.retrieved_scores = [float(v) for v in scores]
            self._match_and_estimate(res, feats, camera, rows)
            if res.success:
                break
        return res

    def correspondences(self, feats: Features, raw_global: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The first retrieval's map images and the query's 2D-3D matches to their points: names,
        ``(N, 2)`` keypoints (COLMAP's pixel convention) and ``(N,)`` point3D ids (rig
        localization pools these over cameras before one pose estimate)."""
        query = self.retriever.whiten(raw_global)
        _, rows, _ = self.retriever.retrievals(query, self.preset.pose.num_retrieved, None)[0]
        pairs = self.matching(feats, rows) if len(feats) else np.zeros((0, 2), np.int64)
        return ([self.store.name(int(r)) for r in rows], feats.keypoints[pairs[:, 0]],
                np.asarray(pairs[:, 1], np.int64))

    def _match_and_estimate(self, res: LocalizationResult, feats: Features, camera: pycolmap.Camera,
                            rows: np.ndarray) -> None:
        """Fill ``res`` from matching ``feats`` to the points of the images ``rows``."""
        conf = self.preset.pose
        t = time.perf_counter()
        pairs = self.matching(feats, rows)
        res.num_matches, res.num_inliers = len(pairs), 0
        res.points2D = res.point3D_ids = res.inlier_mask = None  # from an earlier retrieval's try
        res.timings["match"] = res.timings.get("match", 0.0) + time.perf_counter() - t
        if len(pairs) < conf.min_inliers:
            res.reason = f"too few 2D-3D matches ({len(pairs)} < {conf.min_inliers})"
            return
        t = time.perf_counter()
        points2D, xyz = feats.keypoints[pairs[:, 0]], self.store.points_xyz(pairs[:, 1])
        estimate = estimate_absolute_pose(points2D, xyz, camera, conf, focal_known=res.intrinsics_source != "estimated")
        res.timings["pose"] = res.timings.get("pose", 0.0) + time.perf_counter() - t
        if estimate is None:
            res.reason = "pose estimation failed (RANSAC found no model)"
            return
        res.num_inliers = estimate.num_inliers
        res.points2D, res.point3D_ids = points2D, pairs[:, 1]
        res.inlier_mask = estimate.inlier_mask
        if res.num_inliers < conf.min_inliers or res.inlier_ratio < conf.min_inlier_ratio:
            res.reason = (f"too few inliers ({res.num_inliers} of {res.num_matches}; need {conf.min_inliers} "
                          f"and ratio {conf.min_inlier_ratio})")
            return
        t = time.perf_counter()
        pose, camera = estimate.cam_from_world, estimate.camera
        res.reason = (check_pose(points2D, xyz, res.inlier_mask, pose, camera, conf)
                      or check_views(points2D, xyz, self.image_groups(pairs[:, 1], rows), pose, camera, conf)
                      or check_stability(points2D, xyz, pose, camera, conf))
        res.timings["pose"] += time.perf_counter() - t
        if res.reason:
            return
        res.success, res.cam_from_world = True, estimate.cam_from_world
        res.camera, res.covariance = estimate.camera, estimate.covariance

    def image_groups(self, point3D_ids: np.ndarray, rows) -> dict[str, np.ndarray]:
        """For the map image rows ``rows``: name -> ``(K,)`` bool mask of the ``(K,)`` matched point3D ids
        that the image observes (a point several images observe is in each of their groups)."""
        groups = {}
        for row in rows:
            seen = self.store.image_point3D_ids(int(row))
            groups[self.store.name(int(row))] = np.isin(point3D_ids, seen[seen >= 0])
        return groups
