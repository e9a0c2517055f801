"""Map building at scale: time by stage and peak memory of `build_map` with 1 and N local worker
processes and with Ray, triangulated from the ground-truth poses of ``7scenes_seq1000`` frames.

    python benchmarks/build_scale.py [--sizes 250 950] [--executors 1 2 ray] [--preset sift]
                                     [--data ../shared/data] [--keep DIR]

Each build runs in a fresh process from an empty work directory (nothing reused). Peak RSS:
``ru_maxrss`` of the build process itself, and of its largest worker process (local workers are
its children; Ray's workers are not, so only the driver is reported there). ``--keep DIR`` keeps
the maps (``DIR/7scenes{size}-{executor}``) for `benchmarks/extend.py --full`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vloc.evaluation.sevenscenes import map_frames, write_reference


def one(size: int, executor: str, out: Path, data: Path, preset: str) -> dict:
    """One build (in this process)."""
    import pycolmap

    from vloc.config import get_preset
    from vloc.mapping.build import build_map

    pycolmap.logging.minloglevel = 2
    seq = data / "7scenes_seq1000"
    ref = out.parent / f"ref{size}"
    if not ref.exists():
        write_reference(seq, map_frames(size), ref)
    work = out.parent / f"work-{out.name}"
    workers = int(executor) if executor != "ray" else 2
    t = time.perf_counter()
    manifest = build_map(seq, out, get_preset(preset), reference=ref, work=work, workers=workers,
                         ray=True if executor == "ray" else None)
    wall = time.perf_counter() - t
    work_mb = sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) / 2**20
    shutil.rmtree(work)
    return dict(size=size, executor=executor, wall=wall, stages=manifest.build_seconds,
                images=manifest.counts.images, points=manifest.counts.points3D, work_mb=work_mb,
                rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                child_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 950])
    parser.add_argument("--executors", nargs="+", default=["1", "2", "ray"])
    parser.add_argument("--preset", default="sift")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--keep", type=Path, help="keep the maps here")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: size executor out
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        size, executor, out = args.one
        print(json.dumps(one(int(size), executor, Path(out), args.data, args.preset)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            for executor in args.executors:
                out = root / f"7scenes{size}-{executor}"
                if out.exists():
                    shutil.rmtree(out)
                proc = subprocess.run([sys.executable, __file__, "--one", str(size), executor, str(out),
                                       "--data", str(args.data), "--preset", args.preset],
                                      check=True, capture_output=True, text=True)
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["load"] = os.getloadavg()[0]
                rows.append(row)
                print(json.dumps(row), flush=True)
                if not args.keep:
                    shutil.rmtree(out)
    print_table(rows, args)


def print_table(rows: list[dict], args) -> None:
    print(f"\n7scenes_seq1000 triangulated from GT poses, preset {args.preset}, {os.cpu_count()} CPUs; "
          "seconds per stage of build_map (extract / pairs / match / verify / triangulate / write), "
          "load average after each build")
    head = (f"{'images':>6}{'executor':>9}{'wall s':>8}{'img/min':>8}  {'extract/pairs/match/verify/tri/write':<38}"
            f"{'points':>8}{'work MB':>8}{'peak RSS MB':>12}{'worker RSS':>11}{'load':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        s = r["stages"]
        stages = "/".join(f"{s.get(k, 0):.0f}" for k in ("extract", "pairs", "match", "verify", "triangulate", "write"))
        worker = f"{r['child_rss_mb']:.0f}" if r["executor"] not in ("1", "ray") else "-"
        print(f"{r['images']:>6}{r['executor']:>9}{r['wall']:>8.0f}{60 * r['images'] / r['wall']:>8.0f}  {stages:<38}"
              f"{r['points']:>8}{r['work_mb']:>8.0f}{r['rss_mb']:>12.0f}{worker:>11}{r['load']:>6.2f}")


if __name__ == "__main__":
    main()
