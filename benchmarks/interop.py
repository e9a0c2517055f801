"""Importing a COLMAP project against building the map (issue 27): time and accuracy.

    python benchmarks/interop.py [--frames 250] [--overlap 10] [--work DIR]

On 7scenes' map frames (every 4th, ``--frames`` of them) with their known poses: pycolmap's own
pipeline makes a COLMAP project (SIFT extraction with the set's PINHOLE camera, sequential matching
with ``--overlap`` neighbours, the point triangulator at the known poses); ``vloc map import colmap``
turns it into a map (preset ``colmap``); ``vloc map build --reference`` builds the ``sift`` map of
the same images, and ``vloc map build`` without poses (SfM, the default) is timed as well. The
imported and the ``--reference`` map localize the set's queries; the table gives seconds,
localized queries and median errors, and the import's time over each build's (target <= 1/10) and
its median error over the known-pose build's (target: within 10 %).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap

from vloc.evaluation.metrics import pose_error
from vloc.io.cameras import read_queries
from vloc.io.images import read_image
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer

SEVEN = Path(os.environ.get("VLOC_DATA", "../shared/data")) / "prepared" / "7scenes"


def colmap_project(names: list[str], work: Path, overlap: int) -> tuple[Path, Path, float]:
    t = time.perf_counter()
    database = work / "database.db"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model, reader.camera_params = "PINHOLE", "525,525,320,240"
    pycolmap.extract_features(database, SEVEN / "images", image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, device=pycolmap.Device.cpu)
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = overlap
    pycolmap.match_sequential(database, pairing_options=pairing, device=pycolmap.Device.cpu)
    db = pycolmap.Database.open(str(database))
    ids = {im.name: im.image_id for im in db.read_all_images()}
    db.close()
    known = work / "known"
    known.mkdir()
    shutil.copy(SEVEN / "ref_model" / "cameras.txt", known / "cameras.txt")
    (known / "points3D.txt").write_text("")
    lines = []
    for line in (SEVEN / "ref_model" / "images.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 10 and not line.startswith("#") and fields[9] in ids:
            lines += [" ".join([str(ids[fields[9]]), *fields[1:]]), ""]
    (known / "images.txt").write_text("\n".join(lines) + "\n")
    (work / "sparse").mkdir()
    pycolmap.triangulate_points(pycolmap.Reconstruction(str(known)), database, SEVEN / "images", work / "sparse")
    return work / "sparse", database, time.perf_counter() - t


def vloc(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vloc.cli", *args], check=True, capture_output=True)
    return time.perf_counter() - t


def localize(map_dir: Path) -> tuple[int, float, float]:
    truth = read_poses(SEVEN / "gt_queries.txt")
    localizer = Localizer.load(map_dir)
    errors = []
    for q in read_queries(SEVEN / "queries.txt"):
        r = localizer.localize(read_image(SEVEN / "images" / q.name), q.camera, name=q.name)
        errors.append(pose_error(r.cam_from_world, truth[q.name]) if r.success else (np.inf, np.inf))
    e = np.array(errors)
    return int(np.isfinite(e[:, 0]).sum()), 100 * float(np.median(e[:, 0])), float(np.median(e[:, 1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--overlap", type=int, default=10)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        names = [f"frame-{i:06d}.color.jpg" for i in range(0, 4 * args.frames, 4)]
        (work / "images.txt").write_text("".join(n + "\n" for n in names))
        model, database, project_s = colmap_project(names, work, args.overlap)
        import_s = vloc("map", "import", "colmap", "--model", str(model), "--database", str(database), "--images",
                        str(SEVEN / "images"), "--out", str(work / "imported"))
        build_s = vloc("map", "build", "--images", str(SEVEN / "images"), "--reference", str(SEVEN / "ref_model"),
                       "--image-list", str(work / "images.txt"), "--out", str(work / "built"))
        sfm_s = vloc("map", "build", "--images", str(SEVEN / "images"), "--image-list", str(work / "images.txt"),
                     "--out", str(work / "sfm"))
        rows = [("pycolmap project (extract, match, triangulate)", project_s, None),
                ("vloc map import colmap", import_s, localize(work / "imported")),
                ("vloc map build --reference (sift)", build_s, localize(work / "built")),
                ("vloc map build (sift, SfM)", sfm_s, None)]
        print(f"\n7scenes, {len(names)} map frames, {len(read_queries(SEVEN / 'queries.txt'))} queries; "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'step':<48} {'seconds':>8} {'localized':>10} {'median cm':>10} {'median deg':>11}")
        for label, seconds, acc in rows:
            tail = "" if acc is None else f" {acc[0]:>10} {acc[1]:>10.2f} {acc[2]:>11.2f}"
            print(f"{label:<48} {seconds:>8.1f}{tail}")
        print(f"import time / known-pose build: {import_s / build_s:.3f}, / SfM build: {import_s / sfm_s:.3f} "
              f"(target <= 0.1); median error import / known-pose build: {rows[1][2][1] / rows[2][2][1]:.3f} "
              "(target <= 1.1)")


if __name__ == "__main__":
    main()
