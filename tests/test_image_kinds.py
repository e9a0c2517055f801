"""Images that are hard to read (issue 13): 16-bit grey and colour PNG/TIFF, palette, grey + alpha,
RGBA and CMYK, made from a real kitti frame; each is read as the 8-bit original and localizes as
it does. EXIF orientation is not applied, with a warning."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vloc.evaluation.metrics import pose_error
from vloc.io.cameras import read_queries
from vloc.io.images import ImageReadError, read_image
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer


def _grey16(grey: np.ndarray) -> np.ndarray:
    return grey.astype(np.uint16) * 257  # what a Mono16 camera writes for the same scene


def _write(kind: str, grey: np.ndarray, path: Path) -> None:
    """The 8-bit grey frame ``grey`` saved as ``kind``; every kind decodes back to ``grey`` exactly."""
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    if kind == "grey16-png":
        cv2.imwrite(str(path), _grey16(grey))
    elif kind == "grey16-tiff":
        cv2.imwrite(str(path), _grey16(grey))
    elif kind == "rgb16-png" or kind == "rgb16-tiff":
        cv2.imwrite(str(path), _grey16(rgb))
    elif kind == "palette":
        Image.fromarray(grey).convert("P").save(path)  # 256 greys: the palette holds them all
    elif kind == "grey-alpha":
        Image.fromarray(np.dstack([grey, np.full_like(grey, 200)]), "LA").save(path)
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, np.full_like(grey, 90)]), "RGBA").save(path)
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path)
    else:
        raise ValueError(kind)


KINDS = {"grey16-png": "png", "grey16-tiff": "tif", "rgb16-png": "png", "rgb16-tiff": "tif", "palette": "png",
         "grey-alpha": "png", "rgba": "png", "cmyk": "tif"}


@pytest.fixture(scope="module")
def kitti_localizer(kitti_map) -> Localizer:
    return Localizer.load(kitti_map)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_of_image_reads_as_8_bits_and_localizes(kind, kitti, kitti_localizer, tmp_path):
    query = read_queries(kitti.queries)[0]
    original = read_image(kitti.images / query.name, grayscale=True)
    path = tmp_path / f"{Path(query.name).stem}.{KINDS[kind]}"
    _write(kind, original, path)
    if "16" in kind:  # the file really is of that kind
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    else:
        with Image.open(path) as im:
            assert im.mode == {"palette": "P", "grey-alpha": "LA", "rgba": "RGBA", "cmyk": "CMYK"}[kind]
    np.testing.assert_array_equal(read_image(path, grayscale=True), original)
    assert read_image(path).shape == (*original.shape, 3)

    truth = read_poses(kitti.gt)[query.name]
    plain = kitti_localizer.localize(kitti.images / query.name, query.camera)
    converted = kitti_localizer.localize(path, query.camera, name=query.name)
    assert plain.success and converted.success, converted.reason
    dt, dr = pose_error(converted.cam_from_world, truth)
    assert dt < 0.05 and dr < 0.5, (dt, dr)
    assert abs(converted.num_inliers - plain.num_inliers) <= 0.05 * plain.num_inliers


def test_16_bit_scaling_is_not_clipping(tmp_path):
    values = np.array([[0, 257, 32896, 65535, 1000, 64000]], np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), values)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png", grayscale=True), [[0, 1, 128, 255, 4, 249]])
    Image.fromarray(np.zeros((4, 4), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=r"f\.tif: floating-point image"):
        read_image(tmp_path / "f.tif")


def test_a_map_of_16_bit_images_localizes(kitti, tmp_path):
    """Map images written by a Mono16 camera: the map has their keypoints (not empty images)."""
    from vloc.config import get_preset
    from vloc.mapping.build import build_map

    images = tmp_path / "images"
    images.mkdir()
    for src in sorted(kitti.images.iterdir()):
        cv2.imwrite(str(images / src.name), _grey16(read_image(src, grayscale=True)))
    build_map(images, tmp_path / "map", get_preset("sift"), reference=kitti.ref_model)
    localizer = Localizer.load(tmp_path / "map")
    truth = read_poses(kitti.gt)
    errors = []
    for q in read_queries(kitti.queries):
        res = localizer.localize(images / q.name, q.camera)
        assert res.success, (q.name, res.reason)
        errors.append(pose_error(res.cam_from_world, truth[q.name])[0])
    assert np.median(errors) < 0.03, errors


def test_exif_orientation_is_not_applied_and_warned(tmp_path, caplog):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    Image.fromarray(pixels).save(tmp_path / "plain.jpg", quality=95)
    with caplog.at_level(logging.WARNING, logger="vloc.io.images"):
        read = read_image(tmp_path / "phone.jpg")
        read_image(tmp_path / "plain.jpg")
    assert read.shape == (40, 60, 3)  # as stored, not rotated to 60 x 40
    np.testing.assert_allclose(read.astype(float), read_image(tmp_path / "plain.jpg").astype(float), atol=0)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "phone.jpg: EXIF orientation 6" in warned[0] and "not applied" in warned[0]
