"""Memory of ``vloc track --bag`` against a recording's length (issue 28): does it stream?

    python benchmarks/bag_stream.py [--frames 200 20000] [--scale 0.25]

A synthetic ROS 2 MCAP bag per length, written with rosbags' writer: kitti's 10 query frames
downscaled by ``--scale`` (JPEG ``CompressedImage``, with a ``CameraInfo`` scaled to match),
repeated in order at 10 Hz. Each is tracked against a kitti map (known poses) in its own process
with every output on (``--tum``, ``--kitti``, ``--log``, ``--mcap --mcap-images``); the table gives
the process's peak RSS (``getrusage``), frames localized, wall time and output sizes. The target:
the longest run's peak within 100 MB of the shortest's.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vloc.io.cameras import read_queries

KITTI = Path(os.environ.get("VLOC_DATA", "../shared/data")) / "prepared" / "kitti"
FPS = 10


def write_bag(path: Path, frames: int, scale: float) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    t = store.types
    queries = read_queries(KITTI / "queries.txt")
    jpegs, sizes = [], []
    for q in sorted(queries, key=lambda q: q.name):
        grey = cv2.imread(str(KITTI / "images" / q.name), cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        jpegs.append(np.frombuffer(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), np.uint8))
        sizes.append(small.shape[::-1])
    fx, fy, cx, cy = (float(v) for v in queries[0].camera.params)
    sx, sy = sizes[0][0] / queries[0].camera.width, sizes[0][1] / queries[0].camera.height
    k = np.array([fx * sx, 0, cx * sx, 0, fy * sy, cy * sy, 0, 0, 1], float)
    roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection("/cam/image/compressed", "sensor_msgs/msg/CompressedImage", typestore=store)
        infos = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=store)
        for i in range(frames):
            ns = 1_700_000_000_000_000_000 + i * 1_000_000_000 // FPS
            header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](
                sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id="camera")
            if i == 0:
                info = t["sensor_msgs/msg/CameraInfo"](
                    header=header, height=sizes[0][1], width=sizes[0][0], distortion_model="plumb_bob", d=np.zeros(5),
                    k=k, r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0, roi=roi)
                writer.write(infos, ns, store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            msg = t["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=jpegs[i % len(jpegs)])
            writer.write(images, ns + 1, store.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))


def track(map_dir: Path, bag: Path, out: Path) -> dict:
    out.mkdir()
    args = [sys.executable, "-c", "import resource, sys; from vloc.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)",
            "track", "--map", str(map_dir), "--bag", str(bag), "--image-topic", "/cam/image/compressed",
            "--camera-info-topic", "/cam/camera_info", "--tum", str(out / "poses.tum"), "--kitti",
            str(out / "poses.kitti"), "--log", str(out / "log.json"), "--mcap", str(out / "out.mcap"), "--mcap-images"]
    t0 = time.perf_counter()
    run = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"vloc track failed ({run.returncode}):\n{run.stderr[-3000:]}")
    rss_kb = int(next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("MAXRSS")))
    localized = next(line for line in run.stdout.splitlines() if line.startswith("localized"))
    return dict(rss_mb=rss_kb / 1024, localized=localized.split()[1], wall=wall,
                mcap_mb=(out / "out.mcap").stat().st_size / 2**20, log_mb=(out / "log.json").stat().st_size / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[200, 20000])
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--work", type=Path, help="keep the bags and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        map_dir = work / "kitti_map"
        if not map_dir.exists():
            subprocess.run([sys.executable, "-m", "vloc.cli", "map", "build", "--images", str(KITTI / "images"),
                            "--reference", str(KITTI / "ref_model"), "--out", str(map_dir)], check=True,
                           capture_output=True)
        rows = []
        for n in args.frames:
            bag = work / f"bag_{n}"
            t0 = time.perf_counter()
            write_bag(bag, n, args.scale)
            written = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in bag.iterdir()) / 2**20
            rows.append((n, size, written, track(map_dir, bag, work / f"out_{n}")))
        print(f"\nvloc track --bag, every output on; load average {os.getloadavg()[0]:.2f}")
        print(f"{'frames':>8} {'bag MB':>8} {'write s':>8} {'localized':>10} {'track s':>8} {'ms/frame':>9} "
              f"{'peak RSS MB':>12} {'mcap MB':>8} {'log MB':>7}")
        for n, size, written, r in rows:
            print(f"{n:>8} {size:>8.1f} {written:>8.1f} {r['localized']:>10} {r['wall']:>8.1f} "
                  f"{1e3 * r['wall'] / n:>9.1f} {r['rss_mb']:>12.1f} {r['mcap_mb']:>8.1f} {r['log_mb']:>7.1f}")
        growth = rows[-1][3]["rss_mb"] - rows[0][3]["rss_mb"]
        print(f"peak RSS growth {rows[0][0]} -> {rows[-1][0]} frames: {growth:+.1f} MB (target: within 100 MB)")


if __name__ == "__main__":
    main()
