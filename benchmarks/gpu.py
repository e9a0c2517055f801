"""CPU and GPU side by side in one run (issue 29): query latency by stage, accuracy, map builds and
peak GPU memory.

    python benchmarks/gpu.py [--devices cpu cuda] [--sets kitti 7scenes] [--presets sift fast aliked accurate]
                             [--builds aliked sift] [--build-devices cuda] [--queries N] [--repeat 2]
                             [--work DIR] [--json FILE]

Per set, one map per preset, triangulated from the ground-truth poses (built once, on the first
device of ``--devices``, then reused from ``--work``). Per device and preset: a warm Localizer
localizes the first ``--queries`` queries ``--repeat`` times after an untimed warm-up; the table
gives median and p90 of every stage and of the total, the localized count and median errors of the
first pass (``accurate``: also its second layer alone, timed by localizing on that layer as the
localizer does after a weak first answer). ``delg``: DELG global extraction per query image (the
r50 network as ``build_delg`` makes it: the timing of the architecture, whatever the weights).
Builds: the 250-image 7scenes map (``--builds`` presets) on each of ``--build-devices``, seconds
from a fresh work directory. GPU memory: the peak torch allocated during each row.

The device time is short: install with ``make setup TORCH=cuda``, then run this once; rows are
printed as they finish, so a run cut short still leaves its figures.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vloc.config import get_preset
from vloc.evaluation.metrics import evaluate, thresholds_for
from vloc.evaluation.timing import STAGES, stage_percentiles
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared
from vloc.io.images import read_image
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer
from vloc.mapping.build import build_map
from vloc.retrieval import make_global_model

DATA = Path("../shared/data")


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _map(ds, preset: str, work: Path, device: str) -> Path:
    out = work / "maps" / f"{ds.name}_{preset}"
    if not out.exists():
        build_map(ds.images, out, get_preset(preset), reference=ds.ref_model, device=device)
    return out


def latency_row(ds, preset: str, device: str, map_dir: Path, n: int, repeat: int) -> dict:
    queries = read_queries(ds.root / "queries.txt")[:n]
    images = {q.name: read_image(ds.images / q.name) for q in queries}
    localizer = Localizer.load(map_dir, device=device)
    localizer.localize(images[queries[0].name], queries[0].camera, name=queries[0].name)  # warm-up
    _peak_reset(device)
    timings, second, poses = [], [], {}
    for p in range(repeat):
        for q in queries:
            result = localizer.localize(images[q.name], q.camera, name=q.name)
            timings.append(result.timings)
            if p == 0 and result.success:
                poses[q.name] = result.cam_from_world
            if p == 0 and localizer.fallback is not None:  # the second layer alone, as after a weak answer
                layer = localizer.fallback
                raw = localizer.models.get("global", layer.global_conf, make_global_model)(images[q.name])
                t = time.perf_counter()
                layer.localize(images[q.name], q.camera, "given", q.name, raw, None)
                second.append(time.perf_counter() - t)
    truth = {k: v for k, v in read_poses(ds.root / "gt_queries.txt").items() if k in images}
    thresholds, unit, scale = thresholds_for(ds.meta)
    summary = evaluate(poses, truth, thresholds)
    stats = stage_percentiles(timings)
    return dict(set=ds.name, preset=preset, device=device, queries=len(queries), localized=len(poses),
                median_t=summary.median_t / scale, unit=unit, median_r=summary.median_r,
                median_ms={k: 1e3 * v for k, v in stats["median"].items()},
                p90_ms={k: 1e3 * v for k, v in stats["p90"].items()},
                second_layer_ms=1e3 * float(np.median(second)) if second else None, peak_mib=_peak_mib(device))


def delg_row(ds, device: str, work: Path, n: int, repeat: int) -> dict:
    from vloc.config import GlobalConf
    from vloc.models.delg import build_delg, save_delg

    weights = work / "delg_r50_arch.pt"
    if not weights.exists():
        save_delg(build_delg("r50"), weights)
    model = make_global_model(GlobalConf(name="delg", variant="r50", weights=str(weights), resize_max=1024), device)
    images = [read_image(ds.images / q.name) for q in read_queries(ds.root / "queries.txt")[:n]]
    model(images[0])
    _peak_reset(device)
    times = []
    for _ in range(repeat):
        for image in images:
            t = time.perf_counter()
            model(image)
            times.append(time.perf_counter() - t)
    return dict(set=ds.name, preset="delg (global)", device=device, queries=len(images),
                median_ms={"total": 1e3 * float(np.median(times))}, p90_ms={"total": 1e3 * float(np.percentile(times, 90))},
                peak_mib=_peak_mib(device))


def build_row(ds, preset: str, device: str, work: Path) -> dict:
    out = work / "builds" / f"{ds.name}_{preset}_{device.replace(':', '')}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    _peak_reset(device)
    t = time.perf_counter()
    manifest = build_map(ds.images, out, get_preset(preset), reference=ds.ref_model, device=device)
    return dict(set=ds.name, preset=preset, device=device, build_s=time.perf_counter() - t,
                images=manifest.counts.images, peak_mib=_peak_mib(device))


def print_row(row: dict) -> None:
    if "build_s" in row:
        print(f"build  {row['set']:<8} {row['preset']:<14} {row['device']:<7} {row['images']:>4} images "
              f"{row['build_s']:8.1f} s  peak GPU {row['peak_mib'] or 0:8.0f} MiB", flush=True)
        return
    med, p90 = row["median_ms"], row["p90_ms"]
    stages = "  ".join(f"{s} {med.get(s, 0):6.1f}/{p90.get(s, 0):6.1f}" for s in STAGES if s in med)
    acc = (f"  {row['localized']}/{row['queries']} {row['median_t']:.2f} {row['unit']} {row['median_r']:.2f} deg"
           if "localized" in row else "")
    second = f"  2nd layer {row['second_layer_ms']:.1f}" if row.get("second_layer_ms") else ""
    print(f"query  {row['set']:<8} {row['preset']:<14} {row['device']:<7} total {med['total']:7.1f}/{p90['total']:7.1f} ms"
          f"  {stages}{second}{acc}  peak GPU {row['peak_mib'] or 0:.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when torch sees a GPU")
    parser.add_argument("--sets", nargs="+", default=["kitti", "7scenes"])
    parser.add_argument("--presets", nargs="+", default=["sift", "fast", "aliked", "accurate"])
    parser.add_argument("--builds", nargs="*", default=["aliked", "sift"])
    parser.add_argument("--build-devices", nargs="*", default=None, help="default: the GPU only (when there is one)")
    parser.add_argument("--queries", type=int, default=1000, help="the first N queries of each set")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    gpu = torch.cuda.is_available()
    devices = args.devices or (["cpu", "cuda"] if gpu else ["cpu"])
    build_devices = args.build_devices if args.build_devices is not None else (["cuda"] if gpu else [])
    print(f"torch {torch.__version__}; GPU: {torch.cuda.get_device_name(0) if gpu else 'none'}; "
          f"CPU threads {torch.get_num_threads()}; devices {devices}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.sets:
            ds = open_prepared(args.data / "prepared" / name)
            maps = {p: _map(ds, p, work, devices[-1]) for p in args.presets}
            for device in devices:
                for preset in args.presets:
                    rows.append(latency_row(ds, preset, device, maps[preset], args.queries, args.repeat))
                    print_row(rows[-1])
                rows.append(delg_row(ds, device, work, min(args.queries, 20), args.repeat))
                print_row(rows[-1])
        seven = open_prepared(args.data / "prepared" / "7scenes")
        for device in build_devices:
            for preset in args.builds:
                rows.append(build_row(seven, preset, device, work))
                print_row(rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    sys.exit(0)


if __name__ == "__main__":
    main()
