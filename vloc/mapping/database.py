"""Write a COLMAP database (cameras, trivial rigs and frames, images, keypoints, verified matches)."""
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
) -> None:
    """Create ``path`` from scratch; ``keypoints`` and ``matches`` are read one item at a time.

    Args:
        cameras: camera_id -> camera. Each camera gets a one-sensor rig with the same id.
        images: image_id -> (name, camera_id). Each image gets a frame with the same id, as
            pycolmap does when it reads a model without rigs.
        keypoints: (image_id, ``(N, 2)`` float32 in COLMAP's pixel convention) for every image.
        matches: (image_id1, image_id2, raw matches ``(K, 2)`` keypoint indices, verified
            two-view geometry or None); pairs without a geometry are left to
            ``pycolmap.verify_matches`` on the database.
    """
    if path.exists():
        path.unlink()
    db = pycolmap.Database.open(str(path))
    try:
        for camera_id, camera in cameras.items():
            camera.camera_id = camera_id
            db.write_camera(camera, use_camera_id=True)
            rig = pycolmap.Rig()
            rig.rig_id = camera_id
            rig.add_ref_sensor(pycolmap.sensor_t(type=pycolmap.SensorType.CAMERA, id=camera_id))
            db.write_rig(rig, use_rig_id=True)
        for image_id, (name, camera_id) in images.items():
            db.write_image(pycolmap.Image(name=name, camera_id=camera_id, image_id=image_id), use_image_id=True)
            frame = pycolmap.Frame()
            frame.frame_id = image_id
            frame.rig_id = camera_id
            frame.add_data_id(pycolmap.data_t(
                sensor_id=pycolmap.sensor_t(type=pycolmap.SensorType.CAMERA, id=camera_id), id=image_id))
            db.write_frame(frame, use_frame_id=True)
        for image_id, points in keypoints:
            db.write_keypoints(image_id, np.ascontiguousarray(points, dtype=np.float32))
        for id1, id2, raw, geometry in matches:
            db.write_matches(id1, id2, np.ascontiguousarray(raw, dtype=np.uint32))
            if geometry is not None:
                db.write_two_view_geometry(id1, id2, geometry)
    finally:
        db.close()
