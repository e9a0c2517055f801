"""Multi-camera rigs (issue 26): rig files, rigs in maps (known poses and SfM), rig localization.

Real data: virtual_gallery's mapping images come from a 2-camera rig (kapture ``rigs.txt``); the
prepared set renames them ``mapping_camera_{0,1}_NNNNN.jpg``, so the tests describe the same rig
as COLMAP rig JSON with those prefixes, its poses read from the kapture file by vloc's reader.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from conftest import DATA, _require

from vloc.cli import main
from vloc.io.images import read_image
from vloc.io.poses import rotation_angle_deg
from vloc.io.rigs import read_rig
from vloc.localization.localizer import Localizer
from vloc.mapping.rigs import rig_reconstruction

KAPTURE_RIGS = DATA / "virtual_gallery" / "mapping" / "sensors" / "rigs.txt"
CAMERA = {"model": "PINHOLE", "width": 1920, "height": 1080, "params": [1371.022, 1371.022, 959.5, 539.5]}
HELD_OUT = ("00224", "00227")


def _kapture_rig():
    records = (KAPTURE_RIGS.parent / "records_camera.txt").read_text().splitlines()
    names = [line.split(",")[2].strip() for line in records if line.strip() and not line.startswith("#")]
    return read_rig(_require(KAPTURE_RIGS), names).rigs["training_rig"]


def _rig_json(path: Path) -> Path:
    """virtual_gallery's rig as COLMAP rig JSON over the prepared names."""
    rig = _kapture_rig()
    x, y, z, w = rig.sensors["training_camera_1"].rotation.quat
    path.write_text(json.dumps([{"cameras": [
        {"image_prefix": "mapping_camera_0_", "ref_sensor": True},
        {"image_prefix": "mapping_camera_1_", "cam_from_rig_rotation": [w, x, y, z],
         "cam_from_rig_translation": list(rig.sensors["training_camera_1"].translation)}]}]))
    return path


def _relative(model: pycolmap.Reconstruction) -> list[pycolmap.Rigid3d]:
    """camera_1 from camera_0 of every frame with both images posed."""
    out = []
    for frame in model.frames.values():
        ims = sorted((model.images[d.id] for d in frame.data_ids), key=lambda im: im.name)
        if len(ims) == 2 and all(im.has_pose for im in ims):
            out.append(ims[1].cam_from_world() * ims[0].cam_from_world().inverse())
    return out


def _assert_calibrated(relatives: list[pycolmap.Rigid3d], calibrated: pycolmap.Rigid3d, count: int) -> None:
    assert len(relatives) == count
    for rel in relatives:
        assert np.abs(rel.matrix() - calibrated.matrix()).max() < 1e-6


# -- rig files ---------------------------------------------------------------------------------------


def test_kapture_rig_is_re_expressed_about_its_first_used_camera(tmp_path):
    sensors = tmp_path / "sensors"
    sensors.mkdir()
    (sensors / "rigs.txt").write_text("# rig_id, sensor_id, qw, qx, qy, qz, tx, ty, tz\n"
                                      "r, cam0, 1, 0, 0, 0, 0, 0, -0.1\n"
                                      "r, cam1, 0, 0, 1, 0, 0, 0, -0.1\n"
                                      "r, cam2, 1, 0, 0, 0, 5, 0, 0\n")
    (sensors / "records_camera.txt").write_text("1, cam0, a/0.jpg\n1, cam1, b/0.jpg\n2, cam0, a/1.jpg\n")
    layout = read_rig(sensors / "rigs.txt", ["a/0.jpg", "b/0.jpg", "a/1.jpg"])
    rig = layout.rigs["r"]
    assert list(rig.sensors) == ["cam0", "cam1"]  # cam2 took no image here: left out
    assert np.allclose(rig.sensors["cam0"].matrix(), pycolmap.Rigid3d().matrix())
    # cam1 from cam0 = cam1_from_rig * rig_from_cam0: a half turn about y, and the offsets cancel
    rel = rig.sensors["cam1"]
    assert rotation_angle_deg(rel, pycolmap.Rigid3d()) == pytest.approx(180.0)
    assert np.allclose(rel.translation, [0.0, 0.0, -0.2])
    assert [(c.key, c.images) for c in layout.captures] == [("1", {"cam0": "a/0.jpg", "cam1": "b/0.jpg"}),
                                                            ("2", {"cam0": "a/1.jpg"})]


def test_rig_file_errors_name_the_file_and_line(tmp_path):
    sensors = tmp_path / "sensors"
    sensors.mkdir()
    rigs, records = sensors / "rigs.txt", sensors / "records_camera.txt"
    records.write_text("1, cam0, 0.jpg\n")
    rigs.write_text("r, cam0, 1, 0, 0, 0, 0, 0, 0\nr, cam1, 1, 0, 0\n")
    with pytest.raises(ValueError, match=rf"{rigs}:2: expected 'rig_id, sensor_id"):
        read_rig(rigs, ["0.jpg"])
    rigs.write_text("r, cam0, 1, 0, 0, 0, 0, 0, 0\nq, cam9, 1, 0, 0, 0, 0, 0, 0\n")
    with pytest.raises(ValueError, match=rf"{rigs}:2: no image of rig 'q'"):
        read_rig(rigs, ["0.jpg"])
    rigs.write_text("r, cam0, 1, x, 0, 0, 0, 0, 0\n")
    with pytest.raises(ValueError, match=rf"{rigs}:1: .* are not numbers"):
        read_rig(rigs, ["0.jpg"])
    records.unlink()
    with pytest.raises(FileNotFoundError, match="records_camera.txt"):
        read_rig(rigs, ["0.jpg"])
    config = tmp_path / "rig.json"
    config.write_text(json.dumps([{"cameras": [{"image_prefix": "left/", "ref_sensor": True},
                                               {"image_prefix": "right/", "cam_from_rig_rotation": [1, 0, 0, 0],
                                                "cam_from_rig_translation": [0.1, 0, 0]}]}]))
    with pytest.raises(ValueError, match=rf"{config}: rig 0 camera 1: no image name starts with 'right/'"):
        read_rig(config, ["left/0.jpg"])
    config.write_text(json.dumps([{"cameras": [{"image_prefix": "left/"}]}]))
    with pytest.raises(ValueError, match="cam_from_rig_rotation and cam_from_rig_translation are required"):
        read_rig(config, ["left/0.jpg"])
    config.write_text("[{")
    with pytest.raises(ValueError, match=rf"{config}: not JSON"):
        read_rig(config, ["left/0.jpg"])


def test_a_reference_that_breaks_the_rig_is_refused(tmp_path):
    camera = pycolmap.Camera(model="PINHOLE", width=100, height=100, params=[100, 100, 50, 50], camera_id=1)
    ref = pycolmap.Reconstruction()
    ref.add_camera_with_trivial_rig(camera)
    left = pycolmap.Rigid3d(pycolmap.Rotation3d(), np.array([0.0, 0.0, 1.0]))
    right = pycolmap.Rigid3d(pycolmap.Rotation3d(), np.array([-0.5, 0.0, 1.0]))  # 0.5 apart; the rig says 0.2
    for image_id, (name, pose) in enumerate([("l/0.jpg", left), ("r/0.jpg", right)], 1):
        ref.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=image_id), pose)
    config = tmp_path / "rig.json"
    config.write_text(json.dumps([{"cameras": [{"image_prefix": "l/", "ref_sensor": True},
                                               {"image_prefix": "r/", "cam_from_rig_rotation": [1, 0, 0, 0],
                                                "cam_from_rig_translation": [-0.2, 0, 0]}]}]))
    layout = read_rig(config, ["l/0.jpg", "r/0.jpg"])
    with pytest.raises(ValueError, match=r"capture '0.jpg': the reference pose of r/0.jpg is 0.0000 deg and 0.3"):
        rig_reconstruction(ref, layout)
    config.write_text(config.read_text().replace("-0.2", "-0.5"))
    rec = rig_reconstruction(ref, read_rig(config, ["l/0.jpg", "r/0.jpg"]))
    assert rec.num_rigs() == 1 and rec.num_frames() == 1 and len(rec.cameras) == 2  # one camera per rig sensor


# -- real data: virtual_gallery ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig_json(tmp_path_factory) -> Path:
    return _rig_json(tmp_path_factory.mktemp("rig") / "rig.json")


@pytest.fixture(scope="module")
def rig_map(virtual_gallery, rig_json, tmp_path_factory) -> Path:
    """A known-pose map of virtual_gallery's mapping captures but two, built with --rig."""
    tmp = tmp_path_factory.mktemp("rigmap")
    names = sorted(p.name for p in virtual_gallery.images.iterdir() if p.name.startswith("mapping_"))
    listed = tmp / "list.txt"
    listed.write_text("\n".join(n for n in names if not n.endswith(tuple(f"{k}.jpg" for k in HELD_OUT))) + "\n")
    out = tmp / "map"
    assert main(["map", "build", "--images", str(virtual_gallery.images), "--reference", str(virtual_gallery.ref_model),
                 "--image-list", str(listed), "--rig", str(rig_json), "--out", str(out)]) == 0
    return out


def test_known_pose_rig_map_keeps_the_calibration(rig_map, virtual_gallery):
    calibrated = _kapture_rig().sensors["training_camera_1"]
    model = pycolmap.Reconstruction(str(rig_map / "model"))
    assert model.num_rigs() == 1 and model.num_frames() == 4 and model.num_points3D() > 1000
    _assert_calibrated(_relative(model), calibrated, 4)
    reference = {im.name: im.cam_from_world() for im in pycolmap.Reconstruction(str(virtual_gallery.ref_model))
                 .images.values()}
    for im in model.images.values():
        assert np.abs(im.cam_from_world().matrix() - reference[im.name].matrix()).max() < 1e-9


def test_sfm_rig_map_from_the_kapture_rig_file_keeps_the_calibration(tmp_path):
    """The issue's own command: the kapture dataset's images (named by their records) and rigs.txt."""
    out = tmp_path / "sfm"
    assert main(["map", "build", "--images", str(KAPTURE_RIGS.parent / "records_data"), "--rig", str(KAPTURE_RIGS),
                 "--camera", "PINHOLE 1920 1080 1371.022 1371.022 959.5 539.5", "--out", str(out)]) == 0
    model = pycolmap.Reconstruction(str(out / "model"))
    assert model.num_reg_images() == 12 and model.num_rigs() == 1 and model.num_frames() == 6
    _assert_calibrated(_relative(model), _kapture_rig().sensors["training_camera_1"], 6)
    assert json.loads((out / "manifest.json").read_text())["source"]["rig"] == str(KAPTURE_RIGS)


def _error(pose: pycolmap.Rigid3d, truth: pycolmap.Rigid3d) -> tuple[float, float]:
    return (float(np.linalg.norm(pose.inverse().translation - truth.inverse().translation)),
            rotation_angle_deg(pose, truth))


def test_rig_localization_beats_each_camera_alone_and_survives_a_dark_camera(rig_map, rig_json, virtual_gallery):
    truth = {im.name: im.cam_from_world()
             for im in pycolmap.Reconstruction(str(virtual_gallery.ref_model)).images.values()}
    layout = read_rig(rig_json, list(truth))
    rig = next(iter(layout.rigs.values()))
    localizer = Localizer.load(rig_map)
    for key in HELD_OUT:
        capture = next(c for c in layout.captures if c.key == f"{key}.jpg")
        images = {c: virtual_gallery.images / n for c, n in capture.images.items()}
        together = localizer.localize_rig(images, rig, {c: CAMERA for c in images}, name=key)
        assert together.success and together.covariance is not None
        for camera, name in capture.images.items():
            alone = localizer.localize(images[camera], CAMERA, name=name)
            assert alone.success
            rig_error, alone_error = _error(together.cameras[camera].cam_from_world, truth[name]), \
                _error(alone.cam_from_world, truth[name])
            # measured: rig 0.1-0.3 mm / 0.004-0.006 deg, alone 0.3-1.1 mm / 0.008-0.021 deg
            assert rig_error[0] <= alone_error[0] + 1e-4 and rig_error[1] <= alone_error[1] + 1e-3
            assert rig_error[0] < 0.005 and rig_error[1] < 0.1
        # camera 1 in the dark: alone it fails, the rig still places it through camera 0
        dark = (read_image(images["mapping_camera_1_"]).astype(np.float32) * 0.02).astype(np.uint8)
        assert not localizer.localize(dark, CAMERA, name="dark").success
        rescued = localizer.localize_rig({**images, "mapping_camera_1_": dark}, rig, {c: CAMERA for c in images})
        assert rescued.success and rescued.cameras["mapping_camera_1_"].num_inliers == 0
        position, angle = _error(rescued.cameras["mapping_camera_1_"].cam_from_world,
                                 truth[capture.images["mapping_camera_1_"]])
        assert position < 0.005 and angle < 0.1


def test_rig_query_missing_a_camera_is_an_error(rig_map, rig_json, virtual_gallery, tmp_path, caplog):
    rig = next(iter(read_rig(rig_json, ["mapping_camera_0_0.jpg", "mapping_camera_1_0.jpg"]).rigs.values()))
    localizer = Localizer.load(rig_map)
    with pytest.raises(ValueError, match=r"no image for \['mapping_camera_1_'\]"):
        localizer.localize_rig({"mapping_camera_0_": virtual_gallery.images / "mapping_camera_0_00224.jpg"}, rig)
    queries = tmp_path / "queries.txt"
    queries.write_text("# rig queries\nmapping_camera_0_00224.jpg PINHOLE 1920 1080 1371.022 1371.022 959.5 539.5\n")
    out = tmp_path / "poses.txt"
    assert main(["localize", "--map", str(rig_map), "--queries", str(queries), "--images",
                 str(virtual_gallery.images), "--out", str(out), "--rig", str(rig_json)]) == 2
    assert f"{queries}:2: rig capture '00224.jpg'" in caplog.text and "['mapping_camera_1_']" in caplog.text
    queries.write_text("".join(f"mapping_camera_{c}_00224.jpg PINHOLE 1920 1080 1371.022 1371.022 959.5 539.5\n"
                               for c in (0, 1)))
    assert main(["localize", "--map", str(rig_map), "--queries", str(queries), "--images",
                 str(virtual_gallery.images), "--out", str(out), "--rig", str(rig_json)]) == 0
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["localized"] == 1 and log["captures"][0]["status"] == "localized"
    assert len(out.read_text().splitlines()) == 2


def test_service_localize_rig_route(rig_map, rig_json, virtual_gallery):
    from test_serve import MULTIPART, multipart, post, start, stop

    from vloc.io.rigs import read_rigs

    rigs = read_rigs(rig_json)
    server, thread = start(Localizer.load(rig_map), rigs=rigs)
    try:
        port = server.server_address[1]
        images = {c: (virtual_gallery.images / f"{c}00224.jpg").read_bytes() for c in rigs["rig0"].sensors}
        cameras = json.dumps({c: CAMERA for c in images})
        status, doc = post(port, multipart({**images, "cameras": cameras, "name": "cap"}), MULTIPART, "/localize_rig")
        assert status == 200 and doc["status"] == "localized" and doc["rig"] == "rig0", doc
        assert set(doc["cameras"]) == set(images) and doc["num_inliers"] > 100
        status, doc = post(port, multipart({"mapping_camera_0_": images["mapping_camera_0_"], "cameras": cameras}),
                           MULTIPART, "/maps/default/localize_rig")
        assert status == 400 and "no image part for camera(s) ['mapping_camera_1_']" in doc["error"]
        status, doc = post(port, multipart({**images, "mapping_camera_1_": b"not an image", "cameras": cameras}),
                           MULTIPART, "/localize_rig")
        assert status == 422, doc
        status, doc = post(port, multipart({**images, "left": b"x"}), MULTIPART, "/localize_rig")
        assert status == 400 and "no camera of rig 'rig0'" in doc["error"]
        status, doc = post(port, images["mapping_camera_0_"], "image/jpeg", "/localize_rig")
        assert status == 415
        from test_serve import call

        status, _, spec = call(port, "GET", "/openapi.json", b"", {})
        form = spec["paths"]["/localize_rig"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["required"] == sorted(images) and "/maps/{name}/localize_rig" in spec["paths"]
    finally:
        stop(server, thread)


def test_map_extend_adds_rig_captures_as_frames_of_the_maps_rig(rig_map, rig_json, virtual_gallery, tmp_path):
    extended = tmp_path / "map"
    shutil.copytree(rig_map, extended)
    held = tmp_path / "held.txt"
    held.write_text("".join(f"mapping_camera_{c}_{k}.jpg\n" for k in HELD_OUT for c in (0, 1)))
    assert main(["map", "extend", str(extended), "--images", str(virtual_gallery.images), "--reference",
                 str(virtual_gallery.ref_model), "--image-list", str(held), "--rig", str(rig_json)]) == 0
    model = pycolmap.Reconstruction(str(extended / "model"))
    before = pycolmap.Reconstruction(str(rig_map / "model"))
    assert model.num_rigs() == 1 and model.num_frames() == 6 and len(model.cameras) == 2  # the map's rig, reused
    assert model.num_points3D() > before.num_points3D()
    _assert_calibrated(_relative(model), _kapture_rig().sensors["training_camera_1"], 6)
    reference = {im.name: im.cam_from_world() for im in pycolmap.Reconstruction(str(virtual_gallery.ref_model))
                 .images.values()}
    for im in model.images.values():
        assert np.abs(im.cam_from_world().matrix() - reference[im.name].matrix()).max() < 1e-9


def test_map_extend_by_sfm_registers_rig_captures_rigidly(rig_map, rig_json, virtual_gallery, tmp_path):
    extended = tmp_path / "map"
    shutil.copytree(rig_map, extended)
    held = tmp_path / "held.txt"
    held.write_text("".join(f"mapping_camera_{c}_{k}.jpg\n" for k in HELD_OUT for c in (0, 1)))
    assert main(["map", "extend", str(extended), "--images", str(virtual_gallery.images), "--image-list", str(held),
                 "--rig", str(rig_json)]) == 0
    model = pycolmap.Reconstruction(str(extended / "model"))
    assert model.num_reg_images() == 12 and model.num_rigs() == 1 and model.num_frames() == 6
    _assert_calibrated(_relative(model), _kapture_rig().sensors["training_camera_1"], 6)
    truth = {im.name: im.cam_from_world() for im in pycolmap.Reconstruction(str(virtual_gallery.ref_model))
             .images.values()}
    for im in model.images.values():  # the map's frames fixed, the new ones registered near the truth
        position, angle = _error(im.cam_from_world(), truth[im.name])
        assert position < 0.01 and angle < 0.2
