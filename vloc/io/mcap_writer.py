"""Localized recordings as one MCAP file that Foxglove and ROS 2 tools open (``vloc track --mcap``).

ROS 2 messages, CDR-encoded by ``rosbags``' serializer, with their ``ros2msg`` schemas embedded,
in a file written by the ``mcap`` library (profile ``ros2``). Topics:

- ``/vloc/pose``: ``geometry_msgs/PoseWithCovarianceStamped``, the camera in the ``map`` frame with
  the covariance the ROS 2 node publishes (:func:`vloc.io.rosmsg.pose_covariance`), localized frames only;
- ``/tf``: ``tf2_msgs/TFMessage``, ``map`` -> the frame's camera frame, localized frames only;
- ``/vloc/map``: ``sensor_msgs/PointCloud2``, the map's points once (x, y, z float32 and, when the
  map has colours, ``rgb`` packed in a float32 as PCL and RViz read it), stamped as the first frame;
- ``/vloc/status``: ``diagnostic_msgs/DiagnosticArray`` per frame: level OK when localized, WARN
  when not, the message ``localized`` or ``failed: reason``, and key-values ``status``, ``reason``,
  ``name``, ``num_inliers``, ``num_matches``, ``latency_ms``;
- ``/vloc/image`` (when asked): ``sensor_msgs/CompressedImage``, the input image (a compressed input
  as it was, a raw one as JPEG).

Every message's header stamp, log time and publish time are the input frame's stamp (nanoseconds).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from vloc.io.files import atomic_open
from vloc.io.rosmsg import map_from_camera, pose_covariance

POSE, TF, CLOUD = "geometry_msgs/msg/PoseWithCovarianceStamped", "tf2_msgs/msg/TFMessage", "sensor_msgs/msg/PointCloud2"
STATUS, IMAGE = "diagnostic_msgs/msg/DiagnosticArray", "sensor_msgs/msg/CompressedImage"
TOPICS = {"/vloc/pose": POSE, "/tf": TF, "/vloc/map": CLOUD, "/vloc/status": STATUS, "/vloc/image": IMAGE}
FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
OK, WARN = 0, 1  # diagnostic_msgs/DiagnosticStatus levels


class McapRecorder:
    """Writes the topics of the module docstring to an open binary file; :meth:`finish` closes the
    MCAP (its summary and index). ``frame_id``: the map's TF frame."""

    def __init__(self, stream: BinaryIO, frame_id: str = "map"):
        try:
            from mcap.writer import CompressionType, Writer
            from rosbags.typesys import Stores, get_typestore
        except ImportError:
            raise RuntimeError("writing MCAP needs the `mcap` and `rosbags` packages: pip install 'vloc[robot]'") from None
        self.store = get_typestore(Stores.ROS2_HUMBLE)
        self.frame_id = frame_id
        self.writer = Writer(stream, compression=CompressionType.ZSTD)
        self.writer.start(profile="ros2", library="vloc")
        self.channels: dict[str, int] = {}
        for topic, msgtype in TOPICS.items():
            text, _ = self.store.generate_msgdef(msgtype, ros_version=2)
            schema = self.writer.register_schema(name=msgtype, encoding="ros2msg", data=text.encode())
            self.channels[topic] = self.writer.register_channel(topic=topic, message_encoding="cdr", schema_id=schema)
        self.map_written = False

    def _msg(self, msgtype: str, /, **fields: Any) -> Any:
        return self.store.types[msgtype](**fields)

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        stamp = self._msg("builtin_interfaces/msg/Time", sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        return self._msg("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)

    def _write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        data = self.store.serialize_cdr(msg, TOPICS[topic])
        self.writer.add_message(channel_id=self.channels[topic], log_time=stamp_ns, publish_time=stamp_ns,
                                data=bytes(data))

    def map_points(self, xyz: np.ndarray, rgb: np.ndarray | None, stamp_ns: int) -> None:
        """``xyz``: ``(P, 3)`` map points; ``rgb``: ``(P, 3)`` uint8 colours or None. Written once."""
        xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
        names = ["x", "y", "z"] + ([] if rgb is None else ["rgb"])
        point = np.zeros(len(xyz), np.dtype({"names": names, "formats": ["<f4"] * len(names)}))
        point["x"], point["y"], point["z"] = xyz.T
        if rgb is not None:
            rgb = np.asarray(rgb, np.uint32).reshape(-1, 3)
            point["rgb"] = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)
        fields = [self._msg("sensor_msgs/msg/PointField", name=n, offset=4 * i, datatype=FLOAT32, count=1)
                  for i, n in enumerate(names)]
        step = 4 * len(names)
        self._write("/vloc/map", self._msg(
            CLOUD, header=self._header(stamp_ns, self.frame_id), height=1, width=len(xyz), fields=fields,
            is_bigendian=False, point_step=step, row_step=step * len(xyz), data=point.view(np.uint8).ravel(),
            is_dense=True), stamp_ns)
        self.map_written = True

    def frame(self, stamp_ns: int, camera_frame: str, result: Any, latency_s: float,
              image: tuple[str, bytes] | None = None) -> None:
        """One input frame: its status, and its pose and TF when localized; ``image``: ``(format,
        compressed bytes)`` to record on ``/vloc/image``."""
        header = self._header(stamp_ns, self.frame_id)
        if result.success:
            position, quat = map_from_camera(result)
            point = self._msg("geometry_msgs/msg/Point", x=position[0], y=position[1], z=position[2])
            rotation = self._msg("geometry_msgs/msg/Quaternion", x=quat[0], y=quat[1], z=quat[2], w=quat[3])
            pose = self._msg("geometry_msgs/msg/Pose", position=point, orientation=rotation)
            self._write("/vloc/pose", self._msg(POSE, header=header, pose=self._msg(
                "geometry_msgs/msg/PoseWithCovariance", pose=pose, covariance=pose_covariance(result))), stamp_ns)
            translation = self._msg("geometry_msgs/msg/Vector3", x=position[0], y=position[1], z=position[2])
            transform = self._msg("geometry_msgs/msg/TransformStamped", header=header, child_frame_id=camera_frame,
                                  transform=self._msg("geometry_msgs/msg/Transform", translation=translation,
                                                      rotation=rotation))
            self._write("/tf", self._msg(TF, transforms=[transform]), stamp_ns)
        status = "localized" if result.success else "failed"
        values = dict(status=status, reason=result.reason, name=result.name, num_inliers=str(result.num_inliers),
                      num_matches=str(result.num_matches), latency_ms=f"{latency_s * 1e3:.1f}")
        diagnostic = self._msg(
            "diagnostic_msgs/msg/DiagnosticStatus", level=OK if result.success else WARN, name="vloc",
            message=status if result.success else f"failed: {result.reason}", hardware_id=camera_frame,
            values=[self._msg("diagnostic_msgs/msg/KeyValue", key=k, value=v) for k, v in values.items()])
        self._write("/vloc/status", self._msg(STATUS, header=header, status=[diagnostic]), stamp_ns)
        if image is not None:
            fmt, data = image
            self._write("/vloc/image", self._msg(IMAGE, header=self._header(stamp_ns, camera_frame), format=fmt,
                                                 data=np.frombuffer(data, np.uint8)), stamp_ns)

    def finish(self) -> None:
        self.writer.finish()


@contextmanager
def mcap_recorder(path: Path | str, frame_id: str = "map") -> Iterator[McapRecorder]:
    """A :class:`McapRecorder` writing ``path`` atomically: the file appears complete when the block
    ends, and a failed run leaves no half file."""
    with atomic_open(path, "wb") as stream:
        recorder = McapRecorder(stream, frame_id)
        yield recorder
        recorder.finish()


def compress_image(image: np.ndarray, quality: int = 90) -> tuple[str, bytes]:
    """``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 -> ``("jpeg", bytes)`` for ``/vloc/image``."""
    import cv2

    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image.shape}")
    return "jpeg", data.tobytes()
