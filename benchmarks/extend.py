"""Growing a map (`extend_map`) against building it whole, on ``7scenes_seq1000``.

    python benchmarks/extend.py --full DIR/7scenes950-1 [--data ../shared/data] [--work DIR]
                                [--skip-sfm]

1. Known poses: a map triangulated from the first 500 of the 950 non-query frames, extended with
   the next 450 (their GT poses given), against the 950-frame map ``--full`` (built by
   `benchmarks/build_scale.py --keep`, one process; its build seconds come from its manifest):
   time, images, points, and the 50 queries of ``prepared/7scenes`` localized on both
   (count, median error).
2. No poses: an SfM map (intrinsics given: PINHOLE 640 480 525 525 320 240) of 250 frames
   (every other one of the first 500), extended with the 250 that follow them without poses:
   how many register, time, and the camera centres' error against the GT after a similarity
   fitted on all registered images.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from vloc.evaluation.sevenscenes import CAMERA, frame_name, frame_pose, map_frames, write_reference


def localize_all(map_dir: Path, prepared: Path) -> dict:
    from vloc.evaluation.metrics import evaluate
    from vloc.io.cameras import read_queries
    from vloc.io.poses import read_poses
    from vloc.localization.localizer import Localizer

    localizer = Localizer.load(map_dir)
    queries = read_queries(prepared / "queries.txt")
    results = [localizer.localize(prepared / "images" / q.name, q.camera) for q in queries]
    estimates = {r.name: r.cam_from_world for r in results if r.success}
    summary = evaluate(estimates, read_poses(prepared / "gt_queries.txt"))
    return dict(localized=summary.localized, n=len(results), median_cm=100 * summary.median_t)


def write_list(path: Path, frames: list[int]) -> Path:
    path.write_text("".join(f"{frame_name(i)}\n" for i in frames))
    return path


def known_poses(args, work: Path) -> dict:
    from vloc.config import get_preset
    from vloc.mapping.build import build_map
    from vloc.mapping.extend import extend_map
    from vloc.mapping.manifest import read_manifest

    seq, prepared = args.data / "7scenes_seq1000", args.data / "prepared" / "7scenes"
    frames = map_frames(950)
    ref = work / "ref950"
    write_reference(seq, frames, ref)
    part = work / "map500"
    t = time.perf_counter()
    build_map(seq, part, get_preset("sift"), reference=ref, image_list=write_list(work / "first500.txt", frames[:500]))
    build500 = time.perf_counter() - t
    t = time.perf_counter()
    result = extend_map(part, seq, reference=ref)
    extend_s = time.perf_counter() - t
    full = read_manifest(args.full)
    grown = read_manifest(part)
    return dict(build500_s=build500, extend_s=extend_s, extend_stages=grown.extensions[-1]["seconds"],
                added=len(result.registered), unregistered=len(result.unregistered),
                full_s=sum(full.build_seconds.values()), grown_images=grown.counts.images,
                full_images=full.counts.images, grown_points=grown.counts.points3D, full_points=full.counts.points3D,
                grown_loc=localize_all(part, prepared), full_loc=localize_all(args.full, prepared))


def no_poses(args, work: Path) -> dict:
    import pycolmap

    from vloc.config import get_preset
    from vloc.io.cameras import camera_from_text
    from vloc.mapping.build import build_map
    from vloc.mapping.extend import extend_map
    from vloc.mapping.map_dir import load_map

    seq = args.data / "7scenes_seq1000"
    frames = map_frames(500)
    first, rest = frames[:250], frames[250:]
    sfm = work / "sfm250"
    t = time.perf_counter()
    build_map(seq, sfm, get_preset("sift"), image_list=write_list(work / "sfm_first.txt", first),
              cameras=camera_from_text(CAMERA, "--camera"))
    build_s = time.perf_counter() - t
    before = load_map(sfm).manifest.counts.images
    t = time.perf_counter()
    result = extend_map(sfm, seq, image_list=write_list(work / "sfm_rest.txt", rest))
    extend_s = time.perf_counter() - t
    rec = load_map(sfm).reconstruction
    names = sorted(im.name for im in rec.images.values() if im.has_pose)
    est = np.array([rec.find_image_with_name(n).projection_center() for n in names])
    index = {frame_name(i): i for i in frames}
    gt = np.array([frame_pose(seq, index[n]).inverse().translation for n in names])
    sim = pycolmap.estimate_sim3d(est, gt)
    new = [k for k, n in enumerate(names) if n in set(result.registered)]
    err = np.linalg.norm(np.array([sim * c for c in est]) - gt, axis=1)
    return dict(build250_s=build_s, map_images=before, extend_s=extend_s, added=len(result.registered),
                of=len(rest), unregistered=len(result.unregistered),
                median_cm_new=100 * float(np.median(err[new])), p90_cm_new=100 * float(np.percentile(err[new], 90)),
                median_cm_all=100 * float(np.median(err)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", type=Path, required=True, help="the 950-frame map of build_scale.py --keep")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path)
    parser.add_argument("--skip-sfm", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import pycolmap

    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        a = known_poses(args, work)
        print(json.dumps(a), flush=True)
        b = None if args.skip_sfm else no_poses(args, work)
        print(json.dumps(b), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    print(f"known poses: 500-frame map {a['build500_s']:.0f} s + extend by {a['added']} ({a['unregistered']} not "
          f"registered) {a['extend_s']:.0f} s {a['extend_stages']} vs full 950 build {a['full_s']:.0f} s")
    print(f"  images {a['grown_images']} vs {a['full_images']}, points {a['grown_points']} vs {a['full_points']}; "
          f"queries: grown {a['grown_loc']} vs full {a['full_loc']}")
    if b:
        print(f"no poses: SfM map of {b['map_images']}/250 in {b['build250_s']:.0f} s, extended by "
              f"{b['added']}/{b['of']} in {b['extend_s']:.0f} s; centre error after sim3 (new images) "
              f"median {b['median_cm_new']:.2f} cm, "
              f"p90 {b['p90_cm_new']:.2f} cm; all {b['median_cm_all']:.2f} cm")


if __name__ == "__main__":
    main()
