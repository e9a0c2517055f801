"""Localization against maps of growing size: build, open, memory and latency at 100 to 950 images.

    python benchmarks/scale.py [--sizes 100 250 500 950] [--preset sift] [--passes 2]
                               [--long-run 1000] [--data ../shared/data] [--work DIR]

Maps are triangulated from the ground-truth poses of frames of ``7scenes_seq1000`` (PINHOLE
525 525 320 240, the 7-Scenes RGB convention): ``size`` frames evenly spread over the 950 frames
that are not queries; the queries are always the 50 frames 10, 30, ..., 990 of
``prepared/7scenes``. Each map is opened and queried in a fresh process (so that one map's memory
does not count against the next): ``Localizer.load`` time, ``RssAnon`` (anonymous resident memory,
``/proc/self/status``) after load, after the first query and after all, median and p90 seconds
per stage over ``--passes`` passes, localized count and median error. ``--long-run N`` also
localizes N queries (the 50, cycled) against the largest map and prints RssAnon along the way.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vloc.evaluation.sevenscenes import map_frames, write_reference
from vloc.evaluation.timing import STAGES, stage_percentiles


def measure(map_dir: Path, prepared: Path, preset: str | None, passes: int, long_run: int) -> dict:
    """Open ``map_dir`` and localize the prepared set's queries (run in a fresh process)."""
    from vloc.evaluation.metrics import evaluate
    from vloc.io.cameras import read_queries
    from vloc.io.poses import read_poses
    from vloc.localization.localizer import Localizer
    from vloc.memory import status_mb

    rss_start = status_mb()
    t = time.perf_counter()
    localizer = Localizer.load(map_dir, preset)
    load_s = time.perf_counter() - t
    rss_load = status_mb()
    queries = read_queries(prepared / "queries.txt")
    images = prepared / "images"
    results, rss_first, rss_trace = [], None, []
    for p in range(max(passes, 1)):
        for q in queries:
            results.append(localizer.localize(images / q.name, q.camera))
            if rss_first is None:
                rss_first = status_mb()
    rss_all = status_mb()
    for n in range(len(results), long_run):
        q = queries[n % len(queries)]
        localizer.localize(images / q.name, q.camera)
        if (n + 1) in (100, 250, 500, 750, 1000) or n + 1 == long_run:
            rss_trace.append((n + 1, round(status_mb(), 1)))
    first_pass = results[:len(queries)]
    estimates = {r.name: r.cam_from_world for r in first_pass if r.success}
    summary = evaluate(estimates, read_poses(prepared / "gt_queries.txt"))
    timed = results if passes < 2 else results[len(queries):]  # the first pass warms caches up
    row = dict(load_s=load_s, rss_start=rss_start, rss_load=rss_load, rss_first=rss_first, rss_all=rss_all,
               rss_trace=rss_trace, ok=summary.localized, n=len(first_pass), t_cm=100 * summary.median_t,
               r_deg=summary.median_r, queries=len(results))
    return {**row, **stage_percentiles([r.timings for r in timed])}


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 950])
    parser.add_argument("--preset", default="sift")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--long-run", type=int, default=0, help="queries against the largest map (RssAnon trace)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, help="keep the maps here and reuse them (default: a temporary folder)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one map, fresh process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prepared = args.data / "prepared" / "7scenes"
    if args.measure:
        print(json.dumps(measure(args.measure, prepared, args.preset, args.passes, args.long_run)))
        return

    import pycolmap

    from vloc.config import get_preset
    from vloc.mapping.build import build_map
    from vloc.mapping.manifest import read_manifest

    pycolmap.logging.minloglevel = 2
    seq = args.data / "7scenes_seq1000"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for size in args.sizes:
            map_dir = work / f"7scenes{size}-{args.preset}"
            if not map_dir.exists():
                ref = work / f"ref{size}"
                if not ref.exists():
                    write_reference(seq, map_frames(size), ref)
                build_map(seq, map_dir, get_preset(args.preset), reference=ref)
            manifest = read_manifest(map_dir)
            long_run = args.long_run if size == max(args.sizes) else 0
            out = subprocess.run([sys.executable, __file__, "--measure", str(map_dir), "--preset", args.preset,
                                  "--passes", str(args.passes), "--long-run", str(long_run), "--data", str(args.data)],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row.update(size=size, build=manifest.build_seconds, disk_mb=du_mb(map_dir), points=manifest.counts.points3D,
                       index=manifest.index.kind)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, args)


def print_table(rows: list[dict], args) -> None:
    import torch

    print(f"\n7scenes_seq1000, preset {args.preset}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}; query seconds: median / p90 over {args.passes} passes "
          "(the first pass untimed when there are two or more)")
    head = (f"{'images':>6}{'points':>8}{'index':>6}{'build s (extract/match/tri/write)':>35}{'disk MB':>8}"
            f"{'load s':>7}{'RssAnon MB load/1st/all':>25}{'loc':>7}{'median':>8}  "
            + "".join(f"{s:>14}" for s in (*STAGES, "total")))
    print(head)
    print("-" * len(head))
    for r in rows:
        b = r["build"]
        build = f"{sum(b.values()):.0f} ({b['extract']:.0f}/{b['match']:.0f}/{b['triangulate']:.0f}/{b['write']:.1f})"
        rss = f"{r['rss_load']:.0f}/{r['rss_first']:.0f}/{r['rss_all']:.0f}"
        print(f"{r['size']:>6}{r['points']:>8}{r['index']:>6}{build:>35}{r['disk_mb']:>8.0f}{r['load_s']:>7.2f}"
              f"{rss:>25}{r['ok']:>4}/{r['n']:<2}{r['t_cm']:>6.2f}cm  "
              + "".join(f"{r['median'][s]:>7.3f}/{r['p90'][s]:<6.3f}" for s in (*STAGES, "total")))
        if r["rss_trace"]:
            print(f"{'':>6}RssAnon MB after N queries: " + ", ".join(f"{n}: {mb}" for n, mb in r["rss_trace"]))


if __name__ == "__main__":
    main()
