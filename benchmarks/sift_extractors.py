"""OpenCV SIFT (vloc's extractor) against pycolmap's CPU SIFT on the same images.

    python benchmarks/sift_extractors.py [--size 640 480] [--max-keypoints 2048] [--data ../shared/data]

Median seconds per image (after one warm-up) and keypoints found, on the first 10 images of each
prepared set, resized to ``--size``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from vloc.config import FeatureConf
from vloc.features import make_extractor
from vloc.io.images import list_images, read_image, to_grayscale


def median_time(fn, images) -> tuple[float, float]:
    fn(images[0])
    times, counts = [], []
    for im in images:
        t = time.perf_counter()
        counts.append(fn(im))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.median(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 480])
    parser.add_argument("--max-keypoints", type=int, default=2048)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    args = parser.parse_args()
    images = []
    for ds in sorted((args.data / "prepared").iterdir()):
        for name in list_images(ds / "images")[:10]:
            images.append(cv2.resize(to_grayscale(read_image(ds / "images" / name)), tuple(args.size),
                                     interpolation=cv2.INTER_AREA))
    ours = make_extractor(FeatureConf(max_keypoints=args.max_keypoints, resize_max=0))
    options = pycolmap.FeatureExtractionOptions()
    options.sift.max_num_features = args.max_keypoints
    options.use_gpu = False
    colmap_sift = pycolmap.Sift(options, pycolmap.Device.cpu)
    rows = [("opencv (vloc sift)", *median_time(lambda im: len(ours(im)), images)),
            ("pycolmap Sift (CPU)", *median_time(lambda im: len(colmap_sift.extract(im)[0]),
                                                  images))]
    print(f"\n{len(images)} images at {args.size[0]}x{args.size[1]}, max {args.max_keypoints} keypoints, "
          f"{os.cpu_count()} CPUs")
    print(f"{'extractor':<22}{'median s/img':>14}{'median kpts':>13}")
    for name, seconds, count in rows:
        print(f"{name:<22}{seconds:>14.4f}{count:>13.0f}")


if __name__ == "__main__":
    main()
