"""The map manifest: a typed, versioned record of what a map holds and what produced it.

This module is the only one that reads or writes ``MAP/manifest.json``. It imports nothing heavy
(``vloc info`` reads a manifest without loading torch, FAISS or pycolmap).

Format versions: 1 (vloc 0.1 before large maps: ``features.h5`` read whole at load) and 2
(memory-mapped arrays read per retrieved image, see :mod:`vloc.mapping.store`). A version-1 map is
refused with the command that converts it (``vloc map upgrade MAP``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vloc import __version__
from vloc.io.files import write_text_atomic

FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class MapFormatError(ValueError):
    """A directory is not a vloc map, or one written by an incompatible version."""


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where the map came from."""

    mode: str  # "triangulation", "sfm-incremental", "sfm-global", "synthetic"
    reference: str | None = None  # the reference model of a triangulated map
    images: str | None = None  # the image folder it was built from (what `vloc map adapt` reads)
    skipped_images: dict[str, str] = field(default_factory=dict)  # name -> why
    unregistered_images: list[str] = field(default_factory=list)
    intrinsics: str = ""  # where the cameras came from and what SfM refined
    rig: str | None = None  # the rig file of a map built with --rig (its model holds COLMAP rigs and frames)


@dataclass(frozen=True, kw_only=True)
class Counts:
    images: int  # registered images
    points3D: int
    cameras: int
    indexed_images: int  # rows of the global index (= images)
    keypoints: int = 0  # all images' keypoints together
    observations: int = 0  # keypoints that observe a 3D point


@dataclass(frozen=True, kw_only=True)
class IndexInfo:
    """The global index: its FAISS kind (see :mod:`vloc.retrieval.index`) and parameters."""

    kind: str
    dim: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class GeoInfo:
    """A geo-registered map (``map build --gps``): its frame is east-north-up metres about this
    WGS84 origin, fitted to the images' GPS positions with a similarity."""

    latitude: float
    longitude: float
    altitude: float
    source: str  # "exif" or the GPS file
    images_with_gps: int  # registered images that had a position
    outliers: list[str] = field(default_factory=list)  # positions farther than max_error_m from the fit
    max_error_m: float = 0.0
    median_residual_m: float = 0.0  # camera centre to GPS position, over the inliers
    max_residual_m: float = 0.0  # the same, largest inlier
    scale: float = 1.0  # metres per unit of the model before registration


@dataclass(frozen=True, kw_only=True)
class Manifest:
    preset: dict[str, Any]  # the full Preset (``Preset.to_dict``) the map was built with
    source: Source
    counts: Counts
    index: IndexInfo
    prior_radius: float  # default radius of a prior (map units): 5x the median nearest-camera distance
    summary: str = ""
    adaptation: dict[str, Any] | None = None  # set by `vloc map adapt`
    build_seconds: dict[str, float] = field(default_factory=dict)  # per build stage, when built by `vloc map build`
    extensions: list[dict[str, Any]] = field(default_factory=list)  # one entry per `vloc map extend`
    geo: GeoInfo | None = None  # set when built with --gps; absent from the file otherwise
    # SfM cameras that started from an EXIF focal length and were refined: {"width", "height",
    # "exif_focal_px", "model", "params"} each; a query with that EXIF takes the refined calibration
    exif_cameras: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    vloc_version: str = __version__
    pycolmap_version: str = ""
    faiss_version: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def preset_name(self) -> str:
        return self.preset["name"]

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["geo"] is None:
            del d["geo"]  # maps without GPS stay readable by a vloc that predates the field
        if not d["exif_cameras"]:
            del d["exif_cameras"]  # the same
        if d["source"]["rig"] is None:
            del d["source"]["rig"]  # the same
        if d["prior_radius"] == float("inf"):
            d["prior_radius"] = None  # JSON has no infinity (a map of one image)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "manifest") -> "Manifest":
        try:
            d = dict(d, source=_typed(Source, d["source"], where), counts=_typed(Counts, d["counts"], where),
                     index=_typed(IndexInfo, d["index"], where))
            if d.get("geo") is not None:
                d["geo"] = _typed(GeoInfo, d["geo"], where)
            if d.get("prior_radius") is None:
                d["prior_radius"] = float("inf")
            return _typed(Manifest, d, where)
        except KeyError as exc:
            raise MapFormatError(f"{where}: missing field {exc}") from None


def _typed(cls, d: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise MapFormatError(f"{where}: {cls.__name__.lower()} has fields this vloc does not know: {unknown}")
    try:
        return cls(**d)
    except TypeError as exc:
        raise MapFormatError(f"{where}: {exc}") from None


def read_manifest(directory: Path | str) -> Manifest:
    """Read ``directory/manifest.json``; refuse anything but the current format version."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise MapFormatError(f"{directory}: not a vloc map (no {MANIFEST})")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MapFormatError(f"{path}: corrupt manifest ({exc})") from exc
    version = d.get("format_version")
    if version == 1:
        raise MapFormatError(f"{directory}: map format version 1 (written by vloc {d.get('vloc_version')}), which "
                             f"this vloc {__version__} no longer reads (it loaded every feature into memory). "
                             f"Convert it in place with `vloc map upgrade {directory}` (seconds; no image is read).")
    if version != FORMAT_VERSION:
        raise MapFormatError(f"{directory}: map format version {version} (written by vloc {d.get('vloc_version')}); "
                             f"this vloc {__version__} reads version {FORMAT_VERSION}. Rebuild the map with "
                             "`vloc map build`.")
    return Manifest.from_dict(d, str(path))


def write_manifest(directory: Path | str, manifest: Manifest) -> None:
    write_text_atomic(Path(directory) / MANIFEST, json.dumps(manifest.to_dict(), indent=1))
