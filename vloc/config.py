"""Frozen dataclass configurations and the named presets.

A preset names every stage's configuration; its name also names the files it writes
(as in hloc's ``confs``). A map records the full configuration it was built with in its
manifest, and :func:`check_compatible` refuses to localize against a map built under a
configuration whose features or descriptors differ.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FeatureConf:
    """Local feature extractor. ``name`` is a key of ``vloc.features.EXTRACTORS``."""

    name: str = "sift"
    max_keypoints: int = 4096
    resize_max: int = 1600  # longest image side before extraction; 0 keeps the size
    root_sift: bool = True


@dataclass(frozen=True)
class MatcherConf:
    """Local feature matcher. ``name`` is a key of ``vloc.matching.MATCHERS``."""

    name: str = "mnn"
    ratio: float = 0.8  # Lowe ratio test on L2 distances; 1.0 disables it
    max_distance: float = 0.7  # on unit-norm descriptors; 2.0 disables it


@dataclass(frozen=True)
class GlobalConf:
    """Global descriptor. ``name`` is a key of ``vloc.retrieval.GLOBAL_MODELS``."""

    name: str = "effnet_lite0_gem"
    resize_max: int = 448
    gem_p: float = 3.0
    pca_dim: int = 256  # PCA-whitening output size (clipped to what the map allows)


@dataclass(frozen=True)
class PairsConf:
    """How image pairs are chosen when building a map."""

    num_retrieved: int = 10  # top-k by global descriptor
    num_sequential: int = 0  # also pair each image with its k successors by name order


@dataclass(frozen=True)
class VerifyConf:
    """Two-view geometric verification."""

    max_error_px: float = 4.0
    min_inliers: int = 15


@dataclass(frozen=True)
class PoseConf:
    """Absolute pose estimation (pycolmap LO-RANSAC + refinement)."""

    num_retrieved: int = 5
    max_error_px: float = 8.0
    min_inliers: int = 20
    min_inlier_ratio: float = 0.1
    refine_focal_when_unknown: bool = True


@dataclass(frozen=True)
class Preset:
    """A complete pipeline configuration."""

    name: str
    features: FeatureConf = field(default_factory=FeatureConf)
    matcher: MatcherConf = field(default_factory=MatcherConf)
    global_desc: GlobalConf = field(default_factory=GlobalConf)
    pairs: PairsConf = field(default_factory=PairsConf)
    verify: VerifyConf = field(default_factory=VerifyConf)
    pose: PoseConf = field(default_factory=PoseConf)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def features_file(self) -> str:
        return f"features-{self.features.name}-{self.features.max_keypoints}.h5"

    @property
    def global_file(self) -> str:
        return f"global-{self.global_desc.name}.npz"

    def with_overrides(self, **stages: Any) -> "Preset":
        return dataclasses.replace(self, **stages)


PRESETS: dict[str, Preset] = {
    "sift": Preset(name="sift"),
    "sift-fast": Preset(
        name="sift-fast",
        features=FeatureConf(max_keypoints=2048, resize_max=1024),
        pose=PoseConf(num_retrieved=3),
    ),
}
DEFAULT_PRESET = "sift"


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``; the error lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None


# Stages whose configuration must agree between a map and the process that localizes on it.
MAP_BOUND_STAGES = ("features", "global_desc")


def check_compatible(map_config: dict[str, Any], preset: Preset, where: str) -> None:
    """Raise ``ValueError`` if ``preset`` extracts features differently from the map's config."""
    ours = preset.to_dict()
    for stage in MAP_BOUND_STAGES:
        if map_config.get(stage) != ours[stage]:
            raise ValueError(
                f"{where}: the map was built with {stage}={map_config.get(stage)} but preset "
                f"{preset.name!r} uses {stage}={ours[stage]}; localize with the map's own preset "
                f"({map_config.get('name')!r}) or rebuild the map."
            )
