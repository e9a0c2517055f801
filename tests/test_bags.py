"""``vloc track --bag`` (issue 28, input side): recordings written with rosbags' own writers (not
vloc's code) give the same poses as ``vloc track`` on the image folder."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from vloc.cli import main
from vloc.io.bags import iter_bag_frames
from vloc.io.cameras import read_queries
from vloc.io.trajectories import read_tum_trajectory

try:
    import rosbags  # noqa: F401
except ImportError:
    if os.environ.get("CI"):  # make test installs the robot extra: under CI its absence is a failure
        raise
    pytest.skip("the robot extra (rosbags) is not installed; make test installs it", allow_module_level=True)
from rosbags.rosbag1 import Writer as Writer1  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer as Writer2  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

FPS = 10.0
STORE = get_typestore(Stores.ROS2_HUMBLE)
ROS1_STORE = get_typestore(Stores.ROS1_NOETIC)


def _header(store, index: int):
    """The frame's header, stamped index / FPS (ROS 1's also carries the sequence number)."""
    ns = int(round(index / FPS * 1e9))
    stamp = store.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
    extra = {"seq": index} if store is ROS1_STORE else {}
    return store.types["std_msgs/msg/Header"](stamp=stamp, frame_id="camera", **extra)


def _camera_info(store, width: int, height: int, params: list[float], header):
    fx, fy, cx, cy = params
    roi = store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    fields = dict(header=header, height=height, width=width, distortion_model="plumb_bob", binning_x=0, binning_y=0,
                  roi=roi)
    k, d = np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], float), np.zeros(5)
    r, p = np.eye(3).ravel(), np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], float)
    if store is ROS1_STORE:
        return store.types["sensor_msgs/msg/CameraInfo"](D=d, K=k, R=r, P=p, **fields)
    return store.types["sensor_msgs/msg/CameraInfo"](d=d, k=k, r=r, p=p, **fields)


@pytest.fixture(scope="module")
def frames(kitti, tmp_path_factory) -> tuple[Path, list[str], list[float]]:
    """kitti's queries as a sequence: a folder of their images and the camera they share."""
    queries = read_queries(kitti.root / "queries.txt")
    folder = tmp_path_factory.mktemp("frames") / "images"
    folder.mkdir()
    for q in queries:
        shutil.copy(kitti.images / q.name, folder / q.name)
    return folder, sorted(q.name for q in queries), [float(v) for v in queries[0].camera.params]


def _write_ros2(path: Path, folder: Path, names: list[str], params: list[float], storage: StoragePlugin) -> None:
    with Writer2(path, version=9, storage_plugin=storage) as writer:
        images = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=STORE)
        infos = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=STORE)
        for i, name in enumerate(names):
            gray = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)
            h, w = gray.shape
            t = int(round(i / FPS * 1e9))
            writer.write(infos, t, STORE.serialize_cdr(_camera_info(STORE, w, h, params, _header(STORE, i)),
                                                       "sensor_msgs/msg/CameraInfo"))
            msg = STORE.types["sensor_msgs/msg/Image"](header=_header(STORE, i), height=h, width=w, encoding="mono8",
                                                       is_bigendian=0, step=w, data=gray.ravel())
            writer.write(images, t + 1, STORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def _write_ros1(path: Path, folder: Path, names: list[str], params: list[float]) -> None:
    with Writer1(path) as writer:
        images = writer.add_connection("/cam/image/compressed", "sensor_msgs/msg/CompressedImage",
                                       typestore=ROS1_STORE)
        infos = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ROS1_STORE)
        for i, name in enumerate(names):
            data = (folder / name).read_bytes()  # PNG: lossless
            h, w = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED).shape
            t = int(round(i / FPS * 1e9))
            writer.write(infos, t, ROS1_STORE.serialize_ros1(_camera_info(ROS1_STORE, w, h, params, _header(
                ROS1_STORE, i)), "sensor_msgs/msg/CameraInfo"))
            msg = ROS1_STORE.types["sensor_msgs/msg/CompressedImage"](header=_header(ROS1_STORE, i), format="png",
                                                                      data=np.frombuffer(data, np.uint8))
            writer.write(images, t + 1, ROS1_STORE.serialize_ros1(msg, "sensor_msgs/msg/CompressedImage"))


def _track(args: list[str], out: Path) -> list:
    assert main(["track", *args, "--tum", str(out)]) == 0
    return read_tum_trajectory(out)


@pytest.mark.parametrize("kind", ["ros2-sqlite3", "ros2-mcap", "ros1"])
def test_track_bag_gives_the_folders_poses(kind, kitti_map, frames, tmp_path):
    folder, names, params = frames
    bag = tmp_path / ("run.bag" if kind == "ros1" else "run")
    if kind == "ros1":
        _write_ros1(bag, folder, names, params)
        topic = "/cam/image/compressed"
    else:
        _write_ros2(bag, folder, names, params, StoragePlugin.MCAP if kind == "ros2-mcap" else StoragePlugin.SQLITE3)
        topic = "/cam/image_raw"
    camera = "PINHOLE 1241 376 " + " ".join(f"{v:.10g}" for v in params)
    expected = _track(["--map", str(kitti_map), "--frames", str(folder), "--camera", camera, "--fps", str(FPS)],
                      tmp_path / "folder.tum")
    got = _track(["--map", str(kitti_map), "--bag", str(bag), "--image-topic", topic, "--camera-info-topic",
                  "/cam/camera_info"], tmp_path / "bag.tum")
    assert len(expected) >= 8 and len(got) == len(expected)
    for (t_bag, pose_bag), (t_dir, pose_dir) in zip(got, expected, strict=True):
        assert abs(t_bag - t_dir) < 1e-6  # the header stamps are index / FPS
        assert np.abs(pose_bag.matrix() - pose_dir.matrix()).max() < 1e-9


def test_bag_errors_name_the_bag_and_topics(frames, tmp_path):
    folder, names, params = frames
    with pytest.raises(FileNotFoundError, match="no such bag"):
        list(iter_bag_frames(tmp_path / "none.bag", "/x"))
    bag = tmp_path / "run"
    _write_ros2(bag, folder, names[:2], params, StoragePlugin.SQLITE3)
    with pytest.raises(ValueError, match=r"no topic '/left'; its image topics: \['/cam/image_raw'\]"):
        list(iter_bag_frames(bag, "/left"))
    with pytest.raises(ValueError, match="carries sensor_msgs/msg/CameraInfo"):
        list(iter_bag_frames(bag, "/cam/camera_info"))
    assert [f.name for f in iter_bag_frames(bag, "/cam/image_raw", every=2)] == ["image_raw_0000000000000000000"]
    truncated = tmp_path / "cut.bag"
    _write_ros1(truncated, folder, names[:2], params)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.bag: not a readable ROS 1 or ROS 2 bag"):
        list(iter_bag_frames(truncated, "/cam/image/compressed"))
