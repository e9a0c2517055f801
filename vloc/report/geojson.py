"""``vloc export geojson``: a geo-registered map's cameras and localized queries as GeoJSON.

One ``FeatureCollection`` (RFC 7946: WGS84 longitude, latitude, altitude in metres): a ``Point``
per registered map image (``"kind": "map"``) and per localized query of a pose list (``"kind":
"query"``), each with its name and the compass heading of its optical axis; the queries'
positions in order also as one ``LineString`` (``"kind": "query track"``) when there are two or
more. The map must have been built with ``--gps``: a map in an arbitrary SfM frame has no place
on Earth.
"""
from __future__ import annotations

import json
from pathlib import Path

import pycolmap

from vloc.io.files import write_text_atomic
from vloc.io.poses import read_poses
from vloc.localization.geo import geo_pose, map_frame
from vloc.mapping.map_dir import load_map

DIGITS = 8  # decimal places of a degree: about a millimetre


def _point(name: str, kind: str, cam_from_world: pycolmap.Rigid3d, frame) -> dict:
    geo = geo_pose(cam_from_world, None, frame)
    return {"type": "Feature",
            "geometry": {"type": "Point", "coordinates": [round(geo.longitude, DIGITS), round(geo.latitude, DIGITS),
                                                          round(geo.altitude, 3)]},
            "properties": {"name": name, "kind": kind, "heading_deg": round(geo.heading_deg, 2)}}


def map_geojson(map_dir: Path, poses: Path | None = None) -> dict:
    """The FeatureCollection of ``map_dir``'s cameras and the poses in ``poses`` (a pose list
    as ``vloc localize`` / ``vloc track`` write them, in the map's frame)."""
    data = load_map(map_dir)
    frame = map_frame(data.manifest)
    if frame is None:
        raise ValueError(f"{map_dir}: the map is not geo-registered (build it with --gps exif|FILE); its frame has "
                         "no place on Earth")
    images = sorted((im for im in data.reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    features = [_point(im.name, "map", im.cam_from_world(), frame) for im in images]
    if poses is not None:
        queries = [_point(name, "query", pose, frame) for name, pose in read_poses(poses).items()]
        features += queries
        if len(queries) >= 2:
            features.append({"type": "Feature", "properties": {"kind": "query track"},
                             "geometry": {"type": "LineString",
                                          "coordinates": [q["geometry"]["coordinates"] for q in queries]}})
    geo = data.manifest.geo
    return {"type": "FeatureCollection", "features": features,
            "properties": {"map": str(map_dir), "origin": [geo.longitude, geo.latitude, geo.altitude],
                           "gps_source": geo.source}}


def write_geojson(map_dir: Path, out: Path, poses: Path | None = None) -> int:
    """Write :func:`map_geojson` to ``out`` (atomically); returns the number of features."""
    collection = map_geojson(Path(map_dir), poses)
    write_text_atomic(Path(out), json.dumps(collection, indent=1))
    return len(collection["features"])
