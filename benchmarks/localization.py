"""Localization accuracy and time per query by stage, for every preset on every set.

    python benchmarks/localization.py [--presets sift fast aliked accurate]
                                      [--sets kitti virtual_gallery lund sacre_coeur]
                                      [--data ../shared/data] [--work DIR] [--repeat 3] [--swap]

For each set, a map is built per preset by triangulation from the ground-truth poses of the set's
map images (presets with the same features share it; kept under ``--work`` when given), then one
warm Localizer (one untimed warm-up query) localizes every query ``--repeat`` times. One table:
localized count, median errors, recall at (0.25, 2 deg) and (0.5, 5 deg), and the median and p90
time per stage over all runs; "fb": how many poses came from the preset's fallback layer. Sets in
an arbitrary SfM gauge (lund, sacre_coeur) use relative thresholds: multiples of the median step
between consecutive map cameras ("steps").
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vloc.config import PRESETS, get_preset
from vloc.evaluation.metrics import evaluate, in_percent, thresholds_for
from vloc.evaluation.timing import STAGES, set_root, stage_percentiles
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared, swap_roles
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer
from vloc.mapping.build import build_map

RECALL_AT = ((0.25, 2.0), (0.5, 5.0))
RECALL_AT_RELATIVE = ((2.0, 2.0), (5.0, 5.0))  # sets with relative thresholds (temple): % of the map's radius


def run_set(root: Path, preset_name: str, work: Path, repeat: int) -> dict:
    ds = open_prepared(root)
    preset = get_preset(preset_name)
    layer = f"+{preset.fallback.preset}" if preset.fallback.preset else ""  # maps with a layer are kept apart
    map_dir = work / f"{ds.name}-{Path(preset.features_file).stem}{layer}"
    build_s = float("nan")
    if not map_dir.exists():
        t = time.perf_counter()
        build_map(ds.images, map_dir, preset, reference=ds.ref_model)
        build_s = time.perf_counter() - t
    localizer = Localizer.load(map_dir, preset)
    queries = read_queries(ds.queries)
    localizer.localize(ds.images / queries[0].name, queries[0].camera)  # warm-up
    runs = [[localizer.localize(ds.images / q.name, q.camera) for q in queries] for _ in range(repeat)]
    results = runs[0]
    recall_at = RECALL_AT_RELATIVE if in_percent(ds.meta) else RECALL_AT
    thresholds, unit, unit_length = thresholds_for(ds.meta, recall_at)
    summary = evaluate({r.name: r.cam_from_world for r in results if r.success}, read_poses(ds.gt), thresholds)
    (t_max, r_max) = thresholds[-1]
    wrong = sum(1 for n, (dt, dr) in summary.errors.items() if np.isfinite(dt) and (dt > t_max or dr > r_max))
    timed = [r for run in runs for r in run]
    row = dict(set=ds.name, preset=preset_name, n=len(results), ok=summary.localized, t=summary.median_t / unit_length,
               r=summary.median_r, unit=unit, recalls=list(summary.recalls.values()), build=build_s,
               fallback=sum(r.success and r.layer != preset_name for r in results), wrong=wrong,
               size=f"{results[0].camera.width}x{results[0].camera.height}" if results[0].camera else "")
    return {**row, **stage_percentiles([r.timings for r in timed])}


def print_table(rows: list[dict], repeat: int) -> None:
    import torch

    print(f"\ntorch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs; seconds per query, median (p90 "
          f"on the second line) over {repeat} passes; recall at {RECALL_AT[0]} / {RECALL_AT[1]} (translation "
          f"in the set's unit, degrees; % sets: {RECALL_AT_RELATIVE[0]} / {RECALL_AT_RELATIVE[1]}); 'bad': "
          "localized but outside the second threshold")
    head = (f"{'set':<16}{'preset':<10}{'size':>10}{'loc':>6}{'fb':>3}{'bad':>4}{'median error':>21}{'recall':>12}  "
            + "".join(f"{s:>9}" for s in STAGES) + f"{'total':>9}{'build s':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        error = f"{r['t']:.4f} {r['unit']}/{r['r']:.3f}°"
        recall = "/".join(f"{100 * v:.0f}" for v in r["recalls"]) + " %"
        count = f"{r['ok']:>3}/{r['n']:<2}{r['fallback']:>3}{r['wrong']:>4}"
        print(f"{r['set']:<16}{r['preset']:<10}{r['size']:>10}{count}{error:>21}{recall:>12}  "
              + "".join(f"{r['median'][s]:>9.3f}" for s in STAGES) + f"{r['median']['total']:>9.3f}"
              + f"{r['build']:>9.1f}")
        print(" " * 82 + "p90" + "".join(f"{r['p90'][s]:>9.3f}" for s in STAGES) + f"{r['p90']['total']:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["sift", "fast", "aliked", "accurate"], choices=sorted(PRESETS))
    parser.add_argument("--sets", nargs="+", default=["kitti", "virtual_gallery", "lund", "sacre_coeur"],
                        help="prepared set names under DATA/prepared, or 'demo' (the rendered demo scene)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the queries")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, help="keep the maps here and reuse them (default: a temporary folder)")
    parser.add_argument("--swap", action="store_true",
                        help="exchange each set's map and query images (a held-out check: NAME-swapped under WORK)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import pycolmap

    pycolmap.logging.minloglevel = 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.sets:
            root = set_root(name, args.data, work)
            if args.swap:
                root = swap_roles(open_prepared(root), work / f"{root.name}-swapped").root
            for preset in args.presets:
                rows.append(run_set(root, preset, work, args.repeat))
                print_table(rows[-1:], args.repeat)
    print_table(rows, args.repeat)


if __name__ == "__main__":
    main()
