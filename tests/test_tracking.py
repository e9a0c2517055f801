"""Sequential tracking with a prior, and trajectories written for evo / ROS tools."""
from __future__ import annotations

import json

import numpy as np

from vloc.cli import main
from vloc.evaluation.metrics import pose_error
from vloc.io.cameras import read_queries
from vloc.io.poses import read_poses
from vloc.io.trajectories import read_kitti_poses, read_tum_trajectory


def test_track_kitti_queries_in_order(kitti, kitti_map, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    queries = read_queries(kitti.queries)
    for q in queries:
        (frames / q.name).symlink_to((kitti.images / q.name).resolve())
    cam = queries[0].camera
    camera = " ".join([cam.model.name, str(cam.width), str(cam.height)] + [str(p) for p in cam.params])
    out = tmp_path / "out"
    assert main(["track", "--map", str(kitti_map), "--frames", str(frames), "--camera", camera, "--fps", "5",
                 "--tum", str(out / "traj.tum"), "--kitti", str(out / "traj.kitti"),
                 "--log", str(out / "log.json")]) == 0
    log = json.loads((out / "log.json").read_text())["frames"]
    assert [f["status"] for f in log] == ["localized"] * 10
    assert log[0]["retrieval"] == "global" and all(f["retrieval"] == "prior" for f in log[1:])
    gt = read_poses(kitti.gt)
    tum = read_tum_trajectory(out / "traj.tum")
    assert [round(t, 6) for t, _ in tum] == [i / 5 for i in range(10)]
    for (_, pose), q in zip(tum, queries, strict=True):
        dt, dr = pose_error(pose, gt[q.name])
        assert dt < 0.05 and dr < 0.2
    kitti_poses = read_kitti_poses(out / "traj.kitti")
    for a, (_, b) in zip(kitti_poses, tum, strict=True):
        assert pose_error(a, b)[0] < 1e-6


def test_track_a_video(kitti, kitti_map, tmp_path):
    import cv2

    queries = read_queries(kitti.queries)[:4]
    video = tmp_path / "drive.avi"
    # MJPG wants an even width: drop the last column (the principal point does not move)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (1240, 376))
    assert writer.isOpened()
    for q in queries:
        writer.write(np.ascontiguousarray(cv2.imread(str(kitti.images / q.name))[:, :1240]))
    writer.release()
    cam = queries[0].camera
    camera = " ".join([cam.model.name, "1240", str(cam.height)] + [str(p) for p in cam.params])
    tum = tmp_path / "traj.tum"
    assert main(["track", "--map", str(kitti_map), "--frames", str(video), "--camera", camera,
                 "--tum", str(tum)]) == 0
    poses = read_tum_trajectory(tum)
    assert [round(t, 3) for t, _ in poses] == [0.0, 0.2, 0.4, 0.6]
    gt = read_poses(kitti.gt)
    for (_, pose), q in zip(poses, queries, strict=True):
        dt, dr = pose_error(pose, gt[q.name])  # MJPG compression: a little looser than from PNG
        assert dt < 0.1 and dr < 0.3
    assert main(["track", "--map", str(kitti_map), "--frames", str(tmp_path / "nothing.mp4")]) == 2
