"""Geo-registered maps on lund (issue 26): camera centres and localized queries against EXIF GPS.

    python benchmarks/geo.py [--presets sift aliked] [--queries map exif given]

For each preset, two maps built with ``vloc map build --gps exif``: all 29 lund photos (each
camera centre's distance to its own EXIF position) and the 20 map photos of the prepared split
(the 9 queries localized against it, their answer's latitude/longitude against their EXIF
position). The queries' intrinsics (``--queries``): ``map`` the map's own refined camera (the
same phone), ``default`` none (what ``vloc localize`` does when told nothing: the EXIF focal
length, or the map's refined calibration of the camera with that EXIF focal, ``intrinsics: map``),
``given`` the prepared set's queries.txt (the pseudo ground truth's SfM camera).

Columns: registered images, distance centre to EXIF (3D median, horizontal median, 3D max),
the GPS fit's scale; per query setting: localized of 9, horizontal distance to EXIF (median over
the localized, and over all 9 with a failure counted as infinitely far), heading spread.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vloc.io.gps import GpsFix, read_exif_gps
from vloc.io.text import data_lines
from vloc.localization.geo import map_frame
from vloc.localization.localizer import Localizer
from vloc.mapping.map_dir import load_map

LUND = Path(os.environ.get("VLOC_DATA", "../shared/data")) / "prepared" / "lund"


def build(images: Path, out: Path, preset: str, image_list: Path | None) -> float:
    args = [sys.executable, "-m", "vloc.cli", "map", "build", "--images", str(images), "--out", str(out),
            "--gps", "exif", "--preset", preset]
    if image_list is not None:
        args += ["--image-list", str(image_list)]
    t = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def centre_errors(out: Path, images: Path) -> tuple[int, np.ndarray, float]:
    data = load_map(out)
    frame = map_frame(data.manifest)
    posed = [im for im in data.reconstruction.images.values() if im.has_pose]
    gps = frame.fixes_to_enu([read_exif_gps(images / im.name) for im in posed])
    offsets = np.array([im.projection_center() for im in posed]) - gps
    return len(posed), offsets, data.manifest.geo.scale


def query_errors(out: Path, images: Path, queries: dict[str, list[str]], intrinsics: str) -> list[float | None]:
    localizer = Localizer.load(out)
    frame = localizer.geo_frame
    map_camera = next(iter(load_map(out).reconstruction.cameras.values()))
    errors = []
    for name, fields in queries.items():
        if intrinsics == "map":
            camera = map_camera
        elif intrinsics == "given":
            camera = {"model": fields[0], "width": int(fields[1]), "height": int(fields[2]),
                      "params": [float(v) for v in fields[3:]]}
        else:
            camera = None
        result = localizer.localize(images / name, camera=camera)
        if not result.success:
            errors.append(None)
            continue
        answer = GpsFix(latitude=result.geo.latitude, longitude=result.geo.longitude, altitude=result.geo.altitude)
        there, truth = frame.fixes_to_enu([answer, read_exif_gps(images / name)])
        errors.append(float(np.linalg.norm((there - truth)[:2])))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["sift", "aliked"])
    parser.add_argument("--queries", nargs="+", default=["map", "default", "given"], choices=["map", "default", "given"])
    args = parser.parse_args()
    images = LUND / "images"
    queries = {fields[0]: fields[1:] for _, fields in data_lines(LUND / "queries.txt", "queries")}
    map_names = sorted(p.name for p in images.iterdir() if p.name not in queries)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        listed = Path(tmp) / "map20.txt"
        listed.write_text("\n".join(map_names) + "\n")
        for preset in args.presets:
            seconds = build(images, Path(tmp) / f"all-{preset}", preset, None)
            n, offsets, scale = centre_errors(Path(tmp) / f"all-{preset}", images)
            d3, dh = np.linalg.norm(offsets, axis=1), np.linalg.norm(offsets[:, :2], axis=1)
            rows.append(f"| {preset} | 29 photos | {seconds:.0f} s | {n}/29 | {np.median(d3):.2f} / "
                        f"{np.median(dh):.2f} / {d3.max():.2f} m | {scale:.3f} | |")
            seconds = build(images, Path(tmp) / f"map20-{preset}", preset, listed)
            n, offsets, scale = centre_errors(Path(tmp) / f"map20-{preset}", images)
            d3, dh = np.linalg.norm(offsets, axis=1), np.linalg.norm(offsets[:, :2], axis=1)
            parts = []
            for intrinsics in args.queries:
                errors = query_errors(Path(tmp) / f"map20-{preset}", images, queries, intrinsics)
                found = [e for e in errors if e is not None]
                every = sorted(e if e is not None else np.inf for e in errors)
                parts.append(f"{intrinsics}: {len(found)}/9, {np.median(found) if found else np.nan:.2f} m "
                             f"(all 9: {np.median(every):.2f} m)")
            rows.append(f"| {preset} | 20 map photos | {seconds:.0f} s | {n}/20 | {np.median(d3):.2f} / "
                        f"{np.median(dh):.2f} / {d3.max():.2f} m | {scale:.3f} | {'; '.join(parts)} |")
    print("| preset | map | build | registered | centre to EXIF: 3D median / horizontal median / 3D max "
          "| GPS fit scale | queries, horizontal to EXIF (intrinsics: localized, median) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
