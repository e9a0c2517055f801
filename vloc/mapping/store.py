"""The arrays of a map (format version 2), written once and read lazily.

```
MAP/
  images/names.npy        (N,) bytes, UTF-8 image names, sorted: row r is image r everywhere below
  images/offsets.npy      (N + 1,) int64: image r's keypoints are rows offsets[r]:offsets[r + 1]
  images/sizes.npy        (N, 2) int64 (width, height)
  images/centres.npy      (N, 3) float64 camera centres (world frame)
  features/keypoints.npy  (K, 2) float32, COLMAP pixel convention (top-left pixel centre at (0.5, 0.5))
  features/descriptors.npy (K, D) float16, unit norm
  features/scores.npy     (K,) float32
  features/point3D_ids.npy (K,) int64, the COLMAP point3D_id a keypoint observes, -1 for none
  points3D/ids.npy        (P,) int64 sorted COLMAP point3D_ids
  points3D/xyz.npy        (P, 3) float64
  global/descriptors.npy  (N, D_g) float32 raw global descriptors (before whitening)
  global/whitened.npy     (N, d) float32 rows of the index (prior search reads the rows it needs)
  global/whitening.npz    mean (D_g,), projection (d, D_g)
  global/index.faiss      FAISS index over the whitened rows (kind in the manifest)
```
Every array is memory-mapped on open (:class:`MapStore`): opening costs the same at 100 or 10^6
images, and only the rows a query touches are read; they stay in the page cache, which the kernel
reclaims, not in the process's anonymous memory. Measured against per-image HDF5 groups in
docs/benchmarks.md ("Map format"). Only the FAISS index is read into memory.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import faiss
import numpy as np
from scipy.spatial import cKDTree

from vloc.features.base import Features
from vloc.io.arrays import NpyAppender, open_array
from vloc.mapping.manifest import MapFormatError
from vloc.retrieval.index import Whitening

logger = logging.getLogger(__name__)

IMAGES, FEATURES, POINTS, GLOBAL = "images", "features", "points3D", "global"
INDEX_FILE = f"{GLOBAL}/index.faiss"
PARTS = (f"{IMAGES}/names.npy", f"{IMAGES}/offsets.npy", f"{IMAGES}/sizes.npy", f"{IMAGES}/centres.npy",
         f"{FEATURES}/keypoints.npy", f"{FEATURES}/descriptors.npy", f"{FEATURES}/scores.npy",
         f"{FEATURES}/point3D_ids.npy", f"{POINTS}/ids.npy", f"{POINTS}/xyz.npy", f"{GLOBAL}/descriptors.npy",
         f"{GLOBAL}/whitened.npy", f"{GLOBAL}/whitening.npz", INDEX_FILE)


def save_array(path: Path, array: np.ndarray, block: int = 1 << 16) -> None:
    """``np.save(path, array)`` with every write checked: for a real file ``np.save`` writes with
    ``ndarray.tofile``, which loses the error of its last flush, so a full disk can leave a
    truncated ``.npy`` and no error. Written ``block`` rows at a time (no copy of the whole array)."""
    array = np.asarray(array)
    with NpyAppender(path, array.dtype, array.shape[1:]) as out:
        for start in range(0, len(array), block):
            out.append(array[start:start + block])


def encode_names(names: list[str]) -> np.ndarray:
    return np.array([n.encode("utf-8") for n in names], dtype=bytes) if names else np.zeros((0,), "S1")


class FeatureWriter:
    """Append one image's local features at a time (in sorted name order); :meth:`close` writes
    the per-image tables. Holds one image's features in memory, never the whole map's."""

    def __init__(self, directory: Path, descriptor_dim: int):
        self.directory = Path(directory)
        (self.directory / FEATURES).mkdir(parents=True, exist_ok=True)
        (self.directory / IMAGES).mkdir(parents=True, exist_ok=True)
        f = self.directory / FEATURES
        self._arrays = dict(keypoints=NpyAppender(f / "keypoints.npy", np.float32, (2,)),
                            descriptors=NpyAppender(f / "descriptors.npy", np.float16, (descriptor_dim,)),
                            scores=NpyAppender(f / "scores.npy", np.float32),
                            point3D_ids=NpyAppender(f / "point3D_ids.npy", np.int64))
        self.names: list[str] = []
        self._offsets, self._sizes, self._centres = [0], [], []

    def add(self, name: str, features: Features, point3D_ids: np.ndarray, centre: np.ndarray) -> None:
        """``point3D_ids``: ``(N,)`` for ``features``' ``N`` keypoints; ``centre``: ``(3,)``."""
        if self.names and name <= self.names[-1]:
            raise ValueError(f"map images must be added in sorted name order: {name!r} after {self.names[-1]!r}")
        if len(point3D_ids) != len(features):
            raise ValueError(f"{name}: {len(point3D_ids)} point3D ids for {len(features)} keypoints")
        for key, block in (("keypoints", features.keypoints), ("descriptors", features.descriptors),
                           ("scores", features.scores), ("point3D_ids", point3D_ids)):
            self._arrays[key].append(block)
        self.names.append(name)
        self._offsets.append(self._offsets[-1] + len(features))
        self._sizes.append(features.image_size)
        self._centres.append(np.asarray(centre, np.float64).reshape(3))

    def discard(self) -> None:
        """Close the files after a failure (their content is left to the caller to remove)."""
        for a in self._arrays.values():
            try:
                a.close()
            except OSError as exc:  # the write that failed may fail again on close: nothing to keep
                logger.debug("%s: %s", a.path, exc)

    def close(self) -> None:
        for a in self._arrays.values():
            a.close()
        d = self.directory / IMAGES
        save_array(d / "names.npy", encode_names(self.names))
        save_array(d / "offsets.npy", np.array(self._offsets, np.int64))
        save_array(d / "sizes.npy", np.array(self._sizes, np.int64).reshape(-1, 2))
        save_array(d / "centres.npy", np.array(self._centres, np.float64).reshape(-1, 3))


def write_points(directory: Path, ids: np.ndarray, xyz: np.ndarray) -> None:
    """``ids``: ``(P,)`` COLMAP point3D_ids, ``xyz``: ``(P, 3)``; stored sorted by id."""
    (Path(directory) / POINTS).mkdir(parents=True, exist_ok=True)
    order = np.argsort(ids)
    save_array(Path(directory) / POINTS / "ids.npy", np.asarray(ids, np.int64)[order])
    save_array(Path(directory) / POINTS / "xyz.npy", np.asarray(xyz, np.float64).reshape(-1, 3)[order])


def write_global(directory: Path, raw: np.ndarray, whitening: Whitening, index: faiss.Index) -> None:
    """``raw``: ``(N, D_g)`` in the images' row order; ``index`` over ``whitening(raw)``."""
    g = Path(directory) / GLOBAL
    g.mkdir(parents=True, exist_ok=True)
    save_array(g / "descriptors.npy", np.asarray(raw, np.float32))
    save_array(g / "whitened.npy",
               whitening(raw) if len(raw) else np.zeros((0, len(whitening.projection)), np.float32))
    np.savez(g / "whitening.npz", mean=whitening.mean, projection=whitening.projection)
    # Serialized here and written by Python: faiss.write_index reports no failed close (a full disk
    # leaves a truncated index behind, and a message on stderr).
    with open(g / "index.faiss", "wb") as f:
        f.write(faiss.serialize_index(index).data)


def prior_radius(centres: np.ndarray) -> float:
    """5x the median distance from each camera centre ``(N, 3)`` to its nearest other one (inf below 2)."""
    if len(centres) < 2:
        return float("inf")
    distances, _ = cKDTree(centres).query(centres, k=2)
    return 5.0 * float(np.median(distances[:, 1]))


@dataclass(frozen=True)
class Observations:
    """The keypoints of one map image that observe 3D points."""

    descriptors: np.ndarray  # (M, D) float32
    point3D_ids: np.ndarray  # (M,) int64


class MapStore:
    """Lazy, read-only access to a map's arrays (see the module docstring). Use :meth:`open`.

    Rows are images in sorted name order; every per-image array stays memory-mapped, so the
    process's anonymous memory holds no per-image object."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        missing = [p for p in PARTS if not (self.directory / p).is_file()]
        if missing:
            raise MapFormatError(f"{self.directory}: incomplete map, missing {', '.join(missing)}")
        a = {p: open_array(self.directory / p) for p in PARTS if p.endswith(".npy")}
        self.names = a[f"{IMAGES}/names.npy"]  # (N,) bytes
        self.offsets = a[f"{IMAGES}/offsets.npy"]
        self.sizes = a[f"{IMAGES}/sizes.npy"]
        self.centres = a[f"{IMAGES}/centres.npy"]
        self.keypoints = a[f"{FEATURES}/keypoints.npy"]
        self.descriptors = a[f"{FEATURES}/descriptors.npy"]
        self.scores = a[f"{FEATURES}/scores.npy"]
        self.point3D_ids = a[f"{FEATURES}/point3D_ids.npy"]
        self.point_ids = a[f"{POINTS}/ids.npy"]
        self.xyz = a[f"{POINTS}/xyz.npy"]
        self.global_raw = a[f"{GLOBAL}/descriptors.npy"]
        self.global_whitened = a[f"{GLOBAL}/whitened.npy"]
        with np.load(self.directory / GLOBAL / "whitening.npz") as w:
            self.whitening = Whitening(w["mean"], w["projection"])

    @classmethod
    def open(cls, directory: Path | str) -> "MapStore":
        return cls(Path(directory))

    def read_index(self) -> faiss.Index:
        return faiss.read_index(str(self.directory / INDEX_FILE))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def descriptor_dim(self) -> int:
        return self.descriptors.shape[1]

    def name(self, row: int) -> str:
        return self.names[row].decode("utf-8")

    def row(self, name: str) -> int:
        """The row of image ``name``; ``KeyError`` if the map does not hold it."""
        key = name.encode("utf-8")
        r = int(np.searchsorted(self.names, key))
        if r >= len(self.names) or self.names[r] != key:
            raise KeyError(f"{self.directory}: no map image {name!r}")
        return r

    def _span(self, row: int) -> slice:
        """Image ``row``'s rows in the ``features/`` arrays."""
        return slice(int(self.offsets[row]), int(self.offsets[row + 1]))

    def features(self, row: int) -> Features:
        """All local features of image ``row`` (float32 descriptors), read from disk."""
        s = self._span(row)
        return Features(np.array(self.keypoints[s]), self.descriptors[s].astype(np.float32),
                        np.array(self.scores[s]), (int(self.sizes[row, 0]), int(self.sizes[row, 1])))

    def image_point3D_ids(self, row: int) -> np.ndarray:
        """``(N,)`` point3D id per keypoint of image ``row`` (-1: none)."""
        return np.array(self.point3D_ids[self._span(row)])

    def observations(self, row: int) -> Observations:
        s = self._span(row)
        ids = np.asarray(self.point3D_ids[s])
        mask = ids >= 0
        return Observations(self.descriptors[s][mask].astype(np.float32), ids[mask])

    def points_xyz(self, point3D_ids: np.ndarray) -> np.ndarray:
        """``(M, 3)`` positions of the given point3D ids (each must be in the map)."""
        rows = np.searchsorted(self.point_ids, point3D_ids)
        if len(rows) and (rows.max() >= len(self.point_ids) or np.any(self.point_ids[rows] != point3D_ids)):
            raise KeyError(f"{self.directory}: point3D ids not in the map")
        return np.asarray(self.xyz[rows])

    def feature_map(self) -> "FeatureMap":
        return FeatureMap(self)


class FeatureMap(Mapping[str, Features]):
    """A read-only ``name -> Features`` mapping over a store, read one image at a time."""

    def __init__(self, store: MapStore):
        self.store = store

    def __getitem__(self, name: str) -> Features:
        return self.store.features(self.store.row(name))

    def __iter__(self) -> Iterator[str]:
        return (self.store.name(r) for r in range(len(self.store)))

    def __len__(self) -> int:
        return len(self.store)
