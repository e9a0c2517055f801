"""`vloc map extend` on the rendered demo scene (exact poses): a map of the first 8 map images
grows by the other 6, with their poses given and without, atomically."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pycolmap
import pytest

from vloc.cli import main
from vloc.config import get_preset
from vloc.evaluation.metrics import pose_error
from vloc.io.cameras import read_queries
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer
from vloc.mapping import extend as extend_module
from vloc.mapping.build import build_map
from vloc.mapping.extend import default_extend_work_dir, extend_map
from vloc.mapping.map_dir import load_map

SIFT = get_preset("sift")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from vloc.demo.scene import render_demo_scene

    scene = render_demo_scene(tmp_path_factory.mktemp("demo") / "scene")
    ref = pycolmap.Reconstruction(str(scene / "ref_model"))
    names = sorted(im.name for im in ref.images.values())
    first, rest = scene / "first.txt", scene / "rest.txt"
    first.write_text("".join(f"{n}\n" for n in names[:8]))
    rest.write_text("".join(f"{n}\n" for n in names[8:]))
    return scene, ref, names, first, rest


@pytest.fixture(scope="module")
def small_maps(demo, tmp_path_factory):
    """Triangulated and SfM maps of the first 8 images (copied per test) and the full triangulated map."""
    scene, _, _, first, _ = demo
    root = tmp_path_factory.mktemp("maps")
    build_map(scene / "images", root / "tri8", SIFT, reference=scene / "ref_model", image_list=first)
    build_map(scene / "images", root / "sfm8", SIFT, image_list=first)
    build_map(scene / "images", root / "full", SIFT, reference=scene / "ref_model")
    return root


def copy(small_maps, name, tmp_path):
    shutil.copytree(small_maps / name, tmp_path / "map")
    return tmp_path / "map"


def centres(rec):
    return {im.name: im.projection_center() for im in rec.images.values() if im.has_pose}


def test_extend_with_known_poses_matches_a_full_build(demo, small_maps, tmp_path):
    scene, ref, names, _, _ = demo
    map_dir = copy(small_maps, "tri8", tmp_path)
    before = load_map(map_dir)
    seen_before = {im.name: im.num_points3D for im in before.reconstruction.images.values()}
    assert main(["map", "extend", str(map_dir), "--images", str(scene / "images"),
                 "--reference", str(scene / "ref_model")]) == 0
    data, full = load_map(map_dir), load_map(small_maps / "full")
    assert data.global_names == names  # every image, in the store's sorted order
    rec = data.reconstruction
    truth = {im.name: im.cam_from_world() for im in ref.images.values()}
    for im in rec.images.values():  # every pose is the given one
        np.testing.assert_allclose(im.cam_from_world().matrix(), truth[im.name].matrix(), atol=1e-9)
    for im in rec.images.values():  # the map's points stay (tracks grow and merge: their ids change)
        if im.name in seen_before:
            assert im.num_points3D >= 0.95 * seen_before[im.name], im.name
    assert data.manifest.counts.points3D >= 0.9 * full.manifest.counts.points3D
    assert data.manifest.counts.indexed_images == 14 and len(data.manifest.extensions) == 1
    assert data.manifest.extensions[0]["added"] == 6
    # and it localizes the demo's queries as well as the full map does
    truth_q = read_poses(scene / "gt_queries.txt")
    ext, whole = Localizer.load(map_dir), Localizer.load(small_maps / "full")
    for q in read_queries(scene / "queries.txt"):
        a = ext.localize(scene / "images" / q.name, camera=q.camera)
        b = whole.localize(scene / "images" / q.name, camera=q.camera)
        assert a.success == b.success, q.name
        if b.success:
            assert pose_error(a.cam_from_world, truth_q[q.name])[0] <= pose_error(b.cam_from_world,
                                                                                 truth_q[q.name])[0] + 0.01


def test_extend_without_poses_registers_them_and_keeps_the_map_fixed(demo, small_maps, tmp_path):
    scene, ref, names, _, rest = demo
    map_dir = copy(small_maps, "sfm8", tmp_path)
    before = centres(load_map(map_dir).reconstruction)
    result = extend_map(map_dir, scene / "images", image_list=rest)
    assert result.registered == names[8:] and result.unregistered == []
    rec = load_map(map_dir).reconstruction
    after = centres(rec)
    for name, c in before.items():  # the map's frames were fixed
        np.testing.assert_allclose(after[name], c, atol=1e-9)
    assert rec.compute_mean_reprojection_error() < 1.0
    # the new cameras agree with the truth after a similarity alignment fitted on the old ones
    truth = {im.name: im.projection_center() for im in ref.images.values()}
    old = sorted(before)
    sim = pycolmap.estimate_sim3d(np.array([before[n] for n in old]), np.array([truth[n] for n in old]))
    spread = np.linalg.norm(np.array([truth[n] for n in names]) - np.mean([truth[n] for n in names], axis=0), axis=1)
    errors = [np.linalg.norm(sim * after[n] - truth[n]) for n in names[8:]]
    assert max(errors) < 0.01 * spread.mean()


def test_interrupted_extend_leaves_the_old_map(demo, small_maps, tmp_path, caplog):
    scene, _, _, _, _ = demo
    map_dir = copy(small_maps, "tri8", tmp_path)
    manifest = (map_dir / "manifest.json").read_text()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(extend_module, "write_map", crash)
        with pytest.raises(KeyboardInterrupt):
            extend_map(map_dir, scene / "images", reference=scene / "ref_model")
    assert (map_dir / "manifest.json").read_text() == manifest
    assert load_map(map_dir).manifest.counts.images == 8
    assert Localizer.load(map_dir).num_images == 8
    with caplog.at_level(logging.INFO):
        extend_map(map_dir, scene / "images", reference=scene / "ref_model")
    assert "matches: complete" in caplog.text and "model: complete" in caplog.text
    assert load_map(map_dir).manifest.counts.images == 14
    assert not default_extend_work_dir(map_dir).exists()


def test_extend_refuses_what_it_cannot_do(demo, small_maps, tmp_path, caplog):
    scene, _, _, first, _ = demo
    map_dir = copy(small_maps, "tri8", tmp_path)
    assert main(["map", "extend", str(map_dir), "--images", str(scene / "images"), "--image-list", str(first)]) == 2
    assert "no image that the map does not already hold" in caplog.text
    (map_dir / "fallback").mkdir()
    assert main(["map", "extend", str(map_dir), "--images", str(scene / "images")]) == 2
    assert "fallback layer is not supported yet" in caplog.text
    assert json.loads((map_dir / "manifest.json").read_text())["counts"]["images"] == 8
