"""What a test of the pose check costs per query (issue 24 item 1): the same warm Localizer with the
test as configured and turned off, queries interleaved (on, off, on, off, ...) so that both see the
same load. ``--test stability``: the unstable-pose test (``PoseConf.stability_runs`` = 0 when off);
``views``: the rival-image test (``max_view_rival_deg`` = 0); ``both``.

    python benchmarks/pose_check_cost.py [--sets kitti 7scenes lund] [--presets sift fast]
                                         [--test stability|views|both] [--data ../shared/data] --work DIR
                                         [--repeat 3]

Maps are built (or reused) under ``--work`` with the names ``benchmarks/localization.py`` and
``benchmarks/pose_check.py`` use. One row per set and preset: median and p90 of the whole query's
time and of the pose stage (RANSAC, refinement and the pose check), with the test on and off.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import pycolmap

from pose_check import load_localizer  # benchmarks/ is the script's folder
from vloc.config import PRESETS
from vloc.evaluation.timing import set_root
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared


OFF = {"stability": dict(stability_runs=0), "views": dict(max_view_rival_deg=0.0),
       "both": dict(stability_runs=0, max_view_rival_deg=0.0)}


def measure(root: Path, preset_name: str, work: Path, repeat: int, test: str) -> dict:
    ds = open_prepared(root)
    localizer = load_localizer(ds, preset_name, work)
    off = {layer: dataclasses.replace(layer.preset, pose=dataclasses.replace(layer.preset.pose, **OFF[test]))
           for layer in localizer.layers}
    confs = {"on": {layer: layer.preset for layer in localizer.layers}, "off": off}
    queries = read_queries(ds.queries)
    localizer.localize(ds.images / queries[0].name, queries[0].camera)  # warm-up
    total: dict[str, list[float]] = {"on": [], "off": []}
    pose: dict[str, list[float]] = {"on": [], "off": []}
    localized = {"on": 0, "off": 0}
    for _ in range(repeat):
        for q in queries:
            for mode in ("on", "off"):
                for layer, layer_preset in confs[mode].items():
                    layer.preset = layer_preset
                t = time.perf_counter()
                res = localizer.localize(ds.images / q.name, q.camera)
                total[mode].append(time.perf_counter() - t)
                pose[mode].append(res.timings.get("pose", 0.0))
                localized[mode] += res.success
    row = dict(set=ds.name, preset=preset_name, n=len(queries) * repeat)
    for mode in ("on", "off"):
        row[f"loc_{mode}"] = localized[mode]
        row[f"total_{mode}"] = 1000 * np.percentile(total[mode], [50, 90])
        row[f"pose_{mode}"] = 1000 * np.percentile(pose[mode], [50, 90])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["kitti", "7scenes", "lund"])
    parser.add_argument("--presets", nargs="+", default=["sift", "fast"], choices=sorted(PRESETS))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--test", choices=sorted(OFF), default="stability", help="which test is turned off")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    print(f"load average before: {os.getloadavg()[0]:.2f}; test on and off: {args.test}")
    print(f"{'set':<16}{'preset':<10}{'runs':>5}{'loc on/off':>12}  {'total ms on':>16}  {'total ms off':>16}"
          f"  {'pose ms on':>16}  {'pose ms off':>16}  {'test':>8}")
    for name in args.sets:
        for preset in args.presets:
            r = measure(set_root(name, args.data, args.work), preset, args.work, args.repeat, args.test)
            cell = {k: f"{r[k][0]:7.1f}/{r[k][1]:7.1f}" for k in ("total_on", "total_off", "pose_on", "pose_off")}
            print(f"{r['set']:<16}{r['preset']:<10}{r['n']:>5}{r['loc_on']:>6}/{r['loc_off']:<5}"
                  f"  {cell['total_on']:>16}"
                  f"  {cell['total_off']:>16}  {cell['pose_on']:>16}  {cell['pose_off']:>16}"
                  f"  {r['pose_on'][0] - r['pose_off'][0]:7.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}  (times: median/p90 over the runs; test: the pose stage's "
          "median with the test minus without)")


if __name__ == "__main__":
    main()
