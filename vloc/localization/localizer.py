"""The warm localizer: load a map once, localize many queries.

For each query: global descriptor -> FAISS top-k map images (or, with a prior pose, the most
similar map images near it) -> match local features against the 3D points those images observe
-> 2D-3D correspondences -> LO-RANSAC + refinement. A query that fails any stage is reported
with a reason and no pose. With a fallback layer (``preset.fallback``), a query that fails or
finds few inliers goes through the same steps again on the layer's features. No map file is
written while localizing.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pycolmap
import torch

from vloc.config import Preset, fallback_preset
from vloc.features import Features, make_extractor
from vloc.io.cameras import camera_from_dict, initial_camera
from vloc.io.images import ImageReadError, exif_focal_px, read_image
from vloc.localization.pose import estimate_absolute_pose
from vloc.mapping.map_dir import (
    FALLBACK_DIR,
    MapFormatError,
    global_conf_in_map,
    open_map,
)
from vloc.matching import make_matcher
from vloc.retrieval import make_global_model
from vloc.retrieval.index import search

logger = logging.getLogger(__name__)

ImageInput = str | Path | bytes | np.ndarray


@dataclass
class LocalizationResult:
    name: str
    success: bool
    reason: str = ""  # why it failed; empty when localized
    cam_from_world: pycolmap.Rigid3d | None = None
    camera: pycolmap.Camera | None = None
    intrinsics_source: str = ""  # "given", "exif" or "estimated"
    num_keypoints: int = 0
    num_matches: int = 0  # 2D-3D correspondences fed to RANSAC
    num_inliers: int = 0
    retrieved: list[str] = field(default_factory=list)
    retrieval: str = ""  # "global", "prior", or "global after prior" when the prior's images failed
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    covariance: np.ndarray | None = None  # (6, 6)
    layer: str = ""  # the preset whose features gave this result (the map's own or its fallback layer's)

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_matches if self.num_matches else 0.0

    def to_dict(self) -> dict:
        d = dict(name=self.name, status="localized" if self.success else "failed", reason=self.reason,
                 intrinsics=self.intrinsics_source, num_keypoints=self.num_keypoints,
                 num_matches=self.num_matches, num_inliers=self.num_inliers,
                 inlier_ratio=round(self.inlier_ratio, 4), retrieved=self.retrieved, retrieval=self.retrieval,
                 layer=self.layer,
                 timings={k: round(v, 4) for k, v in self.timings.items()})
        if self.camera is not None:
            d["camera"] = dict(model=self.camera.model.name, width=self.camera.width,
                               height=self.camera.height, params=[float(p) for p in self.camera.params])
        return d


class _MapImage:
    """What localization needs of a map image: all its features (for matchers that look at
    keypoints) and, separately, the descriptors of the keypoints that observe 3D points."""

    def __init__(self, features: Features, point3D_ids: np.ndarray):
        self.features, self.all_point3D_ids = features, point3D_ids
        mask = point3D_ids >= 0
        self.descriptors = torch.from_numpy(np.ascontiguousarray(features.descriptors[mask], np.float32))
        self.point3D_ids = point3D_ids[mask]


@dataclass(frozen=True)
class Prior:
    """A pose the query is believed to be near: retrieval then looks only at map images whose
    camera centre lies within ``radius`` (map units) of ``cam_from_world``'s centre."""

    cam_from_world: pycolmap.Rigid3d
    radius: float

    @staticmethod
    def from_result(result: LocalizationResult, radius: float) -> "Prior | None":
        return Prior(result.cam_from_world, radius) if result.success else None


class Localizer:
    """Use :meth:`load`. Calls to :meth:`localize` are serialised by a lock (thread-safe)."""

    def __init__(self, map_dir: Path | str, preset: str | Preset | None = None):
        data, preset = open_map(Path(map_dir), preset)  # an adapted map brings its own global model
        self.map_dir, self.preset, self.manifest = Path(map_dir), preset, data.manifest
        self.names = data.global_names
        self.index = faiss.read_index(str(self.map_dir / "global.faiss"))
        self.whitening = data.whitening
        self._whitened = self.whitening(data.global_raw)  # rows of the FAISS index, for prior search
        by_name = {im.name: im for im in data.reconstruction.images.values()}
        self._centres = np.stack([by_name[n].projection_center() for n in self.names])
        self.images = {n: _MapImage(data.features[n], data.point3D_ids[n]) for n in self.names}
        ids = np.array(sorted(data.reconstruction.points3D), dtype=np.int64)
        self._xyz = np.stack([data.reconstruction.points3D[i].xyz for i in ids]) if len(ids) else np.zeros((0, 3))
        self._row_of_point = {int(i): r for r, i in enumerate(ids)}
        self.extractor = make_extractor(preset.query_features)
        self.matcher = make_matcher(preset.matcher)
        self.global_model = make_global_model(global_conf_in_map(preset.global_desc, map_dir))
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vloc-global")
        self.fallback = self._load_fallback()

    def _load_fallback(self) -> "Localizer | None":
        """The localizer of the map's fallback layer when the preset asks for one."""
        layer = fallback_preset(self.preset)
        if layer is None:
            return None
        layer_dir = self.map_dir / FALLBACK_DIR
        if not layer_dir.is_dir():
            raise MapFormatError(f"{self.map_dir}: preset {self.preset.name!r} localizes weak queries again on a "
                                 f"{layer.name!r} layer, but the map has none ({FALLBACK_DIR}/ is missing); "
                                 f"rebuild it with --preset {self.preset.name}")
        return Localizer(layer_dir, layer)

    @classmethod
    def load(cls, map_dir: Path | str, preset: str | Preset | None = None) -> "Localizer":
        """Load ``map_dir``; ``preset`` defaults to the one the map was built with."""
        return cls(map_dir, preset)

    def localize(
        self, image: ImageInput, camera: pycolmap.Camera | dict | None = None,
        prior: Prior | LocalizationResult | None = None, name: str | None = None,
    ) -> LocalizationResult:
        """Localize one image.

        Args:
            image: a path, encoded bytes (JPEG, PNG, ...), or a ``(H, W)`` / ``(H, W, 3)`` uint8
                RGB array.
            camera: a pycolmap camera, a dict ``{"model", "width", "height", "params"}``, or None:
                the EXIF focal length when the file or bytes carry one, else the focal length
                is estimated with the pose. ``result.intrinsics_source`` says which.
            prior: restrict retrieval to map images near a believed pose: a :class:`Prior`, or
                the previous result (its pose, within :attr:`prior_radius`; a failed result
                means no prior). When the nearby images fail, global retrieval is tried.
        Returns:
            a :class:`LocalizationResult`; on any failure ``success`` is False and ``reason`` says why.
        """
        t0 = time.perf_counter()
        if isinstance(prior, LocalizationResult):
            prior = Prior.from_result(prior, self.prior_radius)
        if name is None:
            name = Path(image).name if isinstance(image, (str, Path)) else "query"
        try:
            array, camera, source = _prepare(image, camera, name)
        except (ImageReadError, ValueError) as exc:
            return LocalizationResult(name, False, str(exc))
        with self._lock:
            result = self._localize_with_fallback(array, camera, source, name, prior)
        result.timings = {"read": time.perf_counter() - t0 - sum(result.timings.values()), **result.timings}
        return result

    @property
    def prior_radius(self) -> float:
        """Default prior radius: 5x the median distance from each map image to its nearest
        neighbour (map units)."""
        if len(self._centres) < 2:
            return float("inf")
        d = np.linalg.norm(self._centres[:, None] - self._centres[None], axis=2)
        np.fill_diagonal(d, np.inf)
        return 5.0 * float(np.median(d.min(axis=1)))

    def _candidate_points(self, retrieved: list[str]) -> tuple[torch.Tensor, np.ndarray]:
        """Descriptors ``(M, D)`` and point3D ids ``(M,)`` of the 3D points the retrieved images
        observe, one descriptor per point (from the best-ranked image that sees it): one matching
        call instead of one per image, and the ratio test never compares a point with itself."""
        if not retrieved:
            return torch.zeros((0, self.extractor.dim)), np.zeros((0,), np.int64)
        ids = np.concatenate([self.images[n].point3D_ids for n in retrieved])
        _, first = np.unique(ids, return_index=True)
        first.sort()
        desc = torch.cat([self.images[n].descriptors for n in retrieved])
        return desc[torch.from_numpy(first)], ids[first]

    def _matches_2d3d(self, feats: Features, retrieved: list[str]) -> np.ndarray:
        """``(K, 2)`` pairs (query keypoint index, point3D id).

        Descriptor-only matchers see the retrieved images' 3D points in one call; matchers that
        look at keypoints (LightGlue) match the query with each retrieved image in turn, and the
        correspondences are pooled (a query keypoint may vote for several 3D points; RANSAC decides).
        """
        if not self.matcher.needs_keypoints:
            desc, point_ids = self._candidate_points(retrieved)
            matches = self.matcher.match_descriptors(torch.from_numpy(feats.descriptors), desc)
            return np.stack([matches[:, 0], point_ids[matches[:, 1]]], axis=1)
        images = [self.images[n] for n in retrieved]
        pairs = [np.zeros((0, 2), np.int64)]
        for image, matches in zip(images, self.matcher.match_many(feats, [im.features for im in images]), strict=True):
            ids = image.all_point3D_ids[matches[:, 1]]
            pairs.append(np.stack([matches[ids >= 0, 0], ids[ids >= 0]], axis=1))
        return np.unique(np.concatenate(pairs), axis=0)

    def _global_descriptor(self, image: np.ndarray) -> np.ndarray:
        return self.whitening(self.global_model(image))

    def _retrievals(self, query: np.ndarray, prior: Prior | None) -> list[tuple[str, list[str]]]:
        """``(mode, map image names)`` to try in order: near the prior first, then global."""
        k = self.preset.pose.num_retrieved
        _, ids = search(self.index, query, k)
        global_names = [self.names[i] for i in ids[0] if i >= 0]
        if prior is None:
            return [("global", global_names)]
        near = np.flatnonzero(np.linalg.norm(self._centres - prior.cam_from_world.inverse().translation, axis=1)
                              <= prior.radius)
        if len(near) == 0:
            return [("global after prior", global_names)]
        best = near[np.argsort(-(self._whitened[near] @ query[0]))[:k]]
        return [("prior", [self.names[i] for i in best]), ("global after prior", global_names)]

    def _localize_with_fallback(self, image: np.ndarray, camera: pycolmap.Camera, source: str, name: str,
                                prior: Prior | None) -> LocalizationResult:
        """Localize with the map's own features; when that fails or finds fewer inliers than
        ``preset.fallback.below_inliers``, again on the fallback layer, whose result wins if it succeeds."""
        res = self._localize(image, camera, source, name, prior)
        if self.fallback is None or (res.success and res.num_inliers >= self.preset.fallback.below_inliers):
            return res
        again = self.fallback._localize(image, camera, source, name, prior)
        chosen = again if again.success else res
        chosen.timings = {k: res.timings.get(k, 0.0) + again.timings.get(k, 0.0)
                          for k in dict.fromkeys([*res.timings, *again.timings])}
        if not chosen.success:
            chosen.reason = f"{res.layer}: {res.reason}; {again.layer}: {again.reason}"
        logger.debug("%s: %s gave %d inliers, fallback %s %d; kept %s", name, res.layer, res.num_inliers,
                     again.layer, again.num_inliers, chosen.layer)
        return chosen

    def _localize(self, image: np.ndarray, camera: pycolmap.Camera, source: str, name: str,
                  prior: Prior | None) -> LocalizationResult:
        conf = self.preset.pose
        res = LocalizationResult(name, False, intrinsics_source=source, layer=self.preset.name)
        # The global descriptor (torch) runs beside the local features (OpenCV); both release the GIL.
        t = time.perf_counter()
        global_future = self._pool.submit(self._global_descriptor, image)
        feats = self.extractor(image)
        res.num_keypoints = len(feats)
        res.timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        query = global_future.result()
        res.timings["global"] = time.perf_counter() - t  # the part not hidden behind the features
        if len(feats) < conf.min_inliers:
            res.reason = f"too few keypoints ({len(feats)} < {conf.min_inliers})"
            return res
        for mode, retrieved in self._retrievals(query, prior):
            if res.retrieved == retrieved:
                continue  # the prior's images were the global ones: nothing new to try
            res.retrieval, res.retrieved = mode, retrieved
            self._match_and_estimate(res, feats, camera)
            if res.success:
                break
        return res

    def _match_and_estimate(self, res: LocalizationResult, feats, camera: pycolmap.Camera) -> None:
        """Fill ``res`` from matching ``feats`` to the points of ``res.retrieved``."""
        conf = self.preset.pose
        t = time.perf_counter()
        pairs = self._matches_2d3d(feats, res.retrieved)
        res.num_matches, res.num_inliers = len(pairs), 0
        res.timings["match"] = res.timings.get("match", 0.0) + time.perf_counter() - t
        if len(pairs) < conf.min_inliers:
            res.reason = f"too few 2D-3D matches ({len(pairs)} < {conf.min_inliers})"
            return
        t = time.perf_counter()
        rows = np.fromiter((self._row_of_point[int(i)] for i in pairs[:, 1]), np.int64, len(pairs))
        estimate = estimate_absolute_pose(feats.keypoints[pairs[:, 0]], self._xyz[rows], camera, conf,
                                          focal_known=res.intrinsics_source != "estimated")
        res.timings["pose"] = res.timings.get("pose", 0.0) + time.perf_counter() - t
        if estimate is None:
            res.reason = "pose estimation failed (RANSAC found no model)"
            return
        res.num_inliers = estimate.num_inliers
        if res.num_inliers < conf.min_inliers or res.inlier_ratio < conf.min_inlier_ratio:
            res.reason = (f"too few inliers ({res.num_inliers} of {res.num_matches}; need {conf.min_inliers} "
                          f"and ratio {conf.min_inlier_ratio})")
            return
        res.success, res.reason, res.cam_from_world = True, "", estimate.cam_from_world
        res.camera, res.covariance = estimate.camera, estimate.covariance


def _prepare(image: ImageInput, camera: pycolmap.Camera | dict | None,
             name: str) -> tuple[np.ndarray, pycolmap.Camera, str]:
    """Decode the image and settle the camera: ``(array, camera, intrinsics source)``."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"{name}: expected a (H, W) or (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        array, exif_source = image, None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        exif_source = io.BytesIO(bytes(image))
        array = read_image(exif_source, name=name)
    elif isinstance(image, (str, Path)):
        array, exif_source = read_image(image), image
    else:
        raise ValueError(f"{name}: image must be a path, bytes or a numpy array, not {type(image).__name__}")
    h, w = array.shape[:2]
    if isinstance(camera, dict):
        camera = camera_from_dict(camera, f"{name}: camera")
    if camera is not None:
        if (camera.width, camera.height) != (w, h):
            raise ValueError(f"{name}: camera is {camera.width}x{camera.height} but the image is {w}x{h}")
        return array, camera, "given"
    focal = exif_focal_px(exif_source) if exif_source is not None else None
    return array, initial_camera(w, h, focal), "exif" if focal is not None else "estimated"
