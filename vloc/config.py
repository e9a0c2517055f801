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
    # sift: OpenCV doubles the image before its scale space (first octave -1). False starts the
    # scale space at the image's own resolution (COLMAP's first_octave 0): ~3x less work.
    upsample: bool = True
    variant: str = ""  # learned extractors' model variant (delg: r50, r101, small)
    weights: str = ""  # learned extractors' weight file (delg: a vloc DELG file)
    bf16: bool = False  # learned extractors: bfloat16 autocast on CPU


@dataclass(frozen=True)
class MatcherConf:
    """Local feature matcher. ``name`` is a key of ``vloc.matching.MATCHERS``."""

    name: str = "mnn"
    ratio: float = 0.8  # mnn: Lowe ratio test on L2 distances; 1.0 disables it
    max_distance: float = 0.7  # mnn: on unit-norm descriptors; 2.0 disables it
    # mnn: similarity matmul in "float32", "bfloat16" (3x faster where the CPU has AVX512-BF16 or
    # AMX; the ratio test then uses float32 distances of the best candidates), or "auto": bfloat16
    # on such CPUs, float32 elsewhere (where bfloat16 is emulated, and slower).
    precision: str = "auto"
    # mnn, map builds from known poses only: compare only keypoints within this many pixels (Sampson
    # distance) of each other's epipolar lines (guided matching: the ratio test then runs among
    # geometrically possible candidates; 0 = off). Queries have no known pose and ignore it.
    epipolar_px: float = 0.0
    features: str = ""  # lightglue: whose weights ("aliked", "disk"; "xfeat" = LighterGlue)
    # lightglue: None keeps the value the weights were released with (kornia's configuration).
    depth_confidence: float | None = None  # early stopping; -1 disables it
    width_confidence: float | None = None  # point pruning; -1 disables it
    filter_threshold: float | None = None  # minimum match score


@dataclass(frozen=True)
class GlobalConf:
    """Global descriptor. ``name`` is a key of ``vloc.retrieval.GLOBAL_MODELS``."""

    name: str = "effnet_lite0_gem"
    resize_max: int = 320  # 448 until issue 12: equal recall, 0.6x the time (docs/benchmarks.md)
    gem_p: float = 3.0
    pca_dim: int = 256  # PCA-whitening output size (clipped to what the map allows)
    variant: str = ""  # learned models' variant (delg: r50, r101, small)
    weights: str = ""  # learned models' weight file (delg: a vloc DELG file)
    bf16: bool = False  # bfloat16 autocast on CPU


@dataclass(frozen=True)
class RerankConf:
    """Re-ranking of retrieved images by geometric verification of local-feature matches
    (DELG's re-ranking). ``model`` is a key of ``vloc.retrieval.rerank.GEOMETRY_MODELS``."""

    num_candidates: int = 100  # how many of the top global-descriptor results are verified
    model: str = "fundamental"  # "fundamental" (any 3D scene) or "homography" (planar / rotation)
    max_error_px: float = 3.0  # RANSAC threshold (MAGSAC's largest noise scale)
    confidence: float = 0.999
    max_iterations: int = 10000


@dataclass(frozen=True)
class PairsConf:
    """How image pairs are chosen when building a map."""

    num_retrieved: int = 20  # top-k by global descriptor
    num_sequential: int = 0  # also pair each image with its k successors by name order
    # SfM (no poses given) of more than sfm_large_set images keeps sfm_large_num_retrieved per image
    # (0 = no such rule). Measured (docs/benchmarks.md, "SfM at scale"): 7scenes at 500 and 1,000
    # frames registered every image with the same centre error (within 0.06 cm) from top-10 as from
    # top-20, in half the matching and verification. Smaller sets (lund, sacre_coeur), where top-10
    # was not measured, and builds from known poses keep num_retrieved.
    sfm_large_set: int = 500
    sfm_large_num_retrieved: int = 10

    def for_sfm(self, num_images: int) -> PairsConf:
        """The pairs an SfM build of ``num_images`` images uses."""
        if self.sfm_large_set and num_images > self.sfm_large_set:
            return dataclasses.replace(self, num_retrieved=min(self.num_retrieved, self.sfm_large_num_retrieved))
        return self


@dataclass(frozen=True)
class VerifyConf:
    """Two-view geometric verification."""

    max_error_px: float = 4.0
    min_inliers: int = 15
    # RANSAC trials per pair in SfM's verification (COLMAP: 10,000). A pair that fails runs them
    # all: at 10,000 they were 115 ms of a 250-frame build's 38 ms mean per pair
    # (docs/benchmarks.md, "SfM at scale").
    max_num_trials: int = 2000


@dataclass(frozen=True)
class MapperConf:
    """pycolmap incremental mapper options that differ from COLMAP's defaults.

    Forward-moving sequences (a walk, a drive) rarely give COLMAP's 16 deg initial
    triangulation angle, and wide-baseline images there have few inliers. Measured on lund
    (29 images, 5 mapper seeds): COLMAP defaults registered 24 each time; only the relaxed
    registration thresholds 29, 2, 29, 29, 29; both changes below 29 every time.
    """

    init_min_tri_angle: float = 4.0
    abs_pose_min_num_inliers: int = 15
    abs_pose_min_inlier_ratio: float = 0.1
    # Bundle-adjustment schedule (issue 25, docs/benchmarks.md "SfM at scale"): a global BA each
    # time the model grows by half (COLMAP: a tenth), each BA once (COLMAP: up to 5 rounds of BA,
    # retriangulation and filtering, local up to 2). 250 frames of 7scenes: the mapper 112 -> 27 s,
    # the same 250/250 registered and 3.8 cm median centre error.
    ba_global_frames_ratio: float = 1.5
    ba_global_points_ratio: float = 1.5
    ba_global_max_refinements: int = 1
    ba_local_max_refinements: int = 1
    # A global BA stops when an iteration lowers the cost by less than this fraction (COLMAP: 0, so
    # it runs to the gradient tolerance). 1,000 frames of 7scenes, each global BA from the 759-image
    # one on: 9 -> 3 iterations, 70 -> 28 s, final cost 0.6093 -> 0.6093 px; the mapper 512 -> 340 s.
    ba_global_function_tolerance: float = 1e-4


@dataclass(frozen=True)
class PoseConf:
    """Query localization: retrieval depth, keypoint budget, absolute pose (LO-RANSAC + refinement)."""

    num_retrieved: int = 5
    max_keypoints: int = 2048  # query keypoint budget; map images use features.max_keypoints
    max_error_px: float = 8.0
    min_inliers: int = 20
    min_inlier_ratio: float = 0.1
    refine_focal_when_unknown: bool = True
    # the query's ratio test against the map's points (RANSAC rejects what a looser test lets
    # through); 0 = the matcher's own ratio, which map images were matched with
    match_ratio: float = 0.0
    # a pose whose inliers' median reprojection error is above this fraction of max_error_px fails as
    # "weak support" (a wrong pose RANSAC accepted; vloc.localization.verify, issue 24); 0 = off
    max_median_residual: float = 0.5
    # the pose refined from its mirror about the inliers' plane ends more than max_rival_deg away with a
    # median error within max_rival_ratio of the pose's: "ambiguous pose" (vloc.localization.verify); 0 = off
    max_rival_ratio: float = 1.5
    max_rival_deg: float = 5.0
    # LO-RANSAC rerun on stability_runs random subsets (stability_fraction of the 2D-3D matches, at most
    # stability_max_points): more than max_unstable_share of them ending over max_rival_deg from the pose
    # fails it as "unstable pose" (vloc.localization.verify, issue 24); stability_runs = 0 = off
    stability_runs: int = 20
    stability_fraction: float = 0.7
    stability_max_points: int = 128
    max_unstable_share: float = 0.3
    # a retrieved image whose matches alone give LO-RANSAC a pose with >= min_inliers inliers, more than the
    # pose explains of them, over max_view_rival_deg away: "ambiguous pose" (vloc.localization.verify); 0 = off
    max_view_rival_deg: float = 15.0


@dataclass(frozen=True)
class FallbackConf:
    """A second feature layer for the queries this preset's own features localize weakly.

    ``preset`` names another preset; its layer is triangulated into the same map from this map's
    camera poses (``MAP/fallback/``, a map directory of its own). A query whose result here fails
    or has fewer than ``below_inliers`` inliers is localized again on the layer; which result is
    kept: :func:`vloc.localization.localizer.choose_layer_result`. An empty ``preset`` means no layer.
    """

    preset: str = ""
    below_inliers: int = 100
    # both layers localized the query, their rotations differ by more than this, and the layer's pose
    # has >= below_inliers inliers: the evidence is ambiguous (a symmetric object, a shallow scene
    # seen from afar), so the query fails; with fewer, the map layer's pose stands. When they agree,
    # the pose with more inliers is kept.
    max_disagreement_deg: float = 5.0


@dataclass(frozen=True)
class Preset:
    """A complete pipeline configuration."""

    name: str
    features: FeatureConf = field(default_factory=FeatureConf)
    matcher: MatcherConf = field(default_factory=MatcherConf)
    global_desc: GlobalConf = field(default_factory=GlobalConf)
    pairs: PairsConf = field(default_factory=PairsConf)
    verify: VerifyConf = field(default_factory=VerifyConf)
    mapper: MapperConf = field(default_factory=MapperConf)
    pose: PoseConf = field(default_factory=PoseConf)
    fallback: FallbackConf = field(default_factory=FallbackConf)

    def __post_init__(self) -> None:
        family = self.features.name.split("-")[0]  # "aliked-n16" -> "aliked"
        if self.matcher.name == "lightglue" and self.matcher.features != family:
            raise ValueError(f"preset {self.name!r}: LightGlue weights for {self.matcher.features!r} cannot match "
                             f"{self.features.name!r} features")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def features_file(self) -> str:
        half = "" if self.features.upsample else "-noup"
        return f"features-{self.features.name}{half}-{self.features.max_keypoints}.h5"

    @property
    def global_file(self) -> str:
        return f"global-{self.global_desc.name}.npz"

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Preset":
        """The inverse of :meth:`to_dict` (a map's recorded preset); unknown fields are refused."""
        stages = {}
        for f in dataclasses.fields(Preset):
            if f.name == "name" or f.name not in d:
                continue
            cls = type(f.default_factory())
            unknown = sorted(set(d[f.name]) - {g.name for g in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"preset {d.get('name')!r}: {f.name} has fields this vloc does not know: {unknown}")
            stages[f.name] = cls(**d[f.name])
        return Preset(name=d["name"], **stages)

    def with_overrides(self, **stages: Any) -> "Preset":
        return dataclasses.replace(self, **stages)

    @property
    def query_features(self) -> FeatureConf:
        """The map's feature configuration with the query keypoint budget."""
        return dataclasses.replace(self.features, max_keypoints=self.pose.max_keypoints)

    @property
    def query_matcher(self) -> MatcherConf:
        """The matcher the query meets the map's points with (``pose.match_ratio`` when set)."""
        return dataclasses.replace(self.matcher, ratio=self.pose.match_ratio) if self.pose.match_ratio else self.matcher


PRESETS: dict[str, Preset] = {
    "sift": Preset(name="sift"),
    # Same map as "sift" (maps are interchangeable); fewer query keypoints and retrieved images.
    "sift-fast": Preset(name="sift-fast", pose=PoseConf(num_retrieved=3, max_keypoints=1024)),
    # Lowest CPU latency (issue 12, docs/benchmarks.md "Query latency"): SIFT whose scale space starts
    # at the image's own resolution (a third of the work of "sift"'s doubled first octave), top-3
    # images. Its own map.
    "fast": Preset(
        name="fast",
        features=FeatureConf(upsample=False),
        pose=PoseConf(num_retrieved=3)),
    # XFeat (a small CNN) with mutual nearest neighbours against the retrieved images' 3D points in
    # one call, 1,024 query keypoints, top-3 (the "fast" preset before issue 12: it shares the CPU with
    # the global CNN, so it is not faster than SIFT). LighterGlue took longer per pair than a SIFT query.
    "xfeat": Preset(
        name="xfeat",
        features=FeatureConf(name="xfeat", max_keypoints=4096, resize_max=1024, root_sift=False),
        matcher=MatcherConf(name="mnn", ratio=0.9, max_distance=0.8),
        pose=PoseConf(num_retrieved=3, max_keypoints=1024)),
    # Most inliers, and the most queries localized on hard sets: ALIKED-n16 + LightGlue (adaptive
    # depth and point pruning on) at full resolution up to 1600 px, the query matched with each of
    # the top-3 images. Map pairs: top-5 (LightGlue costs ~1 s per pair on 2 cores).
    "aliked": Preset(
        name="aliked",
        features=FeatureConf(name="aliked-n16", max_keypoints=2048, resize_max=1600, root_sift=False),
        matcher=MatcherConf(name="lightglue", features="aliked"),
        pairs=PairsConf(num_retrieved=5),
        pose=PoseConf(num_retrieved=3, max_keypoints=2048)),
    # Best accuracy: SIFT where it is well supported (its keypoints are the more precise: on the
    # exact-GT demo 0.09 cm vs ALIKED's 0.21 cm), the "aliked" layer where SIFT fails or finds fewer
    # than 100 inliers (lund 9/9 instead of 7/9). For hard queries (issue 13, temple): map pairs
    # with known poses matched along their epipolar lines, the query's ratio test at 0.9, RANSAC at
    # 4 px (at 8 px a camera orbited 11-16 deg around a small, far object still fits), and a query
    # whose two layers disagree fails. docs/benchmarks.md has the measurements.
    # DISK + LightGlue, as "aliked" (for maps imported from hloc's DISK runs, and DISK's own maps).
    "disk": Preset(
        name="disk",
        features=FeatureConf(name="disk", max_keypoints=2048, resize_max=1600, root_sift=False),
        matcher=MatcherConf(name="lightglue", features="disk"),
        pairs=PairsConf(num_retrieved=5),
        pose=PoseConf(num_retrieved=3, max_keypoints=2048)),
    # COLMAP's own SIFT (pycolmap's extractor, its default options: 8,192 features, images up to
    # 3,200 px), descriptors quantized as COLMAP's database stores them: the preset of maps imported
    # from COLMAP projects (`vloc map import colmap`), whose queries must be described alike.
    "colmap": Preset(
        name="colmap",
        features=FeatureConf(name="colmap-sift", max_keypoints=8192, resize_max=3200, root_sift=False)),
    "accurate": Preset(name="accurate", matcher=MatcherConf(epipolar_px=4.0),
                       pose=PoseConf(max_error_px=4.0, match_ratio=0.9),
                       fallback=FallbackConf(preset="aliked", below_inliers=100)),
}
DEFAULT_PRESET = "sift"


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``; the error lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None


def fallback_preset(preset: Preset) -> Preset | None:
    """The preset of ``preset``'s fallback layer, or None; a layer cannot have a layer of its own."""
    if not preset.fallback.preset:
        return None
    layer = get_preset(preset.fallback.preset)
    if layer.fallback.preset:
        raise ValueError(f"preset {preset.name!r}: its fallback {layer.name!r} has a fallback of its own "
                         f"({layer.fallback.preset!r}); only one layer is supported")
    return layer


# Settings that must agree between a map and the process that localizes on it: the kind of
# local descriptor and the whole global descriptor. Keypoint budgets and sizes may differ.
MAP_BOUND = {"features": ("name", "root_sift"), "global_desc": None}


def check_compatible(map_config: dict[str, Any], preset: Preset, where: str) -> None:
    """Raise ``ValueError`` if ``preset`` describes images differently from the map's config."""
    ours = preset.to_dict()
    for stage, keys in MAP_BOUND.items():
        theirs_stage, ours_stage = map_config.get(stage) or {}, ours[stage]
        # a key missing from an older map's manifest had its field's default value
        defaults = {f.name: f.default for f in dataclasses.fields(getattr(preset, stage))}
        for key in keys or ours_stage:
            theirs = theirs_stage.get(key, defaults.get(key))
            if theirs != ours_stage[key]:
                raise ValueError(
                    f"{where}: the map was built with {stage}.{key}={theirs!r} but preset "
                    f"{preset.name!r} uses {ours_stage[key]!r}; localize with the map's own preset "
                    f"({map_config.get('name')!r}) or rebuild the map.")
