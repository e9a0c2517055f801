"""Two-view geometric verification of matches when both poses are known (triangulation from a
reference model): keep matches whose Sampson distance to the epipolar geometry is small.

With unknown poses (SfM), verification is pycolmap's own (``pycolmap.verify_matches`` on the
database, C++ and multi-threaded). Both give ``pycolmap.TwoViewGeometry`` objects, which is what
COLMAP's mappers read. Keypoints are in COLMAP's pixel convention.
"""
from __future__ import annotations

import numpy as np
import pycolmap

from vloc.config import VerifyConf


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


def verify_known_poses(
    kp1: np.ndarray, kp2: np.ndarray, matches: np.ndarray,
    camera1: pycolmap.Camera, camera2: pycolmap.Camera,
    cam1_from_world: pycolmap.Rigid3d, cam2_from_world: pycolmap.Rigid3d,
    conf: VerifyConf,
) -> pycolmap.TwoViewGeometry:
    """Keep the matches ``(K, 2)`` consistent with the known relative pose."""
    geometry = known_pose_geometry(np.zeros((0, 2), np.uint32), cam1_from_world, cam2_from_world)
    essential = geometry.E
    if len(matches) == 0:
        return geometry
    err = sampson_px(kp1[matches[:, 0]], kp2[matches[:, 1]], camera1, camera2, essential, pairwise=False)
    keep = err <= conf.max_error_px
    geometry.inlier_matches = np.ascontiguousarray(matches[keep], dtype=np.uint32)
    return geometry


def sampson_px(kp1: np.ndarray, kp2: np.ndarray, camera1: pycolmap.Camera, camera2: pycolmap.Camera,
               essential: np.ndarray, pairwise: bool) -> np.ndarray:
    """Sampson distances in pixels (mean focal length) of keypoints ``kp1`` ``(N, 2)`` and ``kp2``
    (COLMAP pixel convention) under ``essential`` (``x2^T E x1 = 0``): ``(N,)`` for the rows
    paired up (``kp2`` is ``(N, 2)``), or ``(N, M)`` for every pair when ``pairwise``."""
    x1 = np.hstack([camera1.cam_from_img(kp1.astype(np.float64)), np.ones((len(kp1), 1))])
    x2 = np.hstack([camera2.cam_from_img(kp2.astype(np.float64)), np.ones((len(kp2), 1))])
    ex1 = x1 @ essential.T  # (N, 3): epipolar lines in image 2
    etx2 = x2 @ essential  # (M, 3): epipolar lines in image 1
    if pairwise:  # (N, M): float32, a few ms at 4,096 x 4,096
        ex1, x2, etx2 = ex1.astype(np.float32), x2.astype(np.float32), etx2.astype(np.float32)
        num = (ex1 @ x2.T) ** 2
        den = (ex1[:, 0] ** 2 + ex1[:, 1] ** 2)[:, None] + (etx2[:, 0] ** 2 + etx2[:, 1] ** 2)[None]
    else:
        num = np.sum(x2 * ex1, axis=1) ** 2
        den = ex1[:, 0] ** 2 + ex1[:, 1] ** 2 + etx2[:, 0] ** 2 + etx2[:, 1] ** 2
    focal = 0.5 * (camera1.mean_focal_length() + camera2.mean_focal_length())
    return np.sqrt(num / np.maximum(den, 1e-20)) * focal


def epipolar_mask(kp1: np.ndarray, kp2: np.ndarray, camera1: pycolmap.Camera, camera2: pycolmap.Camera,
                  cam1_from_world: pycolmap.Rigid3d, cam2_from_world: pycolmap.Rigid3d,
                  max_px: float) -> np.ndarray:
    """``(N, M)`` bool: which keypoint pairs of two images with known poses are within ``max_px``
    (Sampson distance) of each other's epipolar lines: the candidates of guided matching."""
    essential = known_pose_geometry(np.zeros((0, 2), np.uint32), cam1_from_world, cam2_from_world).E
    return sampson_px(kp1, kp2, camera1, camera2, essential, pairwise=True) <= max_px


def known_pose_geometry(inliers: np.ndarray, cam1_from_world: pycolmap.Rigid3d,
                        cam2_from_world: pycolmap.Rigid3d) -> pycolmap.TwoViewGeometry:
    """A calibrated two-view geometry from known poses with the given inlier matches ``(K, 2)``."""
    cam2_from_cam1 = cam2_from_world * cam1_from_world.inverse()
    geometry = pycolmap.TwoViewGeometry()
    geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
    geometry.cam2_from_cam1 = cam2_from_cam1
    geometry.E = _skew(cam2_from_cam1.translation) @ cam2_from_cam1.rotation.matrix()
    geometry.inlier_matches = np.ascontiguousarray(inliers, dtype=np.uint32).reshape(-1, 2)
    return geometry


def num_inliers(geometry: pycolmap.TwoViewGeometry) -> int:
    return len(np.asarray(geometry.inlier_matches).reshape(-1, 2))
