"""SfM from scratch against ground truth: a prepared set with pseudo ground truth (default: lund)
or ``--frames N`` frames of ``7scenes_seq1000`` (true ground truth, metres), with the intrinsics
estimated or given (``--camera``, e.g. the 7-Scenes RGB camera ``PINHOLE 640 480 525 525 320 240``).

    python benchmarks/sfm.py [--set lund | --frames 250] [--camera "MODEL W H PARAMS..." --camera ""]
                             [--mappers incremental global] [--data ../shared/data]

For each mapper: registered images, 3D points, mean reprojection error, build time, and two
gauge-free comparisons with the pseudo ground truth: the median error of the relative rotation
over all image pairs, and the camera-centre error after a similarity alignment (Umeyama) as a
fraction of the median distance between consecutive pseudo-GT centres ("/ step"), and in the
ground truth's units (median and 90th percentile). Each ``--camera`` value is one run per mapper;
an empty value means "not given".
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap

from vloc.config import DEFAULT_PRESET, get_preset
from vloc.mapping.build import build_map
from vloc.mapping.map_dir import load_map


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``dst ~ s R src + t`` for ``(N, 3)`` point sets."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(xd.T @ xs / len(src))
    sign = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    r = u @ sign @ vt
    s = np.trace(np.diag(d) @ sign) / xs.var(0).sum()
    return s, r, mu_d - s * r @ mu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="lund")
    parser.add_argument("--mappers", nargs="+", default=["incremental", "global"])
    parser.add_argument("--frames", type=int, help="SfM on this many frames of 7scenes_seq1000 instead of --set")
    parser.add_argument("--camera", nargs="+", default=[""], help="intrinsics given to SfM ('' = not given)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory() as tmp:
        if args.frames:
            from vloc.evaluation.sevenscenes import frame_name, map_frames, write_reference

            frames = map_frames(args.frames)
            write_reference(args.data / "7scenes_seq1000", frames, Path(tmp) / "gt")
            gt = pycolmap.Reconstruction(str(Path(tmp) / "gt"))
            images, label = args.data / "7scenes_seq1000", f"7scenes_seq1000, {len(frames)} frames"
            image_list = Path(tmp) / "images.txt"
            image_list.write_text("".join(f"{frame_name(i)}\n" for i in frames))
        else:
            root = args.data / "prepared" / args.set
            gt = pycolmap.Reconstruction(str(root / "pseudo_gt"))
            images, label, image_list = root / "images", args.set, None
        for camera in args.camera:
            run(gt, images, image_list, label, camera, args.mappers)


def run(gt: pycolmap.Reconstruction, images: Path, image_list: Path | None, label: str, camera: str,
        mappers: list[str]) -> None:
    from vloc.io.cameras import camera_from_text

    gt_centres = {im.name: im.projection_center() for im in gt.images.values()}
    ordered = np.array([gt_centres[n] for n in sorted(gt_centres)])
    unit = float(np.median(np.linalg.norm(np.diff(ordered, axis=0), axis=1)))
    print(f"\n{label}: {len(gt_centres)} images; preset {DEFAULT_PRESET}; intrinsics "
          f"{camera or 'not given'}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'mapper':<12}{'registered':>11}{'points3D':>10}{'reproj px':>10}{'time s':>8}"
          f"{'rel. rot. err deg':>19}{'centre err / step':>19}{'median / p90':>18}{'focal px':>10}")
    cameras = camera_from_text(camera, "--camera") if camera else None
    for mapper in mappers:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            build_map(images, Path(tmp) / "map", get_preset(DEFAULT_PRESET), mapper=mapper, image_list=image_list,
                      cameras=cameras)
            seconds = time.perf_counter() - t
            rec = load_map(Path(tmp) / "map").reconstruction
        names = [im.name for im in rec.images.values() if im.has_pose and im.name in gt_centres]
        ours = np.array([rec.find_image_with_name(n).projection_center() for n in names])
        theirs = np.array([gt_centres[n] for n in names])
        s, r, tr = umeyama(ours, theirs)
        err = np.linalg.norm((s * (r @ ours.T)).T + tr - theirs, axis=1)
        pose = {n: rec.find_image_with_name(n).cam_from_world() for n in names}
        gt_pose = {n: gt.find_image_with_name(n).cam_from_world() for n in names}
        rel = [np.rad2deg(((pose[b] * pose[a].inverse()).rotation
                           * (gt_pose[b] * gt_pose[a].inverse()).rotation.inverse()).angle())
               for a, b in itertools.combinations(names, 2)]
        focal = np.median([c.mean_focal_length() for c in rec.cameras.values()])
        print(f"{mapper:<12}{rec.num_reg_images():>8}/{len(gt_centres):<2}{rec.num_points3D():>10}"
              f"{rec.compute_mean_reprojection_error():>10.2f}{seconds:>8.1f}{np.median(rel):>19.2f}"
              f"{np.median(err) / unit:>19.3f}{f'{np.median(err):.4f} / {np.percentile(err, 90):.4f}':>18}"
              f"{focal:>10.1f}")


if __name__ == "__main__":
    main()
