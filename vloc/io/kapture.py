"""Read a kapture text dataset (``sensors/sensors.txt``, ``rigs.txt``, ``trajectories.txt``,
``records_camera.txt``) into per-image cameras and cam_from_world poses.

kapture trajectories are world-to-device (COLMAP's cam_from_world). A rig entry gives the
pose of a sensor in the rig (sensor_from_rig), so a rig camera's
``cam_from_world = sensor_from_rig * rig_from_world``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from vloc.io.cameras import camera_from_fields
from vloc.io.poses import rigid_from_qt


@dataclass(frozen=True)
class KaptureImage:
    name: str  # path relative to sensors/records_data
    sensor_id: str
    timestamp: int
    camera: pycolmap.Camera
    cam_from_world: pycolmap.Rigid3d | None


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            rows.append([f.strip() for f in line.split(",")])
    return rows


def read_kapture(root: Path | str) -> list[KaptureImage]:
    """All camera records of a kapture folder (``root/sensors/...``)."""
    sensors_dir = Path(root) / "sensors"
    if not (sensors_dir / "sensors.txt").is_file():
        raise FileNotFoundError(f"{sensors_dir / 'sensors.txt'}: not a kapture dataset")
    cameras = {}
    for row in _rows(sensors_dir / "sensors.txt"):
        sensor_id, _name, kind, *fields = row
        if kind == "camera":
            model, width, height, *params = fields
            cameras[sensor_id] = camera_from_fields(
                model, int(width), int(height), [float(p) for p in params], f"{sensors_dir}/sensors.txt:{sensor_id}")
    sensor_from_rig = {}
    for rig_id, sensor_id, *qt in _rows(sensors_dir / "rigs.txt"):
        v = np.array([float(x) for x in qt])
        sensor_from_rig[(rig_id, sensor_id)] = rigid_from_qt(v[:4], v[4:])
    poses = {}
    for timestamp, device_id, *qt in _rows(sensors_dir / "trajectories.txt"):
        v = np.array([float(x) for x in qt])
        poses[(int(timestamp), device_id)] = rigid_from_qt(v[:4], v[4:])
    images = []
    for timestamp, sensor_id, name in _rows(sensors_dir / "records_camera.txt"):
        ts = int(timestamp)
        pose = poses.get((ts, sensor_id))
        if pose is None:
            for (rig_id, sid), s_from_r in sensor_from_rig.items():
                if sid == sensor_id and (ts, rig_id) in poses:
                    pose = s_from_r * poses[(ts, rig_id)]
        images.append(KaptureImage(name, sensor_id, ts, cameras[sensor_id], pose))
    return images
