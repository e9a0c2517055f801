"""The map directory (format version 2).

```
MAP/
  manifest.json        the typed, versioned record of vloc.mapping.manifest: format version,
                       versions, the full preset, counts, index kind, default prior radius
  model/               COLMAP binary model (cameras.bin, images.bin, points3D.bin, ...): the geometry
  images/ features/ points3D/ global/
                       memory-mapped arrays read per retrieved image (vloc.mapping.store)
  delg-adapted.pt      only after `vloc map adapt`: the map's own DELG weights (see below)
  fallback/            only for a preset with a fallback layer: a map directory of the layer's
                       preset, triangulated from this map's poses (see vloc.config.FallbackConf)
```
A map adapted by ``vloc map adapt`` carries its global model: the manifest's
``preset.global_desc`` names it with a weights path relative to the map directory, and its
``adaptation`` entry says how it was trained. :func:`map_preset` gives any preset that map's
global descriptor, and :func:`global_conf_in_map` resolves the relative weights path.
A map is written into a sibling temporary directory and renamed into place as the last step,
so an interrupted build never leaves a directory that :func:`open_map` accepts.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Mapping

import faiss
import numpy as np
import pycolmap
from tqdm import tqdm

from vloc.config import GlobalConf, Preset, check_compatible, get_preset
from vloc.features.base import Features
from vloc.io.files import naming
from vloc.mapping.faults import write_model
from vloc.mapping.manifest import (
    MANIFEST,
    Counts,
    IndexInfo,
    Manifest,
    MapFormatError,
    Source,
    read_manifest,
    write_manifest,
)
from vloc.mapping.store import (
    FEATURES,
    GLOBAL,
    IMAGES,
    POINTS,
    FeatureMap,
    FeatureWriter,
    MapStore,
    prior_radius,
    write_global,
    write_points,
)
from vloc.retrieval.index import IndexKind, Whitening, build_index, index_params

logger = logging.getLogger(__name__)

FALLBACK_DIR = "fallback"
MODEL_DIR = "model"

__all__ = ["FALLBACK_DIR", "MANIFEST", "MODEL_DIR", "MapData", "MapFormatError", "atomic_map_dir", "load_map",
           "open_map", "write_map", "map_preset", "global_conf_in_map", "stored_global_conf", "read_manifest"]


@contextmanager
def atomic_map_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; rename it to ``out`` only on success.

    Temporary directories left by a killed process (``.NAME.writing-PID`` of a PID that is gone)
    are removed first."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(out)
    tmp = out.with_name(f".{out.name}.writing-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with naming(tmp):
            yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)  # the previous map goes back where it was
                raise
            try:
                shutil.rmtree(old)
            except OSError as exc:  # the new map is in place: that is success
                logger.warning("%s: the previous map could not be removed (%s); delete it by hand", old, exc)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # a read-only filesystem keeps it: the next write removes it
            if tmp.exists():
                logger.warning("%s: could not be removed; the next build or extend of %s removes it", tmp, out)


def _clear_stale(out: Path) -> None:
    """Remove what a killed process left beside ``out``: its temporary map (``.NAME.writing-PID``),
    and the previous map it had moved aside (``.NAME.old-PID``), which goes back to ``out`` when the
    process died between its two renames."""
    for stale in out.parent.glob(f".{out.name}.writing-*"):
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    for old in out.parent.glob(f".{out.name}.old-*"):
        if _alive(old.name.rsplit("-", 1)[-1]):
            continue
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            logger.warning("%s: restoring the previous map from %s (its writer died while replacing it)", out, old)
            os.rename(old, out)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def point3D_ids_of(image: pycolmap.Image) -> np.ndarray:
    """``(N,)`` point3D id per point2D of ``image``, -1 where it observes none."""
    ids = np.full(image.num_points2D(), -1, np.int64)
    idx = np.asarray(image.get_observation_point2D_idxs(), np.int64)
    if len(idx):
        ids[idx] = [image.points2D[int(i)].point3D_id for i in idx]
    return ids


def write_map(
    directory: Path, reconstruction: pycolmap.Reconstruction, features: Mapping[str, Features],
    global_desc: Mapping[str, np.ndarray], whitening: Whitening, preset: dict, source: Source, *,
    adaptation: dict | None = None, index_kind: IndexKind | str | None = None,
) -> Manifest:
    """Write a complete map into the (new, empty) ``directory``; returns its manifest.

    Args:
        reconstruction: the geometry; its registered images are the map's images, and their
            points2D are the keypoints of ``features`` (same order).
        features: name -> local features (read one image at a time: a lazy mapping is fine).
        global_desc: name -> ``(D_g,)`` raw global descriptor, for every registered image.
        whitening: learned on the raw descriptors; the index is built over its output.
        index_kind: None picks by size (:func:`vloc.retrieval.index.default_kind`).
    """
    directory = Path(directory)
    (directory / MODEL_DIR).mkdir()
    write_model(reconstruction, directory / MODEL_DIR)
    images = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise ValueError("the reconstruction has no registered image; a map needs at least one")
    writer, keypoints, observations, centres = None, 0, 0, []
    try:
        for im in tqdm(images, desc="write map", unit="img", disable=len(images) < 1000):
            feats = features[im.name]
            if len(feats) != im.num_points2D():
                raise ValueError(f"{im.name}: {len(feats)} keypoints but {im.num_points2D()} points2D in the model")
            with naming(directory / FEATURES):
                if writer is None:
                    writer = FeatureWriter(directory, feats.descriptors.shape[1])
                ids = point3D_ids_of(im)
                centres.append(im.projection_center())
                writer.add(im.name, feats, ids, centres[-1])
            keypoints, observations = keypoints + len(ids), observations + int((ids >= 0).sum())
        with naming(directory / FEATURES):
            writer.close()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    point_ids = np.array(sorted(reconstruction.points3D), np.int64)
    xyz = np.array([reconstruction.points3D[int(i)].xyz for i in point_ids]).reshape(-1, 3)
    with naming(directory / POINTS):
        write_points(directory, point_ids, xyz)
    raw = np.stack([np.asarray(global_desc[im.name], np.float32) for im in images])
    index = build_index(whitening(raw), index_kind)
    with naming(directory / GLOBAL):
        write_global(directory, raw, whitening, index)
    kind, params = index_params(index)
    manifest = Manifest(
        preset=preset, source=source, adaptation=adaptation,
        counts=Counts(images=len(images), points3D=len(point_ids), cameras=reconstruction.num_cameras(),
                      indexed_images=index.ntotal, keypoints=keypoints, observations=observations),
        index=IndexInfo(kind=kind, dim=index.d, params=params), prior_radius=prior_radius(np.stack(centres)),
        summary=f"{len(images)} images, {len(point_ids)} points3D",
        pycolmap_version=pycolmap.__version__, faiss_version=faiss.__version__)
    write_manifest(directory, manifest)
    return manifest


def copy_with_global(src: Path, dst: Path, raw: np.ndarray, whitening: Whitening, manifest: Manifest) -> Manifest:
    """Copy the map ``src`` into the new, empty ``dst`` with other global descriptors: ``raw``
    ``(N, D_g)`` in the store's row order, whitened by ``whitening``. The manifest written is
    ``manifest`` with the new index's kind; it is returned."""
    src, dst = Path(src), Path(dst)
    for part in (MODEL_DIR, IMAGES, FEATURES, POINTS):
        shutil.copytree(src / part, dst / part)
    if FALLBACK_DIR in os.listdir(src):  # the layer keeps its own global descriptor
        shutil.copytree(src / FALLBACK_DIR, dst / FALLBACK_DIR)
    index = build_index(whitening(raw), IndexKind(manifest.index.kind))
    write_global(dst, raw, whitening, index)
    kind, params = index_params(index)
    manifest = manifest.replace(index=IndexInfo(kind=kind, dim=index.d, params=params))
    write_manifest(dst, manifest)
    return manifest


@dataclass
class MapData:
    """A map for offline tools (adaptation, benchmarks, tests): the manifest, the lazy store and,
    on first access, the COLMAP model. The Localizer reads the store only."""

    directory: Path
    manifest: Manifest
    store: MapStore

    @cached_property
    def reconstruction(self) -> pycolmap.Reconstruction:
        return pycolmap.Reconstruction(str(self.directory / MODEL_DIR))

    @property
    def global_names(self) -> list[str]:
        return [self.store.name(r) for r in range(len(self.store))]

    @property
    def global_raw(self) -> np.ndarray:
        return np.asarray(self.store.global_raw)

    @property
    def whitening(self) -> Whitening:
        return self.store.whitening

    @property
    def features(self) -> FeatureMap:
        return self.store.feature_map()

    def point3D_ids(self, name: str) -> np.ndarray:
        return self.store.image_point3D_ids(self.store.row(name))


def load_map(directory: Path | str) -> MapData:
    directory = Path(directory)
    manifest = read_manifest(directory)
    if not (directory / MODEL_DIR).is_dir():
        raise MapFormatError(f"{directory}: incomplete map, {MODEL_DIR}/ is missing")
    return MapData(directory, manifest, MapStore.open(directory))


def open_map(directory: Path | str, preset: str | Preset | None = None) -> tuple[MapStore, Manifest, Preset]:
    """Open a map's store and the preset to use it with: ``preset`` (a name or a Preset; default:
    the one the map was built with), given the map's own global descriptor when it carries one
    (:func:`map_preset`), and refused when it describes images differently from the map."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    store = MapStore.open(directory)
    if preset is None:
        preset = manifest.preset_name
    preset = map_preset(get_preset(preset) if isinstance(preset, str) else preset, manifest)
    check_compatible(manifest.preset, preset, str(directory))
    return store, manifest, preset


def stored_global_conf(manifest: Manifest) -> GlobalConf:
    """The global descriptor configuration recorded in a map's manifest (missing fields: defaults)."""
    stored = manifest.preset["global_desc"]
    unknown = sorted(set(stored) - {f.name for f in dataclasses.fields(GlobalConf)})
    if unknown:
        raise MapFormatError(f"map manifest: global_desc has fields this vloc does not know: {unknown}")
    return GlobalConf(**stored)


def map_preset(preset: Preset, manifest: Manifest) -> Preset:
    """``preset`` with the map's own global descriptor when that has weights of its own (an adapted
    map, or one built with ``vloc map build --global-delg``); unchanged otherwise. Localizing such a
    map thus always uses the model its descriptors were computed with."""
    if manifest.adaptation is None and not manifest.preset.get("global_desc", {}).get("weights"):
        return preset
    return preset.with_overrides(global_desc=stored_global_conf(manifest))


def global_conf_in_map(conf: GlobalConf, directory: Path) -> GlobalConf:
    """``conf`` with a weights path relative to the map directory made absolute (when it is there)."""
    if conf.weights and not Path(conf.weights).is_absolute() and (Path(directory) / conf.weights).is_file():
        return dataclasses.replace(conf, weights=str((Path(directory) / conf.weights).resolve()))
    return conf
