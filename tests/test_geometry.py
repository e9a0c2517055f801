"""Synthetic geometry with exact answers: verification, absolute pose, matching, whitening."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from vloc.config import MatcherConf, PoseConf, VerifyConf
from vloc.io.cameras import camera_from_fields
from vloc.localization.pose import estimate_absolute_pose
from vloc.matching import make_matcher
from vloc.matching.verify import verify_known_poses
from vloc.retrieval.index import Whitening, build_index, search
from vloc.retrieval.pairs import select_pairs


def look_pose(rng, centre) -> pycolmap.Rigid3d:
    """A camera at ``centre`` looking roughly toward the origin, with small random roll."""
    z = -np.asarray(centre, float)
    z /= np.linalg.norm(z)
    x = np.cross([0, 1, 0], z) + rng.normal(scale=0.01, size=3)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])  # rows: camera axes in world
    return pycolmap.Rigid3d(pycolmap.Rotation3d(r), -r @ centre)


def scene(rng, n=400):
    points = rng.uniform(-1, 1, size=(n, 3))
    camera = camera_from_fields("SIMPLE_RADIAL", 640, 480, [500, 320, 240, 0.02], "test")
    return points, camera


def project(camera, pose, points):
    return camera.img_from_cam(np.asarray([pose * p for p in points]))


def test_verify_known_poses_keeps_true_matches_and_rejects_outliers():
    rng = np.random.default_rng(0)
    points, camera = scene(rng)
    p1, p2 = look_pose(rng, np.array([0.5, 0, -4.0])), look_pose(rng, np.array([-0.5, 0.2, -4.0]))
    kp1, kp2 = project(camera, p1, points), project(camera, p2, points)
    true = np.stack([np.arange(300), np.arange(300)], 1)
    wrong = np.stack([np.arange(300, 400), rng.permutation(np.arange(300, 400))], 1)
    matches = np.concatenate([true, wrong])
    geometry = verify_known_poses(kp1, kp2, matches, camera, camera, p1, p2, VerifyConf(max_error_px=2.0))
    kept = {tuple(m) for m in np.asarray(geometry.inlier_matches)}
    np.testing.assert_allclose(geometry.cam2_from_cam1.matrix(), (p2 * p1.inverse()).matrix(), atol=1e-12)
    assert all(tuple(m) in kept for m in true)  # no true match lost
    assert sum(tuple(m) in kept for m in wrong) <= 5  # random pairs rarely lie on the epipolar line
    empty = verify_known_poses(kp1, kp2, matches[:0], camera, camera, p1, p2, VerifyConf())
    assert len(np.asarray(empty.inlier_matches).reshape(-1, 2)) == 0


def test_absolute_pose_exact_with_known_and_unknown_focal():
    rng = np.random.default_rng(1)
    points, camera = scene(rng)
    pose = look_pose(rng, np.array([0.3, -0.2, -3.5]))
    xy = project(camera, pose, points)
    xy[:60] = rng.uniform([0, 0], [640, 480], size=(60, 2))  # 15% outliers
    est = estimate_absolute_pose(xy, points, camera, PoseConf(), focal_known=True)
    assert est.num_inliers >= 340
    np.testing.assert_allclose(est.cam_from_world.matrix(), pose.matrix(), atol=1e-6)
    assert est.covariance is None or est.covariance.shape == (6, 6)
    guess = camera_from_fields("SIMPLE_RADIAL", 640, 480, [768, 320, 240, 0.02], "test")
    est = estimate_absolute_pose(xy, points, guess, PoseConf(), focal_known=False)
    assert est.camera.params[0] == pytest.approx(500, rel=1e-3)
    np.testing.assert_allclose(est.cam_from_world.matrix(), pose.matrix(), atol=1e-4)


def test_absolute_pose_reports_none_on_garbage():
    rng = np.random.default_rng(2)
    _, camera = scene(rng)
    est = estimate_absolute_pose(rng.uniform(0, 480, (50, 2)), rng.normal(size=(50, 3)), camera,
                                 PoseConf(), focal_known=True)
    assert est is None or est.num_inliers < PoseConf().min_inliers


def test_mutual_nn_matcher_recovers_permutation_and_handles_empty():
    rng = np.random.default_rng(3)
    d0 = rng.normal(size=(500, 128)).astype(np.float32)
    d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
    perm = rng.permutation(500)
    d1 = d0[perm] + rng.normal(scale=0.02, size=(500, 128)).astype(np.float32)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    matcher = make_matcher(MatcherConf())
    m = matcher.match_descriptors(d0, d1)
    assert len(m) >= 495
    assert np.all(perm[m[:, 1]] == m[:, 0])  # precision 100%
    assert matcher.match_descriptors(d0[:0], d1).shape == (0, 2)
    assert matcher.match_descriptors(d0, d1[:0]).shape == (0, 2)
    assert matcher.match_descriptors(d0[:1], d1[:1]).shape[1] == 2
    with pytest.raises(ValueError, match="valid: lightglue, mnn"):
        make_matcher(MatcherConf(name="nope"))


def test_whitening_index_and_pairs():
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(20, 64)).astype(np.float32)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    w = Whitening.learn(raw, dim=256)
    out = w(raw)
    assert out.shape == (20, 19)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    index = build_index(out)
    _, ids = search(index, out[3], k=50)
    assert ids.shape == (1, 20) and ids[0, 0] == 3
    pairs = select_pairs(out, num_retrieved=2, num_sequential=1)
    assert all(i < j for i, j in pairs) and (0, 1) in pairs
    assert select_pairs(out[:1], 5) == []


def test_sift_on_real_and_blank_images(kitti):
    from vloc.config import FeatureConf
    from vloc.features import make_extractor
    from vloc.io.images import read_image

    extractor = make_extractor(FeatureConf(max_keypoints=1000))
    image = read_image(kitti.images / "000100.png")
    feats = extractor(image)
    h, w = image.shape[:2]
    assert len(feats) == 1000 and feats.image_size == (w, h)
    assert np.all((feats.keypoints >= 0) & (feats.keypoints <= [w, h]))
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1, atol=1e-5)
    small = make_extractor(FeatureConf(max_keypoints=1000, resize_max=620))(image)  # keypoints back in full-size pixels
    assert small.keypoints[:, 0].max() > 0.9 * w
    blank = extractor(np.full((480, 640), 128, np.uint8))
    assert len(blank) == 0 and blank.keypoints.shape == (0, 2) and blank.descriptors.shape == (0, 128)
    with pytest.raises(ValueError, match="valid: .*sift"):
        make_extractor(FeatureConf(name="orb"))
