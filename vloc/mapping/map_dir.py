"""The map directory format.

```
MAP/
  manifest.json        format version, vloc/pycolmap versions, the full preset, counts, image names
  model/               COLMAP binary model (cameras.bin, images.bin, points3D.bin, ...)
  features.h5          per image: keypoints, descriptors, scores, point3D_ids (see vloc.io.h5)
  global.npz           names, raw global descriptors, whitening (mean, projection)
  global.faiss         FAISS inner-product index over the whitened descriptors, rows = names
  delg-adapted.pt      only after `vloc map adapt`: the map's own DELG weights (see below)
  fallback/            only for a preset with a fallback layer: a map directory of the layer's
                       preset, triangulated from this map's poses (see vloc.config.FallbackConf)
```
A map adapted by ``vloc map adapt`` carries its global model: the manifest's
``preset.global_desc`` names it with a weights path relative to the map directory, and its
``adaptation`` entry says how it was trained. :func:`map_preset` gives any preset that map's
global descriptor, and :func:`global_conf_in_map` resolves the relative weights path.
A map is written into a sibling temporary directory and renamed into place as the last step,
so an interrupted build never leaves a directory that :func:`load_map` accepts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np
import pycolmap

from vloc import __version__
from vloc.config import GlobalConf, Preset, check_compatible, get_preset
from vloc.features.base import Features
from vloc.io.h5 import read_features, write_features
from vloc.retrieval.index import Whitening, build_index

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FALLBACK_DIR = "fallback"


class MapFormatError(ValueError):
    """A directory is not a vloc map, or one written by an incompatible version."""


@dataclass
class MapData:
    """Everything a map holds, in memory."""

    reconstruction: pycolmap.Reconstruction
    features: dict[str, Features]
    point3D_ids: dict[str, np.ndarray]
    global_names: list[str]
    global_raw: np.ndarray  # (M, D) unit descriptors before whitening
    whitening: Whitening
    manifest: dict


@contextmanager
def atomic_map_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; rename it to ``out`` only on success."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_map(directory: Path, data: MapData) -> None:
    model_dir = directory / "model"
    model_dir.mkdir()
    data.reconstruction.write_binary(str(model_dir))
    write_features(directory / "features.h5", data.features, data.point3D_ids)
    whitened = data.whitening(data.global_raw)
    np.savez(directory / "global.npz", names=np.array(data.global_names), descriptors=data.global_raw,
             mean=data.whitening.mean, projection=data.whitening.projection)
    faiss.write_index(build_index(whitened), str(directory / "global.faiss"))
    manifest = dict(data.manifest)
    manifest.update(
        format_version=FORMAT_VERSION, vloc_version=__version__, pycolmap_version=pycolmap.__version__,
        faiss_version=faiss.__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        counts=dict(images=data.reconstruction.num_reg_images(), points3D=data.reconstruction.num_points3D(),
                    cameras=data.reconstruction.num_cameras(), indexed_images=len(data.global_names)),
    )
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))


def read_manifest(directory: Path) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise MapFormatError(f"{directory}: not a vloc map (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MapFormatError(f"{path}: corrupt manifest ({exc})") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise MapFormatError(f"{directory}: map format version {version} (written by vloc "
                             f"{manifest.get('vloc_version')}); this vloc {__version__} reads version "
                             f"{FORMAT_VERSION}. Rebuild the map with `vloc map build`.")
    return manifest


def load_map(directory: Path) -> MapData:
    directory = Path(directory)
    manifest = read_manifest(directory)
    for part in ("model", "features.h5", "global.npz", "global.faiss"):
        if not (directory / part).exists():
            raise MapFormatError(f"{directory}: incomplete map, {part} is missing")
    reconstruction = pycolmap.Reconstruction(str(directory / "model"))
    features, point3D_ids = read_features(directory / "features.h5")
    g = np.load(directory / "global.npz")
    return MapData(reconstruction, features, point3D_ids, [str(n) for n in g["names"]], g["descriptors"],
                   Whitening(g["mean"], g["projection"]), manifest)


def open_map(directory: Path, preset: str | Preset | None = None) -> tuple[MapData, Preset]:
    """Load a map and the preset to use it with: ``preset`` (a name or a Preset; default: the one the
    map was built with), given the map's own global descriptor when it carries one
    (:func:`map_preset`), and refused when it describes images differently from the map."""
    data = load_map(directory)
    if preset is None:
        preset = data.manifest["preset"]["name"]
    preset = map_preset(get_preset(preset) if isinstance(preset, str) else preset, data.manifest)
    check_compatible(data.manifest["preset"], preset, str(directory))
    return data, preset


def stored_global_conf(manifest: dict) -> GlobalConf:
    """The global descriptor configuration recorded in a map's manifest (missing fields: defaults)."""
    stored = manifest["preset"]["global_desc"]
    unknown = sorted(set(stored) - {f.name for f in dataclasses.fields(GlobalConf)})
    if unknown:
        raise MapFormatError(f"map manifest: global_desc has fields this vloc does not know: {unknown}")
    return GlobalConf(**stored)


def map_preset(preset: Preset, manifest: dict) -> Preset:
    """``preset`` with the map's own global descriptor when the map carries its weights (an adapted
    map); unchanged otherwise. Localizing an adapted map thus always uses its adapted model."""
    if "adaptation" not in manifest:
        return preset
    return preset.with_overrides(global_desc=stored_global_conf(manifest))


def global_conf_in_map(conf: GlobalConf, directory: Path) -> GlobalConf:
    """``conf`` with a weights path relative to the map directory made absolute (when it is there)."""
    if conf.weights and not Path(conf.weights).is_absolute() and (Path(directory) / conf.weights).is_file():
        return dataclasses.replace(conf, weights=str((Path(directory) / conf.weights).resolve()))
    return conf
