"""Retrieval evaluation (Revisited Oxford/Paris mAP, recall@k, covisibility), RANSAC re-ranking and
``vloc retrieve``."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pycolmap
import pytest

from vloc.cli import main
from vloc.config import RerankConf, get_preset
from vloc.evaluation.retrieval import (
    average_precision,
    covisible_images,
    evaluate_revisited,
    mean_average_precision,
    positive_ranks,
    read_revisited_gnd,
    recall_at_k,
    shared_point_counts,
    visible_points,
)
from vloc.features import make_extractor
from vloc.io.cameras import read_queries
from vloc.io.images import read_image
from vloc.io.poses import read_poses
from vloc.mapping.map_dir import load_map
from vloc.matching import make_matcher
from vloc.retrieval.rerank import Candidate, count_inliers, rerank

# ----------------------------------------------------------------------------- AP and mAP


def test_average_precision_hand_computed():
    # positives at 0 and 2 of 2: (1 + 1) + (1/2 + 2/3), over 2 * 2
    assert average_precision(np.array([0, 2]), 2) == pytest.approx(19 / 24, abs=1e-12)
    # one of two positives retrieved, at rank 1: (0/1 + 1/2) / 4
    assert average_precision(np.array([1]), 2) == pytest.approx(0.125, abs=1e-12)
    assert average_precision(np.array([0, 1, 2]), 3) == pytest.approx(1.0, abs=1e-12)
    assert average_precision(np.array([], dtype=np.int64), 3) == 0.0
    with pytest.raises(ValueError, match="num_positives"):
        average_precision(np.array([0]), 0)


def test_junk_is_removed_before_ranking():
    ranks = positive_ranks(np.array([5, 3, 7, 1, 9]), positives={3, 9}, junk={5})
    np.testing.assert_array_equal(ranks, [0, 3])
    # (1 + 1) + (1/3 + 2/4), over 2 * 2
    assert average_precision(ranks, 2) == pytest.approx((2 + 1 / 3 + 1 / 2) / 4, abs=1e-12)


def _synthetic_gnd() -> dict:
    return dict(imlist=[f"db{i}" for i in range(6)], qimlist=["q0", "q1"],
                gnd=[dict(easy=[0], hard=[1], junk=[2], bbx=[0, 0, 10, 10]),
                     dict(easy=[4, 5], hard=[], junk=[3], bbx=[0, 0, 10, 10])])


RANKINGS = np.array([[2, 1, 3, 0, 4, 5], [4, 0, 1, 2, 3, 5]])


def test_revisited_protocols_from_a_pickle(tmp_path):
    path = tmp_path / "gnd_rtest.pkl"
    with open(path, "wb") as f:
        pickle.dump(_synthetic_gnd(), f)
    results = evaluate_revisited(RANKINGS, path, kappas=(1, 5))
    # q0 easy: positives {0}, junk {1, 2} -> [3, 0, 4, 5], rank 1 -> 0.25
    # q1 easy = medium: positives {4, 5}, junk {3} -> [4, 0, 1, 2, 5], ranks 0, 4 -> (2 + 1/4 + 2/5) / 4
    q1 = (2 + 0.25 + 0.4) / 4
    np.testing.assert_allclose(results["easy"].aps, [0.25, q1], atol=1e-12)
    assert results["easy"].mean_ap == pytest.approx((0.25 + q1) / 2, abs=1e-12)
    # q0 medium: positives {0, 1}, junk {2} -> [1, 3, 0, 4, 5], ranks 0, 2 -> 19/24
    assert results["medium"].mean_ap == pytest.approx((19 / 24 + q1) / 2, abs=1e-12)
    # q0 hard: positives {1}, junk {0, 2} -> first -> 1; q1 has no hard positive: left out
    assert np.isnan(results["hard"].aps[1])
    assert results["hard"].mean_ap == pytest.approx(1.0, abs=1e-12)
    # mP@5 medium: q0 positives at 1, 3 (1-based) -> 2/3; q1 at 1, 5 -> 2/5
    assert results["medium"].mean_precision[1] == pytest.approx(1.0, abs=1e-12)
    assert results["medium"].mean_precision[5] == pytest.approx((2 / 3 + 2 / 5) / 2, abs=1e-12)


def test_mean_average_precision_checks_shapes():
    gnd = [({0}, set()), ({1}, set())]
    with pytest.raises(ValueError, match="transpose"):
        mean_average_precision(np.zeros((3, 2), np.int64), gnd)
    assert mean_average_precision(np.array([[0, 1], [0, 1]]), gnd).mean_ap == pytest.approx((1 + 0.25) / 2)


def test_bad_ground_truth_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        read_revisited_gnd(tmp_path / "missing.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="bad.pkl"):
        read_revisited_gnd(bad)
    wrong = tmp_path / "wrong.pkl"
    gnd = _synthetic_gnd()
    del gnd["gnd"][1]["junk"]
    wrong.write_bytes(pickle.dumps(gnd))
    with pytest.raises(ValueError, match=r"wrong.pkl: query 1 \(q1\) lacks \['junk'\]"):
        read_revisited_gnd(wrong)
    gnd = _synthetic_gnd()
    gnd["gnd"][0]["easy"] = [6]
    wrong.write_bytes(pickle.dumps(gnd))
    with pytest.raises(ValueError, match="out of range"):
        read_revisited_gnd(wrong)


# ----------------------------------------------------------------------------- recall and covisibility


def test_recall_at_k_skips_queries_without_positives():
    result = recall_at_k([["x", "y", "z"], ["y", "x"], ["q"]], [{"y"}, {"y"}, set()], ks=(1, 2))
    assert result.recall == {1: 0.5, 2: 1.0}
    assert (result.evaluated, result.skipped) == (2, 1)


def test_visible_points_and_shared_counts():
    camera = pycolmap.Camera(model="PINHOLE", width=100, height=80, params=[50, 50, 50, 40])
    xyz = np.array([[0, 0, 1], [0, 0, -1], [10, 0, 1], [0.99, 0, 1], [1.01, 0, 1], [0, -0.79, 1]])
    # u = 50 x / z + 50, v = 50 y / z + 40; inside [0, 100] x [0, 80], in front
    np.testing.assert_array_equal(visible_points(xyz, camera, pycolmap.Rigid3d()),
                                  [True, False, False, True, False, True])
    # moved 2 units forward, the first point is behind the camera
    moved = pycolmap.Rigid3d(pycolmap.Rotation3d(), np.array([0.0, 0.0, -2.0]))
    assert not visible_points(xyz, camera, moved)[0]
    counts = shared_point_counts([1, 2, 3], {"a": np.array([1, 2, 2, 9]), "b": np.array([7])})
    assert counts == {"a": 2, "b": 0}


def test_covisible_images_on_a_real_map(kitti, kitti_map):
    rec = load_map(kitti_map).reconstruction
    query = read_queries(kitti.queries)[0]
    assert query.name == "000101.png"
    pose = read_poses(kitti.gt)[query.name]
    covisible = covisible_images(rec, query.camera, pose, min_shared=20)
    assert {"000100.png", "000102.png"} <= set(covisible)
    assert min(covisible.values()) >= 20
    # turned around (180 deg about the camera's y axis) it sees none of the road ahead
    turned = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 1.0, 0.0, 0.0])), np.zeros(3)) * pose
    assert len(covisible_images(rec, query.camera, turned, min_shared=20)) < len(covisible) // 2


# ----------------------------------------------------------------------------- re-ranking


def _two_view_points(rng: np.random.Generator, model: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` exact correspondences of a plane (homography) or a 3D cloud (fundamental), pixels."""
    camera = pycolmap.Camera(model="PINHOLE", width=640, height=480, params=[500, 500, 320, 240])
    xyz = np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n),
                           np.full(n, 6.0) if model == "homography" else rng.uniform(4, 9, n)])
    second = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 0.05, 0.0])), np.array([-0.8, 0.1, 0.2]))
    return camera.img_from_cam(xyz), camera.img_from_cam(second * xyz)


@pytest.mark.parametrize("model", ["fundamental", "homography"])
def test_count_inliers_on_synthetic_geometry(model):
    rng = np.random.default_rng(0)
    kp0, kp1 = _two_view_points(rng, model, 120)
    outliers = rng.uniform([0, 0], [640, 480], (40, 2))
    kp1 = np.vstack([kp1, outliers])
    kp0 = np.vstack([kp0, rng.uniform([0, 0], [640, 480], (40, 2))])
    matches = np.column_stack([np.arange(160), np.arange(160)])
    inliers = count_inliers(kp0, kp1, matches, RerankConf(model=model))
    assert 120 <= inliers <= 126  # a few random outliers may fit by chance
    assert count_inliers(kp0, kp1, matches[:8], RerankConf(model=model)) <= 8
    assert count_inliers(kp0, kp1, matches[:3], RerankConf(model=model)) == 0
    with pytest.raises(ValueError, match="Unknown geometry model 'affine'"):
        count_inliers(kp0, kp1, matches, RerankConf(model="affine"))


def test_rerank_moves_the_true_partner_up(kitti, kitti_map):
    preset = get_preset("sift")
    features = load_map(kitti_map).features
    query = make_extractor(preset.query_features)(read_image(kitti.images / "000101.png"))
    # the global score wrongly prefers a frame 13 m further on (after the turn)
    candidates = [Candidate("000118.png", 0.9), Candidate("000100.png", 0.5), Candidate("000110.png", 0.1)]
    out = rerank(query, candidates, features, make_matcher(preset.matcher), RerankConf(num_candidates=2))
    assert [c.name for c in out] == ["000100.png", "000118.png", "000110.png"]
    assert out[0].inliers > 500 and out[0].inliers > 3 * out[1].inliers
    assert out[2].inliers == -1 and out[2].score == 0.1  # beyond num_candidates: untouched
    # a mapping or a function of the name give the same result
    assert rerank(query, candidates, features.__getitem__, make_matcher(preset.matcher),
                  RerankConf(num_candidates=2)) == out


def test_cli_retrieve_writes_hloc_pairs(kitti, kitti_map, tmp_path):
    out = tmp_path / "pairs.txt"
    assert main(["retrieve", "--map", str(kitti_map), "--images", str(kitti.images), "--queries", str(kitti.queries),
                 "--out", str(out), "-k", "3", "--rerank"]) == 0
    lines = [line.split() for line in out.read_text().splitlines()]
    assert len(lines) == 30 and all(len(fields) == 2 for fields in lines)
    scores = json.loads(out.with_suffix(".json").read_text())
    assert scores["rerank"]["num_candidates"] == 100
    for query, cands in scores["queries"].items():
        assert [c["name"] for c in cands] == [m for q, m in lines if q == query]
        inliers = [c["inliers"] for c in cands]
        assert inliers == sorted(inliers, reverse=True) and inliers[0] > 100
        # the best verified map image is a neighbouring frame (map = even frames, queries = odd)
        assert abs(int(cands[0]["name"][:6]) - int(query[:6])) == 1
    assert main(["retrieve", "--map", str(kitti_map), "--images", str(kitti.images), "--out", str(out),
                 "-k", "0"]) == 2
