"""A build killed with SIGKILL in the middle of SfM, then rerun: how long the rerun takes against
the uninterrupted build, and whether it ends with the same registered images (issue 25).

    python benchmarks/sfm_resume.py --frames 500 [--kill-at 0.5] [--checkpoint-every 30]
                                    [--seed-work DIR] [--data ../shared/data]

Steps, each ``vloc map build`` in its own process on ``--frames`` frames of ``7scenes_seq1000``:
1. the uninterrupted build (its work directory kept; ``--seed-work`` reuses a work directory of
   the same images for the stages before SfM, to save their time in both builds);
2. a copy of that work directory without its model stage, built again: killed with SIGKILL once
   the mapper has written a checkpoint holding ``--kill-at`` of the images;
3. the same command again, which resumes from the checkpoint.
Prints the seconds of each, the images the checkpoint kept, and the registered counts.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pycolmap


def build_cmd(images: Path, names: Path, out: Path, work: Path, every: float) -> list[str]:
    return [sys.executable, "-m", "vloc.cli", "map", "build", "--images", str(images), "--image-list", str(names),
            "--out", str(out), "--work", str(work), "--checkpoint-every", str(every)]


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t, proc.stderr


def killed_build(cmd: list[str], wanted: int) -> tuple[float, int]:
    """Run ``cmd`` and SIGKILL it once its log says a checkpoint of ``wanted`` or more images is written."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        while proc.poll() is None:
            log.seek(0)
            found = [int(n) for n in re.findall(rb"checkpoint: (\d+) images registered", log.read())]
            if found and found[-1] >= wanted:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return time.perf_counter() - t, found[-1]
            time.sleep(0.5)
    raise SystemExit(f"the build ended ({proc.returncode}) before a checkpoint of {wanted} images; "
                     f"lower --checkpoint-every or --kill-at")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of the images registered at the kill")
    parser.add_argument("--checkpoint-every", type=float, default=30.0)
    parser.add_argument("--seed-work", type=Path, help="work directory of an earlier build of the same images")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    args = parser.parse_args()
    from vloc.evaluation.sevenscenes import frame_name, map_frames

    frames = list(range(1000)) if args.frames == 1000 else map_frames(args.frames)
    images = args.data / "7scenes_seq1000"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = tmp / "images.txt"
        names.write_text("".join(f"{frame_name(i)}\n" for i in frames))
        full_work = tmp / "full_work"
        if args.seed_work:
            shutil.copytree(args.seed_work, full_work, ignore=shutil.ignore_patterns("model", ".lock"))
        load = os.getloadavg()[0]
        full_s, full_log = timed(build_cmd(images, names, tmp / "full", full_work, args.checkpoint_every))
        sfm_s = float(re.findall(r"sfm: ([\d.]+) s", full_log)[-1])
        full = pycolmap.Reconstruction(str(tmp / "full" / "model"))

        work = tmp / "work"
        shutil.copytree(full_work, work, ignore=shutil.ignore_patterns("model", ".lock"))
        cmd = build_cmd(images, names, tmp / "resumed", work, args.checkpoint_every)
        kill_s, kept = killed_build(cmd, int(args.kill_at * len(frames)))
        rerun_s, rerun_log = timed(cmd)
        resumed = pycolmap.Reconstruction(str(tmp / "resumed" / "model"))
        said = re.findall(r"SfM resumes from the checkpoint in .*", rerun_log)
    reg = lambda rec: sorted(im.name for im in rec.images.values() if im.has_pose)  # noqa: E731
    print(f"\n7scenes_seq1000, {len(frames)} frames; checkpoint every {args.checkpoint_every:.0f} s; "
          f"{os.cpu_count()} CPUs, load average {load:.2f} at the start; {time.strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"uninterrupted build      {full_s:8.1f} s (SfM stage {sfm_s:.1f} s), {len(reg(full))} registered")
    print(f"killed build             {kill_s:8.1f} s, at a checkpoint of {kept} images")
    print(f"rerun                    {rerun_s:8.1f} s, {len(reg(resumed))} registered; log: {said[0] if said else '-'}")
    print(f"same registered images as the uninterrupted build: {reg(full) == reg(resumed)}")


if __name__ == "__main__":
    main()
