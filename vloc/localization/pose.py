"""Absolute pose from 2D-3D correspondences with pycolmap (LO-RANSAC + non-linear refinement)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycolmap

from vloc.config import PoseConf

RANSAC_SEED = 0  # the same query gives the same pose, run after run (pycolmap's default seeds from the clock)


@dataclass
class PoseEstimate:
    cam_from_world: pycolmap.Rigid3d
    camera: pycolmap.Camera  # with the focal length refined when it was unknown
    inlier_mask: np.ndarray  # (N,) bool
    covariance: np.ndarray | None  # (6, 6), rotation then translation, as pycolmap returns it

    @property
    def num_inliers(self) -> int:
        return int(self.inlier_mask.sum())


def ransac_options(conf: PoseConf, focal_known: bool = True) -> pycolmap.AbsolutePoseEstimationOptions:
    """LO-RANSAC's options for a query: the conf's threshold and inlier ratio, vloc's fixed seed."""
    estimation = pycolmap.AbsolutePoseEstimationOptions()
    estimation.ransac.max_error = conf.max_error_px
    estimation.ransac.min_inlier_ratio = conf.min_inlier_ratio
    estimation.ransac.random_seed = RANSAC_SEED
    estimation.estimate_focal_length = not focal_known
    return estimation


def estimate_absolute_pose(
    points2D: np.ndarray, points3D: np.ndarray, camera: pycolmap.Camera, conf: PoseConf, focal_known: bool,
) -> PoseEstimate | None:
    """``points2D`` ``(N, 2)`` (COLMAP pixel convention), ``points3D`` ``(N, 3)`` -> pose or None.

    With ``focal_known=False`` the focal length is estimated with the pose and then refined.
    """
    estimation = ransac_options(conf, focal_known)
    refinement = pycolmap.AbsolutePoseRefinementOptions()
    refinement.refine_focal_length = not focal_known and conf.refine_focal_when_unknown
    camera = pycolmap.Camera(camera.todict())  # pycolmap updates the camera in place when refining
    result = pycolmap.estimate_and_refine_absolute_pose(
        np.ascontiguousarray(points2D, np.float64), np.ascontiguousarray(points3D, np.float64),
        camera, estimation, refinement, return_covariance=True)
    if result is None:
        return None
    covariance = result.get("covariance")
    return PoseEstimate(result["cam_from_world"], camera, np.asarray(result["inlier_mask"], bool),
                        None if covariance is None else np.asarray(covariance))
