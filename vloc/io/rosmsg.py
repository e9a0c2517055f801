"""ROS message conversion without ROS, one module for every reader and writer: the ROS 2 node
(``scripts/ros2_localizer_node.py``), the bag reader (:mod:`vloc.io.bags`) and the MCAP writer
(:mod:`vloc.io.mcap_writer`) take or fill messages that have these fields, from rclpy or ``rosbags``.

In: ``sensor_msgs/Image`` (every encoding below) and ``CompressedImage`` (JPEG, PNG) to arrays,
``CameraInfo`` to a COLMAP camera. Out: a localized pose as ROS fields (the camera in the map
frame, quaternion x, y, z, w; the 6x6 covariance in ROS order: x, y, z, then rotation about x, y, z).
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import pycolmap

from vloc.io.cameras import camera_from_fields
from vloc.io.poses import world_pose_covariance

# encoding -> (channels, dtype, OpenCV conversion to RGB or None, order of the colour channels)
_PLAIN = {
    "mono8": (1, np.uint8, None), "8UC1": (1, np.uint8, None),
    "mono16": (1, np.uint16, None), "16UC1": (1, np.uint16, None),
    "rgb8": (3, np.uint8, "rgb"), "bgr8": (3, np.uint8, "bgr"), "8UC3": (3, np.uint8, "bgr"),
    "rgba8": (4, np.uint8, "rgb"), "bgra8": (4, np.uint8, "bgr"), "8UC4": (4, np.uint8, "bgr"),
    "rgb16": (3, np.uint16, "rgb"), "bgr16": (3, np.uint16, "bgr"), "16UC3": (3, np.uint16, "bgr"),
    "rgba16": (4, np.uint16, "rgb"), "bgra16": (4, np.uint16, "bgr"), "16UC4": (4, np.uint16, "bgr"),
}
# OpenCV names Bayer patterns by the second row's first two pixels: ROS rggb = OpenCV BayerBG.
_BAYER_CV = {"bayer_rggb8": "COLOR_BayerBG2RGB", "bayer_bggr8": "COLOR_BayerRG2RGB",
             "bayer_gbrg8": "COLOR_BayerGR2RGB", "bayer_grbg8": "COLOR_BayerGB2RGB"}
_YUV = {"yuv422": "COLOR_YUV2RGB_UYVY", "uyvy": "COLOR_YUV2RGB_UYVY", "yuv422_yuy2": "COLOR_YUV2RGB_YUY2",
        "yuyv": "COLOR_YUV2RGB_YUY2"}
ENCODINGS = tuple(_PLAIN) + tuple(_BAYER_CV) + tuple(_YUV)


def _rows(data: bytes, height: int, step: int, row_bytes: int, encoding: str) -> np.ndarray:
    buf = np.frombuffer(bytes(data), np.uint8)
    if step < row_bytes or len(buf) < step * (height - 1) + row_bytes:
        raise ValueError(f"{encoding} image {height} rows: step {step} and {len(buf)} bytes are too few for "
                         f"{row_bytes} bytes per row")
    if len(buf) < step * height:
        buf = np.concatenate([buf, np.zeros(step * height - len(buf), np.uint8)])  # the last row's padding
    return buf[: step * height].reshape(height, step)[:, :row_bytes]


def decode_image(encoding: str, height: int, width: int, step: int, data: bytes,
                 is_bigendian: bool = False) -> np.ndarray:
    """A ``sensor_msgs/Image``'s fields -> ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 (16-bit
    values scaled to 8 bits, alpha dropped, Bayer and YUV 4:2:2 converted).

    Raises:
        ValueError: an encoding this cannot decode (the message lists those it can), or a data
            size that does not fit the stated height, width and step.
    """
    import cv2

    if encoding in _PLAIN:
        channels, dtype, order = _PLAIN[encoding]
        size = np.dtype(dtype).itemsize
        rows = _rows(data, height, step, width * channels * size, encoding)
        pixels = rows.copy().view(np.dtype(dtype).newbyteorder(">" if is_bigendian else "<"))
        pixels = pixels.reshape(height, width, channels).astype(dtype)
        if dtype == np.uint16:
            pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255, not clipped
        if order is None:
            return np.ascontiguousarray(pixels[..., 0])
        rgb = pixels[..., :3]
        return np.ascontiguousarray(rgb[..., ::-1] if order == "bgr" else rgb)
    if encoding in _BAYER_CV:
        rows = _rows(data, height, step, width, encoding)
        return cv2.cvtColor(np.ascontiguousarray(rows), getattr(cv2, _BAYER_CV[encoding]))
    if encoding in _YUV:
        rows = _rows(data, height, step, width * 2, encoding)
        return cv2.cvtColor(np.ascontiguousarray(rows).reshape(height, width, 2), getattr(cv2, _YUV[encoding]))
    raise ValueError(f"image encoding {encoding!r} is not supported; supported: {', '.join(ENCODINGS)} "
                     "(with cv_bridge installed, whatever it converts to rgb8)")


def image_from_msg(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/Image`` -> uint8 grey or RGB: through ``cv_bridge`` when it is installed,
    else :func:`decode_image`."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
    if msg.encoding in ("mono8", "8UC1"):
        return CvBridge().imgmsg_to_cv2(msg, desired_encoding="mono8")
    return CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8")


def camera_from_info(width: int, height: int, k: list[float], d: list[float], distortion_model: str) -> pycolmap.Camera:
    """``sensor_msgs/CameraInfo`` (K row-major 3x3, D, distortion model) -> a COLMAP camera."""
    fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
    if fx <= 0 or fy <= 0:
        raise ValueError(f"CameraInfo without a calibration (K = {list(k)}): give --camera instead")
    d = [float(v) for v in d]
    where = "CameraInfo"
    if not any(d):
        return camera_from_fields("PINHOLE", width, height, [fx, fy, cx, cy], where)
    if distortion_model in ("plumb_bob", "rational_polynomial"):
        k1, k2, p1, p2, k3, *rest = d + [0.0] * (8 - len(d))
        if not k3 and not any(rest):
            return camera_from_fields("OPENCV", width, height, [fx, fy, cx, cy, k1, k2, p1, p2], where)
        return camera_from_fields("FULL_OPENCV", width, height, [fx, fy, cx, cy, k1, k2, p1, p2, k3, *rest[:3]],
                                  where)
    if distortion_model == "equidistant":
        return camera_from_fields("OPENCV_FISHEYE", width, height, [fx, fy, cx, cy, *(d + [0.0] * 4)[:4]], where)
    raise ValueError(f"CameraInfo distortion model {distortion_model!r} is not supported (plumb_bob, "
                     "rational_polynomial, equidistant)")


def image_from_compressed(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (JPEG or PNG; ``format`` as image_transport writes it) ->
    ``(H, W, 3)`` RGB uint8, decoded by :func:`vloc.io.images.read_image` as image files are (so a
    recorded frame and the same file give the same pixels).

    Raises:
        vloc.io.images.ImageReadError: (a ValueError) the data does not decode; the message names it.
    """
    from vloc.io.images import read_image

    data = bytes(msg.data)
    return read_image(io.BytesIO(data), name=f"CompressedImage ({msg.format or 'no format'}, {len(data)} bytes)")


def map_from_camera(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """A localized result's camera in the map frame: ``(position (3,), quaternion x, y, z, w (4,))``
    (pycolmap and ROS share the quaternion order)."""
    world_from_cam = result.cam_from_world.inverse()
    return np.asarray(world_from_cam.translation, float), np.asarray(world_from_cam.rotation.quat, float)


def pose_covariance(result: Any) -> np.ndarray:
    """``(36,)`` row-major covariance of the camera's pose in the map frame, in ROS order; zeros when
    the result has none."""
    if result.covariance is None:
        return np.zeros(36)
    return world_pose_covariance(result.cam_from_world, result.covariance).ravel()


def fill_pose_with_covariance(msg: Any, result: Any, stamp: Any, frame_id: str = "map") -> Any:
    """Set a ``geometry_msgs/PoseWithCovarianceStamped``'s fields from a localized result."""
    position, quat = map_from_camera(result)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = map(float, position)
    o.x, o.y, o.z, o.w = map(float, quat)
    msg.pose.covariance = [float(v) for v in pose_covariance(result)]
    return msg


def fill_transform(msg: Any, result: Any, stamp: Any, frame_id: str = "map", child_frame_id: str = "camera") -> Any:
    """Set a ``geometry_msgs/TransformStamped`` (map -> camera) from a localized result."""
    position, quat = map_from_camera(result)
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, frame_id, child_frame_id
    t, r = msg.transform.translation, msg.transform.rotation
    t.x, t.y, t.z = map(float, position)
    r.x, r.y, r.z, r.w = map(float, quat)
    return msg
