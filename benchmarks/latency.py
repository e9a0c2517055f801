"""Where a warm query's time goes, per preset and set, in process and through the HTTP service.

    python benchmarks/latency.py [--presets before sift fast xfeat] [--sets kitti 7scenes demo]
                                 [--repeat 3] [--no-http] [--work DIR] [--data ../shared/data]

For each set and preset: the map is triangulated from the set's ground-truth poses (build time and
images per minute from a fresh build; maps kept under ``--work`` are reused and then show no build
time), one warm Localizer localizes every query ``--repeat`` times after one untimed warm-up; median
and p90 per stage and of the total, the localized count and median errors. ``http``: the same
queries posted as raw image bytes to ``vloc serve`` on the same map, in a child process, one
keep-alive connection; median client-side time per query, and its excess over the in-process
median (HTTP overhead). ``before`` is ``sift`` as it was before the latency work (float32 matching),
so the hloc figures of issue 12 can be scaled by this machine's speed inside one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

from vloc.config import PRESETS, get_preset
from vloc.evaluation.metrics import evaluate, thresholds_for
from vloc.evaluation.timing import set_root
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared
from vloc.io.poses import read_poses
from vloc.mapping.manifest import read_manifest

STAGES = ("read", "global", "features", "match", "pose")
# Issue 12's hloc SIFT + mutual NN per-query seconds and vloc `sift` then, on the issue's machine.
HLOC_S = {"kitti": 0.634, "7scenes": 0.371}
SIFT_THEN_S = {"kitti": 0.358, "7scenes": 0.272}


def before_preset():
    """``sift`` as it was before issue 12: similarities in float32."""
    sift = get_preset("sift")
    return dataclasses.replace(sift, name="before",
                               matcher=dataclasses.replace(sift.matcher, precision="float32"))


def map_for(ds, preset, work: Path) -> tuple[Path, float]:
    from vloc.mapping.build import build_map

    map_dir = work / f"{ds.name}-{Path(preset.features_file).stem}-{preset.global_desc.name}-{preset.global_desc.resize_max}"
    if map_dir.exists():
        return map_dir, float("nan")
    t = time.perf_counter()
    build_map(ds.images, map_dir, preset, reference=ds.ref_model)
    return map_dir, time.perf_counter() - t


def in_process(map_dir: Path, preset, ds, repeat: int) -> tuple[list, list]:
    from vloc.localization.localizer import Localizer

    localizer = Localizer.load(map_dir, preset)
    queries = read_queries(ds.queries)
    localizer.localize(ds.images / queries[0].name, queries[0].camera)  # warm-up
    runs = [[localizer.localize(ds.images / q.name, q.camera) for q in queries] for _ in range(repeat)]
    return runs[0], [r for run in runs for r in run]


def over_http(map_dir: Path, preset_name: str, ds, repeat: int) -> list[float]:
    from vloc.evaluation.server import HOST, start_server

    log: list[str] = []
    proc, port = start_server(map_dir, log, preset_name)
    times = []
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        queries = read_queries(ds.queries)
        bodies = {q.name: (ds.images / q.name).read_bytes() for q in queries}
        for i in range(repeat + 1):  # the first pass warms the server up
            for q in queries:
                cam = {"model": q.camera.model.name, "width": q.camera.width, "height": q.camera.height,
                       "params": [float(v) for v in q.camera.params]}
                t = time.perf_counter()
                conn.request("POST", f"/localize?name={quote(q.name)}&camera={quote(json.dumps(cam))}",
                             body=bodies[q.name], headers={"Content-Type": "application/octet-stream"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"{q.name}: HTTP {response.status}")
                if i:
                    times.append(time.perf_counter() - t)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return times


def measure(root: Path, preset, work: Path, repeat: int, http: bool) -> dict:
    ds = open_prepared(root)
    map_dir, build_s = map_for(ds, preset, work)
    results, timed = in_process(map_dir, preset, ds, repeat)
    thresholds, unit, unit_length = thresholds_for(ds.meta, ((0.25, 2.0),))
    summary = evaluate({r.name: r.cam_from_world for r in results if r.success}, read_poses(ds.gt), thresholds)
    n_images = read_manifest(map_dir).counts.images
    row = dict(set=ds.name, preset=preset.name, n=len(results), ok=summary.localized,
               t_cm=100 * summary.median_t / unit_length, r=summary.median_r, build=build_s,
               img_min=60 * n_images / build_s,
               size=f"{results[0].camera.width}x{results[0].camera.height}" if results[0].camera else "")
    for label, q in (("median", 50), ("p90", 90)):
        row[label] = {s: float(np.percentile([r.timings.get(s, 0.0) for r in timed], q)) for s in STAGES}
        row[label]["total"] = float(np.percentile([sum(r.timings.values()) for r in timed], q))
    row["http"] = float(np.median(over_http(map_dir, preset.name, ds, repeat))) if http and preset.name in PRESETS \
        else float("nan")
    return row


def print_table(rows: list[dict], repeat: int) -> None:
    import torch

    print(f"\ntorch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.2f}; seconds per query, median over {repeat} passes (p90 below); error: "
          "translation (cm; sets in an SfM gauge: % of a camera step) / rotation (deg)")
    head = (f"{'set':<12}{'preset':<8}{'size':>10}{'loc':>7}{'error':>14}  " + "".join(f"{s:>9}" for s in STAGES)
            + f"{'total':>8}{'http':>8}{'build s':>9}{'img/min':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['set']:<12}{r['preset']:<8}{r['size']:>10}{r['ok']:>3}/{r['n']:<3}"
              f"{r['t_cm']:>8.2f}/{r['r']:.3f}  " + "".join(f"{r['median'][s]:>9.3f}" for s in STAGES)
              + f"{r['median']['total']:>8.3f}{r['http']:>8.3f}{r['build']:>9.1f}{r['img_min']:>8.0f}")
        print(" " * 48 + "p90" + "".join(f"{r['p90'][s]:>9.3f}" for s in STAGES) + f"{r['p90']['total']:>8.3f}")
    by = {(r["set"], r["preset"]): r for r in rows}
    for name in HLOC_S:
        before = by.get((name, "before"))
        if before is None:
            continue
        scale = before["median"]["total"] / SIFT_THEN_S[name]
        hloc = HLOC_S[name] * scale
        print(f"{name}: this machine's `before` {before['median']['total']:.3f} s = {scale:.2f} x the issue's "
              f"{SIFT_THEN_S[name]:.3f} s, so hloc SIFT scales to {hloc:.3f} s; "
              + ", ".join(f"{p} {by[(name, p)]['median']['total'] / hloc:.2f}x" for p in ("sift", "fast", "xfeat")
                          if (name, p) in by))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["before", "sift", "fast", "xfeat"])
    parser.add_argument("--sets", nargs="+", default=["kitti", "7scenes", "demo"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-http", dest="http", action="store_false")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, help="keep the maps here and reuse them (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import pycolmap

    pycolmap.logging.minloglevel = 2
    presets = [before_preset() if p == "before" else get_preset(p) for p in args.presets]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.sets:
            root = set_root(name, args.data, work)
            for preset in presets:
                rows.append(measure(root, preset, work, args.repeat, args.http))
                print_table(rows[-1:], args.repeat)
    print_table(rows, args.repeat)


if __name__ == "__main__":
    main()
