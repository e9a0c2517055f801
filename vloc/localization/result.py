"""What a localization returns, and the prior a caller may give it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pycolmap

if TYPE_CHECKING:
    from vloc.localization.geo import GeoPose


@dataclass
class LocalizationResult:
    name: str
    success: bool
    reason: str = ""  # why it failed; empty when localized
    cam_from_world: pycolmap.Rigid3d | None = None
    camera: pycolmap.Camera | None = None
    intrinsics_source: str = ""  # "given", "exif", "map" (the map's calibration of that EXIF camera) or "estimated"
    num_keypoints: int = 0
    num_matches: int = 0  # 2D-3D correspondences fed to RANSAC
    num_inliers: int = 0
    retrieved: list[str] = field(default_factory=list)
    retrieval: str = ""  # "global", "prior", or "global after prior" when the prior's images failed
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    covariance: np.ndarray | None = None  # (6, 6)
    layer: str = ""  # the preset whose features gave this result (the map's own or its fallback layer's)
    retrieved_scores: list[float] = field(default_factory=list)  # similarity of each retrieved image
    # The 2D-3D correspondences RANSAC saw on the last try: query keypoints (N, 2) in COLMAP's pixel
    # convention (the top-left corner of the image is (0, 0), a pixel's centre at +0.5), the map's
    # point3D ids (N,) and the inliers (N,) bool; None before matching.
    points2D: np.ndarray | None = None
    point3D_ids: np.ndarray | None = None
    inlier_mask: np.ndarray | None = None
    geo: GeoPose | None = None  # set for a localized query on a geo-registered map (``map build --gps``)

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_matches if self.num_matches else 0.0

    def uncertainty(self) -> dict[str, float] | None:
        """1-sigma camera-centre position (map units, the root of the covariance's trace) and
        rotation (degrees) from the pose covariance; None without one."""
        if self.covariance is None or self.cam_from_world is None:
            return None
        from vloc.io.poses import world_pose_covariance

        world = world_pose_covariance(self.cam_from_world, self.covariance)
        position = float(np.sqrt(max(np.trace(world[:3, :3]), 0.0)))
        rotation = float(np.rad2deg(np.sqrt(max(np.trace(world[3:, 3:]), 0.0))))  # = the trace of cov[:3, :3]
        return {"position_sigma": position, "rotation_sigma_deg": rotation}

    def to_dict(self, details: bool = False) -> dict:
        """The result as JSON; ``details`` adds the correspondences (``matches``: query keypoints
        flattened x0, y0, x1, ... to 0.01 px, their point3D ids, the inlier indices) and the pose
        uncertainty, which reports draw."""
        d = dict(name=self.name, status="localized" if self.success else "failed", reason=self.reason,
                 intrinsics=self.intrinsics_source, num_keypoints=self.num_keypoints,
                 num_matches=self.num_matches, num_inliers=self.num_inliers,
                 inlier_ratio=round(self.inlier_ratio, 4), retrieved=self.retrieved,
                 retrieved_scores=[round(v, 4) for v in self.retrieved_scores], retrieval=self.retrieval,
                 layer=self.layer,
                 timings={k: round(v, 4) for k, v in self.timings.items()})
        if self.camera is not None:
            d["camera"] = dict(model=self.camera.model.name, width=self.camera.width,
                               height=self.camera.height, params=[float(p) for p in self.camera.params])
        if self.geo is not None:  # a map without GPS answers without the field
            d["geo"] = self.geo.to_dict()
        if details:
            d["uncertainty"] = self.uncertainty()
            if self.points2D is not None:
                d["matches"] = dict(points2D=np.round(np.asarray(self.points2D, float).ravel(), 2).tolist(),
                                    point3D_ids=np.asarray(self.point3D_ids).astype(int).tolist(),
                                    inliers=np.flatnonzero(self.inlier_mask).tolist())
        return d


@dataclass(frozen=True)
class Prior:
    """A pose the query is believed to be near: retrieval then looks only at map images whose
    camera centre lies within ``radius`` (map units) of ``cam_from_world``'s centre."""

    cam_from_world: pycolmap.Rigid3d
    radius: float

    @staticmethod
    def from_result(result: LocalizationResult, radius: float) -> "Prior | None":
        return Prior(result.cam_from_world, radius) if result.success else None
