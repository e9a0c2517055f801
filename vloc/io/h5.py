"""HDF5 feature files of format-version-1 maps (read by ``vloc map upgrade``): one group per
image name with ``keypoints`` ``(N, 2)`` float32 (COLMAP pixel convention), ``descriptors``
``(N, D)`` float16 (unit norm), ``scores`` ``(N,)`` and, in a map, ``point3D_ids`` ``(N,)`` int64
(-1 where the keypoint observes no 3D point)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from vloc.features.base import Features


def key_of(name: str) -> str:
    return name.replace("/", "\\")  # keep image names with sub-folders as one group


def write_features(path: Path, features: dict[str, Features], point3D_ids: dict[str, np.ndarray] | None = None) -> None:
    with h5py.File(path, "w") as f:
        for name, feats in features.items():
            g = f.create_group(key_of(name))
            g.attrs["name"] = name
            g.attrs["image_size"] = np.asarray(feats.image_size, dtype=np.int64)
            g.create_dataset("keypoints", data=feats.keypoints.astype(np.float32))
            g.create_dataset("descriptors", data=feats.descriptors.astype(np.float16))
            g.create_dataset("scores", data=feats.scores.astype(np.float32))
            if point3D_ids is not None:
                g.create_dataset("point3D_ids", data=point3D_ids[name].astype(np.int64))


def read_features(path: Path) -> tuple[dict[str, Features], dict[str, np.ndarray]]:
    """-> (name -> Features, name -> point3D_ids); the second dict is empty outside maps."""
    features, ids = {}, {}
    with h5py.File(path, "r") as f:
        for g in f.values():
            name = str(g.attrs["name"])
            features[name] = Features(
                g["keypoints"][()], g["descriptors"][()].astype(np.float32), g["scores"][()],
                tuple(int(v) for v in g.attrs["image_size"]))
            if "point3D_ids" in g:
                ids[name] = g["point3D_ids"][()]
    return features, ids
