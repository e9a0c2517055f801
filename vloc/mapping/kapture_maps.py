"""kapture datasets in and out, through kapture's own loader and writer (the ``kapture`` extra).

Import: the dataset's sensors, rigs, trajectories and camera records, read by
``kapture.io.csv.kapture_from_dir``; rig trajectories become per-camera poses by kapture's
``rigs_remove``; the posed images become a COLMAP reference model and the map is built from it as
``vloc map build --reference`` builds (features extracted, matched and triangulated at the known
poses). A dataset's own local features and 3D points (e.g. virtual_gallery's R2D2) are not used:
vloc cannot describe queries with them. Export: one kapture camera per map camera, one trajectory
entry per map image (timestamps: the images' order), its camera record naming the image; written by
``kapture.io.csv.kapture_to_dir`` (images are not copied: ``sensors/records_data`` is left to the user).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pycolmap

from vloc.config import get_preset
from vloc.io.kapture import kapture_package, pose_transform
from vloc.mapping.build import build_map
from vloc.mapping.manifest import Manifest
from vloc.mapping.map_dir import load_map

logger = logging.getLogger(__name__)


def _kapture():
    """kapture and its text loader and writer."""
    kapture = kapture_package()
    from kapture.io.csv import kapture_from_dir, kapture_to_dir

    return kapture, kapture_from_dir, kapture_to_dir


def _write_reference(out: Path, posed: list[tuple[str, str, list, pycolmap.Rigid3d]]) -> None:
    """A COLMAP text model of ``(name, camera model, [w, h, params...], cam_from_world)`` with one
    camera per distinct calibration and no points."""
    out.mkdir(parents=True)
    cameras: dict[tuple, int] = {}
    camera_lines, image_lines = [], []
    for image_id, (name, model, params, pose) in enumerate(posed, start=1):
        key = (model, *params)
        if key not in cameras:
            cameras[key] = len(cameras) + 1
            camera_lines.append(f"{cameras[key]} {model} {int(params[0])} {int(params[1])} "
                                + " ".join(f"{v:.17g}" for v in params[2:]))
        q, t = pose.rotation.quat, pose.translation  # x, y, z, w
        image_lines += [" ".join([str(image_id), *(f"{v:.17g}" for v in (q[3], q[0], q[1], q[2], *t)),
                                  str(cameras[key]), name]), ""]
    (out / "cameras.txt").write_text("\n".join(camera_lines) + "\n")
    (out / "images.txt").write_text("\n".join(image_lines) + "\n")
    (out / "points3D.txt").write_text("")


def import_kapture(kapture_dir: Path | str, out: Path | str, preset: str = "sift", *, overwrite: bool = False,
                   device: str | None = None) -> Manifest:
    """A vloc map at ``out`` from the kapture dataset ``kapture_dir`` (its ``sensors/`` folder);
    see the module docstring. A dataset without trajectories, or whose posed records name no
    camera sensor, is refused by name."""
    kapture, kapture_from_dir, _ = _kapture()
    kapture_dir = Path(kapture_dir)
    if not (kapture_dir / "sensors" / "sensors.txt").is_file():
        raise FileNotFoundError(f"{kapture_dir}: not a kapture dataset (no sensors/sensors.txt)")
    data = kapture_from_dir(str(kapture_dir))
    if not data.trajectories:
        raise ValueError(f"{kapture_dir}: no trajectories (sensors/trajectories.txt): a map needs posed images")
    if not data.records_camera:
        raise ValueError(f"{kapture_dir}: no camera records (sensors/records_camera.txt)")
    trajectories = kapture.rigs_remove(data.trajectories, data.rigs) if data.rigs else data.trajectories
    posed, unposed = [], []
    for timestamp, sensor_id, filename in kapture.flatten(data.records_camera, is_sorted=True):
        sensor = data.sensors.get(sensor_id)
        if sensor is None or sensor.sensor_type != "camera":
            raise ValueError(f"{kapture_dir}: record {filename} names sensor {sensor_id!r}, "
                             "not a camera of sensors.txt")
        if timestamp not in trajectories or sensor_id not in trajectories[timestamp]:
            unposed.append(filename)
            continue
        pose = trajectories[timestamp, sensor_id]
        w, x, y, z = (float(v) for v in pose.r_raw)
        cam_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([x, y, z, w])), np.asarray(pose.t_raw, float))
        posed.append((filename, sensor.camera_type.value, [float(v) for v in sensor.camera_params], cam_from_world))
    if not posed:
        raise ValueError(f"{kapture_dir}: no camera record has a pose in the trajectories")
    if unposed:
        logger.warning("%s: %d records without a pose are left out, e.g. %s", kapture_dir, len(unposed), unposed[:3])
    if data.keypoints or data.points3d:
        logger.info("%s: the dataset's own local features / 3D points are not used (vloc cannot describe queries "
                    "with them); features are extracted with preset %s", kapture_dir, preset)
    with tempfile.TemporaryDirectory(prefix="vloc-kapture-") as tmp:
        reference = Path(tmp) / "reference"
        _write_reference(reference, posed)
        return build_map(kapture_dir / "sensors" / "records_data", Path(out), get_preset(preset), reference=reference,
                         overwrite=overwrite, device=device)


def export_kapture(map_dir: Path | str, out: Path | str) -> Path:
    """The map's cameras and image poses as a new kapture dataset ``out`` (see the module docstring)."""
    kapture, _, kapture_to_dir = _kapture()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; name a new folder")
    model = load_map(map_dir).reconstruction
    sensors, trajectories, records = kapture.Sensors(), kapture.Trajectories(), kapture.RecordsCamera()
    for camera_id, camera in model.cameras.items():
        sensors[f"camera_{camera_id}"] = kapture.Camera(
            kapture.CameraType[camera.model.name], [camera.width, camera.height, *map(float, camera.params)])
    images = sorted((im for im in model.images.values() if im.has_pose), key=lambda im: im.name)
    for timestamp, im in enumerate(images):
        sensor_id = f"camera_{im.camera_id}"
        trajectories[timestamp, sensor_id] = pose_transform(im.cam_from_world())
        records[timestamp, sensor_id] = im.name
    kapture_to_dir(str(out), kapture.Kapture(sensors=sensors, trajectories=trajectories, records_camera=records))
    logger.info("%s: kapture dataset of %s (%d images)", out, map_dir, len(images))
    return out
