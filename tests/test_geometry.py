"""Synthetic geometry with exact answers: verification, absolute pose, matching, whitening."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from vloc.config import FeatureConf, MatcherConf, PoseConf, VerifyConf
from vloc.features import make_extractor
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


def _permuted_pair(rng, n=500, noise=0.02):
    d0 = rng.normal(size=(n, 128)).astype(np.float32)
    d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
    perm = rng.permutation(n)
    d1 = d0[perm] + rng.normal(scale=noise, size=(n, 128)).astype(np.float32)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    return d0, d1, perm


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_mutual_nn_matcher_recovers_permutation_and_handles_empty(precision):
    d0, d1, perm = _permuted_pair(np.random.default_rng(3))
    matcher = make_matcher(MatcherConf(precision=precision))
    m = matcher.match_descriptors(d0, d1)
    assert len(m) >= 495
    assert np.all(perm[m[:, 1]] == m[:, 0])  # precision 100%
    assert matcher.match_descriptors(d0[:0], d1).shape == (0, 2)
    assert matcher.match_descriptors(d0, d1[:0]).shape == (0, 2)
    assert matcher.match_descriptors(d0[:1], d1[:1]).shape[1] == 2
    with pytest.raises(ValueError, match="valid: lightglue, mnn"):
        make_matcher(MatcherConf(name="nope"))
    with pytest.raises(ValueError, match="valid: auto, float32, bfloat16"):
        make_matcher(MatcherConf(precision="fp8"))


def test_bfloat16_matches_are_the_float32_ones():
    """Half of the map descriptors have a near twin, so the ratio test removes some matches: bfloat16
    similarities rank the candidates, float32 distances decide, and at most 1 % of matches differ."""
    rng = np.random.default_rng(4)
    d0, d1, _ = _permuted_pair(rng, n=2000, noise=0.04)
    d1 = np.concatenate([d1, d1[:1000] + rng.normal(scale=0.03, size=(1000, 128))])
    d1 = (d1 / np.linalg.norm(d1, axis=1, keepdims=True)).astype(np.float32)
    exact = {tuple(m) for m in make_matcher(MatcherConf(precision="float32")).match_descriptors(d0, d1)}
    fast = {tuple(m) for m in make_matcher(MatcherConf(precision="bfloat16")).match_descriptors(d0, d1)}
    assert 1000 < len(exact) < 1900  # the ratio test's boundary is exercised
    assert len(exact ^ fast) <= 0.01 * len(exact), (len(exact), len(fast), len(exact & fast))
    assert len({j for _, j in fast}) == len(fast)  # one-to-one, also where rounding ties a column


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_matching_by_blocks_of_rows_equals_the_whole_matrix(precision):
    """2,000 query rows in blocks of 256 (the last one short) give exactly the matches of one block."""
    rng = np.random.default_rng(5)
    d0, d1, _ = _permuted_pair(rng, n=2000, noise=0.04)
    d1 = np.concatenate([d1, d1[:700] + rng.normal(scale=0.03, size=(700, 128))])
    d1 = (d1 / np.linalg.norm(d1, axis=1, keepdims=True)).astype(np.float32)
    blocked = make_matcher(MatcherConf(precision=precision))
    whole = make_matcher(MatcherConf(precision=precision))
    whole.block_rows = len(d0)
    assert blocked.block_rows < len(d0) and len(d0) % blocked.block_rows
    np.testing.assert_array_equal(blocked.match_descriptors(d0, d1), whole.match_descriptors(d0, d1))


@pytest.mark.parametrize("upsample", [True, False])
def test_sift_keypoints_lie_on_blobs_at_known_positions(upsample):
    """COLMAP's convention (top-left pixel centre at (0.5, 0.5)), unbiased with and without OpenCV's
    doubled first octave (before the correction: +0.25 px and +0.5 px in x and y)."""
    height, width, sigma = 480, 640, 3.0
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    rng = np.random.default_rng(1)
    centres = np.array([(cx + rng.uniform(-3, 3), cy + rng.uniform(-3, 3))
                        for cy in range(40, height - 40, 50) for cx in range(40, width - 40, 50)])
    image = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in centres)
    image = (255 * image / image.max()).astype(np.uint8)
    kps = make_extractor(FeatureConf(upsample=upsample))(image).keypoints
    offset = kps - centres[np.linalg.norm(kps[:, None] - centres[None], axis=2).argmin(1)]
    near = np.linalg.norm(offset, axis=1) < 1.5
    assert near.sum() >= len(centres)
    np.testing.assert_allclose(np.median(offset[near], axis=0), 0, atol=0.05)
