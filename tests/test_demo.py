"""The embedded demo scene: exact geometry, and the whole pipeline within the demo tolerance."""
from __future__ import annotations

import numpy as np
import pycolmap

from vloc.demo.run import run_demo
from vloc.io.cameras import read_queries
from vloc.io.poses import read_poses


def test_demo_runs_and_every_query_is_within_tolerance(tmp_path, capsys):
    assert run_demo(tmp_path / "demo", "sift")
    out = capsys.readouterr().out
    assert "demo PASSED" in out and "localized: 5/5" in out
    for page in ("report.html", "map.html"):  # written beside the output, their paths printed
        assert (tmp_path / "demo" / page).stat().st_size > 1_000_000 and str(tmp_path / "demo" / page) in out
    scene = tmp_path / "demo" / "scene"
    ref = pycolmap.Reconstruction(str(scene / "ref_model"))
    queries = read_queries(scene / "queries.txt")
    focals = {q.camera.params[0] for q in queries}
    assert ref.num_images() >= 12 and len(focals) >= 2  # at least one query with another focal length
    gt = read_poses(scene / "gt_queries.txt")
    assert set(gt) == {q.name for q in queries}
    q = np.array([gt[n].rotation.quat for n in gt])
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-9)
