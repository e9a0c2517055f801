"""``vloc demo``: render the embedded scene, build its map from the true poses, localize the
queries and print each query's error against the exact ground truth."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from vloc.config import get_preset
from vloc.evaluation.metrics import evaluate
from vloc.io.cameras import read_queries
from vloc.io.poses import read_poses
from vloc.localization.batch import localize_queries
from vloc.localization.localizer import Localizer
from vloc.mapping.build import build_map
from vloc.report.localization import write_localization_report
from vloc.report.view3d import write_map_view

logger = logging.getLogger(__name__)

DEMO_TOLERANCE = (0.05, 0.5)  # metres, degrees: every demo query must be within this


def run_demo(out: Path, preset_name: str) -> bool:
    """Returns True when every query is localized within :data:`DEMO_TOLERANCE`."""
    from vloc.demo.scene import render_demo_scene

    t0 = time.perf_counter()
    scene = render_demo_scene(Path(out) / "scene")
    t_render = time.perf_counter() - t0
    map_dir = Path(out) / "map"
    build_map(scene / "images", map_dir, get_preset(preset_name), reference=scene / "ref_model", overwrite=True)
    t_build = time.perf_counter() - t0 - t_render
    localizer = Localizer.load(map_dir)
    results = localize_queries(localizer, read_queries(scene / "queries.txt"), scene / "images",
                               Path(out) / "poses.txt")
    estimates = {r.name: r.cam_from_world for r in results if r.success}
    summary = evaluate(estimates, read_poses(scene / "gt_queries.txt"))
    max_t, max_r = DEMO_TOLERANCE
    print(f"\n{'query':<16} {'status':<10} {'inliers':>8} {'err [cm]':>9} {'err [deg]':>9} {'time [s]':>8}")
    ok = True
    for r in results:
        dt, dr = summary.errors[r.name]
        good = r.success and dt <= max_t and dr <= max_r
        ok &= good
        status = ("ok" if good else "INACCURATE") if r.success else "FAILED"
        seconds = sum(r.timings.values())
        print(f"{r.name:<16} {status:<10} {r.num_inliers:>8} {100 * dt:>9.2f} {dr:>9.3f} {seconds:>8.3f}"
              + ("" if r.success else f"  ({r.reason})"))
    print(f"\n{summary.format()}")
    print(f"render {t_render:.1f} s, map build {t_build:.1f} s, total {time.perf_counter() - t0:.1f} s")
    print(f"demo {'PASSED' if ok else 'FAILED'}: every query within {100 * max_t:.0f} cm and {max_r} deg")
    report = write_localization_report(Path(out) / "poses.txt", Path(out) / "report.html",
                                       gt=scene / "gt_queries.txt", map_dir=map_dir)
    view = write_map_view(map_dir, Path(out) / "map.html", poses=Path(out) / "poses.txt", gt=scene / "gt_queries.txt")
    print(f"report: {report}\n3D view: {view}\n(open them in a browser)")
    return ok
