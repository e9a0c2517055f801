"""Rigs in maps (``map build --rig``): COLMAP 4 rigs and frames in the database and the model.

Each camera of a rig becomes its own COLMAP camera (a sensor of the rig; COLMAP shares no camera
between rig sensors), each capture one frame whose pose is the rig's (rig_from_world, the
reference camera's pose); an image's pose is ``sensor_from_rig * rig_from_world`` and nothing
can move one camera of a frame without the others. Images outside every capture keep one-camera
rigs and frames of their own.

- Known poses: :func:`rig_reconstruction` rebuilds the reference model with the rigs, after
  checking that its poses are those of a rigid rig (they are the map's: a reference that
  contradicts the calibration is an error naming the image).
- SfM: :func:`write_rigs` rewrites the database's rigs and frames; pycolmap's mappers register
  whole frames and keep sensor_from_rig fixed (``MapperConf`` does not refine it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycolmap

from vloc.io.poses import rotation_angle_deg
from vloc.io.rigs import RigLayout
from vloc.mapping.database import camera_sensor, image_frame

RIG_ROTATION_TOLERANCE_DEG = 1e-3  # a reference pose farther from its rig than this is an error
RIG_TRANSLATION_TOLERANCE = 1e-5  # the same, times the reference's extent (its units)


@dataclass(frozen=True)
class RigPlan:
    """Ids for the rigs' COLMAP objects: one camera id per rig camera, one rig id per rig."""

    camera_ids: dict[tuple[str, str], int]  # (rig, camera name) -> camera id
    rig_ids: dict[str, int]

    @classmethod
    def make(cls, layout: RigLayout, first_camera_id: int, first_rig_id: int) -> RigPlan:
        camera_ids, rig_ids = {}, {}
        for r, rig in enumerate(layout.rigs.values()):
            rig_ids[rig.name] = first_rig_id + r
            for camera in rig.sensors:
                camera_ids[(rig.name, camera)] = first_camera_id + len(camera_ids)
        return cls(camera_ids, rig_ids)

    def colmap_rig(self, layout: RigLayout, name: str) -> pycolmap.Rig:
        rig = pycolmap.Rig()
        rig.rig_id = self.rig_ids[name]
        spec = layout.rigs[name]
        for camera, sensor_from_rig in spec.sensors.items():
            sensor = camera_sensor(self.camera_ids[(name, camera)])
            if camera == spec.reference:
                rig.add_ref_sensor(sensor)
            else:
                rig.add_sensor(sensor, sensor_from_rig)
        return rig


def _rig_cameras(layout: RigLayout, plan: RigPlan, camera_of_image: dict[str, pycolmap.Camera],
                 where: str) -> dict[int, pycolmap.Camera]:
    """One camera per rig camera, the intrinsics of its images (which must agree)."""
    cameras: dict[int, pycolmap.Camera] = {}
    for capture in layout.captures:
        for camera, image in capture.images.items():
            camera_id = plan.camera_ids[(capture.rig, camera)]
            intrinsics = camera_of_image[image]
            if camera_id not in cameras:
                cameras[camera_id] = pycolmap.Camera(intrinsics.todict())
                cameras[camera_id].camera_id = camera_id
            elif (cameras[camera_id].model != intrinsics.model
                  or not np.allclose(cameras[camera_id].params, intrinsics.params)):
                raise ValueError(f"{where}: {image} has other intrinsics than the other images of rig camera "
                                 f"{camera!r}; one camera of a rig has one calibration")
    return cameras


def rig_reconstruction(reference: pycolmap.Reconstruction, layout: RigLayout) -> pycolmap.Reconstruction:
    """``reference``'s posed images with ``layout``'s rigs and frames (no points). Raises
    ``ValueError`` when a capture's poses are not the rig's within the tolerances."""
    by_name = {im.name: im for im in reference.images.values() if im.has_pose}
    in_rig = layout.camera_of()
    missing = [n for n in in_rig if n not in by_name]
    if missing:
        raise ValueError(f"{layout.source}: {len(missing)} rig images are not posed in the reference, e.g. "
                         f"{missing[:3]}")
    centres = np.array([im.projection_center() for im in by_name.values()])
    extent = float(np.ptp(centres, axis=0).max()) if len(centres) > 1 else 1.0
    plan = RigPlan.make(layout, max(reference.cameras) + 1, max(r for r in reference.rigs) + 1)
    rec = pycolmap.Reconstruction()
    cameras = _rig_cameras(layout, plan, {n: reference.cameras[im.camera_id] for n, im in by_name.items()},
                           layout.source)
    for camera in cameras.values():
        rec.add_camera(camera)
    for name in layout.rigs:
        rec.add_rig(plan.colmap_rig(layout, name))
    frame_id = max(reference.frames) + 1
    for capture in layout.captures:
        rig = layout.rigs[capture.rig]
        first_camera, first_image = next(iter(capture.images.items()))
        rig_from_world = rig.sensors[first_camera].inverse() * by_name[first_image].cam_from_world()
        frame = pycolmap.Frame()
        frame.frame_id, frame.rig_id = frame_id, plan.rig_ids[capture.rig]
        for camera, image in capture.images.items():
            expected = rig.sensors[camera] * rig_from_world
            actual = by_name[image].cam_from_world()
            angle = rotation_angle_deg(expected, actual)
            shift = float(np.linalg.norm(expected.translation - actual.translation))
            if angle > RIG_ROTATION_TOLERANCE_DEG or shift > RIG_TRANSLATION_TOLERANCE * extent:
                raise ValueError(f"{layout.source}: capture {capture.key!r}: the reference pose of {image} is "
                                 f"{angle:.4f} deg and {shift:.3g} units from where rig camera {camera!r} puts it")
            frame.add_data_id(pycolmap.data_t(sensor_id=camera_sensor(plan.camera_ids[(capture.rig, camera)]),
                                              id=by_name[image].image_id))
        frame.rig_from_world = rig_from_world
        rec.add_frame(frame)
        for camera, image in capture.images.items():
            rec.add_image(pycolmap.Image(name=image, camera_id=plan.camera_ids[(capture.rig, camera)],
                                         image_id=by_name[image].image_id, frame_id=frame_id))
        frame_id += 1
    for name, im in by_name.items():
        if name in in_rig:
            continue
        if im.camera_id not in rec.cameras:
            rec.add_camera_with_trivial_rig(reference.cameras[im.camera_id])
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=im.camera_id, image_id=im.image_id),
                                         im.cam_from_world())
    return rec


def sfm_rigs(layout: RigLayout, names: list[str], cameras: dict[int, pycolmap.Camera], camera_of: list[int],
             ) -> tuple[dict[int, pycolmap.Camera], list[int], tuple[list[pycolmap.Rig], list[pycolmap.Frame]]]:
    """For SfM of ``names`` (image ids 1..N in that order) with ``cameras`` and each image's
    camera id ``camera_of``: the cameras with one per rig camera, each image's camera id, and
    every rig and frame (rig frames after the images' ids; others one-image frames)."""
    ids = {n: i + 1 for i, n in enumerate(names)}
    plan = RigPlan.make(layout, max(cameras) + 1, max(cameras) + 1)
    in_rig = {n: key for n, key in layout.camera_of().items() if n in ids}
    rig_cameras = _rig_cameras(layout, plan, {n: cameras[camera_of[i]] for i, n in enumerate(names)},
                               layout.source)
    new_of = [plan.camera_ids[in_rig[n]] if n in in_rig else camera_of[i] for i, n in enumerate(names)]
    used = set(new_of)
    kept = {k: c for k, c in {**cameras, **rig_cameras}.items() if k in used}
    rigs = [plan.colmap_rig(layout, name) for name in layout.rigs]
    frames = []
    for camera_id in sorted({camera_of[i] for i, n in enumerate(names) if n not in in_rig}):
        rig = pycolmap.Rig()
        rig.rig_id = camera_id  # below the rigs' ids (RigPlan starts above every camera id)
        rig.add_ref_sensor(camera_sensor(camera_id))
        rigs.append(rig)
    for i, name in enumerate(names):
        if name not in in_rig:
            frames.append(image_frame(i + 1, camera_of[i], rig_id=camera_of[i]))
    frame_id = len(names) + 1
    for capture in layout.captures:
        present = {camera: image for camera, image in capture.images.items() if image in ids}
        if not present:
            continue
        frame = pycolmap.Frame()
        frame.frame_id, frame.rig_id = frame_id, plan.rig_ids[capture.rig]
        for camera, image in present.items():
            frame.add_data_id(pycolmap.data_t(sensor_id=camera_sensor(plan.camera_ids[(capture.rig, camera)]),
                                              id=ids[image]))
        frames.append(frame)
        frame_id += 1
    return kept, new_of, (rigs, frames)
