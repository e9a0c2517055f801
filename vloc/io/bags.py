"""Frames from robot recordings: ROS 1 bags and ROS 2 bags (sqlite3 or MCAP storage), read with
``rosbags`` (pure Python: no ROS installation), decoded by :mod:`vloc.io.rosmsg`.

The image topic may carry ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``; a
``CameraInfo`` topic, when named, gives the intrinsics of the frames after its first message.
Timestamps are the messages' header stamps (seconds). Messages are read one at a time in the
bag's order, so memory does not grow with the recording's length. ``start`` / ``end``: seconds
from the bag's first message (by log time); ``every``: keep one image of ``every``. A ROS 1 bag or
MCAP file cut short (its index missing) is read record by record (:mod:`vloc.io.bag_stream`): its
complete frames come out, then a ``TruncatedBagError`` says where it stopped.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from vloc.io.bag_stream import TruncatedBagError, stream_messages, streamable
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


def _open_indexed(path: Path) -> Any:
    """``rosbags``' reader, opened; None for a ROS 1 bag or MCAP whose index is missing (read by
    :mod:`vloc.io.bag_stream` instead)."""
    try:
        from rosbags.highlevel import AnyReader, AnyReaderError
        from rosbags.typesys import Stores, get_typestore
    except ImportError:
        raise RuntimeError("reading bags needs the `rosbags` package: pip install 'vloc[robot]'") from None
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as exc:  # a truncated or foreign file
        if streamable(path):
            logger.warning("%s: %s; reading its records in order", path, exc)
            return None
        raise ValueError(f"{path}: not a readable ROS 1 or ROS 2 bag or MCAP file ({type(exc).__name__}: {exc})") \
            from None
    return reader


Window = tuple[float | None, float | None]  # start, end: seconds from the first message


def _indexed_messages(path: Path, reader: Any, topics: tuple[str, ...], window: Window) -> Iterator[tuple[str, str, Any]]:
    """``(topic, msgtype, message)`` of ``topics`` in the window, after checking they are there."""
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        for topic in topics:
            _check_topic(path, topic, types.get(topic), types, topic == topics[0])
        connections = [c for c in reader.connections if c.topic in topics]
        start, end = (None if w is None else reader.start_time + int(w * 1e9) for w in window)
        for connection, _, raw in reader.messages(connections=connections, start=start, stop=end):
            yield connection.topic, connection.msgtype, reader.deserialize(raw, connection.msgtype)
    finally:
        reader.close()


def _streamed_messages(path: Path, topics: tuple[str, ...], window: Window) -> Iterator[tuple[str, str, Any]]:
    """As :func:`_indexed_messages` for a recording without its index: the topics are checked as
    they appear, and a missing image topic is named when the stream ends."""
    types: dict[str, str] = {}
    first = None
    try:
        for topic, msgtype, raw, log_time, deserialize in stream_messages(path, streamable(path)):
            first = log_time if first is None else first
            if window[1] is not None and log_time >= first + int(window[1] * 1e9):
                return
            if topic not in types:
                types[topic] = msgtype
                if topic in topics:
                    _check_topic(path, topic, msgtype, types, topic == topics[0])
            if topic in topics and (window[0] is None or log_time >= first + int(window[0] * 1e9)):
                yield topic, msgtype, deserialize(raw, msgtype)
    except TruncatedBagError:
        if topics[0] not in types:
            _check_topic(path, topics[0], None, types, True)
        raise


def _check_topic(path: Path, topic: str, msgtype: str | None, types: dict[str, str], image: bool) -> None:
    wanted = (IMAGE, COMPRESSED) if image else (CAMERA_INFO,)
    if msgtype is None:
        listed = sorted(t for t, m in types.items() if m in wanted)
        raise ValueError(f"{path}: no topic {topic!r}; its {'image' if image else 'CameraInfo'} topics: "
                         f"{listed or 'none'}")
    if msgtype not in wanted:
        raise ValueError(f"{path}: topic {topic!r} carries {msgtype}, not {' or '.join(wanted)}")


def _stamp(msg: Any) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _camera(msg: Any) -> pycolmap.Camera:
    k = msg.k if hasattr(msg, "k") else msg.K  # ROS 2 and ROS 1 field names
    d = msg.d if hasattr(msg, "d") else msg.D
    return camera_from_info(int(msg.width), int(msg.height), list(k), list(d), str(msg.distortion_model))


def _frame(path: Path, topic: str, msgtype: str, msg: Any, camera: pycolmap.Camera | None, label: str) -> BagFrame:
    stamp = _stamp(msg)
    try:
        if msgtype == COMPRESSED:
            compressed = (str(msg.format), bytes(msg.data))
            image = image_from_compressed(msg)
        else:
            compressed, image = None, image_from_msg(msg)
    except ValueError as exc:
        raise ValueError(f"{path}: {topic} message stamped {stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d}: {exc}") from None
    height, width = image.shape[:2]
    if camera is not None and (camera.width, camera.height) != (width, height):
        raise ValueError(f"{path}: the CameraInfo before {topic}'s message stamped {stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d} is for "
                         f"{camera.width}x{camera.height} images, the image is {width}x{height}")
    return BagFrame(stamp, f"{label}_{stamp:019d}", image, camera, str(msg.header.frame_id) or "camera", compressed)


def iter_bag_frames(path: Path | str, image_topic: str, camera_info_topic: str | None = None,
                    start: float | None = None, end: float | None = None, every: int = 1) -> Iterator[BagFrame]:
    """The frames of ``image_topic`` in ``path`` (see the module docstring).

    Raises:
        FileNotFoundError: no such bag.
        ValueError: naming the bag: unreadable, a topic it does not have (the message lists its
            image topics) or of another type, an image that does not decode (its encoding named),
            a CameraInfo for another image size.
        vloc.io.bag_stream.TruncatedBagError: (a ValueError) after the last complete frame of a
            ROS 1 bag or MCAP file cut short, saying where it stopped.
    """
    path = Path(path)
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    topics = (image_topic,) if camera_info_topic is None else (image_topic, camera_info_topic)
    reader = _open_indexed(path)
    window = (start, end)
    messages = (_indexed_messages(path, reader, topics, window) if reader is not None
                else _streamed_messages(path, topics, window))
    camera, index, label = None, 0, image_topic.strip("/").split("/")[-1] or "image"
    for topic, msgtype, msg in messages:
        if topic == camera_info_topic:
            camera = _camera(msg)
            continue
        index += 1
        if (index - 1) % every == 0:
            yield _frame(path, topic, msgtype, msg, camera, label)


@dataclass(frozen=True, kw_only=True)
class FrameSelection:
    """Which frames of a recording make a map: a frame is kept when every given rule says so.
    ``every``: one of N images; ``every_seconds``: at least this long after the last kept frame
    (header stamps); ``min_change``: the mean absolute difference of 64x48 grey thumbnails to the
    last kept frame, as a fraction of 255 (a robot standing still adds nothing)."""

    every: int = 1
    every_seconds: float = 0.0
    min_change: float = 0.0

    def __post_init__(self) -> None:
        if self.every < 1 or self.every_seconds < 0 or not 0 <= self.min_change <= 1:
            raise ValueError(f"frame selection out of range: every >= 1, every_seconds >= 0, 0 <= min_change <= 1; "
                             f"got {self.every}, {self.every_seconds}, {self.min_change}")


def _thumbnail(image: np.ndarray) -> np.ndarray:
    import cv2

    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (64, 48), interpolation=cv2.INTER_AREA).astype(np.float32)


def select_frames(frames: Iterator[BagFrame], selection: FrameSelection) -> Iterator[BagFrame]:
    """The frames ``selection`` keeps, in order (the first is always kept)."""
    last_stamp, last_thumb = None, None
    for index, frame in enumerate(frames):
        if index % selection.every:
            continue
        if last_stamp is not None and (frame.stamp_ns - last_stamp) < selection.every_seconds * 1e9:
            continue
        thumb = _thumbnail(frame.image) if selection.min_change > 0 else None
        if last_thumb is not None and float(np.abs(thumb - last_thumb).mean()) / 255 < selection.min_change:
            continue
        last_stamp, last_thumb = frame.stamp_ns, thumb
        yield frame


def write_bag_images(path: Path | str, image_topic: str, out: Path, camera_info_topic: str | None = None,
                     selection: FrameSelection = FrameSelection()) -> dict[str, pycolmap.Camera | None]:
    """Write the selected frames of ``image_topic`` as image files into the new folder ``out`` (a
    CompressedImage's bytes as recorded, a raw Image as PNG) and return each file's camera from
    the CameraInfo topic (None without one). The folder appears complete or not at all; a folder
    written before from the same recording and options is reused, any other is refused."""
    import json

    import cv2

    path = Path(path)
    record = dict(bag=str(path.resolve()), size=_recording_size(path), image_topic=image_topic,
                  camera_info_topic=camera_info_topic, every=selection.every, every_seconds=selection.every_seconds,
                  min_change=selection.min_change)
    done = out / ".vloc-bag.json"
    if out.exists():
        if done.is_file() and json.loads(done.read_text()).get("record") == record:
            logger.info("%s: frames of %s written before with these options; reused", out, path)
            return {name: _camera_from_dict(c) for name, c in json.loads(done.read_text())["cameras"].items()}
        raise ValueError(f"{out}: exists and does not hold this recording's frames (from `--bag` with these options); "
                         "name a new folder for --images")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    cameras: dict[str, pycolmap.Camera | None] = {}
    for frame in select_frames(iter_bag_frames(path, image_topic, camera_info_topic), selection):
        if frame.compressed is not None and frame.compressed[0].split(";")[0].strip().lower() in ("jpeg", "jpg", "png"):
            suffix = ".png" if "png" in frame.compressed[0].lower() else ".jpg"
            (partial / (frame.name + suffix)).write_bytes(frame.compressed[1])
            name = frame.name + suffix
        else:
            name = frame.name + ".png"
            image = frame.image if frame.image.ndim == 2 else cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(partial / name), image):
                raise OSError(f"{partial / name}: cannot write the frame")
        cameras[name] = frame.camera
    if not cameras:
        raise ValueError(f"{path}: no frame of {image_topic} was selected")
    (partial / done.name).write_text(json.dumps(dict(record=record, cameras={
        n: None if c is None else dict(model=c.model.name, width=c.width, height=c.height,
                                       params=[float(v) for v in c.params]) for n, c in cameras.items()})))
    partial.rename(out)
    return cameras


def _recording_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _camera_from_dict(d: dict | None) -> pycolmap.Camera | None:
    from vloc.io.cameras import camera_from_fields

    return None if d is None else camera_from_fields(d["model"], d["width"], d["height"], d["params"], "CameraInfo")
