"""Frames from robot recordings: ROS 1 bags and ROS 2 bags (sqlite3 or MCAP storage), read with
``rosbags`` (pure Python: no ROS installation), decoded by :mod:`vloc.io.rosmsg`.

The image topic may carry ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``; a
``CameraInfo`` topic, when named, gives the intrinsics of the frames after its first message.
Timestamps are the messages' header stamps (seconds). Messages are read one at a time in the
bag's order, so memory does not grow with the recording's length. ``start`` / ``end``: seconds
from the bag's first message; ``every``: keep one image of ``every``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from vloc.io.rosmsg import camera_from_info, image_from_compressed, image_from_msg

logger = logging.getLogger(__name__)

IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"


@dataclass(frozen=True)
class BagFrame:
    """``image``: ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8; ``camera``: from the CameraInfo topic,
    or None; ``name``: the topic's last part and the stamp in nanoseconds (unique, sortable);
    ``stamp_ns``: the header stamp; ``frame_id``: the header's frame; ``compressed``: ``(format,
    bytes)`` of a CompressedImage as recorded, None for a raw Image."""

    stamp_ns: int
    name: str
    image: np.ndarray
    camera: pycolmap.Camera | None
    frame_id: str = "camera"
    compressed: tuple[str, bytes] | None = None

    @property
    def stamp(self) -> float:
        """The header stamp in seconds."""
        return self.stamp_ns / 1e9


def _reader(path: Path) -> Any:
    try:
        from rosbags.highlevel import AnyReader, AnyReaderError
        from rosbags.typesys import Stores, get_typestore
    except ImportError:
        raise RuntimeError("reading bags needs the `rosbags` package: pip install 'vloc[robot]'") from None
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    try:
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as exc:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable ROS 1 or ROS 2 bag ({type(exc).__name__}: {exc})") from None
    return reader


def _stamp(msg: Any) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _camera(msg: Any) -> pycolmap.Camera:
    k = msg.k if hasattr(msg, "k") else msg.K  # ROS 2 and ROS 1 field names
    d = msg.d if hasattr(msg, "d") else msg.D
    return camera_from_info(int(msg.width), int(msg.height), list(k), list(d), str(msg.distortion_model))


def iter_bag_frames(path: Path | str, image_topic: str, camera_info_topic: str | None = None,
                    start: float | None = None, end: float | None = None, every: int = 1) -> Iterator[BagFrame]:
    """The frames of ``image_topic`` in ``path`` (see the module docstring). Raises
    ``FileNotFoundError`` / ``ValueError`` naming the bag: missing, unreadable, a topic it does not
    have (the message lists its image topics) or of another type."""
    path = Path(path)
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    reader = _reader(path)
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        images = sorted(t for t, m in types.items() if m in (IMAGE, COMPRESSED))
        for topic, wanted in ((image_topic, (IMAGE, COMPRESSED)), (camera_info_topic, (CAMERA_INFO,))):
            if topic is None:
                continue
            if topic not in types:
                listed = images if wanted != (CAMERA_INFO,) else sorted(t for t, m in types.items() if m == CAMERA_INFO)
                raise ValueError(f"{path}: no topic {topic!r}; its {'image' if len(wanted) == 2 else 'CameraInfo'} "
                                 f"topics: {listed or 'none'}")
            if types[topic] not in wanted:
                raise ValueError(f"{path}: topic {topic!r} carries {types[topic]}, not {' or '.join(wanted)}")
        connections = [c for c in reader.connections if c.topic in (image_topic, camera_info_topic)]
        first = reader.start_time
        window = dict(start=None if start is None else first + int(start * 1e9),
                      stop=None if end is None else first + int(end * 1e9))
        camera, index, label = None, 0, image_topic.strip("/").split("/")[-1] or "image"
        for connection, _, raw in reader.messages(connections=connections, **window):
            msg = reader.deserialize(raw, connection.msgtype)
            if connection.topic == camera_info_topic:
                camera = _camera(msg)
                continue
            index += 1
            if (index - 1) % every:
                continue
            stamp = _stamp(msg)
            if connection.msgtype == COMPRESSED:
                compressed = (str(msg.format), bytes(msg.data))
                image = image_from_compressed(msg)
            else:
                compressed, image = None, image_from_msg(msg)
            yield BagFrame(stamp, f"{label}_{stamp:019d}", image, camera, str(msg.header.frame_id) or "camera",
                           compressed)
    finally:
        reader.close()
