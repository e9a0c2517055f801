"""Size and opening time of the HTML pages at scale: a 1,000-query localization report and the 3D
view and health page of a 1,000-image map.

    python benchmarks/report_size.py [--work DIR] [--preset fast] [--queries 1000] [--opens 3]

The map: all 1,000 frames of ``7scenes_seq1000``, triangulated from their ground-truth poses.
The queries: the same 1,000 frames (each meets itself among the retrieved images: the most
inliers per query, so the largest log and pictures a run of this size gives). Each page is opened
``--opens`` times in headless Chromium (a fresh browser each time) and the median time from
navigation until the page says it rendered is printed with its size. Map, poses and pages are
kept under ``--work`` and reused.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

from vloc.evaluation.sevenscenes import CAMERA, frame_name, write_reference


def build(work: Path, data: Path, preset: str, n_queries: int) -> tuple[Path, Path]:
    from vloc.config import get_preset
    from vloc.io.cameras import Query, camera_from_text
    from vloc.localization.batch import localize_queries
    from vloc.localization.localizer import Localizer
    from vloc.mapping.build import build_map

    seq = data / "7scenes_seq1000"
    ref, map_dir, poses = work / "ref1000", work / f"map1000-{preset}", work / f"poses{n_queries}.txt"
    if not ref.exists():
        write_reference(seq, list(range(1000)), ref)
    if not map_dir.exists():
        t = time.perf_counter()
        build_map(seq, map_dir, get_preset(preset), reference=ref)
        print(f"map: {map_dir} built in {time.perf_counter() - t:.0f} s")
    if not poses.exists():
        camera = camera_from_text(CAMERA, "7scenes camera")
        queries = [Query(frame_name(i % 1000), camera) for i in range(n_queries)]
        localize_queries(Localizer.load(map_dir), queries, seq, poses)
    return map_dir, poses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--opens", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from vloc.evaluation.browser import check_page
    from vloc.report.localization import write_localization_report
    from vloc.report.map_health import write_map_report
    from vloc.report.view3d import write_map_view

    args.work.mkdir(parents=True, exist_ok=True)
    map_dir, poses = build(args.work, args.data, args.preset, args.queries)
    pages = {}
    for name, write in (("report", lambda out: write_localization_report(poses, out)),
                        ("view", lambda out: write_map_view(map_dir, out, poses=poses)),
                        ("health", lambda out: write_map_report(map_dir, out))):
        t = time.perf_counter()
        pages[name] = (write(args.work / f"{name}.html"), time.perf_counter() - t)
    print(f"\nload average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; {args.queries} queries, "
          f"map {map_dir.name}; open: median of {args.opens} fresh headless Chromium starts")
    print(f"{'page':<8}{'MB':>8}{'write s':>9}{'open s':>8}  errors")
    for name, (path, write_s) in pages.items():
        checks = [check_page(path, timeout_s=120) for _ in range(args.opens)]
        opened = statistics.median(c.load_seconds for c in checks)
        print(f"{name:<8}{path.stat().st_size / 1e6:>8.1f}{write_s:>9.1f}{opened:>8.2f}  {checks[0].errors or 'none'}")


if __name__ == "__main__":
    main()
