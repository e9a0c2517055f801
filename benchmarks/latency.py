"""Where a warm query's time goes, per preset and set, in process and through the HTTP service.

    python benchmarks/latency.py [--presets before sift fast xfeat] [--sets kitti 7scenes demo]
                                 [--repeat 3] [--no-http] [--work DIR] [--data ../shared/data]
                                 [--baseline e162e4e]

For each set and preset: the map is triangulated from the set's ground-truth poses (build time and
images per minute from a fresh build; maps kept under ``--work`` are reused and then show no build
time), one warm Localizer per preset localizes every query ``--repeat`` times after one untimed
warm-up, the presets' passes interleaved (pass 1 of each, then pass 2, ...: the machine's drift
falls on all alike); median and p90 per stage and of the total, the localized count and median
errors of the first pass. ``http``: the same
queries posted as raw image bytes to ``vloc serve`` on the same map, in a child process, one
keep-alive connection; median client-side time per query, and its excess over the in-process
median (HTTP overhead). ``before`` is the ``sift`` preset of the code at ``--baseline`` (a git
revision: by default the last commit before issue 12's changes), checked out as a git worktree
under ``--work`` and run in a child process on its own map, built by that code; ``before-NAME`` is
that code's preset NAME. The hloc figures of issue 12 are scaled by ``before``'s time here over its
time on the issue's machine, inside one run; baseline passes are interleaved with the others like
any preset's.
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
from vloc.evaluation.timing import STAGES, set_root, stage_percentiles
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared
from vloc.io.poses import read_poses
from vloc.mapping.manifest import read_manifest

# Issue 12's hloc SIFT + mutual NN per-query seconds and vloc `sift` then, on the issue's machine.
HLOC_S = {"kitti": 0.634, "7scenes": 0.371}
SIFT_THEN_S = {"kitti": 0.358, "7scenes": 0.272}


BASELINE = "e162e4e"  # the last commit before issue 12's changes
# Run by the baseline tree's Python (cwd and PYTHONPATH: the worktree), so it may only use the API
# that code has: build the map unless it is there, warm up, then answer each line on stdin with one
# pass over the queries as a JSON line after "@@ ".
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
root, map_dir, preset = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ds = open_prepared(root)
build_s = float("nan")
if not map_dir.exists():
    t = time.perf_counter()
    build_map(ds.images, map_dir, get_preset(preset), reference=ds.ref_model)
    build_s = time.perf_counter() - t
localizer = Localizer.load(map_dir, preset)
queries = read_queries(ds.queries)
localizer.localize(ds.images / queries[0].name, queries[0].camera)
print("@@", json.dumps({"build_s": build_s}), flush=True)
for _ in sys.stdin:  # one pass over the queries per line
    run = [localizer.localize(ds.images / q.name, q.camera) for q in queries]
    print("@@", json.dumps([[r.name, r.cam_from_world.matrix().tolist() if r.success else None, r.timings]
                            for r in run]), flush=True)
"""


def baseline_tree(revision: str, work: Path) -> Path:
    """A git worktree of this repository at ``revision`` under ``work`` (made once, reused)."""
    tree = work / f"baseline-{revision}"
    if not tree.exists():
        repo = Path(__file__).resolve().parent.parent
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), revision], check=True,
                       stdout=subprocess.DEVNULL)
    return tree


def baseline_preset(name: str) -> str | None:
    """The baseline code's preset a row name stands for: "before" -> "sift", "before-fast" -> "fast";
    None for this tree's presets."""
    if name == "before":
        return "sift"
    return name.removeprefix("before-") if name.startswith("before-") else None


class BaselineRunner:
    """A preset of the baseline tree in a child process on its own map (built there by that code):
    one pass over the queries per :meth:`run`."""

    def __init__(self, root: Path, revision: str, work: Path, preset: str):
        tree = baseline_tree(revision, work)
        suffix = "" if preset == "sift" else f"-{preset}"  # sift's map keeps its earlier name
        self.map_dir = work / f"{open_prepared(root).name}-baseline-{revision}{suffix}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BASELINE_CHILD, str(root.resolve()), str(self.map_dir.resolve()), preset], cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.build_s = self._answer()["build_s"]

    def _answer(self):
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        raise SystemExit(f"the baseline process ended (exit code {self.proc.wait()})")

    def run(self) -> list[tuple[str, pycolmap.Rigid3d | None, dict]]:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return [(n, pycolmap.Rigid3d(np.asarray(m)) if m is not None else None, t) for n, m, t in self._answer()]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


class LocalRunner:
    """A preset of this tree, warm in this process: one pass over the queries per :meth:`run`."""

    def __init__(self, ds, preset, work: Path):
        from vloc.localization.localizer import Localizer

        self.map_dir, self.build_s = map_for(ds, preset, work)
        self.localizer = Localizer.load(self.map_dir, preset)
        self.images, self.queries = ds.images, read_queries(ds.queries)
        self.localizer.localize(self.images / self.queries[0].name, self.queries[0].camera)  # warm-up

    def run(self) -> list[tuple[str, pycolmap.Rigid3d | None, dict]]:
        results = [self.localizer.localize(self.images / q.name, q.camera) for q in self.queries]
        return [(r.name, r.cam_from_world if r.success else None, r.timings) for r in results]

    def close(self) -> None:
        pass


def measure_set(root: Path, presets: list, work: Path, repeat: int, revision: str, http: bool) -> list[dict]:
    """Every preset on one set, their passes interleaved (pass 1 of each preset, then pass 2, ...)
    so that the machine's drift during the run falls on all of them alike."""
    ds = open_prepared(root)
    runners = {p if isinstance(p, str) else p.name:
               BaselineRunner(root, revision, work, baseline_preset(p)) if isinstance(p, str) else LocalRunner(ds, p, work)
               for p in presets}
    passes: dict[str, list] = {name: [] for name in runners}
    try:
        for _ in range(repeat):
            for name, runner in runners.items():
                passes[name].append(runner.run())
    finally:
        for runner in runners.values():
            runner.close()
    queries = read_queries(ds.queries)
    size = f"{queries[0].camera.width}x{queries[0].camera.height}"
    rows = []
    for name, runner in runners.items():
        first = passes[name][0]
        row = summarize(ds, name, len(first), {n: pose for n, pose, _ in first if pose is not None},
                        [t for run in passes[name] for _, _, t in run], runner.build_s,
                        read_manifest(runner.map_dir).counts.images, size)
        if http and name in PRESETS:
            row["http"] = float(np.median(over_http(runner.map_dir, name, ds, repeat)))
        rows.append(row)
    return rows


def map_for(ds, preset, work: Path) -> tuple[Path, float]:
    from vloc.mapping.build import build_map

    map_dir = work / f"{ds.name}-{Path(preset.features_file).stem}-{preset.global_desc.name}-{preset.global_desc.resize_max}"
    if map_dir.exists():
        return map_dir, float("nan")
    t = time.perf_counter()
    build_map(ds.images, map_dir, preset, reference=ds.ref_model)
    return map_dir, time.perf_counter() - t


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
    return {**row, **stage_percentiles(timed)}


def print_table(rows: list[dict], repeat: int) -> None:
    import torch

    print(f"\ntorch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.2f}; seconds per query, median over {repeat} passes (p90 below); error: "
          "translation (cm; sets in an SfM gauge: % of a camera step) / rotation (deg)")
    head = (f"{'set':<12}{'preset':<12}{'size':>10}{'loc':>7}{'error':>14}  " + "".join(f"{s:>9}" for s in STAGES)
            + f"{'total':>8}{'http':>8}{'build s':>9}{'img/min':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['set']:<12}{r['preset']:<12}{r['size']:>10}{r['ok']:>3}/{r['n']:<3}"
              f"{r['t_cm']:>8.2f}/{r['r']:.3f}  " + "".join(f"{r['median'][s]:>9.3f}" for s in STAGES)
              + f"{r['median']['total']:>8.3f}{r['http']:>8.3f}{r['build']:>9.1f}{r['img_min']:>8.0f}")
        print(" " * 52 + "p90" + "".join(f"{r['p90'][s]:>9.3f}" for s in STAGES) + f"{r['p90']['total']:>8.3f}")
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
    parser.add_argument("--presets", nargs="+", default=["before", "sift", "fast", "xfeat"],
                        help="this tree's presets, 'before' (the baseline's sift) or 'before-NAME'")
    parser.add_argument("--sets", nargs="+", default=["kitti", "7scenes", "demo"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-http", dest="http", action="store_false")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--baseline", default=BASELINE, help="git revision whose presets are `before`, `before-NAME`")
    parser.add_argument("--work", type=Path, help="keep the maps here and reuse them (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    presets = [p if baseline_preset(p) else get_preset(p) for p in args.presets]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.sets:
            root = set_root(name, args.data, work)
            rows += measure_set(root, presets, work, args.repeat, args.baseline, args.http)
            print_table(rows[-len(presets):], args.repeat)
    print_table(rows, args.repeat)
    if args.work is None:  # the baseline worktree went with the temporary folder
        subprocess.run(["git", "worktree", "prune"], cwd=Path(__file__).resolve().parent.parent, check=False)


if __name__ == "__main__":
    main()
