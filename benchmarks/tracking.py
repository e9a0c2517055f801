"""Ordered queries with and without the tracking prior: accuracy, latency, frames per second.

    python benchmarks/tracking.py [--sets kitti lund] [--preset sift] [--data ../shared/data]

Each set's map is triangulated from its reference poses; its queries (ordered by name) are
localized by one warm Localizer, first independently (global retrieval), then through a Tracker.
Errors are in the set's units (lund: pseudo ground truth, arbitrary scale).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap

from vloc.config import DEFAULT_PRESET, PRESETS, get_preset
from vloc.evaluation.metrics import evaluate
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer
from vloc.localization.tracking import Tracker


def run(localize, queries, images) -> tuple[list, float]:
    t = time.perf_counter()
    results = [localize(images / q.name, q.camera) for q in queries]
    return results, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["kitti", "lund"])
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    print(f"\npreset {args.preset}; {os.cpu_count()} CPUs; latency = median seconds per frame")
    print(f"{'set':<10}{'mode':<9}{'loc':>7}{'med err':>18}{'latency':>9}{'fps':>7}{'prior used':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            ds = open_prepared(args.data / "prepared" / name)
            from vloc.mapping.build import build_map

            build_map(ds.images, Path(tmp) / name, get_preset(args.preset), reference=ds.ref_model)
            localizer = Localizer.load(Path(tmp) / name, args.preset)
            queries = sorted(read_queries(ds.queries), key=lambda q: q.name)
            localizer.localize(ds.images / queries[0].name, queries[0].camera)  # warm-up
            tracker = Tracker(localizer)
            for mode, fn in (("global", localizer.localize), ("tracking", tracker.track)):
                results, seconds = run(fn, queries, ds.images)
                s = evaluate({r.name: r.cam_from_world for r in results if r.success}, read_poses(ds.gt))
                latency = float(np.median([sum(r.timings.values()) for r in results]))
                used = sum(r.retrieval == "prior" for r in results)
                print(f"{name:<10}{mode:<9}{s.localized:>4}/{s.total:<2}{s.median_t:>10.4f}/{s.median_r:>6.3f}°"
                      f"{latency:>9.3f}{len(results) / seconds:>7.2f}{used:>9}/{len(results)}")


if __name__ == "__main__":
    main()
