"""Localization answers in the world's coordinates, for maps built with ``--gps``.

A geo-registered map's frame is east-north-up metres about a WGS84 origin (the manifest's
``geo``); a pose in it becomes latitude, longitude, altitude, the compass heading of the optical
axis, and the 1-sigma horizontal uncertainty of the position from the pose covariance.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pycolmap

from vloc.io.gps import EnuFrame
from vloc.io.poses import world_pose_covariance
from vloc.mapping.manifest import Manifest


@dataclass(frozen=True, kw_only=True)
class GeoPose:
    """WGS84 latitude and longitude (degrees) and altitude (m) of the camera centre; ``heading_deg``:
    compass bearing of the optical axis (0 north, 90 east); ``horizontal_sigma_m``: the root of the
    east and north variances of the centre (None without a pose covariance)."""

    latitude: float
    longitude: float
    altitude: float
    heading_deg: float
    horizontal_sigma_m: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def map_frame(manifest: Manifest) -> EnuFrame | None:
    """The east-north-up frame of a geo-registered map, or None."""
    geo = manifest.geo
    if geo is None:
        return None
    return EnuFrame(latitude=geo.latitude, longitude=geo.longitude, altitude=geo.altitude)


def geo_pose(cam_from_world: pycolmap.Rigid3d, covariance: np.ndarray | None, frame: EnuFrame) -> GeoPose:
    """``cam_from_world`` in ``frame`` (east-north-up metres) -> :class:`GeoPose`; ``covariance``:
    pycolmap's ``(6, 6)`` pose covariance (rotation then translation) or None."""
    rotation = cam_from_world.rotation.matrix()
    centre = -rotation.T @ np.asarray(cam_from_world.translation)
    axis = rotation.T @ np.array([0.0, 0.0, 1.0])  # the optical axis in east, north, up
    heading = math.degrees(math.atan2(axis[0], axis[1])) % 360.0
    sigma = None
    if covariance is not None:
        world = world_pose_covariance(cam_from_world, covariance)
        sigma = float(np.sqrt(max(world[0, 0] + world[1, 1], 0.0)))
    lat, lon, alt = frame.to_wgs84(centre[None])[0]
    return GeoPose(latitude=float(lat), longitude=float(lon), altitude=float(alt), heading_deg=heading,
                   horizontal_sigma_m=sigma)
