"""Pose lists ``name qw qx qy qz tx ty tz`` (cam_from_world, COLMAP convention)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from vloc.io.files import write_text_atomic
from vloc.io.text import data_lines, parse_floats


def rigid_from_qt(qvec_wxyz: np.ndarray, tvec: np.ndarray) -> pycolmap.Rigid3d:
    """pycolmap stores quaternions as ``xyzw``; pose files use ``wxyz``."""
    q = np.asarray(qvec_wxyz, dtype=np.float64)
    q = q / np.max(np.abs(q))  # first to the largest component: no overflow or underflow for any finite q
    q = q / np.linalg.norm(q)
    return pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([q[1], q[2], q[3], q[0]])), np.asarray(tvec, np.float64))


def qt_from_rigid(pose: pycolmap.Rigid3d) -> tuple[np.ndarray, np.ndarray]:
    """``(qvec_wxyz, tvec)`` of a rigid transform."""
    x, y, z, w = pose.rotation.quat
    return np.array([w, x, y, z]), np.asarray(pose.translation, dtype=np.float64)


def rotation_angle_deg(a: pycolmap.Rigid3d, b: pycolmap.Rigid3d) -> float:
    """The angle (degrees) of the rotation between two poses' rotations."""
    return float(np.rad2deg((a.rotation * b.rotation.inverse()).angle()))


def read_poses(path: Path | str) -> dict[str, pycolmap.Rigid3d]:
    poses = {}
    for where, fields in data_lines(path, "pose list"):
        if len(fields) != 8:
            raise ValueError(f"{where}: expected 'name qw qx qy qz tx ty tz', got {' '.join(fields)!r}")
        values = np.array(parse_floats(fields[1:], where))
        poses[fields[0]] = rigid_from_qt(values[:4], values[4:])
    return poses


def format_pose(name: str, pose: pycolmap.Rigid3d) -> str:
    q, t = qt_from_rigid(pose)
    return " ".join([name] + [f"{v:.10g}" for v in (*q, *t)])


def write_poses(path: Path | str, poses: dict[str, pycolmap.Rigid3d]) -> None:
    """Write atomically: a reader never sees a half-written list."""
    write_text_atomic(Path(path), "".join(format_pose(n, p) + "\n" for n, p in poses.items()))



def world_pose_covariance(cam_from_world: pycolmap.Rigid3d, covariance: np.ndarray) -> np.ndarray:
    """pycolmap's ``(6, 6)`` covariance of ``cam_from_world`` (rotation then translation, the
    rotation perturbed on the left) -> the covariance of the camera's pose in the world frame:
    centre x, y, z, then rotation about the world's x, y, z axes (ROS's order)."""
    R, t = cam_from_world.rotation.matrix(), np.asarray(cam_from_world.translation)
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    J = np.zeros((6, 6))
    J[:3, :3], J[:3, 3:] = -R.T @ tx, -R.T  # centre = -R^T t; w moves it by -R^T [t]x w
    J[3:, :3] = -R.T  # world_from_cam rotation R^T: its world-frame perturbation is -R^T w
    return J @ np.asarray(covariance, float) @ J.T
