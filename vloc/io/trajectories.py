"""Robotics trajectory formats. Both store camera-to-world poses (world_from_cam).

- KITTI odometry: one line per frame, 12 numbers, the row-major 3x4 ``[R | t]`` of world_from_cam.
- TUM: ``timestamp tx ty tz qx qy qz qw`` per line, world_from_cam.
Functions here take and return cam_from_world (COLMAP) so callers never mix conventions.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pycolmap

from vloc.io.files import atomic_open, write_text_atomic
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


def kitti_line(cam_from_world: pycolmap.Rigid3d) -> str:
    return " ".join(f"{v:.9e}" for v in cam_from_world.inverse().matrix().reshape(-1))


def write_kitti_poses(path: Path | str, cam_from_world: list[pycolmap.Rigid3d]) -> None:
    write_text_atomic(Path(path), "".join(kitti_line(pose) + "\n" for pose in cam_from_world))


def read_tum_trajectory(path: Path | str) -> list[tuple[float, pycolmap.Rigid3d]]:
    """TUM file -> ``(timestamp, cam_from_world)`` per line."""
    out = []
    for row in _read_rows(path, 8, "timestamp tx ty tz qx qy qz qw"):
        q = row[4:8] / np.linalg.norm(row[4:8])
        world_from_cam = pycolmap.Rigid3d(pycolmap.Rotation3d(q), row[1:4])
        out.append((float(row[0]), world_from_cam.inverse()))
    return out


def tum_line(stamp: float, cam_from_world: pycolmap.Rigid3d) -> str:
    world_from_cam = cam_from_world.inverse()
    q = world_from_cam.rotation.quat  # xyzw, TUM's order
    return " ".join([f"{stamp:.6f}"] + [f"{v:.9g}" for v in (*world_from_cam.translation, *q)])


def write_tum_trajectory(path: Path | str, stamped: list[tuple[float, pycolmap.Rigid3d]]) -> None:
    write_text_atomic(Path(path), "".join(tum_line(stamp, pose) + "\n" for stamp, pose in stamped))


class TrajectoryStream:
    """TUM and/or KITTI files written a pose at a time, so a long recording's poses are never all in
    memory; each file appears (atomically) when the stream closes without an error."""

    def __init__(self, tum: Path | str | None = None, kitti: Path | str | None = None):
        self._stack = ExitStack()
        self._files = {fmt: self._stack.enter_context(atomic_open(path))
                       for fmt, path in (("tum", tum), ("kitti", kitti)) if path is not None}

    def add(self, stamp: float, cam_from_world: pycolmap.Rigid3d) -> None:
        if "tum" in self._files:
            self._files["tum"].write(tum_line(stamp, cam_from_world) + "\n")
        if "kitti" in self._files:
            self._files["kitti"].write(kitti_line(cam_from_world) + "\n")

    def __enter__(self) -> "TrajectoryStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)
