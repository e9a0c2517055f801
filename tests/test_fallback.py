"""A preset with a fallback layer: the layer is triangulated from the map's own poses, and weak or
failed queries are localized again on it. The layer here is "xfeat" (XFeat, seconds to build);
the "accurate" preset uses the same code with an ALIKED + LightGlue layer."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pycolmap
import pytest

from vloc.config import FallbackConf, Preset, fallback_preset, get_preset
from vloc.evaluation.metrics import pose_error
from vloc.io.cameras import read_queries
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer, choose_layer_result
from vloc.localization.result import LocalizationResult
from vloc.mapping.build import build_map
from vloc.mapping.map_dir import FALLBACK_DIR, MANIFEST, MapFormatError

# Every result is "weak" under ALWAYS, none under NEVER.
ALWAYS = Preset(name="sift-then-xfeat", fallback=FallbackConf(preset="xfeat", below_inliers=10**9))
NEVER = Preset(name="sift-then-xfeat", fallback=FallbackConf(preset="xfeat", below_inliers=0))


@pytest.fixture(scope="module")
def layered_map(kitti, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps") / "kitti-layered"
    build_map(kitti.images, out, ALWAYS, reference=kitti.ref_model)
    return out


def test_layer_is_triangulated_from_the_maps_own_poses(layered_map):
    main = pycolmap.Reconstruction(str(layered_map / "model"))
    layer = pycolmap.Reconstruction(str(layered_map / FALLBACK_DIR / "model"))
    poses = {im.name: im.cam_from_world() for im in main.images.values()}
    assert {im.name for im in layer.images.values()} == set(poses)
    for im in layer.images.values():
        rel = im.cam_from_world() * poses[im.name].inverse()
        assert rel.rotation.angle() < 1e-9 and np.linalg.norm(rel.translation) < 1e-9, im.name
    assert layer.num_points3D() > 1000
    manifest = json.loads((layered_map / FALLBACK_DIR / MANIFEST).read_text())
    assert manifest["preset"]["name"] == "xfeat"
    assert manifest["source"] == {**manifest["source"], "mode": "triangulation", "reference": "../model"}


def test_weak_queries_are_localized_on_the_layer(layered_map, kitti):
    truth = read_poses(kitti.gt)
    always, never = Localizer.load(layered_map, ALWAYS), Localizer.load(layered_map, NEVER)
    layer_alone = Localizer.load(layered_map / FALLBACK_DIR, "xfeat")
    for q in read_queries(kitti.queries):
        a, n = always.localize(kitti.images / q.name, q.camera), never.localize(kitti.images / q.name, q.camera)
        x = layer_alone.localize(kitti.images / q.name, q.camera)
        # the layers agree on kitti, so the pose with more inliers is kept (RANSAC runs differ by a few)
        assert n.layer == "sift-then-xfeat" and a.layer in ("xfeat", n.layer)
        assert a.num_inliers >= 0.97 * max(x.num_inliers, n.num_inliers), (q.name, a.layer)
        for result in (a, n):
            assert result.success, (q.name, result.reason)
            dt, dr = pose_error(result.cam_from_world, truth[q.name])
            assert dt < 0.1 and dr < 0.5, (q.name, result.layer, dt, dr)  # xfeat on kitti: <= 3.7 cm, 0.27°
        assert a.to_dict()["layer"] == a.layer and set(a.timings) == set(n.timings)
    # both layers share one global model, so a fallback query computes its global descriptor once
    assert always.layer.global_conf == always.fallback.global_conf and len(always._global_models) == 1


def test_a_query_failing_on_both_layers_names_both_reasons(layered_map):
    grey = np.full((376, 1241), 128, np.uint8)
    result = Localizer.load(layered_map, ALWAYS).localize(grey)
    assert not result.success and result.cam_from_world is None
    assert result.reason.startswith("sift-then-xfeat: too few keypoints")
    assert "; xfeat: " in result.reason


def test_a_map_without_the_layer_is_refused_by_name(kitti_map):
    with pytest.raises(MapFormatError, match=f"{FALLBACK_DIR}/ is missing.*--preset sift-then-xfeat"):
        Localizer.load(kitti_map, ALWAYS)


def test_bad_fallback_names_fail_before_any_work(kitti, tmp_path):
    out = tmp_path / "never-written"
    with pytest.raises(ValueError, match="Unknown preset 'nope'; valid presets: .*accurate"):
        build_map(kitti.images, out, Preset(name="x", fallback=FallbackConf(preset="nope")), reference=kitti.ref_model)
    chained = Preset(name="y", fallback=FallbackConf(preset="accurate"))
    with pytest.raises(ValueError, match="has a fallback of its own"):
        fallback_preset(chained)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_accurate_is_sift_with_an_aliked_lightglue_layer():
    accurate, layer = get_preset("accurate"), fallback_preset(get_preset("accurate"))
    sift = get_preset("sift")
    assert accurate.features == sift.features  # SIFT maps' features: the same extraction
    # map pairs matched along their epipolar lines (issue 13), otherwise sift's matcher
    assert dataclasses.replace(accurate.matcher, epipolar_px=0.0) == sift.matcher and accurate.matcher.epipolar_px > 0
    assert layer is get_preset("aliked") and layer.matcher.name == "lightglue"



def test_map_adapt_keeps_the_layer(layered_map, kitti, tmp_path):
    import shutil

    from vloc.training.adapt import AdaptConf, adapt_map
    from vloc.training.trainer import TrainConf

    map_dir = tmp_path / "map"
    shutil.copytree(layered_map, map_dir)
    layer_manifest = (map_dir / FALLBACK_DIR / MANIFEST).read_text()
    adapt_map(map_dir, AdaptConf(train=TrainConf(image_size=96, epochs=1, val_fraction=0.0)))
    assert (map_dir / FALLBACK_DIR / MANIFEST).read_text() == layer_manifest
    query = read_queries(kitti.queries)[0]
    localizer = Localizer.load(map_dir, ALWAYS)
    result = localizer.localize(kitti.images / query.name, query.camera)
    assert result.success, result.reason
    assert localizer.fallback is not None
    assert Localizer.load(map_dir / FALLBACK_DIR, "xfeat").localize(kitti.images / query.name, query.camera).success


def _result(layer: str, inliers: int, turn_deg: float = 0.0, success: bool = True) -> LocalizationResult:
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, np.deg2rad(turn_deg), 0.0])), np.array([0.0, 0, 1]))
    return LocalizationResult("q", success, "" if success else "too few inliers", pose if success else None,
                              num_inliers=inliers, layer=layer)


def test_which_layer_result_is_kept():
    conf = FallbackConf(preset="aliked", below_inliers=100, max_disagreement_deg=5.0)
    sift, layer = _result("sift", 60), _result("aliked", 40, turn_deg=2.0)
    assert choose_layer_result(sift, layer, conf) is sift  # they agree: more inliers
    assert choose_layer_result(_result("sift", 30), layer, conf).layer == "aliked"
    failed = _result("sift", 5, success=False)
    assert choose_layer_result(failed, layer, conf) is layer and choose_layer_result(sift, failed, conf) is sift
    weak_rival = _result("aliked", 20, turn_deg=178.0)  # e.g. an upside-down query, not rotation invariant
    assert choose_layer_result(sift, weak_rival, conf) is sift
    strong_rival = _result("aliked", 117, turn_deg=26.3)  # temple 0002
    ambiguous = choose_layer_result(_result("sift", 47), strong_rival, conf)
    assert not ambiguous.success and ambiguous.cam_from_world is None
    assert ambiguous.reason == ("ambiguous: sift (47 inliers) and aliked (117 inliers) poses differ by 26.3 deg (> 5)")
