"""Per-query localization time by stage, and accuracy, on the prepared GT sets and the demo scene.

    python benchmarks/localization.py [--preset sift] [--sets kitti virtual_gallery demo] [--data ../shared/data]

Maps are built by triangulation from the ground-truth poses of each set's map images, then one
warm Localizer (one untimed warm-up query) localizes every query ``--repeat`` times. Prints one
table with the median time per stage over all runs and the accuracy per set (first run).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vloc.config import DEFAULT_PRESET, PRESETS, get_preset
from vloc.evaluation.metrics import evaluate
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer
from vloc.mapping.build import build_map

STAGES = ("read", "global", "features", "match", "pose")


def run_set(name: str, root: Path, preset_name: str, work: Path, repeat: int) -> dict:
    ds = open_prepared(root)
    t = time.perf_counter()
    build_map(ds.images, work / name, get_preset(preset_name), reference=ds.ref_model)
    build_s = time.perf_counter() - t
    localizer = Localizer.load(work / name, preset_name)
    queries = read_queries(ds.queries)
    localizer.localize(ds.images / queries[0].name, queries[0].camera)  # warm-up
    runs = [[localizer.localize(ds.images / q.name, q.camera) for q in queries] for _ in range(repeat)]
    results = runs[0]
    summary = evaluate({r.name: r.cam_from_world for r in results if r.success}, read_poses(ds.gt))
    timed = [r for run in runs for r in run]
    row = dict(set=name, n=len(results), ok=summary.localized, t=summary.median_t, r=summary.median_r,
               build=build_s, size=f"{results[0].camera.width}x{results[0].camera.height}" if results[0].camera else "")
    for label, q in (("median", 50), ("p90", 90)):
        row[label] = {s: float(np.percentile([r.timings.get(s, 0.0) for r in timed], q)) for s in STAGES}
        row[label]["total"] = float(np.percentile([sum(r.timings.values()) for r in timed], q))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--sets", nargs="+", default=["kitti", "virtual_gallery", "demo"])
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the queries")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import pycolmap

    pycolmap.logging.minloglevel = 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.sets:
            if name == "demo":
                from vloc.demo.scene import render_demo_scene

                root = render_demo_scene(work / "demo_scene")
            else:
                root = args.data / "prepared" / name
            rows.append(run_set(name, root, args.preset, work, args.repeat))
    print(f"\npreset {args.preset}; torch threads {__import__('torch').get_num_threads()}; "
          f"{os.cpu_count()} CPUs; seconds per query, median and p90 over {args.repeat} passes")
    head = (f"{'set':<16}{'size':>10}{'loc':>6}{'med err':>18}{'':>7}" + "".join(f"{s:>9}" for s in STAGES)
            + f"{'total':>9}{'build':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        for label in ("median", "p90"):
            lead = (f"{r['set']:<16}{r['size']:>10}{r['ok']:>3}/{r['n']:<2}{r['t']:>10.4f}/{r['r']:>6.3f}°"
                    if label == "median" else " " * 50)
            tail = f"{r['build']:>8.1f}" if label == "median" else ""
            print(lead + f"{label:>7}" + "".join(f"{r[label][s]:>9.3f}" for s in STAGES)
                  + f"{r[label]['total']:>9.3f}" + tail)


if __name__ == "__main__":
    main()
