"""GPS positions of images and the local metric frame they are expressed in.

Sources: EXIF GPS tags (``read_exif_gps``) and text files of ``name lat lon alt [horizontal_sigma_m]``
lines (``read_gps_file``; ``#`` starts a comment). Coordinates are WGS84 degrees and metres above
the ellipsoid as the source gives them (EXIF altitude is usually above sea level: the difference
is a constant offset, which a similarity fit absorbs).

``EnuFrame``: a local east-north-up frame in metres with its WGS84 origin, through pycolmap's
``GPSTransform`` (the ellipsoid's exact formulas, not a flat-earth approximation).
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

_GPS_IFD = 0x8825
# EXIF GPS tag ids
_LAT_REF, _LAT, _LON_REF, _LON, _ALT_REF, _ALT = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True, kw_only=True)
class GpsFix:
    """One position: WGS84 latitude and longitude (degrees), altitude (metres), and its 1-sigma
    horizontal uncertainty in metres when the source gives one (EXIF: not given; DOP is no sigma)."""

    latitude: float
    longitude: float
    altitude: float = 0.0
    horizontal_sigma: float | None = None

    def __post_init__(self) -> None:
        problem = fix_problem(self.latitude, self.longitude, self.altitude, self.horizontal_sigma)
        if problem:
            raise ValueError(problem)


def fix_problem(latitude: float, longitude: float, altitude: float, sigma: float | None) -> str | None:
    """Why these numbers are no position on Earth, or None."""
    values = (latitude, longitude, altitude) + (() if sigma is None else (sigma,))
    if not all(math.isfinite(v) for v in values):
        return "coordinates must be finite numbers"
    if not -90.0 <= latitude <= 90.0:
        return f"latitude {latitude} is outside [-90, 90]"
    if not -180.0 <= longitude <= 180.0:
        return f"longitude {longitude} is outside [-180, 180]"
    if not -12_000.0 <= altitude <= 100_000.0:
        return f"altitude {altitude} m is below the deepest ocean or above the atmosphere"
    if sigma is not None and sigma <= 0:
        return f"horizontal sigma {sigma} m must be positive"
    return None


def _degrees(dms: tuple, ref: str, negative: str) -> float:
    degrees, minutes, seconds = (float(v) for v in dms)
    value = degrees + minutes / 60.0 + seconds / 3600.0
    return -value if str(ref).strip().upper() == negative else value


def read_exif_gps(path: Path | str | BinaryIO) -> GpsFix | None:
    """The EXIF GPS position of an image, or None when it has none (or an unusable one)."""
    if hasattr(path, "seek"):
        path.seek(0)
    try:
        with Image.open(path) as im:
            exif = im.getexif()
    except (UnidentifiedImageError, OSError):
        return None
    gps = exif.get_ifd(_GPS_IFD) if exif else {}
    if _LAT not in gps or _LON not in gps:
        return None
    try:
        latitude = _degrees(gps[_LAT], gps.get(_LAT_REF, "N"), "S")
        longitude = _degrees(gps[_LON], gps.get(_LON_REF, "E"), "W")
        altitude = float(gps.get(_ALT, 0.0))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if gps.get(_ALT_REF) in (1, b"\x01"):  # below sea level
        altitude = -altitude
    if fix_problem(latitude, longitude, altitude, None):
        return None
    return GpsFix(latitude=latitude, longitude=longitude, altitude=altitude)


def read_gps_file(path: Path | str, names: Collection[str] | None = None) -> dict[str, GpsFix]:
    """``name lat lon alt [horizontal_sigma_m]`` lines; with ``names``, a name outside them is an
    error. Every problem names the file and line."""
    path = Path(path)
    fixes: dict[str, GpsFix] = {}
    known = None if names is None else set(names)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) not in (4, 5):
            raise ValueError(f"{where}: expected 'name lat lon alt [horizontal_sigma_m]', got {len(fields)} fields")
        name = fields[0]
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{where}: {' '.join(fields[1:])!r} are not numbers") from None
        sigma = values[3] if len(values) == 4 else None
        problem = fix_problem(values[0], values[1], values[2], sigma)
        if problem:
            raise ValueError(f"{where}: {name}: {problem}")
        if known is not None and name not in known:
            raise ValueError(f"{where}: no image named {name!r}")
        if name in fixes:
            raise ValueError(f"{where}: {name!r} is given twice")
        fixes[name] = GpsFix(latitude=values[0], longitude=values[1], altitude=values[2], horizontal_sigma=sigma)
    return fixes


EXIF = "exif"


def read_gps(source: str | Path, image_dir: Path, names: list[str]) -> dict[str, GpsFix]:
    """The positions ``--gps`` names: ``exif`` (each image's own tags; images without are left
    out) or a ``name lat lon alt [sigma]`` file whose names must be among ``names``."""
    if str(source) == EXIF:
        fixes = {n: fix for n in names if (fix := read_exif_gps(image_dir / n)) is not None}
        where = f"{image_dir}: EXIF GPS of {len(names)} images"
    else:
        fixes = read_gps_file(source, names)
        where = str(source)
    if len(fixes) < 3:
        raise ValueError(f"{where}: {len(fixes)} GPS positions; geo-registration needs at least 3")
    return fixes


@dataclass(frozen=True, kw_only=True)
class EnuFrame:
    """A local east-north-up frame (metres) whose origin is a WGS84 position."""

    latitude: float
    longitude: float
    altitude: float

    @classmethod
    def around(cls, fixes: Collection[GpsFix]) -> EnuFrame:
        """The frame at the fixes' median position (robust to a stray fix)."""
        if not fixes:
            raise ValueError("no GPS positions to place a local frame at")
        lla = np.array([(f.latitude, f.longitude, f.altitude) for f in fixes])
        lat, lon, alt = np.median(lla, axis=0)
        return cls(latitude=float(lat), longitude=float(lon), altitude=float(alt))

    def to_enu(self, lat_lon_alt: np.ndarray) -> np.ndarray:
        """``(N, 3)`` latitude, longitude (degrees), altitude (m) -> ``(N, 3)`` east, north, up (m)."""
        lla = _points(lat_lon_alt)
        if len(lla) == 0:
            return np.zeros((0, 3))
        return _transform().ellipsoid_to_enu(lla, self.latitude, self.longitude, self.altitude)

    def to_wgs84(self, enu: np.ndarray) -> np.ndarray:
        """``(N, 3)`` east, north, up (m) -> ``(N, 3)`` latitude, longitude (degrees), altitude (m)."""
        xyz = _points(enu)
        if len(xyz) == 0:
            return np.zeros((0, 3))
        return _transform().enu_to_ellipsoid(xyz, self.latitude, self.longitude, self.altitude)

    def fixes_to_enu(self, fixes: Collection[GpsFix]) -> np.ndarray:
        return self.to_enu(np.array([(f.latitude, f.longitude, f.altitude) for f in fixes]).reshape(-1, 3))


def _points(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"expected an (N, 3) array, got shape {array.shape}")
    return array


def _transform():
    import pycolmap

    return pycolmap.GPSTransform(pycolmap.GPSTransformEllipsoid.WGS84)
