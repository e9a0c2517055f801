"""Rig localization: the images one multi-camera rig took at once, localized as one body.

Each camera's image goes through the map's first layer as a single query does (local features,
global retrieval, 2D-3D matching); the matches of every camera are pooled into one generalized
absolute pose (pycolmap's LO-RANSAC over the rig, then refinement with covariance), so a camera
that sees too little to be localized alone still constrains the rig, and one that sees a lot
carries the others. Each camera's pose is ``sensor_from_rig * rig_from_world``.

A rig pose is reported as localized when the pooled inliers pass the same thresholds as a single
query's (``PoseConf.min_inliers``, ``min_inlier_ratio``) and each camera with that many inliers
of its own passes the single-query check of :func:`vloc.localization.verify.check_pose` (its
residual and mirror tests; the unstable-pose and rival-image tests, ``check_stability`` and
``check_views``, are for single queries).
Intrinsics are required for every camera (given, or EXIF): the rig solver estimates no focal
length. A fallback layer is not used.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pycolmap

from vloc.io.poses import qt_from_rigid
from vloc.io.rigs import Rig
from vloc.localization.pose import RANSAC_SEED
from vloc.localization.result import LocalizationResult
from vloc.localization.verify import check_pose

if TYPE_CHECKING:
    from vloc.localization.geo import GeoPose
    from vloc.localization.localizer import ImageInput, Localizer


@dataclass
class RigLocalizationResult:
    """``rig_from_world``: the pose of the rig (its reference camera's frame); ``covariance``:
    its ``(6, 6)`` covariance (rotation then translation); ``cameras``: each camera's result (its
    matches and inliers in the pooled estimate, and its pose when the rig is localized)."""

    name: str
    success: bool
    reason: str = ""
    rig_from_world: pycolmap.Rigid3d | None = None
    covariance: np.ndarray | None = None
    num_matches: int = 0
    num_inliers: int = 0
    cameras: dict[str, LocalizationResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    geo: GeoPose | None = None  # the rig frame's position on a geo-registered map

    def to_dict(self) -> dict:
        d = dict(name=self.name, status="localized" if self.success else "failed", reason=self.reason,
                 num_matches=self.num_matches, num_inliers=self.num_inliers,
                 timings={k: round(v, 4) for k, v in self.timings.items()},
                 cameras={k: r.to_dict() for k, r in self.cameras.items()})
        if self.rig_from_world is not None:
            qvec, tvec = qt_from_rigid(self.rig_from_world)
            d["rig_from_world"] = dict(qvec=[float(v) for v in qvec], tvec=[float(v) for v in tvec])
        if self.geo is not None:
            d["geo"] = self.geo.to_dict()
        return d


def localize_rig(localizer: Localizer, images: dict[str, ImageInput], rig: Rig,
                 cameras: dict[str, pycolmap.Camera | dict] | None = None, name: str = "rig") -> RigLocalizationResult:
    """See :meth:`vloc.localization.localizer.Localizer.localize_rig`."""
    from vloc.localization.localizer import prepare_query

    _check_cameras(images, rig, cameras, name)
    t0 = time.perf_counter()
    layer, conf = localizer.layer, localizer.layer.preset.pose
    out = RigLocalizationResult(name, False)
    points2D, xyz, camera_idxs, cams_from_rig, colmap_cameras = [], [], [], [], []
    for index, camera_name in enumerate(rig.sensors):
        label = f"{name}/{camera_name}"
        query = prepare_query(images[camera_name], (cameras or {}).get(camera_name), label)
        if query.intrinsics_source == "estimated":
            raise ValueError(f"{label}: no intrinsics (none given, no EXIF focal length); rig localization "
                             "needs every camera's")
        camera, source = (localizer.calibrated(query.camera) if query.intrinsics_source == "exif"
                          else (query.camera, query.intrinsics_source))
        res = LocalizationResult(label, False, intrinsics_source=source, layer=layer.preset.name, camera=camera)
        feats = layer.extractor(query.image)
        raw = localizer.global_descriptor(query.image)
        res.retrieved, res.points2D, res.point3D_ids = layer.correspondences(feats, raw)
        res.num_keypoints, res.num_matches = len(feats), len(res.points2D)
        out.cameras[camera_name] = res
        points2D.append(res.points2D)
        xyz.append(layer.store.points_xyz(res.point3D_ids) if len(res.point3D_ids) else np.zeros((0, 3)))
        camera_idxs += [index] * len(res.points2D)
        cams_from_rig.append(rig.sensors[camera_name])
        colmap_cameras.append(camera)
    out.timings["features+matching"] = time.perf_counter() - t0
    out.num_matches = len(camera_idxs)
    if out.num_matches < conf.min_inliers:
        out.reason = f"too few 2D-3D matches over the rig's cameras ({out.num_matches} < {conf.min_inliers})"
        return out
    t = time.perf_counter()
    ransac = pycolmap.RANSACOptions()
    ransac.max_error = conf.max_error_px
    ransac.min_inlier_ratio = conf.min_inlier_ratio
    ransac.random_seed = RANSAC_SEED
    all2D, all3D = np.concatenate(points2D).astype(np.float64), np.concatenate(xyz).astype(np.float64)
    found = pycolmap.estimate_and_refine_generalized_absolute_pose(
        all2D, all3D, camera_idxs, cams_from_rig, colmap_cameras, ransac, pycolmap.AbsolutePoseRefinementOptions(),
        return_covariance=True)
    out.timings["pose"] = time.perf_counter() - t
    if found is None:
        out.reason = "rig pose estimation failed (RANSAC found no model)"
        return out
    mask = np.asarray(found["inlier_mask"], bool)
    out.num_inliers = int(mask.sum())
    owner = np.asarray(camera_idxs)
    rig_from_world = found["rig_from_world"]
    for index, res in enumerate(out.cameras.values()):
        res.inlier_mask = mask[owner == index]
        res.num_inliers = int(res.inlier_mask.sum())
    if out.num_inliers < conf.min_inliers or out.num_inliers / out.num_matches < conf.min_inlier_ratio:
        out.reason = (f"too few inliers over the rig ({out.num_inliers} of {out.num_matches}; need "
                      f"{conf.min_inliers} and ratio {conf.min_inlier_ratio})")
        return out
    for index, (camera_name, res) in enumerate(out.cameras.items()):
        if res.num_inliers < conf.min_inliers:
            continue
        pose = rig.sensors[camera_name] * rig_from_world
        reason = check_pose(res.points2D, all3D[owner == index], res.inlier_mask, pose, res.camera, conf)
        if reason:
            out.reason = f"{camera_name}: {reason}"
            return out
    out.success, out.rig_from_world = True, rig_from_world
    covariance = found.get("covariance")
    out.covariance = None if covariance is None else np.asarray(covariance)
    for camera_name, res in out.cameras.items():
        res.success, res.cam_from_world = True, rig.sensors[camera_name] * rig_from_world
    return out


def _check_cameras(images: dict, rig: Rig, cameras: dict | None, name: str) -> None:
    missing = [c for c in rig.sensors if c not in images]
    extra = [c for c in images if c not in rig.sensors]
    if missing or extra:
        raise ValueError(f"{name}: rig {rig.name!r} has cameras {list(rig.sensors)}; "
                         + (f"no image for {missing}" if missing else "")
                         + ("; " if missing and extra else "")
                         + (f"images for unknown cameras {extra}" if extra else ""))
    unknown = [c for c in (cameras or {}) if c not in rig.sensors]
    if unknown:
        raise ValueError(f"{name}: intrinsics for cameras the rig does not have: {unknown}")
