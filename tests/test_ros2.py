"""The ROS 2 node's decoding and message building, without ROS: every sensor_msgs/Image encoding
against a known image, CameraInfo intrinsics, and the pose, covariance and TF contents."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pycolmap
import pytest

from vloc.io.poses import world_pose_covariance
from vloc.localization.result import LocalizationResult
from vloc.io.rosmsg import camera_from_info, decode_image, fill_pose_with_covariance, fill_transform

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
GREY = RGB[..., 1].copy()


def pack(pixels: np.ndarray, pad: int = 3, bigendian: bool = False) -> tuple[bytes, int]:
    """Rows with ``pad`` bytes of padding each (step > width * channels * size)."""
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 7, np.uint8)], axis=1)
    return padded.tobytes(), padded.shape[1]


def to16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.uint16) * 257  # 255 -> 65535: scaling back gives x exactly


PLAIN = [
    ("mono8", GREY, GREY), ("8UC1", GREY, GREY), ("mono16", to16(GREY), GREY), ("16UC1", to16(GREY), GREY),
    ("rgb8", RGB, RGB), ("bgr8", RGB[..., ::-1], RGB), ("8UC3", RGB[..., ::-1], RGB),
    ("rgba8", np.dstack([RGB, GREY]), RGB), ("bgra8", np.dstack([RGB[..., ::-1], GREY]), RGB),
    ("8UC4", np.dstack([RGB[..., ::-1], GREY]), RGB),
    ("rgb16", to16(RGB), RGB), ("bgr16", to16(RGB[..., ::-1]), RGB), ("rgba16", to16(np.dstack([RGB, GREY])), RGB),
    ("bgra16", to16(np.dstack([RGB[..., ::-1], GREY])), RGB),
]
CASES = [(*c, False) for c in PLAIN] + [(*c, True) for c in PLAIN if c[1].dtype == np.uint16]  # byte order: 16 bit


@pytest.mark.parametrize("encoding, pixels, expected, bigendian", CASES)
def test_every_plain_encoding_decodes_to_the_same_image(encoding, pixels, expected, bigendian):
    data, step = pack(np.ascontiguousarray(pixels), bigendian=bigendian)
    out = decode_image(encoding, 6, 10, step, data, bigendian)
    assert out.dtype == np.uint8 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("encoding, pattern", [("bayer_rggb8", "RGGB"), ("bayer_bggr8", "BGGR"),
                                               ("bayer_gbrg8", "GBRG"), ("bayer_grbg8", "GRBG")])
def test_bayer_mosaics_give_the_colour_they_sampled(encoding, pattern):
    colour = {"R": 200, "G": 100, "B": 40}
    mosaic = np.zeros((8, 8), np.uint8)
    for k, c in enumerate(pattern):  # 2x2 tiles, row-major
        mosaic[k // 2::2, k % 2::2] = colour[c]
    out = decode_image(encoding, 8, 8, 8, mosaic.tobytes())
    np.testing.assert_allclose(out[2:-2, 2:-2].reshape(-1, 3).mean(0), [200, 100, 40], atol=2)


def test_yuv422_and_unknown_encodings():
    y = GREY.astype(np.uint8)
    u = np.full_like(y, 110)
    v = np.full_like(y, 150)
    uyvy = np.stack([np.where(np.arange(10) % 2 == 0, u, v), y], axis=-1)  # U Y0 V Y1 ...
    yuyv = np.stack([y, np.where(np.arange(10) % 2 == 0, u, v)], axis=-1)  # Y0 U Y1 V ...
    a = decode_image("yuv422", 6, 10, 20, uyvy.tobytes())
    b = decode_image("yuv422_yuy2", 6, 10, 20, yuyv.tobytes())
    np.testing.assert_array_equal(a, b)  # the same pixels in either byte order
    assert a.shape == (6, 10, 3) and np.corrcoef(a[..., 1].ravel(), y.ravel())[0, 1] > 0.99  # luma drives green
    assert a[..., 0].mean() > a[..., 2].mean()  # V > 128 (red) and U < 128 (less blue)
    with pytest.raises(ValueError, match="'32FC1' is not supported; supported: mono8"):
        decode_image("32FC1", 6, 10, 40, bytes(240))
    with pytest.raises(ValueError, match="too few"):
        decode_image("rgb8", 6, 10, 30, bytes(100))


def test_camera_info_to_colmap_cameras():
    k = [500.0, 0, 320, 0, 510.0, 240, 0, 0, 1]
    assert camera_from_info(640, 480, k, [0] * 5, "plumb_bob").model == pycolmap.CameraModelId.PINHOLE
    cam = camera_from_info(640, 480, k, [0.1, -0.02, 0.001, 0.002, 0.0], "plumb_bob")
    assert cam.model == pycolmap.CameraModelId.OPENCV
    np.testing.assert_allclose(cam.params, [500, 510, 320, 240, 0.1, -0.02, 0.001, 0.002])
    assert camera_from_info(640, 480, k, [0.1, -0.02, 0.001, 0.002, 0.01], "plumb_bob").model == \
        pycolmap.CameraModelId.FULL_OPENCV
    assert camera_from_info(640, 480, k, [0.1, 0.01, 0, 0], "equidistant").model == pycolmap.CameraModelId.OPENCV_FISHEYE
    with pytest.raises(ValueError, match="without a calibration"):
        camera_from_info(640, 480, [0] * 9, [], "plumb_bob")
    with pytest.raises(ValueError, match="not supported"):
        camera_from_info(640, 480, k, [0.1], "weird")


def _msg(*fields: str) -> SimpleNamespace:
    out = SimpleNamespace()
    for f in fields:
        node = out
        for part in f.split("."):
            if not hasattr(node, part):
                setattr(node, part, SimpleNamespace())
            node = getattr(node, part)
    return out


def test_pose_message_covariance_and_tf():
    q = np.array([0.1, -0.3, 0.2, 0.9])
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(q / np.linalg.norm(q)), np.array([0.5, -1.0, 2.0]))
    A = RNG.normal(size=(6, 6))
    cov = A @ A.T * 1e-4
    result = LocalizationResult("q", True, cam_from_world=pose, covariance=cov)
    msg = fill_pose_with_covariance(_msg("header", "pose.pose.position", "pose.pose.orientation"), result, "t0")
    world_from_cam = pose.inverse()
    p = msg.pose.pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], world_from_cam.translation, atol=1e-12)
    o = msg.pose.pose.orientation
    np.testing.assert_allclose([o.x, o.y, o.z, o.w], world_from_cam.rotation.quat, atol=1e-12)
    assert msg.header.frame_id == "map" and msg.header.stamp == "t0" and len(msg.pose.covariance) == 36
    # the propagated covariance against sampled perturbations of cam_from_world (left, rotation first)
    samples = RNG.multivariate_normal(np.zeros(6), cov, size=20000)
    out = []
    for s in samples:
        rot = pycolmap.Rotation3d(cv2.Rodrigues(s[:3])[0]) * pose.rotation
        perturbed = pycolmap.Rigid3d(rot, pose.translation + s[3:]).inverse()
        dr = cv2.Rodrigues((perturbed.rotation * world_from_cam.rotation.inverse()).matrix())[0].ravel()
        out.append(np.concatenate([perturbed.translation - world_from_cam.translation, dr]))
    expected = world_pose_covariance(pose, cov)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.all(np.abs(np.cov(np.array(out).T) - expected) <= 0.05 * scale)  # sampling error ~1 %
    np.testing.assert_allclose(np.reshape(msg.pose.covariance, (6, 6)), world_pose_covariance(pose, cov))
    tf = fill_transform(_msg("header", "transform.translation", "transform.rotation"), result, "t0",
                        child_frame_id="cam0")
    assert tf.child_frame_id == "cam0" and tf.transform.translation.x == p.x and tf.transform.rotation.w == o.w
