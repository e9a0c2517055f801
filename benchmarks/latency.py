"""Where a warm query's time goes, per preset and set, in process and through the HTTP service.

    python benchmarks/latency.py [--presets before sift fast xfeat] [--sets kitti 7scenes demo]
                                 [--repeat 3] [--no-http] [--work DIR] [--data ../shared/data]
                                 [--baseline e162e4e]

For each set and preset: the map is triangulated from the set's ground-truth poses (build time and
images per minute from a fresh build; maps kept under ``--work`` are reused and then show no build
time), one warm Localizer localizes every query ``--repeat`` times after one untimed warm-up; median
and p90 per stage and of the total, the localized count and median errors. ``http``: the same
queries posted as raw image bytes to ``vloc serve`` on the same map, in a child process, one
keep-alive connection; median client-side time per query, and its excess over the in-process
median (HTTP overhead). ``before`` is the ``sift`` preset of the code at ``--baseline`` (a git
revision: by default the last commit before issue 12's changes), checked out as a git worktree
under ``--work`` and run in a child process on its own map, built by that code; the hloc figures of
issue 12 are scaled by its time here over its time on the issue's machine, inside one run.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pycolmap

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


BASELINE = "e162e4e"  # the last commit before issue 12's changes
# Run by the baseline tree's Python (cwd and PYTHONPATH: the worktree), so it may only use the API
# that code has: build the map once, localize every query REPEAT times after a warm-up, write JSON.
BASELINE_CHILD = """
import json, sys, time
from pathlib import Path
import pycolmap
from vloc.config import get_preset
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared
from vloc.localization.localizer import Localizer
from vloc.mapping.build import build_map

pycolmap.logging.minloglevel = 2
root, map_dir, repeat, out = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
ds = open_prepared(root)
build_s = float("nan")
if not map_dir.exists():
    t = time.perf_counter()
    build_map(ds.images, map_dir, get_preset("sift"), reference=ds.ref_model)
    build_s = time.perf_counter() - t
localizer = Localizer.load(map_dir, "sift")
queries = read_queries(ds.queries)
localizer.localize(ds.images / queries[0].name, queries[0].camera)
runs = [[localizer.localize(ds.images / q.name, q.camera) for q in queries] for _ in range(repeat)]
out.write_text(json.dumps({"build_s": build_s, "size": [queries[0].camera.width, queries[0].camera.height],
    "timings": [r.timings for run in runs for r in run],
    "poses": {r.name: r.cam_from_world.matrix().tolist() for r in runs[0] if r.success}}))
"""


def baseline_tree(revision: str, work: Path) -> Path:
    """A git worktree of this repository at ``revision`` under ``work`` (made once, reused)."""
    tree = work / f"baseline-{revision}"
    if not tree.exists():
        repo = Path(__file__).resolve().parent.parent
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), revision], check=True,
                       stdout=subprocess.DEVNULL)
    return tree


def measure_baseline(root: Path, revision: str, work: Path, repeat: int) -> dict:
    """The row of ``before``: the baseline tree's ``sift`` on its own map, in a child process."""
    tree = baseline_tree(revision, work)
    ds = open_prepared(root)
    map_dir = work / f"{ds.name}-baseline-{revision}"
    out = work / f"{ds.name}-baseline-{revision}.json"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", BASELINE_CHILD, str(root.resolve()), str(map_dir.resolve()), str(repeat),
                    str(out.resolve())], cwd=tree, env=env, check=True)
    data = json.loads(out.read_text())
    poses = {n: pycolmap.Rigid3d(np.asarray(m)) for n, m in data["poses"].items()}
    n_images = read_manifest(map_dir).counts.images
    return summarize(ds, "before", len(read_queries(ds.queries)), poses, data["timings"], data["build_s"],
                     n_images, "{}x{}".format(*data["size"]))


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


def summarize(ds, preset: str, n: int, poses: dict, timed: list[dict], build_s: float, n_images: int,
              size: str) -> dict:
    """One table row: localized count and median errors of ``poses``, stage percentiles of ``timed``."""
    thresholds, unit, unit_length = thresholds_for(ds.meta, ((0.25, 2.0),))
    summary = evaluate(poses, read_poses(ds.gt), thresholds)
    row = dict(set=ds.name, preset=preset, n=n, ok=summary.localized, t_cm=100 * summary.median_t / unit_length,
               r=summary.median_r, build=build_s, img_min=60 * n_images / build_s, size=size, http=float("nan"))
    for label, q in (("median", 50), ("p90", 90)):
        row[label] = {s: float(np.percentile([t.get(s, 0.0) for t in timed], q)) for s in STAGES}
        row[label]["total"] = float(np.percentile([sum(t.values()) for t in timed], q))
    return row


def measure(root: Path, preset, work: Path, repeat: int, http: bool) -> dict:
    ds = open_prepared(root)
    map_dir, build_s = map_for(ds, preset, work)
    results, timed = in_process(map_dir, preset, ds, repeat)
    size = f"{results[0].camera.width}x{results[0].camera.height}" if results[0].camera else ""
    row = summarize(ds, preset.name, len(results), {r.name: r.cam_from_world for r in results if r.success},
                    [r.timings for r in timed], build_s, read_manifest(map_dir).counts.images, size)
    if http and preset.name in PRESETS:
        row["http"] = float(np.median(over_http(map_dir, preset.name, ds, repeat)))
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
    parser.add_argument("--baseline", default=BASELINE, help="git revision whose `sift` is `before`")
    parser.add_argument("--work", type=Path, help="keep the maps here and reuse them (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    presets = [p if p == "before" else get_preset(p) for p in args.presets]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.sets:
            root = set_root(name, args.data, work)
            for preset in presets:
                rows.append(measure_baseline(root, args.baseline, work, args.repeat) if preset == "before"
                            else measure(root, preset, work, args.repeat, args.http))
                print_table(rows[-1:], args.repeat)
    print_table(rows, args.repeat)
    if args.work is None:  # the baseline worktree went with the temporary folder
        subprocess.run(["git", "worktree", "prune"], cwd=Path(__file__).resolve().parent.parent, check=False)


if __name__ == "__main__":
    main()
