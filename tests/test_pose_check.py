"""Issue 24 item 1: a pose RANSAC accepts but its inliers fit only loosely, that a mirrored pose fits
as well, or that RANSAC on random parts of the matches does not keep finding, is not reported as
localized, nor one that a retrieved image's own matches contradict (``vloc.localization.verify``;
``PoseConf.max_median_residual``, ``max_rival_ratio``, ``stability_runs``, ``max_view_rival_deg``)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pycolmap
import pytest

from vloc.config import get_preset
from vloc.evaluation.metrics import pose_error, thresholds_for
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared, swap_roles
from vloc.io.poses import read_poses, rotation_angle_deg
from vloc.localization.localizer import Localizer
from vloc.localization.models import ModelCache
from vloc.localization.verify import (check_pose, check_stability, check_views, inlier_residuals, mirrored_pose,
                                     pose_spread, view_rivals)
from vloc.mapping.build import build_map

from conftest import prepared

CAMERA = pycolmap.Camera(model="PINHOLE", width=640, height=480, params=[500.0, 500.0, 320.0, 240.0])


def _two_poses(rng: np.random.Generator, each: int, rival: int, degrees: float = 15.0):
    """Matches of which ``each`` are exact (0.5 px noise) under a pose and ``rival`` under another pose
    turned ``degrees`` about the points' centre, plus 15 random ones: (uv, xyz, pose, other)."""
    xyz = rng.uniform([-1, -1, 4], [1, 1, 6], size=(each + rival + 15, 3))
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.zeros(3)), np.zeros(3))
    turn = pycolmap.Rotation3d(np.array([0.0, np.deg2rad(degrees), 0.0]))
    centre = np.array([0.0, 0.0, 5.0])
    other = pycolmap.Rigid3d(turn, centre - turn * centre)  # the camera orbited about the centre
    uv = CAMERA.img_from_cam(pose * xyz)
    uv[each:each + rival] = CAMERA.img_from_cam(other * xyz[each:each + rival])
    uv[each + rival:] = rng.uniform([0, 0], [640, 480], size=(15, 2))
    return uv + rng.normal(0, 0.5, uv.shape), xyz, pose, other


def test_a_pose_the_matches_barely_decide_is_unstable():
    """Two poses 15 deg apart, each exact for about half the matches: RANSAC on random 70 % subsets
    flips between them, and the pose fails as unstable. With the rival's matches few, every subset
    returns the pose and it stands. Drawn alike run after run; off with ``stability_runs = 0``."""
    conf = get_preset("sift").pose
    rng = np.random.default_rng(5)
    uv, xyz, pose, other = _two_poses(rng, 30, 28)
    spread = pose_spread(uv, xyz, pose, CAMERA, conf)
    near_other = np.abs(spread - rotation_angle_deg(other, pose)) < 1.0
    assert np.sum(spread < 3.0) >= 3 and np.sum(near_other) >= 0.3 * conf.stability_runs, spread
    reason = check_stability(uv, xyz, pose, CAMERA, conf)
    assert reason.startswith("unstable pose: RANSAC on ") and "subsets of the 73 matches" in reason, reason
    assert check_stability(uv, xyz, pose, CAMERA, conf) == reason
    assert check_stability(uv, xyz, pose, CAMERA, dataclasses.replace(conf, stability_runs=0)) == ""
    uv, xyz, pose, _ = _two_poses(rng, 50, 8)
    np.testing.assert_array_less(pose_spread(uv, xyz, pose, CAMERA, conf), 3.0)  # unrefined LO-RANSAC poses
    assert check_stability(uv, xyz, pose, CAMERA, conf) == ""


def test_an_image_whose_matches_alone_give_another_pose_makes_it_ambiguous():
    """Matches to two map images: 60 exact under the pose (image "a"), 40 under a pose turned 25 deg
    (image "b", which the pose explains few of; both see the 15 random ones). Image b's own pose is
    the rival, so the pose fails; turned 8 deg (within ``max_view_rival_deg``), with b's matches
    fewer than ``min_inliers``, or with the test off, it stands."""
    conf = get_preset("sift").pose
    rng = np.random.default_rng(3)

    def groups(each: int, rival: int) -> dict[str, np.ndarray]:
        index = np.arange(each + rival + 15)
        return {"a": (index < each) | (index >= each + rival), "b": index >= each}

    uv, xyz, pose, other = _two_poses(rng, 60, 40, degrees=25.0)
    (own_a, _, apart_a), (own_b, fits_b, apart_b) = view_rivals(uv, xyz, list(groups(60, 40).values()), pose,
                                                                  CAMERA, conf)
    assert own_a >= 60 and apart_a < 1.0, (own_a, apart_a)
    assert own_b >= 40 > fits_b and abs(apart_b - rotation_angle_deg(other, pose)) < 1.0, (own_b, fits_b, apart_b)
    reason = check_views(uv, xyz, groups(60, 40), pose, CAMERA, conf)
    assert reason.startswith("ambiguous pose: the 55 matches to map image b alone give a pose 2"), reason
    assert check_views(uv, xyz, groups(60, 40), pose, CAMERA, dataclasses.replace(conf, max_view_rival_deg=0)) == ""
    uv, xyz, pose, _ = _two_poses(rng, 60, 40, degrees=8.0)
    assert check_views(uv, xyz, groups(60, 40), pose, CAMERA, conf) == ""
    uv, xyz, pose, _ = _two_poses(rng, 60, 4, degrees=25.0)
    assert check_views(uv, xyz, groups(60, 4), pose, CAMERA, conf) == ""  # b: 19 matches < min_inliers


def _scene(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, pycolmap.Rigid3d, np.ndarray]:
    """3D points in front of a camera, the camera's pose and the exact projections."""
    xyz = rng.uniform([-1, -1, 4], [1, 1, 6], size=(n, 3))
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.02, -0.1, 0.03])), np.array([0.1, -0.2, 0.3]))
    return xyz, pose, CAMERA.img_from_cam(pose * xyz)


def test_residuals_are_the_inliers_reprojection_errors():
    rng = np.random.default_rng(0)
    xyz, pose, uv = _scene(rng)
    shift = rng.normal(size=uv.shape)
    mask = np.arange(len(xyz)) % 3 > 0
    errors = inlier_residuals(uv + shift, xyz, mask, pose, CAMERA)
    np.testing.assert_allclose(errors, np.linalg.norm(shift[mask], axis=1), rtol=1e-6)
    behind = xyz.copy()
    behind[0, 2] = -5.0  # world z = camera depth here, up to the small pose
    assert np.isinf(inlier_residuals(uv, behind, np.ones(len(xyz), bool), pose, CAMERA)[0])


@pytest.mark.parametrize("preset", ["sift", "accurate", "xfeat", "aliked"])
def test_tight_inliers_pass_and_loose_ones_fail(preset):
    """Keypoint noise of 0.7 px passes under every preset's threshold; inliers spread evenly over
    the RANSAC threshold's disk (what a wrong pose gathers) fail with the reason."""
    conf = get_preset(preset).pose
    rng = np.random.default_rng(1)
    xyz, pose, uv = _scene(rng)
    mask = np.ones(len(xyz), bool)
    assert check_pose(uv + rng.normal(0, 0.7, uv.shape), xyz, mask, pose, CAMERA, conf) == ""
    radius = conf.max_error_px * np.sqrt(rng.uniform(size=len(uv)))  # uniform over the disk
    angle = rng.uniform(0, 2 * np.pi, len(uv))
    loose = uv + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    reason = check_pose(loose, xyz, mask, pose, CAMERA, conf)
    assert reason.startswith("weak support: ") and "median reprojection error" in reason
    off = dataclasses.replace(conf, max_median_residual=0.0)
    assert check_pose(loose, xyz, mask, pose, CAMERA, off) == ""


def _tilted_plane(rng: np.random.Generator, distance: float, noise_px: float):
    """A 10 cm square patch tilted 30 deg, ``distance`` m in front of a narrow camera (temple's
    f = 1520 px at 640 px), and its noisy projections."""
    camera = pycolmap.Camera(model="PINHOLE", width=640, height=480, params=[1520.0, 1520.0, 320.0, 240.0])
    a = np.deg2rad(30.0)
    tilt = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    xyz = np.c_[rng.uniform(-0.05, 0.05, (150, 2)), np.zeros(150)] @ tilt.T
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.zeros(3)), np.array([0.0, 0.0, distance]))
    return camera, xyz, pose, camera.img_from_cam(pose * xyz) + rng.normal(0, noise_px, (150, 2))


def test_a_plane_seen_from_afar_is_ambiguous_and_from_near_it_is_not():
    """Far away (weak perspective) a tilted plane and its mirrored tilt project alike: the mirrored
    pose, 60 deg away, fits as well, so the query fails as ambiguous. Near, perspective tells them
    apart and the pose stands."""
    conf = get_preset("aliked").pose
    rng = np.random.default_rng(3)
    camera, xyz, pose, uv = _tilted_plane(rng, 2.0, 1.0)
    mask = np.ones(len(xyz), bool)
    other = mirrored_pose(uv, xyz, pose, camera)
    assert 50 < rotation_angle_deg(other, pose) < 70
    reason = check_pose(uv, xyz, mask, pose, camera, conf)
    assert reason.startswith("ambiguous pose: a pose "), reason
    assert check_pose(uv, xyz, mask, pose, camera, dataclasses.replace(conf, max_rival_ratio=0.0)) == ""
    camera, xyz, pose, uv = _tilted_plane(rng, 0.6, 0.5)
    assert check_pose(uv, xyz, mask, pose, camera, conf) == ""


@pytest.fixture(scope="module")
def temple():
    return prepared("temple")


def _run(ds, localizer: Localizer, names: list[str] | None = None) -> dict[str, tuple[bool, float, float, str]]:
    """``name -> (localized, translation error, rotation error, reason)`` for every query (or those named)."""
    truth = read_poses(ds.gt)
    out = {}
    for q in read_queries(ds.queries):
        if names is not None and q.name not in names:
            continue
        res = localizer.localize(ds.images / q.name, q.camera)
        dt, dr = pose_error(res.cam_from_world, truth[q.name]) if res.success else (np.inf, np.inf)
        out[q.name] = (res.success, dt, dr, res.reason)
    return out


def test_temple_keeps_sifts_right_poses_and_reports_no_wrong_one(temple, tmp_path):
    """temple (45 deg between map views, weak texture) with sift: the check keeps the two right
    poses (0002, 0010) and no pose beyond (5 %, 5 deg) is reported."""
    build_map(temple.images, tmp_path / "map", get_preset("sift"), reference=temple.ref_model)
    (right, _), (t_max, r_max) = thresholds_for(temple.meta, ((2.0, 2.0), (5.0, 5.0)))[0]
    results = _run(temple, Localizer.load(tmp_path / "map", "sift", ModelCache()))
    wrong = {n: r for n, r in results.items() if r[0] and (r[1] > t_max or r[2] > r_max)}
    assert not wrong, wrong
    good = {n for n, r in results.items() if r[0] and r[1] <= right and r[2] <= 2.0}
    assert good == {"templeSR0002.png", "templeSR0010.png"}, results


def test_temple_xfeat_reports_no_wrong_pose(temple, tmp_path):
    """xfeat on temple: 0010's pose (30 % / 17 deg off, 22 of 39 matches, a tight fit) passes the
    residual and mirror tests; RANSAC on random subsets of its matches keeps leaving it, so it fails
    as unstable and no wrong pose is reported. With the test off the same map reports that pose."""
    build_map(temple.images, tmp_path / "map", get_preset("xfeat"), reference=temple.ref_model)
    (_, _), (t_max, r_max) = thresholds_for(temple.meta, ((2.0, 2.0), (5.0, 5.0)))[0]
    localizer = Localizer.load(tmp_path / "map", "xfeat", ModelCache())
    results = _run(temple, localizer)
    assert not {n: r for n, r in results.items() if r[0] and (r[1] > t_max or r[2] > r_max)}, results
    assert results["templeSR0010.png"][3].startswith("unstable pose: "), results["templeSR0010.png"]
    localizer.layer.preset = dataclasses.replace(
        localizer.layer.preset, pose=dataclasses.replace(localizer.layer.preset.pose, stability_runs=0))
    before = _run(temple, localizer)["templeSR0010.png"]
    assert before[0] and (before[1] > t_max or before[2] > r_max), before


def test_temple_swapped_disk_reports_no_wrong_pose(temple, tmp_path):
    """DISK on temple's swapped split placed 0001 and 0011 (one view twice) at their neighbour
    templeSR0010's pose (38 % / 23 deg off) and 0013 across the temple (220 % / 163 deg): tight,
    stable poses. The top-ranked image's matches (0002 for 0001) alone give a pose 23 deg away, so
    they fail as ambiguous; a right pose (0007) stays; with the test off the same map reports them."""
    swapped = swap_roles(temple, tmp_path / "swapped")
    build_map(swapped.images, tmp_path / "map", get_preset("disk"), reference=swapped.ref_model)
    (right, _), (t_max, r_max) = thresholds_for(swapped.meta, ((2.0, 2.0), (5.0, 5.0)))[0]
    localizer = Localizer.load(tmp_path / "map", "disk", ModelCache())
    names = ["templeSR0001.png", "templeSR0013.png", "templeSR0007.png"]
    results = _run(swapped, localizer, names)
    assert results["templeSR0001.png"][3].startswith("ambiguous pose: the "), results
    assert "map image templeSR0002.png alone" in results["templeSR0001.png"][3], results
    assert not results["templeSR0013.png"][0], results
    assert results["templeSR0007.png"][0] and results["templeSR0007.png"][1] <= right, results
    localizer.layer.preset = dataclasses.replace(
        localizer.layer.preset, pose=dataclasses.replace(localizer.layer.preset.pose, max_view_rival_deg=0.0))
    before = _run(swapped, localizer, names[:2])
    assert all(r[0] and (r[1] > t_max or r[2] > r_max) for r in before.values()), before
