"""The ``7scenes_seq1000`` sequence (``../shared/data``) as benchmarks split it: the 50 query
frames 10, 30, ..., 990 of ``prepared/7scenes``, map frames spread evenly over the other 950,
and a COLMAP reference model of their ground-truth poses (PINHOLE 525 525 320 240, the 7-Scenes
RGB convention; ``frame-XXXXXX.pose.txt`` is 4x4 camera-to-world)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from vloc.io.poses import format_pose

QUERY_FRAMES = frozenset(range(10, 1000, 20))
CAMERA = "PINHOLE 640 480 525 525 320 240"


def frame_name(i: int) -> str:
    return f"frame-{i:06d}.color.jpg"


def map_frames(size: int) -> list[int]:
    """``size`` frame numbers spread evenly over the 950 that are not queries."""
    candidates = [i for i in range(1000) if i not in QUERY_FRAMES]
    if not 1 <= size <= len(candidates):
        raise ValueError(f"between 1 and {len(candidates)} map frames, not {size}")
    return [candidates[int(round(k))] for k in np.linspace(0, len(candidates) - 1, size)]


def frame_pose(seq: Path, i: int) -> pycolmap.Rigid3d:
    """``cam_from_world`` of frame ``i`` (its rotation orthonormalised: KinectFusion drifts)."""
    world_from_cam = np.loadtxt(Path(seq) / f"frame-{i:06d}.pose.txt")
    u, _, vt = np.linalg.svd(world_from_cam[:3, :3])
    return pycolmap.Rigid3d(pycolmap.Rotation3d(u @ vt), world_from_cam[:3, 3]).inverse()


def write_reference(seq: Path, frames: list[int], out: Path) -> None:
    """A COLMAP text model at ``out`` of the frames' ground-truth poses, no points."""
    out.mkdir(parents=True)
    lines = [f"{image_id} {' '.join(format_pose(frame_name(i), frame_pose(seq, i)).split()[1:])} 1 {frame_name(i)}\n\n"
             for image_id, i in enumerate(frames, start=1)]
    (out / "cameras.txt").write_text(f"1 {CAMERA}\n")
    (out / "images.txt").write_text("".join(lines))
    (out / "points3D.txt").write_text("")
