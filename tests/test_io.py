"""Camera lines, pose conventions through COLMAP files, trajectories and kapture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from vloc.io.cameras import camera_from_dict, camera_from_fields, camera_to_fields, read_queries
from vloc.io.files import atomic_path, write_text_atomic
from vloc.io.kapture import read_kapture
from vloc.io.poses import qt_from_rigid, read_poses, rigid_from_qt, write_poses
from vloc.io.trajectories import read_kitti_poses, read_tum_trajectory, write_kitti_poses, write_tum_trajectory

MODELS = {
    "SIMPLE_PINHOLE": [500, 320, 240],
    "PINHOLE": [500, 510, 320, 240],
    "SIMPLE_RADIAL": [500, 320, 240, 0.01],
    "RADIAL": [500, 320, 240, 0.01, -0.002],
    "OPENCV": [500, 510, 320, 240, 0.01, -0.002, 0.001, 0.0005],
    "FULL_OPENCV": [500, 510, 320, 240, 0.01, -0.002, 0.001, 0.0005, 0.0001, 0.0, 0.0, 0.0],
}


def random_pose(rng: np.random.Generator) -> pycolmap.Rigid3d:
    q = rng.normal(size=4)
    return rigid_from_qt(q / np.linalg.norm(q), rng.normal(size=3) * 5)


def assert_pose_close(a: pycolmap.Rigid3d, b: pycolmap.Rigid3d, tol: float = 1e-8) -> None:
    np.testing.assert_allclose(a.matrix(), b.matrix(), atol=tol)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_camera_line_round_trip(model):
    cam = camera_from_fields(model, 640, 480, MODELS[model], "test")
    fields = camera_to_fields(cam)
    again = camera_from_fields(fields[0], int(fields[1]), int(fields[2]), [float(x) for x in fields[3:]], "test")
    assert again.model == cam.model and again.width == 640 and again.height == 480
    np.testing.assert_allclose(again.params, MODELS[model])
    # projection agrees with a direct pycolmap camera of the same parameters
    xy = np.array([[100.5, 200.5], [320.0, 240.0]])
    rays = again.cam_from_img(xy)
    rays = np.hstack([rays, np.ones((len(rays), 1))]) if rays.shape[1] == 2 else rays
    np.testing.assert_allclose(again.img_from_cam(rays), xy, atol=1e-6)


def test_camera_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown camera model 'PINHOL'"):
        camera_from_fields("PINHOL", 640, 480, [1, 2, 3, 4], "q.txt:3")
    with pytest.raises(ValueError, match=r"q.txt:3: PINHOLE takes 4 parameters"):
        camera_from_fields("PINHOLE", 640, 480, [1, 2, 3], "q.txt:3")
    with pytest.raises(ValueError, match="missing keys"):
        camera_from_dict({"model": "PINHOLE"})


def test_read_queries_with_and_without_intrinsics(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("# comment\na.jpg PINHOLE 640 480 500 500 320 240\nb.jpg\n")
    a, b = read_queries(path)
    assert a.name == "a.jpg" and a.camera.model.name == "PINHOLE" and b.camera is None
    path.write_text("a.jpg PINHOLE 640\n")
    with pytest.raises(ValueError, match="queries.txt:1"):
        read_queries(path)


def test_pose_list_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    poses = {f"img{i}.jpg": random_pose(rng) for i in range(5)}
    write_poses(tmp_path / "poses.txt", poses)
    back = read_poses(tmp_path / "poses.txt")
    assert list(back) == list(poses)
    for name in poses:
        assert_pose_close(back[name], poses[name])
    q, _ = qt_from_rigid(poses["img0.jpg"])
    assert q.shape == (4,)


def test_pose_convention_through_colmap_model(tmp_path):
    """A pose written to a COLMAP model and read back projects points the same way:
    x_cam = R x_world + t, quaternion order w x y z in the files."""
    rng = np.random.default_rng(1)
    rec = pycolmap.Reconstruction()
    cam = camera_from_fields("PINHOLE", 640, 480, [500, 500, 320, 240], "test")
    cam.camera_id = 1
    rec.add_camera_with_trivial_rig(cam)
    pose = random_pose(rng)
    image = pycolmap.Image(name="a.jpg", camera_id=1, image_id=1)
    rec.add_image_with_trivial_frame(image, pose)
    rec.write_text(str(tmp_path))
    line = [ln for ln in (tmp_path / "images.txt").read_text().splitlines() if ln.endswith("a.jpg")][0]
    fields = line.split()
    from_file = rigid_from_qt(np.array(fields[1:5], float), np.array(fields[5:8], float))
    assert_pose_close(from_file, pose)
    back = pycolmap.Reconstruction(str(tmp_path))
    x = rng.normal(size=3)
    np.testing.assert_allclose(back.images[1].cam_from_world() * x, pose.rotation.matrix() @ x + pose.translation,
                               atol=1e-9)


def test_kitti_and_tum_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    poses = [random_pose(rng) for _ in range(4)]
    write_kitti_poses(tmp_path / "kitti.txt", poses)
    for a, b in zip(read_kitti_poses(tmp_path / "kitti.txt"), poses, strict=True):
        assert_pose_close(a, b, 1e-7)
    # KITTI rows are world_from_cam: the last column is the camera centre
    row = np.array((tmp_path / "kitti.txt").read_text().split("\n")[0].split(), float).reshape(3, 4)
    np.testing.assert_allclose(row[:, 3], poses[0].inverse().translation, atol=1e-7)
    write_tum_trajectory(tmp_path / "tum.txt", [(0.1 * i, p) for i, p in enumerate(poses)])
    back = read_tum_trajectory(tmp_path / "tum.txt")
    assert [round(t, 3) for t, _ in back] == [0.0, 0.1, 0.2, 0.3]
    for (_, a), b in zip(back, poses, strict=True):
        assert_pose_close(a, b, 1e-7)


def test_kitti_reader_matches_prepared_ground_truth(data_dir, kitti):
    poses = read_kitti_poses(data_dir / "kitti00_100-119" / "poses_00.txt")
    gt = read_poses(kitti.gt)
    for frame in (101, 119):
        assert_pose_close(poses[frame], gt[f"{frame:06d}.png"], 1e-6)


def test_kapture_reader_matches_prepared_ground_truth(data_dir, virtual_gallery):
    records = read_kapture(data_dir / "virtual_gallery" / "query")
    gt = read_poses(virtual_gallery.gt)
    by_ts = {f"query_{r.timestamp:05d}.jpg": r for r in records}
    assert set(gt) <= set(by_ts)
    for name, pose in gt.items():
        assert_pose_close(by_ts[name].cam_from_world, pose, 1e-6)
    mapping = read_kapture(data_dir / "virtual_gallery" / "mapping")
    ref = pycolmap.Reconstruction(str(virtual_gallery.ref_model))
    ref_by_name = {im.name: im.cam_from_world() for im in ref.images.values()}
    for r in mapping:
        name = f"mapping_{Path(r.name).parent.name}_{r.timestamp:05d}.jpg"
        assert_pose_close(r.cam_from_world, ref_by_name[name], 1e-6)


def test_relative_thresholds_for_sfm_gauge_sets():
    from vloc.evaluation.metrics import thresholds_for

    metric = {"units": "metres", "scene_scale": {"median_consecutive_map_centre_distance": 0.7}}
    assert thresholds_for(metric, ((0.25, 2.0),)) == (((0.25, 2.0),), "m", 1.0)
    gauge = {"units": "arbitrary (SfM gauge)", "scene_scale": {"median_consecutive_map_centre_distance": 8.0}}
    assert thresholds_for(gauge, ((0.25, 2.0), (0.5, 5.0))) == (((2.0, 2.0), (4.0, 5.0)), "steps", 8.0)
    assert thresholds_for({**gauge, "eval_thresholds": "relative"}, ((0.25, 2.0),))[1] == "steps"
    small_object = {"units": "metres (object ~0.1 m)", "eval_thresholds": "relative",
                    "scene_scale": {"mean_map_centre_to_centroid_distance": 0.5}}
    assert thresholds_for(small_object, ((2.0, 2.0), (5.0, 5.0))) == (((0.01, 2.0), (0.025, 5.0)), "%", 0.005)


def test_atomic_writes_keep_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "sub" / "poses.txt"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and sorted(p.name for p in path.parent.iterdir()) == ["poses.txt"]
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in path.parent.iterdir()) == ["poses.txt"]


def test_swapping_map_and_queries_twice_gives_the_set_back(tmp_path, virtual_gallery):
    from vloc.io.datasets import swap_roles

    ref = pycolmap.Reconstruction(str(virtual_gallery.ref_model))
    once = swap_roles(virtual_gallery, tmp_path / "once")
    swapped = pycolmap.Reconstruction(str(once.ref_model))
    gt = read_poses(virtual_gallery.gt)
    assert sorted(im.name for im in swapped.images.values()) == sorted(gt)
    for im in swapped.images.values():
        assert_pose_close(im.cam_from_world(), gt[im.name], 1e-8)
    assert sorted(q.name for q in read_queries(once.queries)) == sorted(im.name for im in ref.images.values())
    assert (once.images / next(iter(gt))).is_file()  # images/ is linked
    twice = swap_roles(once, tmp_path / "twice")
    back = read_poses(twice.gt)
    assert sorted(back) == sorted(gt)
    for name, pose in back.items():
        assert_pose_close(pose, gt[name], 1e-8)
    scale = twice.meta["scene_scale"]["mean_map_centre_to_centroid_distance"]
    assert scale == pytest.approx(virtual_gallery.meta["scene_scale"]["mean_map_centre_to_centroid_distance"], rel=1e-6)
