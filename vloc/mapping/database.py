"""Write a COLMAP database (cameras, rigs and frames, images, pose priors, keypoints, verified matches)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pycolmap


def write_database(
    path: Path,
    cameras: dict[int, pycolmap.Camera],
    images: dict[int, tuple[str, int]],
    keypoints: Iterable[tuple[int, np.ndarray]],
    matches: Iterable[tuple[int, int, np.ndarray, pycolmap.TwoViewGeometry | None]],
    position_priors: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    rigs_and_frames: tuple[list[pycolmap.Rig], list[pycolmap.Frame]] | None = None,
    descriptors: Iterable[tuple[int, pycolmap.FeatureDescriptors]] = (),
) -> None:
    """Create ``path`` from scratch; ``keypoints`` and ``matches`` are read one item at a time.

    Args:
        cameras: camera_id -> camera.
        images: image_id -> (name, camera_id).
        keypoints: (image_id, ``(N, 2)`` float32 in COLMAP's pixel convention) for every image.
        matches: (image_id1, image_id2, raw matches ``(K, 2)`` keypoint indices, verified
            two-view geometry or None); pairs without a geometry are left to
            ``pycolmap.verify_matches`` on the database.
        position_priors: image_id -> (camera centre ``(3,)``, its covariance ``(3, 3)``) in a
            metric Cartesian frame (``map build --gps``: east-north-up metres), written as
            COLMAP pose priors of the image's frame.
        rigs_and_frames: every rig and frame (multi-camera rigs, :mod:`vloc.mapping.rigs`);
            default: a one-camera rig per camera and a one-image frame per image.
        descriptors: (image_id, descriptors) for the images that get them (``vloc map export``;
            SfM from vloc's own stages needs none).
    """
    if path.exists():
        path.unlink()
    db = pycolmap.Database.open(str(path))
    try:
        rigs, frames = rigs_and_frames if rigs_and_frames is not None else trivial_rigs_and_frames(cameras, images)
        for camera_id, camera in cameras.items():
            camera.camera_id = camera_id
            db.write_camera(camera, use_camera_id=True)
        for rig in rigs:
            db.write_rig(rig, use_rig_id=True)
        for image_id, (name, camera_id) in images.items():
            db.write_image(pycolmap.Image(name=name, camera_id=camera_id, image_id=image_id), use_image_id=True)
        for frame in frames:
            db.write_frame(frame, use_frame_id=True)
        for image_id, (name, camera_id) in images.items():
            if position_priors and image_id in position_priors:
                position, covariance = position_priors[image_id]
                db.write_pose_prior(pycolmap.PosePrior(
                    corr_data_id=pycolmap.data_t(sensor_id=camera_sensor(camera_id), id=image_id),
                    position=np.asarray(position, dtype=np.float64),
                    position_covariance=np.asarray(covariance, dtype=np.float64),
                    coordinate_system=pycolmap.PosePriorCoordinateSystem.CARTESIAN))
        for image_id, points in keypoints:
            db.write_keypoints(image_id, np.ascontiguousarray(points, dtype=np.float32))
        for image_id, desc in descriptors:
            db.write_descriptors(image_id, desc)
        for id1, id2, raw, geometry in matches:
            db.write_matches(id1, id2, np.ascontiguousarray(raw, dtype=np.uint32))
            if geometry is not None:
                db.write_two_view_geometry(id1, id2, geometry)
    finally:
        db.close()


def camera_sensor(camera_id: int) -> pycolmap.sensor_t:
    return pycolmap.sensor_t(type=pycolmap.SensorType.CAMERA, id=camera_id)


def trivial_rigs_and_frames(cameras: dict[int, pycolmap.Camera],
                            images: dict[int, tuple[str, int]]) -> tuple[list[pycolmap.Rig], list[pycolmap.Frame]]:
    """A one-camera rig per camera (rig id = camera id) and a one-image frame per image (frame
    id = image id), as pycolmap makes them for a model without rigs."""
    rigs = [camera_rig(camera_id, rig_id=camera_id) for camera_id in cameras]
    frames = [image_frame(image_id, camera_id, rig_id=camera_id) for image_id, (_, camera_id) in images.items()]
    return rigs, frames


def camera_rig(camera_id: int, rig_id: int) -> pycolmap.Rig:
    """A rig of one camera (its reference sensor)."""
    rig = pycolmap.Rig()
    rig.rig_id = rig_id
    rig.add_ref_sensor(camera_sensor(camera_id))
    return rig


def image_frame(image_id: int, camera_id: int, rig_id: int) -> pycolmap.Frame:
    frame = pycolmap.Frame()
    frame.frame_id, frame.rig_id = image_id, rig_id
    frame.add_data_id(pycolmap.data_t(sensor_id=camera_sensor(camera_id), id=image_id))
    return frame
