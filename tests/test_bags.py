"""Robot recordings (issue 28). In: recordings written with rosbags' and mcap's own writers (not
vloc's code) give the same poses as ``vloc track`` on the image folder: kitti as mono8 ``Image`` in a
ROS 2 MCAP bag and a plain MCAP file, 7scenes as JPEG ``CompressedImage`` in a ROS 2 sqlite3 bag and
a ROS 1 bag, with ``CameraInfo``. Out: ``--mcap`` read back with the mcap library and
mcap-ros2-support's decoder (which vloc does not use to write)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pycolmap
import pytest

from vloc.cli import main
from vloc.io.bag_stream import TruncatedBagError
from vloc.io.bags import BagFrame, FrameSelection, iter_bag_frames, select_frames
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared
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
from mcap_ros2.writer import Writer as McapRos2Writer  # noqa: E402

FPS = 10.0
RAW, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
INFO = "sensor_msgs/msg/CameraInfo"
STORE = get_typestore(Stores.ROS2_HUMBLE)
ROS1_STORE = get_typestore(Stores.ROS1_NOETIC)


T0 = 1_700_000_000_123_456_789  # an epoch stamp in nanoseconds: seconds as float64 would lose its last digits


def _ns(index: int) -> int:
    return T0 + int(round(index / FPS * 1e9))


def _header(store, index: int):
    """The frame's header, stamped T0 + index / FPS (ROS 1's also carries the sequence number)."""
    ns = _ns(index)
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


@dataclass(frozen=True)
class Sequence:
    """Query frames of a shared set as a sequence: a folder of their images, their shared camera and
    a map to track them in."""

    folder: Path
    names: list[str]
    params: list[float]
    map: Path

    @property
    def camera(self) -> str:
        w, h = cv2.imread(str(self.folder / self.names[0]), cv2.IMREAD_UNCHANGED).shape[1::-1]
        return f"PINHOLE {w} {h} " + " ".join(f"{v:.10g}" for v in self.params)


def _sequence(ds, names: list[str], camera, folder: Path, map_dir: Path) -> Sequence:
    folder.mkdir()
    for name in names:
        shutil.copy(ds.images / name, folder / name)
    return Sequence(folder, sorted(names), [float(v) for v in camera.params], map_dir)


@pytest.fixture(scope="module")
def kitti_seq(kitti, kitti_map, tmp_path_factory) -> Sequence:
    queries = read_queries(kitti.root / "queries.txt")
    return _sequence(kitti, [q.name for q in queries], queries[0].camera,
                     tmp_path_factory.mktemp("kitti") / "images", kitti_map)


@pytest.fixture(scope="module")
def seven_seq(seven_small, tmp_path_factory) -> Sequence:
    """7scenes queries 10, 30, ..., 110 and the map of frames 0, 4, ..., 120 (known poses)."""
    ds, _, map_dir = seven_small
    queries = [q for q in read_queries(ds.root / "queries.txt") if int(q.name[6:12]) <= 110]
    return _sequence(ds, [q.name for q in queries], queries[0].camera, tmp_path_factory.mktemp("7scenes") / "images",
                     map_dir)


def _messages(store, seq: Sequence, compressed: bool):
    """``(log time ns, CameraInfo, image message)`` per frame; compressed: the JPEG/PNG file's bytes."""
    for i, name in enumerate(seq.names):
        pixels = cv2.imread(str(seq.folder / name), cv2.IMREAD_UNCHANGED)
        h, w = pixels.shape[:2]
        info = _camera_info(store, w, h, seq.params, _header(store, i))
        if compressed:
            fmt = "png" if name.endswith(".png") else "jpeg"
            data = np.frombuffer((seq.folder / name).read_bytes(), np.uint8)
            image = store.types[COMPRESSED](header=_header(store, i), format=fmt, data=data)
        else:
            assert pixels.ndim == 2  # kitti: grey
            image = store.types[RAW](header=_header(store, i), height=h, width=w, encoding="mono8", is_bigendian=0,
                                     step=w, data=pixels.ravel())
        yield _ns(i), info, image


def _write_ros2(path: Path, seq: Sequence, storage: StoragePlugin, compressed: bool = False) -> str:
    topic = "/cam/image/compressed" if compressed else "/cam/image_raw"
    with Writer2(path, version=9, storage_plugin=storage) as writer:
        images = writer.add_connection(topic, COMPRESSED if compressed else RAW, typestore=STORE)
        infos = writer.add_connection("/cam/camera_info", INFO, typestore=STORE)
        for t, info, image in _messages(STORE, seq, compressed):
            writer.write(infos, t, STORE.serialize_cdr(info, INFO))
            writer.write(images, t + 1, STORE.serialize_cdr(image, images.msgtype))
    return topic


def _write_ros1(path: Path, seq: Sequence, small_chunks: bool = False) -> str:
    writer = Writer1(path)
    if small_chunks:
        writer.chunk_threshold = 1  # a chunk per message, as a recorder flushing often writes them
    with writer:
        images = writer.add_connection("/cam/image/compressed", COMPRESSED, typestore=ROS1_STORE)
        infos = writer.add_connection("/cam/camera_info", INFO, typestore=ROS1_STORE)
        for t, info, image in _messages(ROS1_STORE, seq, compressed=True):
            writer.write(infos, t, ROS1_STORE.serialize_ros1(info, INFO))
            writer.write(images, t + 1, ROS1_STORE.serialize_ros1(image, COMPRESSED))
    return "/cam/image/compressed"


def _write_plain_mcap(path: Path, seq: Sequence, small_chunks: bool = False) -> str:
    """A plain MCAP file (no rosbag2 metadata) written by mcap-ros2-support's writer."""
    with open(path, "wb") as stream:
        writer = McapRos2Writer(stream, chunk_size=1024) if small_chunks else McapRos2Writer(stream)
        schemas = {t: writer.register_msgdef(t, STORE.generate_msgdef(t, ros_version=2)[0]) for t in (RAW, INFO)}
        for t, info, image in _messages(STORE, seq, compressed=False):
            writer.write_message("/cam/camera_info", schemas[INFO], _as_dict(info), log_time=t, publish_time=t)
            writer.write_message("/cam/image_raw", schemas[RAW], _as_dict(image), log_time=t + 1, publish_time=t + 1)
        writer.finish()
    return "/cam/image_raw"


def _as_dict(msg):
    """A rosbags message as the nested dicts mcap-ros2-support's writer takes."""
    if dataclasses.is_dataclass(msg):
        return {f.name: _as_dict(getattr(msg, f.name)) for f in dataclasses.fields(msg) if f.name != "__msgtype__"}
    if isinstance(msg, np.ndarray):
        return msg.tobytes() if msg.dtype == np.uint8 else msg.tolist()
    return msg


def _write(kind: str, seq: Sequence, path: Path) -> str:
    if kind == "ros1":
        return _write_ros1(path, seq)
    if kind == "plain-mcap":
        return _write_plain_mcap(path, seq)
    storage = StoragePlugin.MCAP if kind == "ros2-mcap" else StoragePlugin.SQLITE3
    return _write_ros2(path, seq, storage, compressed=kind == "ros2-sqlite3")


def _track(args: list[str], out: Path) -> list:
    assert main(["track", *args, "--tum", str(out)]) == 0
    return read_tum_trajectory(out)


@pytest.mark.parametrize("kind", ["ros2-mcap", "plain-mcap", "ros2-sqlite3", "ros1"])
def test_track_bag_gives_the_folders_poses(kind, request, tmp_path):
    seq = request.getfixturevalue("kitti_seq" if "mcap" in kind else "seven_seq")
    bag = tmp_path / {"ros1": "run.bag", "plain-mcap": "run.mcap"}.get(kind, "run")
    topic = _write(kind, seq, bag)
    expected = _track(["--map", str(seq.map), "--frames", str(seq.folder), "--camera", seq.camera, "--fps",
                       str(FPS)], tmp_path / "folder.tum")
    got = _track(["--map", str(seq.map), "--bag", str(bag), "--image-topic", topic, "--camera-info-topic",
                  "/cam/camera_info"], tmp_path / "bag.tum")
    assert len(expected) >= 5 and len(got) == len(expected)
    for (t_bag, pose_bag), (t_dir, pose_dir) in zip(got, expected, strict=True):
        assert abs(t_bag - T0 / 1e9 - t_dir) < 1e-6  # the header stamps are T0 + index / FPS
        assert np.abs(pose_bag.matrix() - pose_dir.matrix()).max() < 1e-9


def test_mcap_output_reads_back_with_mcaps_own_decoder(kitti_seq, tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from vloc.io.rosmsg import fill_pose_with_covariance
    from vloc.localization.localizer import Localizer
    from vloc.localization.tracking import Tracker

    bag = tmp_path / "run"
    topic = _write("ros2-mcap", kitti_seq, bag)
    out = tmp_path / "out.mcap"
    assert main(["track", "--map", str(kitti_seq.map), "--bag", str(bag), "--image-topic", topic,
                 "--camera-info-topic", "/cam/camera_info", "--tum", str(tmp_path / "poses.tum"),
                 "--mcap", str(out), "--mcap-images"]) == 0
    tum = read_tum_trajectory(tmp_path / "poses.tum")
    by_topic: dict[str, list] = {}
    with open(out, "rb") as stream:
        for schema, channel, message, decoded in make_reader(stream, decoder_factories=[DecoderFactory()]) \
                .iter_decoded_messages():
            by_topic.setdefault(channel.topic, []).append((message.log_time, decoded))
    n = len(kitti_seq.names)
    assert {k: len(v) for k, v in by_topic.items()} == {
        "/vloc/map": 1, "/vloc/status": n, "/vloc/image": n, "/vloc/pose": len(tum), "/tf": len(tum)}
    inputs = [_ns(i) for i in range(n)]
    for messages in by_topic.values():  # every message is stamped as its input frame
        for log_time, msg in messages:
            assert log_time in inputs
            header = msg.transforms[0].header if hasattr(msg, "transforms") else msg.header
            assert header.stamp.sec * 1_000_000_000 + header.stamp.nanosec == log_time
    assert [t for t, _ in by_topic["/vloc/status"]] == inputs
    # the covariance the ROS 2 node publishes, from the same tracking run in Python
    tracker = Tracker(Localizer.load(kitti_seq.map))
    published = []
    for frame in iter_bag_frames(bag, topic, "/cam/camera_info"):
        result = tracker.track(frame.image, frame.camera, name=frame.name)
        if result.success:
            published.append(fill_pose_with_covariance(_pose_template(), result, None))
    assert len(published) == len(tum)
    for (stamp, pose), (t, msg), (_, tf), ros in zip(tum, by_topic["/vloc/pose"], by_topic["/tf"], published,
                                                     strict=True):
        assert abs(t / 1e9 - stamp) < 1e-6
        world_from_cam = pose.inverse()
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], world_from_cam.translation, atol=1e-6)
        np.testing.assert_allclose([q.x, q.y, q.z, q.w], world_from_cam.rotation.quat, atol=1e-8)
        transform = tf.transforms[0]
        assert (transform.header.frame_id, transform.child_frame_id) == ("map", "camera")
        assert transform.transform.translation.x == p.x and transform.transform.rotation.w == q.w
        np.testing.assert_array_equal(msg.pose.covariance, ros.pose.covariance)
        assert np.abs(np.asarray(msg.pose.covariance)).max() > 0
    status = [m for _, m in by_topic["/vloc/status"]]
    assert sum(s.status[0].message == "localized" for s in status) == len(tum)
    assert {kv.key for kv in status[0].status[0].values} >= {"status", "reason", "num_inliers", "latency_ms"}
    cloud = by_topic["/vloc/map"][0][1]
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"] and cloud.width > 1000
    xyz = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)[:, :3]
    model = pycolmap.Reconstruction(str(kitti_seq.map / "model"))
    assert cloud.width == len(model.points3D)
    some = model.points3D[min(model.points3D)].xyz
    assert np.abs(xyz - some.astype(np.float32)).sum(axis=1).min() < 1e-6
    first = by_topic["/vloc/image"][0][1]
    assert first.format == "png" or cv2.imdecode(np.frombuffer(bytes(first.data), np.uint8), 0).shape == (376, 1241)


def _pose_template():
    """A PoseWithCovarianceStamped-shaped object, as rclpy's would be."""
    point, quat = SimpleNamespace(x=0.0, y=0.0, z=0.0), SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0)
    return SimpleNamespace(header=SimpleNamespace(stamp=None, frame_id=""),
                           pose=SimpleNamespace(pose=SimpleNamespace(position=point, orientation=quat), covariance=[]))


def test_bag_errors_name_the_bag_and_topics(kitti_seq, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such bag"):
        list(iter_bag_frames(tmp_path / "none.bag", "/x"))
    bag = tmp_path / "run"
    two = dataclasses.replace(kitti_seq, names=kitti_seq.names[:2])
    _write_ros2(bag, two, StoragePlugin.SQLITE3)
    with pytest.raises(ValueError, match=r"no topic '/left'; its image topics: \['/cam/image_raw'\]"):
        list(iter_bag_frames(bag, "/left"))
    with pytest.raises(ValueError, match="carries sensor_msgs/msg/CameraInfo"):
        list(iter_bag_frames(bag, "/cam/camera_info"))
    assert [f.name for f in iter_bag_frames(bag, "/cam/image_raw", every=2)] == [f"image_raw_{_ns(0):019d}"]
    truncated = tmp_path / "cut.bag"  # cut inside the bag header: nothing to read, and the topic is unknown
    _write_ros1(truncated, two)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cut.bag: no topic '/cam/image/compressed'; its image topics: none"):
        list(iter_bag_frames(truncated, "/cam/image/compressed"))
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a recording")
    with pytest.raises(ValueError, match="notes.txt: not a readable ROS 1 or ROS 2 bag or MCAP file"):
        list(iter_bag_frames(foreign, "/cam/image_raw"))


@pytest.mark.parametrize("kind", ["ros1", "plain-mcap"])
def test_a_cut_recording_gives_its_complete_frames_then_says_where_it_stopped(kind, kitti_seq, tmp_path):
    bag, cut = tmp_path / f"run.{'bag' if kind == 'ros1' else 'mcap'}", tmp_path / f"cut.{'bag' if kind == 'ros1' else 'mcap'}"
    topic = (_write_ros1 if kind == "ros1" else _write_plain_mcap)(bag, kitti_seq, small_chunks=True)
    whole = list(iter_bag_frames(bag, topic, "/cam/camera_info"))
    cut.write_bytes(bag.read_bytes()[: int(bag.stat().st_size * 0.7)])
    got = []
    with pytest.raises(TruncatedBagError, match=r"cut\.\w+: truncated at byte \d+ of \d+ \(inside a .*; read the \d+ "):
        for frame in iter_bag_frames(cut, topic, "/cam/camera_info"):
            got.append(frame)
    assert 4 <= len(got) < len(whole)
    for a, b in zip(got, whole):
        assert a.name == b.name and a.camera is not None
        np.testing.assert_array_equal(a.image, b.image)
    # vloc track writes the frames before the cut, then fails saying where it stopped
    assert main(["track", "--map", str(kitti_seq.map), "--bag", str(cut), "--image-topic", topic,
                 "--camera-info-topic", "/cam/camera_info", "--log", str(tmp_path / "log.json")]) == 1
    logged = json.loads((tmp_path / "log.json").read_text())["frames"]
    assert [f["name"] for f in logged] == [f.name for f in got]


def _write_one_frame(path: Path, seq: Sequence, encoding: str = "mono8", info_width_delta: int = 0) -> None:
    pixels = cv2.imread(str(seq.folder / seq.names[0]), cv2.IMREAD_UNCHANGED)
    h, w = pixels.shape
    with Writer2(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        images = writer.add_connection("/cam/image_raw", RAW, typestore=STORE)
        infos = writer.add_connection("/cam/camera_info", INFO, typestore=STORE)
        info = _camera_info(STORE, w + info_width_delta, h, seq.params, _header(STORE, 0))
        writer.write(infos, T0, STORE.serialize_cdr(info, INFO))
        image = STORE.types[RAW](header=_header(STORE, 0), height=h, width=w, encoding=encoding, is_bigendian=0,
                                 step=w, data=pixels.ravel())
        writer.write(images, T0 + 1, STORE.serialize_cdr(image, RAW))


def test_an_unknown_encoding_or_a_camera_info_of_another_size_is_named(kitti_seq, tmp_path):
    _write_one_frame(tmp_path / "enc", kitti_seq, encoding="32FC1")
    with pytest.raises(ValueError, match=r"enc: /cam/image_raw message stamped 1700000000\.123456789: image "
                                         r"encoding '32FC1' is not supported; supported: mono8"):
        list(iter_bag_frames(tmp_path / "enc", "/cam/image_raw"))
    _write_one_frame(tmp_path / "size", kitti_seq, info_width_delta=1)
    with pytest.raises(ValueError, match=r"size: the CameraInfo before /cam/image_raw's message stamped "
                                         r"1700000000\.123456789 is for 1242x376 images, the image is 1241x376"):
        list(iter_bag_frames(tmp_path / "size", "/cam/image_raw", "/cam/camera_info"))
    assert len(list(iter_bag_frames(tmp_path / "size", "/cam/image_raw"))) == 1  # without CameraInfo: read


def _frame(index: int, value: int) -> BagFrame:
    return BagFrame(_ns(index), f"f{index}", np.full((48, 64), value, np.uint8), None)


def test_frame_selection_by_count_time_and_change():
    frames = [_frame(i, v) for i, v in enumerate([0, 0, 100, 100, 100, 200])]
    assert [f.name for f in select_frames(iter(frames), FrameSelection(every=2))] == ["f0", "f2", "f4"]
    assert [f.name for f in select_frames(iter(frames), FrameSelection(every_seconds=0.25))] == ["f0", "f3"]
    assert [f.name for f in select_frames(iter(frames), FrameSelection(min_change=0.3))] == ["f0", "f2", "f5"]
    assert [f.name for f in select_frames(iter(frames), FrameSelection(every=2, min_change=0.3))] == ["f0", "f2"]
    with pytest.raises(ValueError, match="frame selection out of range"):
        FrameSelection(every=0)


def test_map_build_from_a_bag(data_dir, tmp_path, caplog):
    """7scenes frames 0, 4, ..., 60 as JPEG CompressedImage with CameraInfo: every second one is
    written and SfM registers them with the CameraInfo's calibration."""
    ds = open_prepared(data_dir / "prepared" / "7scenes")
    names = [f"frame-{i:06d}.color.jpg" for i in range(0, 61, 4)]
    seq = _sequence(ds, names, read_queries(ds.root / "queries.txt")[0].camera, tmp_path / "src", tmp_path)
    bag = tmp_path / "run"
    topic = _write_ros2(bag, seq, StoragePlugin.SQLITE3, compressed=True)
    args = ["map", "build", "--bag", str(bag), "--image-topic", topic, "--camera-info-topic", "/cam/camera_info",
            "--every", "2", "--images", str(tmp_path / "frames"), "--out", str(tmp_path / "map")]
    assert main(args) == 0
    written = sorted(p.name for p in (tmp_path / "frames").glob("*.jpg"))
    assert written == [f"compressed_{_ns(i):019d}.jpg" for i in range(0, len(names), 2)]
    assert (tmp_path / "frames" / written[0]).read_bytes() == (seq.folder / names[0]).read_bytes()
    model = pycolmap.Reconstruction(str(tmp_path / "map" / "model"))
    assert model.num_reg_images() >= 7
    camera = next(iter(model.cameras.values()))
    assert camera.model.name == "PINHOLE" and abs(camera.params[0] - 525) < 1e-6  # kept: a given calibration
    # the same recording and options reuse the folder; other options are refused
    assert main(args[:-2] + ["--out", str(tmp_path / "map2")]) == 0
    assert main([a if a != "2" else "3" for a in args[:-2]] + ["--out", str(tmp_path / "map3")]) == 2
    assert "frames: exists and does not hold this recording's frames" in caplog.text
    assert not (tmp_path / "map3").exists()
