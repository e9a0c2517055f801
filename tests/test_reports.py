"""HTML reports, the 3D view and the map-health page: opened in headless Chromium (no JavaScript
errors, the expected cards and cameras, a screenshot that is not blank), and their bad inputs.

Set ``VLOC_SCREENSHOTS=DIR`` to keep the screenshots (the README's come from here).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from vloc.cli import main as cli
from vloc.io.cameras import read_queries
from vloc.localization.batch import localize_queries
from vloc.localization.localizer import Localizer
from vloc.localization.result import LocalizationResult
from vloc.report.localization import ReportError, write_localization_report
from vloc.report.view3d import write_map_view


@pytest.fixture(scope="module")
def browser():
    """``check_page``; fails (never skips) when Chromium is missing: the README's set-up installs it."""
    from vloc.evaluation.browser import BrowserMissing, check_page, chromium_path

    try:
        chromium_path()
    except BrowserMissing as exc:
        pytest.fail(str(exc))
    return check_page


def keep_screenshot(check, name: str) -> None:
    if os.environ.get("VLOC_SCREENSHOTS"):
        out = Path(os.environ["VLOC_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(check.screenshot)


@pytest.fixture(scope="module")
def run(kitti, kitti_map, tmp_path_factory):
    """Three kitti queries and a black image (fails: no keypoints), localized by ``vloc localize``'s code."""
    from PIL import Image

    root = tmp_path_factory.mktemp("run")
    images = root / "images"
    images.mkdir()
    queries = read_queries(kitti.queries)[:3]
    for q in queries:
        shutil.copy(kitti.images / q.name, images / q.name)
    Image.new("RGB", (queries[0].camera.width, queries[0].camera.height)).save(images / "black.png")
    queries.append(type(queries[0])("black.png", queries[0].camera))
    localize_queries(Localizer.load(kitti_map), queries, images, root / "poses.txt")
    return root


def test_localization_report_in_chromium(run, kitti, browser, tmp_path):
    out = write_localization_report(run / "poses.txt", tmp_path / "report.html", gt=kitti.gt)
    check = browser(out, (".card", ".card.failed", ".card.localized", "img.matchimg", "img.queryimg",
                          "img[data-thumb][src]"), scroll_to=".card.localized")
    keep_screenshot(check, "report.png")
    assert check.errors == []
    assert check.counts[".card"] == 4 and check.counts[".card.failed"] == 1 and check.counts[".card.localized"] == 3
    assert check.counts["img.matchimg"] == 3 and check.counts["img.queryimg"] == 1  # black: no matches to draw
    assert check.counts["img[data-thumb][src]"] >= 3  # retrieved thumbnails filled in from the embedded set
    assert check.data["queries"] == 4
    assert check.distinct_colours() > 200, "the screenshot looks blank"
    text = out.read_text()
    assert text.index("black.png") < text.index(read_queries(kitti.queries)[0].name)  # failed first
    assert "too few keypoints" in text and "queries without ground truth (not counted)" in text
    assert "<script src=" not in text and "<link" not in text  # scripts and styles inline: opens offline


def test_map_view_in_chromium(run, kitti, kitti_map, browser, tmp_path):
    out = write_map_view(kitti_map, tmp_path / "map.html", poses=run / "poses.txt", gt=kitti.gt)
    check = browser(out, (".js-plotly-plot",))
    keep_screenshot(check, "map_view.png")
    model = pycolmap.Reconstruction(str(kitti_map / "model"))
    assert check.errors == []
    assert check.counts[".js-plotly-plot"] == 1
    assert check.data["cameras"] == model.num_reg_images() and check.data["queries"] == 3
    assert check.distinct_colours() > 100, "the screenshot looks blank"


def test_map_health_in_chromium(kitti_map, browser, tmp_path):
    assert cli(["info", str(kitti_map), "--report", str(tmp_path / "health.html")]) == 0
    check = browser(tmp_path / "health.html", (".js-plotly-plot",))
    keep_screenshot(check, "map_health.png")
    assert check.errors == []
    assert check.counts[".js-plotly-plot"] == 4  # track length, reprojection error, points per image, covisibility
    assert check.data["cameras"] == pycolmap.Reconstruction(str(kitti_map / "model")).num_reg_images()
    assert check.distinct_colours() > 50, "the screenshot looks blank"


def test_a_pose_list_without_its_log_is_refused_by_name(run, tmp_path, capsys):
    poses = tmp_path / "poses.txt"
    shutil.copy(run / "poses.txt", poses)
    with pytest.raises(ReportError, match="poses.json is missing"):
        write_localization_report(poses, tmp_path / "r.html")
    assert cli(["report", "--poses", str(poses), "--out", str(tmp_path / "r.html")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_a_log_from_another_map_is_refused(run, tmp_path):
    for name in ("poses.txt", "poses.json"):
        shutil.copy(run / name, tmp_path / name)
    log = json.loads((tmp_path / "poses.json").read_text())
    (tmp_path / "poses.json").write_text(json.dumps({**log, "map_created": "1999-01-01T00:00:00"}))
    with pytest.raises(ReportError, match="a log from another map"):
        write_localization_report(tmp_path / "poses.txt", tmp_path / "r.html")
    (tmp_path / "poses.json").write_text(json.dumps({**log, "map_created": None, "queries": [
        {**log["queries"][0], "retrieved": ["not_in_this_map.png"]}]}))
    with pytest.raises(ReportError, match="not_in_this_map.png"):
        write_localization_report(tmp_path / "poses.txt", tmp_path / "r.html")
    (tmp_path / "poses.json").write_text("{not json")
    with pytest.raises(ReportError, match="poses.json: not a JSON log"):
        write_localization_report(tmp_path / "poses.txt", tmp_path / "r.html")


def test_a_missing_image_and_an_empty_run_give_honest_pages(run, tmp_path):
    for name in ("poses.txt", "poses.json"):
        shutil.copy(run / name, tmp_path / name)
    log = json.loads((tmp_path / "poses.json").read_text())
    (tmp_path / "poses.json").write_text(json.dumps({**log, "images": str(tmp_path / "gone")}))
    text = write_localization_report(tmp_path / "poses.txt", tmp_path / "r.html").read_text()
    assert text.count("query image not shown") == 4 and "no such image file" in text
    (tmp_path / "poses.txt").write_text("")
    (tmp_path / "poses.json").write_text(json.dumps({**log, "queries": [], "localized": 0, "total": 0}))
    text = write_localization_report(tmp_path / "poses.txt", tmp_path / "r.html").read_text()
    assert "This run has no queries." in text and "<b>0</b> of <b>0</b>" in text


def test_the_log_carries_what_the_report_draws(run):
    log = json.loads((run / "poses.json").read_text())
    q = next(q for q in log["queries"] if q["status"] == "localized")
    m = q["matches"]
    assert len(m["points2D"]) == 2 * q["num_matches"] == 2 * len(m["point3D_ids"])
    assert len(m["inliers"]) == q["num_inliers"] and len(q["retrieved_scores"]) == len(q["retrieved"])
    assert q["uncertainty"]["position_sigma"] > 0 and q["uncertainty"]["rotation_sigma_deg"] > 0
    assert log["map_created"] and log["images"]


def test_pose_uncertainty_from_the_covariance():
    rotation = pycolmap.Rotation3d(np.array([0.1, 0.2, 0.3, 0.9]) / np.linalg.norm([0.1, 0.2, 0.3, 0.9]))
    pose = pycolmap.Rigid3d(rotation, np.array([1.0, -2.0, 3.0]))
    cov = np.zeros((6, 6))
    cov[3:, 3:] = np.eye(3) * 0.01 ** 2  # translation only: the centre moves by -R^T dt, same norm
    u = LocalizationResult("q", True, cam_from_world=pose, covariance=cov).uncertainty()
    assert u["position_sigma"] == pytest.approx(np.sqrt(3) * 0.01, rel=1e-9) and u["rotation_sigma_deg"] == 0
    cov = np.zeros((6, 6))
    cov[:3, :3] = np.eye(3) * np.deg2rad(0.5) ** 2  # rotation only: the centre moves by |t| x angle
    u = LocalizationResult("q", True, cam_from_world=pose, covariance=cov).uncertainty()
    assert u["rotation_sigma_deg"] == pytest.approx(np.sqrt(3) * 0.5, rel=1e-9)
    assert u["position_sigma"] == pytest.approx(np.deg2rad(0.5) * np.sqrt(2) * np.linalg.norm(pose.translation), rel=1e-6)
    assert LocalizationResult("q", False).uncertainty() is None
