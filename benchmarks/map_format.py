"""How a map's per-image features are best stored for lazy reading: memory-mapped ``.npy`` arrays
with per-image offsets (format 2) against one HDF5 group per image (format 1's ``features.h5``,
opened once and read per image).

    python benchmarks/map_format.py MAP [--reads 200]

Copies ``MAP``'s features into an HDF5 file laid out as format 1 did, then for both layouts: the
time to open, RssAnon (``/proc/self/status``) after opening, and the median time to read what one
query needs: the observing descriptors and point3D ids of 5 random images (``Observations``), and
all features of 3 images (what LightGlue matching reads). Both read warm (the files were just
written or read: the page cache holds them), which is the steady state of a serving process.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from vloc.io.h5 import key_of, write_features
from vloc.mapping.map_dir import load_map
from vloc.mapping.store import MapStore
from vloc.memory import status_mb


class H5Store:
    """The format-1 layout, read lazily: one group per image in one open file."""

    def __init__(self, path: Path, names: list[str]):
        self.file, self.names = h5py.File(path, "r"), names

    def observations(self, row: int):
        g = self.file[key_of(self.names[row])]
        ids = g["point3D_ids"][()]
        return g["descriptors"][()][ids >= 0].astype(np.float32), ids[ids >= 0]

    def features(self, row: int):
        g = self.file[key_of(self.names[row])]
        return g["keypoints"][()], g["descriptors"][()].astype(np.float32), g["scores"][()]


def timed(fn, reads: int, n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(reads):
        rows = rng.choice(n, 5, replace=False)
        t = time.perf_counter()
        fn(rows)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("map", type=Path)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    data = load_map(args.map)
    names = data.global_names
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / "features.h5"
        write_features(h5, {n: data.features[n] for n in names}, {n: data.point3D_ids(n) for n in names})
        del data
        rows = []
        for label, opener in (("npy (mmap)", lambda: MapStore.open(args.map)), ("hdf5 group/image",
                                                                                 lambda: H5Store(h5, names))):
            before = status_mb()
            t = time.perf_counter()
            store = opener()
            open_ms = 1000 * (time.perf_counter() - t)
            grown = status_mb() - before
            obs = timed(lambda rs: [store.observations(int(r)) for r in rs], args.reads, len(names))
            full = timed(lambda rs: [store.features(int(r)) for r in rs[:3]], args.reads, len(names))
            rows.append((label, open_ms, grown, obs, full))
        size_h5 = h5.stat().st_size / 2**20
    size_npy = sum(p.stat().st_size for p in (args.map / "features").iterdir()) / 2**20
    print(f"\n{args.map}: {len(names)} images; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"features on disk: npy {size_npy:.0f} MB, hdf5 {size_h5:.0f} MB; median of {args.reads} reads")
    print(f"{'layout':<18}{'open ms':>9}{'RssAnon +MB':>13}{'5 images obs. ms':>18}{'3 images all ms':>17}")
    for label, open_ms, grown, obs, full in rows:
        print(f"{label:<18}{open_ms:>9.1f}{grown:>13.1f}{obs:>18.2f}{full:>17.2f}")


if __name__ == "__main__":
    main()
