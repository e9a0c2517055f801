"""``vloc map upgrade MAP``: convert a format-version-1 map (``features.h5``, ``global.npz``,
``global.faiss``) into the current format in place, without reading an image.

The COLMAP model, the features and the global descriptors are carried over unchanged; the arrays
are rewritten one image at a time, the index is rebuilt (its kind chosen by size) and the
manifest becomes the typed record. A fallback layer is upgraded with its map. As for every map
write, the new map is assembled beside the old one and renamed into place.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pycolmap

from vloc.features.base import Features
from vloc.io.h5 import key_of
from vloc.mapping.manifest import MANIFEST, MapFormatError, Source
from vloc.mapping.map_dir import FALLBACK_DIR, MODEL_DIR, atomic_map_dir, write_map
from vloc.retrieval.index import Whitening

logger = logging.getLogger(__name__)

V1_PARTS = ("model", "features.h5", "global.npz")
V1_EXTRA = ("delg-adapted.pt",)  # files a version-1 map may carry that the new one keeps as they are


class _H5Features:
    """``name -> Features`` read from a version-1 ``features.h5`` one image at a time."""

    def __init__(self, f: h5py.File):
        self.f = f

    def __getitem__(self, name: str) -> Features:
        g = self.f[key_of(name)]
        return Features(g["keypoints"][()], g["descriptors"][()].astype(np.float32), g["scores"][()],
                        tuple(int(v) for v in g.attrs["image_size"]))


def _v1_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise MapFormatError(f"{directory}: not a vloc map (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != 1:
        raise MapFormatError(f"{directory}: format version {manifest.get('format_version')}, not 1: nothing to upgrade")
    missing = [p for p in V1_PARTS if not (directory / p).exists()]
    if missing:
        raise MapFormatError(f"{directory}: incomplete version-1 map, missing {', '.join(missing)}")
    return manifest


def _write_upgraded(src: Path, dst: Path) -> None:
    old = _v1_manifest(src)
    rec = pycolmap.Reconstruction(str(src / MODEL_DIR))
    with np.load(src / "global.npz") as g:
        names = [str(n) for n in g["names"]]
        global_desc = dict(zip(names, g["descriptors"], strict=True))
        whitening = Whitening(g["mean"], g["projection"])
    s = old.get("source", {})
    source = Source(mode=s.get("mode", "unknown"), reference=s.get("reference"), images=s.get("images"),
                    skipped_images=s.get("skipped_images", {}), unregistered_images=s.get("unregistered_images", []))
    with h5py.File(src / "features.h5", "r") as f:
        write_map(dst, rec, _H5Features(f), global_desc, whitening, old["preset"], source,
                  adaptation=old.get("adaptation"))
    for extra in V1_EXTRA:
        if (src / extra).exists():
            shutil.copyfile(src / extra, dst / extra)
    if (src / FALLBACK_DIR).is_dir():
        (dst / FALLBACK_DIR).mkdir()
        _write_upgraded(src / FALLBACK_DIR, dst / FALLBACK_DIR)


def upgrade_map(directory: Path | str) -> None:
    """Convert the version-1 map ``directory`` to the current format, in place (atomically)."""
    directory = Path(directory)
    _v1_manifest(directory)  # refuse before creating anything
    with atomic_map_dir(directory, overwrite=True) as tmp:
        _write_upgraded(directory, tmp)
    logger.info("%s upgraded to the current map format", directory)
