"""Multi-camera rigs: where each camera sits on the rig, and which images one capture holds.

``--rig FILE`` reads one of two formats:

- kapture ``sensors/rigs.txt``: ``rig_id, sensor_id, qw, qx, qy, qz, tx, ty, tz`` lines, the
  sensor's pose in the rig (sensor_from_rig). Which image each camera took comes from the
  dataset's ``records_camera.txt`` beside it (``timestamp, sensor_id, image_path``): image names
  are those paths (relative to ``records_data``), and one capture is one rig and timestamp.
  Cameras of the rig that took none of the given images are left out with a log line (a kapture
  rig describes the device: virtual_gallery's has 6 cameras, its records and sensors.txt use 2);
  a rig none of whose cameras took one of the images is an error naming its line.
- COLMAP's rig configuration JSON (as ``colmap rig_configurator`` reads it): a list of rigs,
  each ``{"cameras": [{"image_prefix": "cam0/", "ref_sensor": true}, {"image_prefix": "cam1/",
  "cam_from_rig_rotation": [qw, qx, qy, qz], "cam_from_rig_translation": [x, y, z]}]}``. A
  camera's images are the names starting with its prefix, and images whose names are equal
  after the prefix form one capture (COLMAP's rule). A prefix no image has is an error; the
  poses of the non-reference cameras are required (vloc does not derive them).

In vloc, as in COLMAP 4, a rig's frame is its reference camera's (sensor_from_rig = identity):
a kapture rig is re-expressed about the first of its cameras that took an image.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from vloc.io.poses import rigid_from_qt

logger = logging.getLogger(__name__)

__all__ = ["Rig", "RigCapture", "RigLayout", "read_rig", "read_rigs"]


@dataclass(frozen=True)
class Rig:
    """``sensors``: camera name -> sensor_from_rig, the reference camera first (the identity)."""

    name: str
    sensors: dict[str, pycolmap.Rigid3d]

    @property
    def reference(self) -> str:
        return next(iter(self.sensors))


@dataclass(frozen=True)
class RigCapture:
    """The images one rig took at once: camera name -> image name (a camera may be missing)."""

    rig: str
    key: str  # the kapture timestamp, or the name shared after the COLMAP prefixes
    images: dict[str, str]


@dataclass(frozen=True)
class RigLayout:
    rigs: dict[str, Rig]
    captures: list[RigCapture]
    source: str

    def camera_of(self) -> dict[str, tuple[str, str]]:
        """image name -> (rig name, camera name), for every image in a capture."""
        return {image: (c.rig, camera) for c in self.captures for camera, image in c.images.items()}

    def to_dict(self) -> dict:
        """The rigs as JSON (COLMAP's rig configuration, each camera's name as its prefix)."""
        out = []
        for rig in self.rigs.values():
            cameras = []
            for camera, pose in rig.sensors.items():
                x, y, z, w = pose.rotation.quat
                entry = {"image_prefix": camera}
                if camera == rig.reference:
                    entry["ref_sensor"] = True
                else:
                    entry["cam_from_rig_rotation"] = [float(w), float(x), float(y), float(z)]
                    entry["cam_from_rig_translation"] = [float(v) for v in pose.translation]
                cameras.append(entry)
            out.append({"name": rig.name, "cameras": cameras})
        return {"source": self.source, "rigs": out}


def read_rig(path: Path | str, names: Collection[str], *, every_camera_used: bool = True) -> RigLayout:
    """The rigs of ``path`` (kapture ``rigs.txt`` or COLMAP rig JSON, by the suffix) and the
    captures among the images ``names``. Every problem names the file (and line).
    ``every_camera_used``: a COLMAP rig camera whose prefix no image has is an error (maps); off
    for queries, whose captures are checked one by one (the query list's line is named)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such rig file")
    if path.suffix.lower() == ".json":
        layout = _read_colmap_json(path, names, every_camera_used)
    else:
        layout = _read_kapture(path, names)
    if not layout.captures:
        raise ValueError(f"{path}: none of the {len(names)} images belongs to a rig capture")
    logger.info("%s: %d rig(s), %d captures, %d images", path, len(layout.rigs), len(layout.captures),
                sum(len(c.images) for c in layout.captures))
    return layout


def read_rigs(path: Path | str) -> dict[str, Rig]:
    """The rigs of ``path`` with every camera they list, without captures (``vloc serve --rig``:
    each request names its cameras)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such rig file")
    if path.suffix.lower() == ".json":
        return _read_colmap_json(path, [], every_camera_used=False).rigs
    rigs, _ = _kapture_rigs(path)
    return {name: Rig(name, _about_reference(sensors, next(iter(sensors)))) for name, sensors in rigs.items()}


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            rows.append((number, [f.strip() for f in line.split(",")]))
    return rows


def _pose(values: list[str], where: str) -> pycolmap.Rigid3d:
    try:
        v = np.array([float(x) for x in values])
    except ValueError:
        raise ValueError(f"{where}: {', '.join(values)!r} are not numbers") from None
    if len(v) != 7 or not np.all(np.isfinite(v)) or np.linalg.norm(v[:4]) < 1e-9:
        raise ValueError(f"{where}: expected a unit quaternion qw, qx, qy, qz and a translation tx, ty, tz")
    return rigid_from_qt(v[:4], v[4:])


def _about_reference(sensors: dict[str, pycolmap.Rigid3d], reference: str) -> dict[str, pycolmap.Rigid3d]:
    """The same rig with ``reference``'s frame as the rig frame (reference first)."""
    rig_from_reference = sensors[reference].inverse()
    order = [reference, *(name for name in sensors if name != reference)]
    return {name: sensors[name] * rig_from_reference for name in order}


def _kapture_rigs(path: Path) -> tuple[dict[str, dict[str, pycolmap.Rigid3d]], dict[str, int]]:
    """rig id -> camera -> sensor_from_rig as the file gives them, and each rig's first line."""
    rigs: dict[str, dict[str, pycolmap.Rigid3d]] = {}
    lines: dict[str, int] = {}
    for number, row in _csv_rows(path):
        where = f"{path}:{number}"
        if len(row) != 9:
            raise ValueError(f"{where}: expected 'rig_id, sensor_id, qw, qx, qy, qz, tx, ty, tz', "
                             f"got {len(row)} fields")
        rig_id, sensor_id = row[0], row[1]
        if sensor_id in rigs.get(rig_id, {}):
            raise ValueError(f"{where}: camera {sensor_id!r} is given twice in rig {rig_id!r}")
        if any(sensor_id in sensors for other, sensors in rigs.items() if other != rig_id):
            raise ValueError(f"{where}: camera {sensor_id!r} is already in another rig")
        rigs.setdefault(rig_id, {})[sensor_id] = _pose(row[2:], where)
        lines.setdefault(rig_id, number)
    if not rigs:
        raise ValueError(f"{path}: no rig in the file")
    return rigs, lines


def _read_kapture(path: Path, names: Collection[str]) -> RigLayout:
    records = path.with_name("records_camera.txt")
    if not records.is_file():
        raise FileNotFoundError(f"{path}: a kapture rigs.txt needs the dataset's records_camera.txt beside it "
                                f"(which image each camera took); {records} is missing")
    rigs, lines = _kapture_rigs(path)
    rig_of = {sensor: rig for rig, sensors in rigs.items() for sensor in sensors}
    wanted = set(names)
    grouped: dict[tuple[str, str], dict[str, str]] = {}
    for number, row in _csv_rows(records):
        if len(row) < 3:
            raise ValueError(f"{records}:{number}: expected 'timestamp, sensor_id, image_path'")
        timestamp, sensor_id, image = row[0], row[1], row[2]
        if sensor_id in rig_of and image in wanted:
            grouped.setdefault((rig_of[sensor_id], timestamp), {})[sensor_id] = image
    layout_rigs = {}
    for rig_id, sensors in rigs.items():
        used = [s for s in sensors if any(rig == rig_id and s in images for (rig, _), images in grouped.items())]
        if not used:
            raise ValueError(f"{path}:{lines[rig_id]}: no image of rig {rig_id!r} among the {len(names)} images "
                             f"(records_camera.txt names none of its cameras for them)")
        dropped = [s for s in sensors if s not in used]
        if dropped:
            logger.info("%s: rig %r: cameras without images here, left out: %s", path, rig_id, ", ".join(dropped))
        layout_rigs[rig_id] = Rig(rig_id, _about_reference({s: sensors[s] for s in used}, used[0]))
    captures = [RigCapture(rig, timestamp, dict(images)) for (rig, timestamp), images in sorted(grouped.items())]
    return RigLayout(layout_rigs, captures, str(path))


def _read_colmap_json(path: Path, names: Collection[str], every_camera_used: bool) -> RigLayout:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(config, list) or not config:
        raise ValueError(f"{path}: expected a list of rigs, each {{\"cameras\": [...]}}")
    rigs, captures = {}, []
    claimed: dict[str, str] = {}
    for r, rig in enumerate(config):
        where = f"{path}: rig {r}"
        cameras = rig.get("cameras") if isinstance(rig, dict) else None
        if not isinstance(cameras, list) or not cameras:
            raise ValueError(f"{where}: expected {{\"cameras\": [...]}} with at least one camera")
        sensors: dict[str, pycolmap.Rigid3d] = {}
        reference = None
        for c, camera in enumerate(cameras):
            at = f"{where} camera {c}"
            prefix = camera.get("image_prefix") if isinstance(camera, dict) else None
            if not isinstance(prefix, str) or not prefix:
                raise ValueError(f"{at}: needs a non-empty \"image_prefix\"")
            if prefix in sensors or prefix in claimed:
                raise ValueError(f"{at}: image_prefix {prefix!r} is given twice")
            if camera.get("ref_sensor"):
                if reference is not None:
                    raise ValueError(f"{at}: a second reference camera (the first: {reference!r})")
                reference, sensors[prefix] = prefix, pycolmap.Rigid3d()
            else:
                rotation, translation = camera.get("cam_from_rig_rotation"), camera.get("cam_from_rig_translation")
                if rotation is None or translation is None:
                    raise ValueError(f"{at}: cam_from_rig_rotation and cam_from_rig_translation are required "
                                     "for a camera that is not the reference")
                sensors[prefix] = _pose([str(v) for v in [*rotation, *translation]], at)
            if every_camera_used and not any(n.startswith(prefix) for n in names):
                raise ValueError(f"{at}: no image name starts with {prefix!r}")
            claimed[prefix] = at
        if reference is None:
            raise ValueError(f"{where}: no camera has \"ref_sensor\": true")
        name = str(rig.get("name", f"rig{r}"))
        rigs[name] = Rig(name, _about_reference(sensors, reference))
        grouped: dict[str, dict[str, str]] = {}
        for image in sorted(names):
            prefix = next((p for p in sensors if image.startswith(p)), None)
            if prefix is not None:
                grouped.setdefault(image[len(prefix):], {})[prefix] = image
        captures += [RigCapture(name, key, images) for key, images in sorted(grouped.items())]
    return RigLayout(rigs, captures, str(path))
