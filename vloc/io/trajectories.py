"""Robotics trajectory formats. Both store camera-to-world poses (world_from_cam).

- KITTI odometry: one line per frame, 12 numbers, the row-major 3x4 ``[R | t]`` of world_from_cam.
- TUM: ``timestamp tx ty tz qx qy qz qw`` per line, world_from_cam.
Functions here take and return cam_from_world (COLMAP) so callers never mix conventions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from vloc.io.files import write_text_atomic
from vloc.io.text import data_lines, parse_floats


def _rigid_from_matrix(m: np.ndarray) -> pycolmap.Rigid3d:
    return pycolmap.Rigid3d(pycolmap.Rotation3d(m[:3, :3]), m[:3, 3])


def _read_rows(path: Path, n: int, fmt: str) -> list[np.ndarray]:
    rows = []
    for where, fields in data_lines(path, "trajectory file"):
        if len(fields) != n:
            raise ValueError(f"{where}: expected {n} numbers ({fmt}), got {len(fields)}")
        rows.append(np.array(parse_floats(fields, where)))
    return rows


def read_kitti_poses(path: Path | str) -> list[pycolmap.Rigid3d]:
    """KITTI poses file -> cam_from_world per line (rotations orthonormalised)."""
    poses = []
    for row in _read_rows(path, 12, "row-major 3x4 world_from_cam"):
        m = row.reshape(3, 4)
        u, _, vt = np.linalg.svd(m[:, :3])
        r = u @ vt
        poses.append(_rigid_from_matrix(np.hstack([r, m[:, 3:]])).inverse())
    return poses


def write_kitti_poses(path: Path | str, cam_from_world: list[pycolmap.Rigid3d]) -> None:
    lines = []
    for pose in cam_from_world:
        m = pose.inverse().matrix()
        lines.append(" ".join(f"{v:.9e}" for v in m.reshape(-1)))
    write_text_atomic(Path(path), "\n".join(lines) + "\n")


def read_tum_trajectory(path: Path | str) -> list[tuple[float, pycolmap.Rigid3d]]:
    """TUM file -> ``(timestamp, cam_from_world)`` per line."""
    out = []
    for row in _read_rows(path, 8, "timestamp tx ty tz qx qy qz qw"):
        q = row[4:8] / np.linalg.norm(row[4:8])
        world_from_cam = pycolmap.Rigid3d(pycolmap.Rotation3d(q), row[1:4])
        out.append((float(row[0]), world_from_cam.inverse()))
    return out


def write_tum_trajectory(path: Path | str, stamped: list[tuple[float, pycolmap.Rigid3d]]) -> None:
    lines = []
    for stamp, pose in stamped:
        world_from_cam = pose.inverse()
        t = world_from_cam.translation
        q = world_from_cam.rotation.quat  # xyzw, TUM's order
        lines.append(" ".join([f"{stamp:.6f}"] + [f"{v:.9g}" for v in (*t, *q)]))
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
