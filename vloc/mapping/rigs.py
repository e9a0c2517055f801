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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pycolmap

from vloc.io.poses import rotation_angle_deg
from vloc.io.rigs import Rig, RigCapture, RigLayout
from vloc.mapping.database import camera_rig, camera_sensor, image_frame

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
    rec = pycolmap.Reconstruction()
    add_rig_captures(rec, reference, layout, {n: im.image_id for n, im in by_name.items()})
    in_rig = layout.camera_of()
    for name, im in by_name.items():
        if name in in_rig:
            continue
        if im.camera_id not in rec.cameras:
            rec.add_camera_with_trivial_rig(reference.cameras[im.camera_id])
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=im.camera_id, image_id=im.image_id),
                                         im.cam_from_world())
    return rec


def add_rig_captures(target: pycolmap.Reconstruction, reference: pycolmap.Reconstruction, layout: RigLayout,
                     image_ids: dict[str, int], keypoints: Callable[[str], np.ndarray] | None = None) -> None:
    """Add ``layout``'s captures to ``target`` as frames at ``reference``'s poses. A rig of
    ``target`` with the same calibration (:func:`find_rig`) takes them with its cameras (whose
    intrinsics must be the images'); another rig is added with new cameras. Images get the ids
    ``image_ids`` (and ``keypoints(name)`` when given). Raises ``ValueError`` for a capture whose
    poses are not the rig's within the tolerances, or an image the reference does not pose."""
    by_name = {im.name: im for im in reference.images.values() if im.has_pose}
    missing = [n for n in layout.camera_of() if n not in by_name]
    if missing:
        raise ValueError(f"{layout.source}: {len(missing)} rig images are not posed in the reference, e.g. "
                         f"{missing[:3]}")
    centres = np.array([im.projection_center() for im in by_name.values()])
    extent = float(np.ptp(centres, axis=0).max()) if len(centres) > 1 else 1.0
    intrinsics = {n: reference.cameras[im.camera_id] for n, im in by_name.items()}
    plan = RigPlan.make(layout, max([0, *target.cameras, *reference.cameras]) + 1,
                        max([0, *target.rigs, *reference.rigs]) + 1)
    rig_ids, camera_ids = dict(plan.rig_ids), dict(plan.camera_ids)
    new_cameras = _rig_cameras(layout, plan, intrinsics, layout.source)
    for name, rig in layout.rigs.items():
        found = find_rig(target, rig)
        if found is None:
            for camera in rig.sensors:
                target.add_camera(new_cameras[plan.camera_ids[(name, camera)]])
            target.add_rig(plan.colmap_rig(layout, name))
            continue
        rig_ids[name] = found[0]
        for camera, camera_id in found[1].items():
            camera_ids[(name, camera)] = camera_id
            given = new_cameras[plan.camera_ids[(name, camera)]]
            if target.cameras[camera_id].model != given.model or not np.allclose(target.cameras[camera_id].params,
                                                                                  given.params):
                raise ValueError(f"{layout.source}: rig {name!r} camera {camera!r}: the images' intrinsics are not "
                                 f"those of the map's camera {camera_id} with the same place on the rig")
    frame_id = max([0, *target.frames, *reference.frames]) + 1
    for capture in layout.captures:
        frame = pycolmap.Frame()
        frame.frame_id, frame.rig_id = frame_id, rig_ids[capture.rig]
        for camera, image in capture.images.items():
            frame.add_data_id(pycolmap.data_t(sensor_id=camera_sensor(camera_ids[(capture.rig, camera)]),
                                              id=image_ids[image]))
        frame.rig_from_world = _rig_from_world(capture, layout, by_name, extent)
        target.add_frame(frame)
        for camera, image in capture.images.items():
            extra = {} if keypoints is None else {"keypoints": keypoints(image)}
            colmap_image = pycolmap.Image(name=image, camera_id=camera_ids[(capture.rig, camera)],
                                          image_id=image_ids[image], **extra)
            colmap_image.frame_id = frame_id
            target.add_image(colmap_image)
        frame_id += 1


def _rig_from_world(capture: RigCapture, layout: RigLayout, by_name: dict[str, pycolmap.Image],
                    extent: float) -> pycolmap.Rigid3d:
    """The rig's pose from the capture's first image; every image of it checked against the rig."""
    rig = layout.rigs[capture.rig]
    first_camera, first_image = next(iter(capture.images.items()))
    rig_from_world = rig.sensors[first_camera].inverse() * by_name[first_image].cam_from_world()
    for camera, image in capture.images.items():
        expected, actual = rig.sensors[camera] * rig_from_world, by_name[image].cam_from_world()
        angle = rotation_angle_deg(expected, actual)
        shift = float(np.linalg.norm(expected.translation - actual.translation))
        if angle > RIG_ROTATION_TOLERANCE_DEG or shift > RIG_TRANSLATION_TOLERANCE * extent:
            raise ValueError(f"{layout.source}: capture {capture.key!r}: the reference pose of {image} is "
                             f"{angle:.4f} deg and {shift:.3g} units from where rig camera {camera!r} puts it")
    return rig_from_world


def find_rig(model: pycolmap.Reconstruction, rig: Rig) -> tuple[int, dict[str, int]] | None:
    """The COLMAP rig of ``model`` with ``rig``'s calibration (as many cameras, each at its pose
    within the tolerances): its id and camera name -> camera id; None when there is none."""
    for colmap_rig in model.rigs.values():
        if colmap_rig.num_sensors() != len(rig.sensors):
            continue
        cameras = {rig.reference: colmap_rig.ref_sensor_id.id}
        for camera, pose in rig.sensors.items():
            if camera == rig.reference:
                continue
            same = [sensor.id for sensor, other in colmap_rig.non_ref_sensors.items()
                    if rotation_angle_deg(other, pose) <= RIG_ROTATION_TOLERANCE_DEG
                    and np.linalg.norm(other.translation - pose.translation) <= RIG_TRANSLATION_TOLERANCE]
            if len(same) != 1:
                break
            cameras[camera] = same[0]
        else:
            return colmap_rig.rig_id, cameras
    return None


def sfm_rigs(layout: RigLayout, names: list[str], cameras: dict[int, pycolmap.Camera], camera_of: list[int],
             ) -> tuple[dict[int, pycolmap.Camera], list[int], tuple[list[pycolmap.Rig], list[pycolmap.Frame]]]:
    """For SfM of ``names`` (image ids 1..N in that order) with ``cameras`` and each image's
    camera id ``camera_of``: :func:`extension_rigs` of an empty model (the cameras with one per
    rig camera, each image's camera id in the same order, every rig and frame)."""
    ids = {n: i + 1 for i, n in enumerate(names)}
    kept, new_of, rigs_and_frames = extension_rigs(pycolmap.Reconstruction(), layout, ids, cameras,
                                                   dict(zip(names, camera_of, strict=True)))
    return kept, [new_of[n] for n in names], rigs_and_frames


def extension_rigs(
    model: pycolmap.Reconstruction, layout: RigLayout | None, new_ids: dict[str, int],
    cameras: dict[int, pycolmap.Camera], camera_of: dict[str, int],
) -> tuple[dict[int, pycolmap.Camera], dict[str, int], tuple[list[pycolmap.Rig], list[pycolmap.Frame]]]:
    """Rigs and frames for SfM that grows ``model`` (``map extend``): the model's own, the new
    captures of ``layout`` as frames of the model's rig with their calibration (:func:`find_rig`)
    or of a new rig with new cameras, and one-image frames for the other new images (ids
    ``new_ids``, cameras ``camera_of``). Returns the cameras, each new image's camera id, and
    every rig and frame."""
    cameras, camera_of = dict(cameras), dict(camera_of)
    rigs = list(model.rigs.values())
    frames = list(model.frames.values())
    in_rig = {n: key for n, key in (layout.camera_of() if layout is not None else {}).items() if n in new_ids}
    next_rig = max([0, *model.rigs, *cameras]) + 1
    frame_id = max([0, *model.frames, *new_ids.values()]) + 1
    if layout is not None:
        plan = RigPlan.make(layout, max(cameras) + 1, next_rig)
        camera_ids = dict(plan.camera_ids)
        new_cameras = _rig_cameras(layout, plan, {n: cameras[camera_of[n]] for n in in_rig}, layout.source)
        rig_ids = dict(plan.rig_ids)
        for name, rig in layout.rigs.items():
            found = find_rig(model, rig)
            if found is None:
                cameras.update({plan.camera_ids[(name, c)]: new_cameras[plan.camera_ids[(name, c)]]
                                for c in rig.sensors})
                rigs.append(plan.colmap_rig(layout, name))
            else:
                rig_ids[name] = found[0]
                camera_ids.update({(name, c): camera_id for c, camera_id in found[1].items()})
        next_rig = max([next_rig, *plan.rig_ids.values()]) + 1
        for capture in layout.captures:
            present = {c: n for c, n in capture.images.items() if n in new_ids}
            if not present:
                continue
            frame = pycolmap.Frame()
            frame.frame_id, frame.rig_id = frame_id, rig_ids[capture.rig]
            for camera, image in present.items():
                camera_of[image] = camera_ids[(capture.rig, camera)]
                frame.add_data_id(pycolmap.data_t(sensor_id=camera_sensor(camera_of[image]), id=new_ids[image]))
            frames.append(frame)
            frame_id += 1
    rig_of_camera = {rig.ref_sensor_id.id: rig.rig_id for rig in rigs if rig.num_sensors() == 1}
    for name, image_id in new_ids.items():
        if name in in_rig:
            continue
        camera_id = camera_of[name]
        if camera_id not in rig_of_camera:
            rigs.append(camera_rig(camera_id, rig_id=next_rig))
            rig_of_camera[camera_id], next_rig = next_rig, next_rig + 1
        frame = image_frame(image_id, camera_id, rig_id=rig_of_camera[camera_id])
        frame.frame_id, frame_id = frame_id, frame_id + 1
        frames.append(frame)
    used = {camera_of[n] for n in new_ids} | {c for c in model.cameras}
    return {k: c for k, c in cameras.items() if k in used}, camera_of, (rigs, frames)
