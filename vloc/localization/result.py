"""What a localization returns, and the prior a caller may give it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pycolmap


@dataclass
class LocalizationResult:
    name: str
    success: bool
    reason: str = ""  # why it failed; empty when localized
    cam_from_world: pycolmap.Rigid3d | None = None
    camera: pycolmap.Camera | None = None
    intrinsics_source: str = ""  # "given", "exif" or "estimated"
    num_keypoints: int = 0
    num_matches: int = 0  # 2D-3D correspondences fed to RANSAC
    num_inliers: int = 0
    retrieved: list[str] = field(default_factory=list)
    retrieval: str = ""  # "global", "prior", or "global after prior" when the prior's images failed
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    covariance: np.ndarray | None = None  # (6, 6)
    layer: str = ""  # the preset whose features gave this result (the map's own or its fallback layer's)

    @property
    def inlier_ratio(self) -> float:
        return self.num_inliers / self.num_matches if self.num_matches else 0.0

    def to_dict(self) -> dict:
        d = dict(name=self.name, status="localized" if self.success else "failed", reason=self.reason,
                 intrinsics=self.intrinsics_source, num_keypoints=self.num_keypoints,
                 num_matches=self.num_matches, num_inliers=self.num_inliers,
                 inlier_ratio=round(self.inlier_ratio, 4), retrieved=self.retrieved, retrieval=self.retrieval,
                 layer=self.layer,
                 timings={k: round(v, 4) for k, v in self.timings.items()})
        if self.camera is not None:
            d["camera"] = dict(model=self.camera.model.name, width=self.camera.width,
                               height=self.camera.height, params=[float(p) for p in self.camera.params])
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
