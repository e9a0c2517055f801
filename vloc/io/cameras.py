"""COLMAP camera lines (``MODEL width height params...``) and query lists."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pycolmap

from vloc.io.text import data_lines, parse_floats


def camera_from_fields(model: str, width: int, height: int, params: list[float], where: str) -> pycolmap.Camera:
    """Build a pycolmap camera, checking the model name and its parameter count."""
    models = {k: v for k, v in pycolmap.CameraModelId.__members__.items() if k != "INVALID"}
    if model not in models:
        raise ValueError(f"{where}: unknown camera model {model!r}; valid: {', '.join(models)}")
    model_id = models[model]
    camera = pycolmap.Camera(model=model_id, width=int(width), height=int(height))
    expected = len(camera.params_info.split(","))
    if len(params) != expected:
        raise ValueError(f"{where}: {model} takes {expected} parameters ({camera.params_info}), got {len(params)}")
    camera.params = [float(p) for p in params]
    return camera


FOCAL_GUESS_FACTOR = 1.2  # focal guess, in units of the longest image side, when nothing is known


def initial_camera(width: int, height: int, focal: float | None = None) -> pycolmap.Camera:
    """SIMPLE_RADIAL starting camera: ``focal`` (e.g. from EXIF) or ``1.2 * max(width, height)``,
    principal point at the image centre, no distortion; to be refined by SfM or the pose solver."""
    if focal is None:
        focal = FOCAL_GUESS_FACTOR * max(width, height)
    return pycolmap.Camera(model="SIMPLE_RADIAL", width=width, height=height,
                           params=[focal, width / 2, height / 2, 0.0])


def camera_from_text(fields: list[str] | str, where: str) -> pycolmap.Camera:
    """``MODEL width height params...`` (a string or its fields) -> pycolmap camera."""
    fields = fields.split() if isinstance(fields, str) else fields
    if len(fields) < 4:
        raise ValueError(f"{where}: expected 'MODEL width height params...', got {' '.join(fields)!r}")
    width, height, *params = parse_floats(fields[1:], where)
    return camera_from_fields(fields[0], int(width), int(height), params, where)


def camera_to_fields(camera: pycolmap.Camera) -> list[str]:
    """The inverse of :func:`camera_from_fields`, as strings for a text line."""
    return [camera.model.name, str(camera.width), str(camera.height)] + [repr(float(p)) for p in camera.params]


def camera_from_dict(d: dict, where: str = "camera") -> pycolmap.Camera:
    """``{"model": ..., "width": ..., "height": ..., "params": [...]}`` -> pycolmap camera."""
    missing = [k for k in ("model", "width", "height", "params") if k not in d]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    return camera_from_fields(str(d["model"]), int(d["width"]), int(d["height"]), list(d["params"]), where)


@dataclass(frozen=True)
class Query:
    name: str
    camera: pycolmap.Camera | None  # None: intrinsics from EXIF or estimated with the pose


def read_queries(path: Path | str) -> list[Query]:
    """Read ``name MODEL width height params...`` or bare ``name`` lines (``#`` comments)."""
    queries = []
    for where, fields in data_lines(path, "query list"):
        if len(fields) == 1:
            queries.append(Query(fields[0], None))
        elif len(fields) < 5:
            raise ValueError(f"{where}: expected 'name' or 'name MODEL width height params...', "
                             f"got {' '.join(fields)!r}")
        else:
            queries.append(Query(fields[0], camera_from_text(fields[1:], where)))
    return queries
