"""SfM with known intrinsics (`vloc map build --camera/--cameras --refine-intrinsics`), on the
rendered demo scene, whose cameras are exact."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from vloc.cli import main
from vloc.io.cameras import camera_to_fields
from vloc.mapping.map_dir import load_map


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from vloc.demo.scene import render_demo_scene

    scene = render_demo_scene(tmp_path_factory.mktemp("demo") / "scene")
    ref = pycolmap.Reconstruction(str(scene / "ref_model"))
    names = sorted(im.name for im in ref.images.values())
    image_list = scene / "map_images.txt"
    image_list.write_text("".join(f"{n}\n" for n in names))
    return scene, ref, names, image_list


def test_given_camera_stays_fixed_through_sfm(demo, tmp_path):
    scene, ref, names, image_list = demo
    (camera,) = ref.cameras.values()
    out = tmp_path / "map"
    assert main(["map", "build", "--images", str(scene / "images"), "--image-list", str(image_list),
                 "--camera", " ".join(camera_to_fields(camera)), "--out", str(out)]) == 0
    data = load_map(out)
    rec = data.reconstruction
    assert rec.num_reg_images() == len(names)
    assert rec.num_cameras() == 1
    (mapped,) = rec.cameras.values()
    assert mapped.model == camera.model
    np.testing.assert_array_equal(mapped.params, camera.params)  # not refined
    assert data.manifest.source.intrinsics == "given, refined: none"
    assert rec.compute_mean_reprojection_error() < 1.0


def test_per_image_cameras_and_refinement_choice(demo, tmp_path):
    scene, ref, names, image_list = demo
    (camera,) = ref.cameras.values()
    guess = pycolmap.Camera(camera.todict())
    guess.params = [p * 1.05 if i < 2 else p for i, p in enumerate(camera.params)]  # focal 5 % off
    cameras = tmp_path / "cameras.txt"
    cameras.write_text("".join(f"{n} {' '.join(camera_to_fields(guess))}\n" for n in names))
    out = tmp_path / "map"
    assert main(["map", "build", "--images", str(scene / "images"), "--image-list", str(image_list),
                 "--cameras", str(cameras), "--refine-intrinsics", "focal", "--out", str(out)]) == 0
    data = load_map(out)
    (mapped,) = data.reconstruction.cameras.values()
    assert data.manifest.source.intrinsics == "given, refined: focal"
    assert abs(mapped.params[0] - camera.params[0]) < abs(guess.params[0] - camera.params[0]) / 2  # refined
    np.testing.assert_array_equal(mapped.params[2:], camera.params[2:])  # principal point kept


def test_bad_intrinsics_are_refused_before_any_work(demo, tmp_path, caplog):
    scene, ref, names, image_list = demo
    base = ["map", "build", "--images", str(scene / "images"), "--image-list", str(image_list)]
    out = tmp_path / "map"
    assert main([*base, "--camera", "PINHOLE 320 240 250 250 160 120", "--out", str(out)]) == 2
    assert "the image is 640x480 but its camera is 320x240" in caplog.text and not out.exists()
    assert main([*base, "--camera", "PINHOLE 640 480 500 500", "--out", str(out)]) == 2
    assert "PINHOLE takes 4 parameters" in caplog.text
    assert main([*base, "--reference", str(scene / "ref_model"), "--camera", "PINHOLE 640 480 500 500 320 240",
                 "--out", str(out)]) == 2
    assert "brings its own cameras" in caplog.text
    partial = tmp_path / "partial.txt"
    partial.write_text(f"{names[0]} PINHOLE 640 480 500 500 320 240\n")
    assert main([*base, "--cameras", str(partial), "--out", str(out)]) == 2
    assert f"no camera for {len(names) - 1} map images" in caplog.text
    assert not out.exists()
