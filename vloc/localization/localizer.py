"""The warm localizer: load a map once, localize many queries.

For each query: global descriptor -> FAISS top-k map images -> match local features against the
map keypoints that observe a 3D point -> 2D-3D correspondences -> LO-RANSAC + refinement.
A query that fails any stage is reported with a reason and no pose.
"""
from __future__ import annotations

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

from vloc.config import Preset, check_compatible, get_preset
from vloc.features import make_extractor
from vloc.io.images import ImageReadError, exif_focal_px, read_image
from vloc.localization.pose import estimate_absolute_pose
from vloc.mapping.map_dir import load_map, read_manifest
from vloc.matching import make_matcher
from vloc.retrieval import make_global_model
from vloc.retrieval.index import search

logger = logging.getLogger(__name__)


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
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    covariance: np.ndarray | None = None  # (6, 6)

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_matches if self.num_matches else 0.0

    def to_dict(self) -> dict:
        d = dict(name=self.name, status="localized" if self.success else "failed", reason=self.reason,
                 intrinsics=self.intrinsics_source, num_keypoints=self.num_keypoints,
                 num_matches=self.num_matches, num_inliers=self.num_inliers,
                 inlier_ratio=round(self.inlier_ratio, 4), retrieved=self.retrieved,
                 timings={k: round(v, 4) for k, v in self.timings.items()})
        if self.camera is not None:
            d["camera"] = dict(model=self.camera.model.name, width=self.camera.width,
                               height=self.camera.height, params=[float(p) for p in self.camera.params])
        return d


class _MapImage:
    """The part of a map image that localization needs: keypoints that observe 3D points."""

    def __init__(self, descriptors: np.ndarray, point3D_ids: np.ndarray):
        mask = point3D_ids >= 0
        self.descriptors = torch.from_numpy(np.ascontiguousarray(descriptors[mask], np.float32))
        self.point3D_ids = point3D_ids[mask]


class Localizer:
    """Use :meth:`load`. Calls to :meth:`localize` are serialised by a lock (thread-safe)."""

    def __init__(self, map_dir: Path, preset: Preset):
        data = load_map(map_dir)
        check_compatible(data.manifest["preset"], preset, str(map_dir))
        self.map_dir, self.preset, self.manifest = Path(map_dir), preset, data.manifest
        self.names = data.global_names
        self.index = faiss.read_index(str(self.map_dir / "global.faiss"))
        self.whitening = data.whitening
        self.images = {n: _MapImage(data.features[n].descriptors, data.point3D_ids[n]) for n in self.names}
        ids = np.array(sorted(data.reconstruction.points3D), dtype=np.int64)
        self._xyz = np.stack([data.reconstruction.points3D[i].xyz for i in ids]) if len(ids) else np.zeros((0, 3))
        self._row_of_point = {int(i): r for r, i in enumerate(ids)}
        self.extractor = make_extractor(preset.query_features)
        self.matcher = make_matcher(preset.matcher)
        self.global_model = make_global_model(preset.global_desc)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vloc-global")

    @classmethod
    def load(cls, map_dir: Path | str, preset: str | Preset | None = None) -> "Localizer":
        """Load ``map_dir``; ``preset`` defaults to the one the map was built with."""
        if preset is None:
            preset = read_manifest(Path(map_dir))["preset"]["name"]
        return cls(Path(map_dir), get_preset(preset) if isinstance(preset, str) else preset)

    def localize_file(self, path: Path, camera: pycolmap.Camera | None = None) -> LocalizationResult:
        """Read ``path`` (errors become a failed result) and localize it."""
        t0 = time.perf_counter()
        try:
            image = read_image(path)
        except ImageReadError as exc:
            return LocalizationResult(path.name, False, f"unreadable image: {exc}")
        source = "given"
        if camera is None:
            focal = exif_focal_px(path)
            if focal is not None:
                h, w = image.shape[:2]
                camera = pycolmap.Camera(model="SIMPLE_RADIAL", width=w, height=h, params=[focal, w / 2, h / 2, 0.0])
                source = "exif"
        result = self.localize(image, camera, name=path.name)
        if source == "exif":
            result.intrinsics_source = "exif"
        result.timings = {"read": time.perf_counter() - t0 - sum(result.timings.values()), **result.timings}
        return result

    def localize(
        self, image: np.ndarray, camera: pycolmap.Camera | None = None, name: str = "query",
    ) -> LocalizationResult:
        """``image``: ``(H, W)`` or ``(H, W, 3)`` uint8. ``camera`` None: focal estimated with the pose."""
        with self._lock:
            return self._localize(image, camera, name)

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

    def _retrieve(self, image: np.ndarray, k: int) -> list[str]:
        _, ids = search(self.index, self.whitening(self.global_model(image)), k)
        return [self.names[i] for i in ids[0] if i >= 0]

    def _localize(self, image, camera, name) -> LocalizationResult:
        conf = self.preset.pose
        h, w = image.shape[:2]
        res = LocalizationResult(name, False, intrinsics_source="given" if camera is not None else "estimated")
        if camera is not None and (camera.width, camera.height) != (w, h):
            res.reason = f"camera is {camera.width}x{camera.height} but the image is {w}x{h}"
            return res
        if camera is None:
            camera = pycolmap.Camera(model="SIMPLE_RADIAL", width=w, height=h,
                                     params=[1.2 * max(w, h), w / 2, h / 2, 0.0])
        # The global descriptor (torch) runs beside the local features (OpenCV); both release the GIL.
        t = time.perf_counter()
        global_future = self._pool.submit(self._retrieve, image, conf.num_retrieved)
        feats = self.extractor(image)
        res.num_keypoints = len(feats)
        res.timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        res.retrieved = global_future.result()
        res.timings["global"] = time.perf_counter() - t  # the part not hidden behind the features
        if len(feats) < conf.min_inliers:
            res.reason = f"too few keypoints ({len(feats)} < {conf.min_inliers})"
            return res

        t = time.perf_counter()
        desc, point_ids = self._candidate_points(res.retrieved)
        matches = self.matcher(torch.from_numpy(feats.descriptors), desc)
        pairs = np.stack([matches[:, 0], point_ids[matches[:, 1]]], axis=1)
        res.num_matches = len(pairs)
        res.timings["match"] = time.perf_counter() - t
        if len(pairs) < conf.min_inliers:
            res.reason = f"too few 2D-3D matches ({len(pairs)} < {conf.min_inliers})"
            return res

        t = time.perf_counter()
        rows = np.fromiter((self._row_of_point[int(i)] for i in pairs[:, 1]), np.int64, len(pairs))
        estimate = estimate_absolute_pose(feats.keypoints[pairs[:, 0]], self._xyz[rows], camera, conf,
                                          focal_known=res.intrinsics_source == "given")
        res.timings["pose"] = time.perf_counter() - t
        if estimate is None:
            res.reason = "pose estimation failed (RANSAC found no model)"
            return res
        res.num_inliers = estimate.num_inliers
        if res.num_inliers < conf.min_inliers or res.inlier_ratio < conf.min_inlier_ratio:
            res.reason = (f"too few inliers ({res.num_inliers} of {res.num_matches}; need {conf.min_inliers} "
                          f"and ratio {conf.min_inlier_ratio})")
            return res
        res.success, res.cam_from_world = True, estimate.cam_from_world
        res.camera, res.covariance = estimate.camera, estimate.covariance
        return res
