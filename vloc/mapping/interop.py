"""Maps in and out of other tools without re-extracting: COLMAP projects and hloc runs become vloc
maps, and a vloc map becomes a COLMAP project.

Import keeps the project's own geometry and local features: the model's registered images,
cameras, points3D and 2D-3D observations, and its keypoints and descriptors (COLMAP: the database;
hloc: its ``features.h5``). Only the global descriptors are computed, by the preset's global model
from the images (their retrieval index must describe queries the same way). The preset must
describe queries as the project described its images: COLMAP's uint8 SIFT -> ``colmap`` (COLMAP's
own SIFT, :mod:`vloc.features.colmap_sift`), hloc's ``sift`` / ``aliked-n16`` / ``disk`` -> the
preset of that extractor. Export writes the model and a database (cameras, rigs, frames, images,
keypoints, descriptors, and each image pair's matches from the model's tracks as verified two-view
geometries), which COLMAP's GUI and mappers open.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from vloc.config import Preset, get_preset
from vloc.features.base import Features
from vloc.features.colmap_sift import colmap_uint8, unit_descriptors
from vloc.io.images import read_images_ahead
from vloc.mapping.database import write_database
from vloc.mapping.manifest import Manifest, Source
from vloc.mapping.map_dir import atomic_map_dir, load_map, write_map
from vloc.retrieval import make_global_model
from vloc.retrieval.index import Whitening

logger = logging.getLogger(__name__)

# hloc's extractor names (the prefix of its feature confs) -> the vloc preset describing queries alike
HLOC_PRESETS = {"sift": "colmap", "aliked-n16": "aliked", "disk": "disk"}


def _registered(model: pycolmap.Reconstruction, where: Path) -> list[pycolmap.Image]:
    images = sorted((im for im in model.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise ValueError(f"{where}: the model has no registered image")
    return images


def _read_model(path: Path) -> pycolmap.Reconstruction:
    if not path.is_dir() or not any((path / f"images.{ext}").is_file() for ext in ("bin", "txt")):
        raise FileNotFoundError(f"{path}: not a COLMAP model folder (no images.bin or images.txt)")
    return pycolmap.Reconstruction(str(path))


def _check_keypoints(name: str, points2D: np.ndarray, keypoints: np.ndarray, source: str) -> None:
    """The model's points2D are the feature file's keypoints, in order (COLMAP convention)."""
    if len(points2D) != len(keypoints):
        raise ValueError(f"{source}: {name} has {len(keypoints)} keypoints but the model's image has "
                         f"{len(points2D)} points2D: the features do not belong to this model")
    if len(points2D) and np.abs(points2D - keypoints).max() > 1e-2:
        raise ValueError(f"{source}: {name}'s keypoints are not the model's points2D (largest difference "
                         f"{np.abs(points2D - keypoints).max():.3g} px): the features do not belong to this model")


class _ColmapFeatures(Mapping[str, Features]):
    """A COLMAP database's features of the model's images, read one image at a time."""

    def __init__(self, database: Path, model: pycolmap.Reconstruction, images: list[pycolmap.Image]):
        self.database, self.model = database, model
        self.images = {im.name: im for im in images}
        self.db = pycolmap.Database.open(str(database))
        self.ids = {im.name: im.image_id for im in self.db.read_all_images()}
        missing = [n for n in self.images if n not in self.ids]
        if missing:
            self.db.close()
            raise ValueError(f"{database}: does not hold {len(missing)} of the model's images, e.g. {missing[:3]}: "
                             "the database does not belong to this model")

    def descriptor_type(self) -> tuple[str, int]:
        """``("uint8" | "float32", dimension)`` of the first image's descriptors."""
        d = self.db.read_descriptors(self.ids[next(iter(self.images))])
        data = np.asarray(d.data)
        if d.type == pycolmap.FeatureExtractorType.SIFT and data.dtype == np.uint8:
            return "uint8", data.shape[1]
        return "float32", data.view(np.float32).shape[1]

    def __getitem__(self, name: str) -> Features:
        im = self.images[name]
        image_id = self.ids[name]
        keypoints = np.asarray(self.db.read_keypoints(image_id))[:, :2].astype(np.float32)
        points2D = np.array([p.xy for p in im.points2D], np.float32).reshape(-1, 2)
        _check_keypoints(name, points2D, keypoints, str(self.database))
        d = self.db.read_descriptors(image_id)
        data = np.asarray(d.data)
        desc = data if (d.type == pycolmap.FeatureExtractorType.SIFT and data.dtype == np.uint8) else data.view(np.float32)
        if len(desc) != len(keypoints):
            raise ValueError(f"{self.database}: {name} has {len(keypoints)} keypoints but {len(desc)} descriptors")
        camera = self.model.cameras[im.camera_id]
        ranks = 1.0 - np.arange(len(keypoints), dtype=np.float32) / max(1, len(keypoints))
        return Features(points2D, unit_descriptors(desc), ranks, (camera.width, camera.height))

    def __iter__(self) -> Iterator[str]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def close(self) -> None:
        self.db.close()


class _HlocFeatures(Mapping[str, Features]):
    """hloc's ``features.h5`` for the model's images: per image a group (the name, sub-folders as
    nested groups) with ``keypoints`` ``(N, 2)`` (pixel centres at integers: + 0.5 to COLMAP's),
    ``descriptors`` ``(D, N)``, ``scores`` ``(N,)``."""

    def __init__(self, path: Path, model: pycolmap.Reconstruction, images: list[pycolmap.Image]):
        import h5py

        self.path, self.model = path, model
        self.images = {im.name: im for im in images}
        self.file = h5py.File(path, "r")
        missing = [n for n in self.images if n not in self.file or "keypoints" not in self.file[n]]
        if missing:
            self.file.close()
            raise ValueError(f"{path}: has no features for {len(missing)} of the model's images, e.g. {missing[:3]}")

    def __getitem__(self, name: str) -> Features:
        group = self.file[name]
        keypoints = np.asarray(group["keypoints"], np.float32).reshape(-1, 2) + 0.5
        im = self.images[name]
        points2D = np.array([p.xy for p in im.points2D], np.float32).reshape(-1, 2)
        _check_keypoints(name, points2D, keypoints, str(self.path))
        desc = np.asarray(group["descriptors"], np.float32).T
        if len(desc) != len(keypoints):
            raise ValueError(f"{self.path}: {name}: descriptors are {group['descriptors'].shape} for "
                             f"{len(keypoints)} keypoints (hloc stores them D x N)")
        scores = np.asarray(group["scores"], np.float32) if "scores" in group else np.ones(len(keypoints), np.float32)
        camera = self.model.cameras[im.camera_id]
        return Features(points2D, unit_descriptors(desc), scores, (camera.width, camera.height))

    def __iter__(self) -> Iterator[str]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def close(self) -> None:
        self.file.close()


def _check_preset(preset: Preset, dim: int, where: str) -> None:
    from vloc.config import fallback_preset
    from vloc.features import EXTRACTORS

    if fallback_preset(preset) is not None:
        raise ValueError(f"preset {preset.name!r} localizes on two layers; an imported map has one: choose a "
                         "one-layer preset")
    want = getattr(EXTRACTORS[preset.features.name], "dim", None)
    if want is not None and want != dim:
        raise ValueError(f"{where}: {dim}-D descriptors, but preset {preset.name!r} describes queries with "
                         f"{want}-D ones")


def _global_descriptors(images: Path, names: list[str], preset: Preset, device: str | None) -> dict[str, np.ndarray]:
    from vloc.device import resolve_device

    model = make_global_model(preset.global_desc, resolve_device(device))
    return {n: np.asarray(model(image), np.float32)
            for n, image in tqdm(read_images_ahead(images, names), total=len(names), desc="global descriptors",
                                 unit="img")}


def _write(out: Path, model: pycolmap.Reconstruction, features: Mapping[str, Features], images: Path,
           names: list[str], preset: Preset, source: Source, overwrite: bool, device: str | None) -> Manifest:
    raw = _global_descriptors(images, names, preset, device)
    whitening = Whitening.learn(np.stack([raw[n] for n in names]), preset.global_desc.pca_dim)
    with atomic_map_dir(out, overwrite) as tmp:
        manifest = write_map(tmp, model, features, raw, whitening, preset.to_dict(), source)
    logger.info("map written to %s: %s", out, manifest.summary)
    return manifest


def import_colmap(model_dir: Path | str, database: Path | str, images: Path | str, out: Path | str,
                  preset: str | None = None, *, overwrite: bool = False, device: str | None = None) -> Manifest:
    """A vloc map at ``out`` from a COLMAP model and its database (see the module docstring).
    ``preset``: default ``colmap`` for COLMAP's uint8 SIFT; float descriptors need the preset
    whose extractor made them. Errors name what does not fit; ``out`` appears complete or not at all."""
    model_dir, database, images, out = Path(model_dir), Path(database), Path(images), Path(out)
    if not database.is_file():
        raise FileNotFoundError(f"{database}: no such COLMAP database")
    model = _read_model(model_dir)
    registered = _registered(model, model_dir)
    features = _ColmapFeatures(database, model, registered)
    try:
        kind, dim = features.descriptor_type()
        if preset is None and kind != "uint8":
            raise ValueError(f"{database}: float descriptors ({dim}-D): name the preset whose extractor made them "
                             "with --preset")
        chosen = get_preset(preset or "colmap")
        _check_preset(chosen, dim, str(database))
        source = Source(mode="import-colmap", reference=str(model_dir.resolve()), images=str(images.resolve()),
                        intrinsics=f"the COLMAP model's; features from {database}")
        return _write(out, model, features, images, [im.name for im in registered], chosen, source, overwrite,
                      device)
    finally:
        features.close()


def import_hloc(model_dir: Path | str, features_h5: Path | str, images: Path | str, out: Path | str,
                feature_type: str | None = None, *, overwrite: bool = False, device: str | None = None) -> Manifest:
    """A vloc map from an hloc run: its SfM model and ``features.h5``. ``feature_type``: hloc's
    extractor name (default: from the file name, ``feats-NAME-...h5`` as hloc names it); only
    extractors vloc runs for queries are accepted (:data:`HLOC_PRESETS`)."""
    model_dir, features_h5, images, out = Path(model_dir), Path(features_h5), Path(images), Path(out)
    if not features_h5.is_file():
        raise FileNotFoundError(f"{features_h5}: no such hloc feature file")
    feature_type = feature_type or _hloc_type(features_h5.stem)
    if feature_type not in HLOC_PRESETS:
        raise ValueError(f"{features_h5}: features {feature_type!r} cannot describe queries in vloc; supported: "
                         f"{', '.join(sorted(HLOC_PRESETS))} (give --feature-type when the file name does not say)")
    model = _read_model(model_dir)
    registered = _registered(model, model_dir)
    features = _HlocFeatures(features_h5, model, registered)
    try:
        preset = get_preset(HLOC_PRESETS[feature_type])
        dim = features[registered[0].name].descriptors.shape[1]
        _check_preset(preset, dim, str(features_h5))
        source = Source(mode="import-hloc", reference=str(model_dir.resolve()), images=str(images.resolve()),
                        intrinsics=f"the hloc model's; features from {features_h5} ({feature_type})")
        return _write(out, model, features, images, [im.name for im in registered], preset, source, overwrite,
                      device)
    finally:
        features.close()


def _hloc_type(stem: str) -> str:
    """``feats-aliked-n16`` -> ``aliked-n16``; ``feats-superpoint-n4096-r1024`` -> ``superpoint``."""
    name = stem[len("feats-"):] if stem.startswith("feats-") else stem
    parts = name.split("-")
    if len(parts) > 1 and parts[1].startswith("n") and parts[1][1:].isdigit() and parts[0] == "aliked":
        return "-".join(parts[:2])
    return parts[0]


def track_matches(model: pycolmap.Reconstruction) -> dict[tuple[int, int], np.ndarray]:
    """``(image_id1 < image_id2) -> (K, 2)`` point2D indices observing the same point3D."""
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for point in model.points3D.values():
        elements = sorted((e.image_id, e.point2D_idx) for e in point.track.elements)
        for a in range(len(elements)):
            for b in range(a + 1, len(elements)):
                (i, p), (j, q) = elements[a], elements[b]
                if i != j:
                    pairs[(i, j)].append((p, q))
    return {k: np.array(v, np.uint32) for k, v in pairs.items()}


def export_colmap(map_dir: Path | str, out: Path | str, float_descriptors: bool = False) -> Path:
    """``out/sparse`` (the map's model, binary) and ``out/database.db``: cameras, rigs and frames,
    images, keypoints, descriptors (a SIFT-like 128-D unit descriptor as COLMAP's uint8 unless
    ``float_descriptors``; others as float32, exactly), and per image pair the model's track
    correspondences as matches and a calibrated two-view geometry. ``out`` must be new."""
    data = load_map(map_dir)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; name a new folder")
    tmp = out.with_name(out.name + ".partial")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "sparse").mkdir(parents=True)
    model = data.reconstruction
    model.write(str(tmp / "sparse"))
    images = {im.image_id: (im.name, im.camera_id) for im in model.images.values()}
    store = data.store
    quantize = not float_descriptors and store.descriptor_dim == 128 and data.manifest.preset["features"]["name"] in (
        "sift", "colmap-sift")

    def keypoints():
        for image_id, (name, _) in images.items():
            yield image_id, np.array([p.xy for p in model.images[image_id].points2D], np.float32).reshape(-1, 2)

    def descriptors():
        for image_id, (name, _) in images.items():
            d = store.features(store.row(name)).descriptors.astype(np.float32)
            yield image_id, (pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, colmap_uint8(d)) if quantize
                             else pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.UNDEFINED,
                                                              np.ascontiguousarray(d).view(np.uint8)))

    def matches():
        for (i, j), m in track_matches(model).items():
            geometry = pycolmap.TwoViewGeometry(config=pycolmap.TwoViewGeometryConfiguration.CALIBRATED,
                                                inlier_matches=m)
            yield i, j, m, geometry

    write_database(tmp / "database.db", dict(model.cameras), images, keypoints(), matches(),
                   descriptors=descriptors())
    tmp.rename(out)
    logger.info("%s: COLMAP project of %s (%d images, descriptors %s)", out, map_dir, len(images),
                "uint8 SIFT" if quantize else "float32")
    return out


__all__ = ["HLOC_PRESETS", "export_colmap", "import_colmap", "import_hloc", "track_matches"]
