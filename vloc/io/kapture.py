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


def kapture_package():
    """NAVER's ``kapture`` package (the ``kapture`` extra), or an error naming what to install."""
    try:
        import kapture
    except ImportError:
        raise RuntimeError("kapture datasets need the `kapture` package: pip install 'vloc[kapture]'") from None
    return kapture


def pose_transform(cam_from_world: pycolmap.Rigid3d):
    """``cam_from_world`` as kapture's ``PoseTransform`` (its quaternion is w, x, y, z)."""
    x, y, z, w = cam_from_world.rotation.quat
    return kapture_package().PoseTransform(r=[w, x, y, z], t=list(cam_from_world.translation))


def write_kapture_trajectories(path: Path | str, poses: dict[str, pycolmap.Rigid3d],
                               records: Path | str | None = None) -> int:
    """Localized queries' ``cam_from_world`` as kapture's ``trajectories.txt``, written by kapture's
    own writer (the ``kapture`` extra). ``records``: the query kapture dataset whose
    ``sensors/records_camera.txt`` names the images (its timestamp and sensor id are used, as
    kapture's tools expect); without it each query gets its line number in the list as timestamp and
    its name as device id. Returns the number of poses written; a name the records lack is an error."""
    kapture = kapture_package()
    from kapture.io.csv import records_camera_from_file, trajectories_to_file

    keys = {name: (index, name) for index, name in enumerate(poses)}
    if records is not None:
        records_file = Path(records) / "sensors" / "records_camera.txt"
        if not records_file.is_file():
            raise FileNotFoundError(f"{records_file}: not a kapture dataset's camera records")
        records_camera = records_camera_from_file(str(records_file))
        by_name = {name: (ts, sensor) for ts, sensor, name in kapture.flatten(records_camera)}
        missing = [n for n in poses if n not in by_name]
        if missing:
            raise ValueError(f"{records_file}: no record of {len(missing)} localized queries, e.g. {missing[:3]}")
        keys = {n: by_name[n] for n in poses}
    trajectories = kapture.Trajectories()
    for name, pose in poses.items():
        trajectories[keys[name]] = pose_transform(pose)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    trajectories_to_file(str(path), trajectories)
    return len(poses)
