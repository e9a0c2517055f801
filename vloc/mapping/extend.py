"""Grow a map with new images (``vloc map extend``), in stages like a build.

The new images are extracted with the map's own preset, paired by retrieval against the map's
index (each new image with its ``pairs.num_retrieved`` best map images) and among themselves
(retrieval and name order, as in a build), matched and verified. Then:

- with ``reference`` (a COLMAP model holding the new images' poses): the images are added with
  their poses and cameras fixed, and points are triangulated from the new matches; the map's
  points are kept (``triangulate_points`` without clearing) and tracks extended;
- without: pycolmap's incremental mapper continues the map's model (``input_path``): it
  registers the new images by 2D-3D matches, triangulates and runs its bundle adjustments with
  the map's existing frames fixed, so the map's poses do not move. New images of a size the map
  has use its camera, which stays fixed; another size gets a camera from EXIF or a guess, and
  then bundle adjustment refines focal lengths and distortion (the map's cameras too).

The map images' features enter the work directory from the map (no image of the map is read;
its images need not be on disk). The extended map is written beside the map and renamed over it
last: an interrupted extend, or one whose filesystem refuses a write, leaves the old map as it
was (:mod:`vloc.mapping.faults`: the map is locked while an extend runs). Images that do not
register are listed in the manifest (``extensions``) and the result, never given a pose.
Rigs (``--rig``): the new captures become frames of the map's rig with the same calibration, or
of a new rig (known poses: checked against the calibration; SfM: kept rigid); a map built with
rigs keeps them. Not supported yet (refused by name): maps with a fallback layer and adapted maps.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pycolmap
from tqdm import tqdm

from vloc.config import Preset
from vloc.io.cameras import initial_camera
from vloc.io.files import atomic_path
from vloc.io.images import exif_focal_px, list_images
from vloc.mapping import match as matching
from vloc.mapping.build import read_image_list
from vloc.device import resolve_device
from vloc.mapping.executor import make_executor
from vloc.mapping.extract import ExtractedFeatures, extract_stage, feature_path, read_global, read_image_size
from vloc.mapping.faults import guarded, map_lock, native_write, work_lock
from vloc.mapping.manifest import Manifest, read_manifest, write_manifest
from vloc.mapping.map_dir import FALLBACK_DIR, MODEL_DIR, atomic_map_dir, write_map
from vloc.io.rigs import RigLayout, read_rig
from vloc.mapping.mapper import incremental_options, known_pose_options
from vloc.mapping.rigs import add_rig_captures, extension_rigs
from vloc.mapping.match import match_stage, write_pairs
from vloc.mapping.reconstruct import (
    DATABASE,
    RECONSTRUCTION,
    reference_key,
    save_reconstruction,
    sfm_database,
    triangulation_database,
)
from vloc.mapping.stages import Stage, digest, lap
from vloc.mapping.store import MapStore
from vloc.matching.verify import known_pose_geometry
from vloc.retrieval.pairs import select_pairs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtendResult:
    manifest: Manifest
    registered: list[str]  # new images now in the map
    unregistered: list[str]  # new images that could not be registered
    skipped: dict[str, str]  # new images that could not be read -> why


def default_extend_work_dir(map_dir: Path) -> Path:
    return Path(map_dir).with_name(f"{Path(map_dir).name}.extend.partial")


def extend_map(map_dir: Path, images: Path, *, image_list: Path | None = None, reference: Path | None = None,
               work: Path | None = None, workers: int = 1, ray: str | bool | None = None,
               skip_bad_images: bool = False, overwrite: bool = False, rig: Path | None = None,
               device: str | None = None) -> ExtendResult:
    """Add the images under ``images`` (those of ``image_list``, or of ``reference``, or all
    that the map does not hold yet) to the map at ``map_dir``; see the module docstring.
    ``overwrite``: recompute work stages written under another configuration (else refused).
    ``rig`` (with ``reference``): the new images' rig captures (:mod:`vloc.io.rigs`) become frames
    of the map's rig with the same calibration, or of a new one (:func:`vloc.mapping.rigs.add_rig_captures`).
    ``device``: where extraction and matching run their torch models (as :func:`~vloc.mapping.build.build_map`).

    The map and the work directory are locked while it runs (another build or extend of either
    is refused with :class:`~vloc.mapping.faults.MapBusyError`); a write the filesystem refuses
    stops it with :class:`~vloc.mapping.faults.MapWriteError`, the map unchanged."""
    map_dir = Path(map_dir)
    read_manifest(map_dir)  # not a map: refused before anything is created beside it
    work_dir = Path(work) if work is not None else default_extend_work_dir(map_dir)
    with guarded("map extend", map_dir, work_dir, existed=True), map_lock(map_dir), ExitStack() as held:
        return _extend(map_dir, Path(images), image_list, reference, work, workers, ray, skip_bad_images, overwrite,
                       device, held, rig)


def _extend(map_dir: Path, images: Path, image_list: Path | None, reference: Path | None, work: Path | None,
            workers: int, ray: str | bool | None, skip_bad_images: bool, overwrite: bool, device: str | None,
            held: ExitStack, rig: Path | None = None) -> ExtendResult:
    """:func:`extend_map` with the map locked; the work directory's lock joins ``held``."""
    manifest = read_manifest(map_dir)
    if (map_dir / FALLBACK_DIR).exists():
        raise ValueError(f"{map_dir}: extending a map with a fallback layer is not supported yet; rebuild it with "
                         "`vloc map build` over all images")
    if manifest.adaptation is not None:
        raise ValueError(f"{map_dir}: extending an adapted map (`vloc map adapt`) is not supported yet; extend the "
                         "map before adapting it")
    preset = Preset.from_dict(manifest.preset)
    store = MapStore.open(map_dir)
    map_names = [store.name(r) for r in range(len(store))]
    names = _new_names(images, image_list, reference, set(map_names))
    missing = [n for n in names if not (images / n).is_file()]
    if missing and not skip_bad_images:
        raise FileNotFoundError(f"{images}: {len(missing)} new images missing, e.g. {missing[:3]}")
    work = Path(work) if work is not None else default_extend_work_dir(map_dir)
    held.enter_context(work_lock(work))
    executor = make_executor(workers, ray, "cpu" if ray and device is None else str(resolve_device(device)))
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    try:
        extract = Stage.open(work, "extract", {"features": asdict(preset.features),
                                               "global_desc": asdict(preset.global_desc),
                                               "images": str(images.resolve())}, overwrite)
        skipped = extract_stage(extract, images, names, preset.features, preset.global_desc, skip_bad_images,
                                executor)
        extract.complete()
        new = [n for n in names if n not in skipped]
        if not new:
            raise ValueError(f"{images}: none of the {len(names)} new images could be read")
        _import_map_features(extract.directory, store)
        t = lap(seconds, "extract", t)
        map_key = digest({"created": manifest.created, "counts": asdict(manifest.counts)})
        pairs = Stage.open(work, "pairs", {"extract": extract.key, "pairs": asdict(preset.pairs), "map": map_key,
                                           "images": digest(new)}, overwrite)
        if not pairs.done:
            _pairs(pairs, extract.directory, store, map_names, new, preset)
            pairs.complete()
        matches = Stage.open(work, "matches", {"pairs": pairs.key, "matcher": asdict(preset.matcher),
                                               "chunk": matching.CHUNK}, overwrite)
        if not matches.done:
            match_stage(matches, pairs.directory, extract.directory, preset.matcher, executor)
            matches.complete()
        t = lap(seconds, "match", t)
    finally:
        executor.close()

    model = pycolmap.Reconstruction(str(map_dir / MODEL_DIR))
    ids = {im.name: im.image_id for im in model.images.values()}
    if reference is not None:
        layout = read_rig(rig, new) if rig is not None else None
        rec = _extend_known_poses(work, model, pycolmap.Reconstruction(str(reference)), new, extract, pairs, matches,
                                  preset, images, overwrite, layout)
    else:
        rec = _extend_sfm(work, map_dir, model, ids, map_names, new, extract, pairs, matches, preset, images,
                          overwrite, read_rig(rig, new) if rig is not None else None)
    t = lap(seconds, "register", t)

    registered = sorted(im.name for im in rec.images.values() if im.has_pose)
    lost = sorted(set(map_names) - set(registered))
    if lost:
        raise RuntimeError(f"{map_dir}: extending dropped {len(lost)} of the map's images (e.g. {lost[:3]}); "
                           "the map is unchanged")
    added = sorted(set(new) & set(registered))
    unregistered = sorted(set(new) - set(registered))
    extension = {"images": str(images.resolve()), "reference": str(reference) if reference else None,
                 "added": len(added), "unregistered_images": unregistered, "skipped_images": skipped,
                 "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    with atomic_map_dir(map_dir, overwrite=True) as tmp:
        out = write_map(tmp, rec, ExtractedFeatures(extract.directory, registered),
                        {n: read_global(extract.directory, n) for n in registered}, store.whitening,
                        manifest.preset, manifest.source if rig is None or manifest.source.rig is not None
                        else dataclasses.replace(manifest.source, rig=str(rig)))
        out = out.replace(build_seconds=manifest.build_seconds, extensions=[*manifest.extensions, extension])
        write_manifest(tmp, out)
    if work == default_extend_work_dir(map_dir):
        shutil.rmtree(work, ignore_errors=True)
    logger.info("%s: added %d of %d new images (%d unregistered, %d unreadable): %s", map_dir, len(added), len(names),
                len(unregistered), len(skipped), out.summary)
    return ExtendResult(out, added, unregistered, skipped)


def _new_names(images: Path, image_list: Path | None, reference: Path | None, in_map: set[str]) -> list[str]:
    if reference is not None:
        names = sorted(im.name for im in pycolmap.Reconstruction(str(reference)).images.values() if im.has_pose)
        if image_list is not None:
            wanted = set(read_image_list(image_list))
            names = [n for n in names if n in wanted]
    elif image_list is not None:
        names = read_image_list(image_list)
    else:
        names = list_images(images)
    names = [n for n in names if n not in in_map]
    if not names:
        raise ValueError(f"{images}: no image that the map does not already hold")
    return names


def _import_map_features(extract_dir: Path, store: MapStore) -> None:
    """Write the map images' features and global descriptors in the extraction stage's format."""
    for row in tqdm(range(len(store)), desc="map features", unit="img", disable=len(store) < 1000):
        name = store.name(row)
        path = feature_path(extract_dir, name)
        if path.is_file():
            continue
        feats = store.features(row)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, keypoints=feats.keypoints, descriptors=feats.descriptors.astype(np.float16),
                         scores=feats.scores, image_size=np.asarray(feats.image_size, np.int64),
                         global_desc=np.asarray(store.global_raw[row], np.float32))


def _pairs(stage: Stage, extract_dir: Path, store: MapStore, map_names: list[str], new: list[str],
           preset: Preset) -> None:
    """New x map by the map's own index, new x new as a build pairs them; indices: map images
    first (store order), then the new ones."""
    whitening = store.whitening
    query = whitening(np.stack([read_global(extract_dir, n) for n in new]))
    k = min(preset.pairs.num_retrieved, len(map_names))
    _, found = store.read_index().search(np.ascontiguousarray(query, np.float32), k)
    base = len(map_names)
    pairs = {(int(r), base + m) for m, row in enumerate(found) for r in row if r >= 0}
    pairs |= {(base + i, base + j) for i, j in select_pairs(query, preset.pairs.num_retrieved,
                                                              preset.pairs.num_sequential)}
    logger.info("%d new images: %d pairs (%d with the map)", len(new), len(pairs), sum(i < base for i, _ in pairs))
    write_pairs(stage, map_names + new, sorted(pairs), whitening)


def covisible_pairs(model: pycolmap.Reconstruction, min_shared: int
                    ) -> Iterator[tuple[int, int, np.ndarray, pycolmap.TwoViewGeometry]]:
    """The map's own image pairs as verified geometries: the keypoints two images observe the same
    3D point with are their inlier matches (pairs sharing at least ``min_shared`` points). COLMAP's
    mapper drops images without correspondences in the database, so a map image that no new
    image matches would otherwise be missing when the mapper continues the model."""
    shared: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for point in model.points3D.values():
        track = sorted((el.image_id, el.point2D_idx) for el in point.track.elements)
        for a in range(len(track)):
            for b in range(a + 1, len(track)):
                if track[a][0] != track[b][0]:
                    shared.setdefault((track[a][0], track[b][0]), []).append((track[a][1], track[b][1]))
    for (id1, id2), pairs in sorted(shared.items()):
        if len(pairs) >= min_shared:
            inliers = np.unique(np.array(pairs, np.uint32), axis=0)
            yield id1, id2, inliers, known_pose_geometry(inliers, model.images[id1].cam_from_world(),
                                                         model.images[id2].cam_from_world())


def _extend_known_poses(work: Path, model: pycolmap.Reconstruction, reference: pycolmap.Reconstruction,
                        new: list[str], extract: Stage, pairs: Stage, matches: Stage, preset: Preset,
                        images: Path, overwrite: bool, layout: RigLayout | None = None) -> pycolmap.Reconstruction:
    """The map's model with the new images at their reference poses (``layout``'s captures as rig
    frames); points triangulated from the new matches, the map's points kept."""
    combined = pycolmap.Reconstruction(model)
    by_name = {im.name: im for im in reference.images.values()}

    def keypoints(name: str) -> np.ndarray:
        return np.load(feature_path(extract.directory, name))["keypoints"].astype(np.float64)

    in_rig = set(layout.camera_of()) if layout is not None else set()
    if layout is not None:
        first = max(combined.images, default=0) + 1
        add_rig_captures(combined, reference, layout, {n: first + i for i, n in enumerate(sorted(in_rig))}, keypoints)
    new = [n for n in new if n not in in_rig]
    same_camera: dict[tuple, int] = {(c.model.name, c.width, c.height, tuple(c.params)): k
                                     for k, c in combined.cameras.items()}
    next_camera = max(combined.cameras, default=0) + 1
    next_image = max(combined.images, default=0) + 1
    for name in new:
        src = by_name[name]
        cam = reference.cameras[src.camera_id]
        key = (cam.model.name, cam.width, cam.height, tuple(cam.params))
        if key not in same_camera:
            camera = pycolmap.Camera(cam.todict())
            camera.camera_id = next_camera
            combined.add_camera_with_trivial_rig(camera)
            same_camera[key], next_camera = next_camera, next_camera + 1
        combined.add_image_with_trivial_frame(
            pycolmap.Image(name=name, keypoints=keypoints(name), camera_id=same_camera[key], image_id=next_image),
            src.cam_from_world())
        next_image += 1
    database = Stage.open(work, "database", {"matches": matches.key, "verify": asdict(preset.verify),
                                             "reference": reference_key(combined)}, overwrite)
    if not database.done:
        triangulation_database(database, combined, extract.directory, pairs.directory, matches.directory,
                               preset.verify)
        database.complete()
    stage = Stage.open(work, "model", {"database": database.key, "mode": "extend-triangulation"}, overwrite)
    if stage.done:
        return pycolmap.Reconstruction(str(stage.directory / RECONSTRUCTION))
    with native_write(stage.directory / RECONSTRUCTION), tempfile.TemporaryDirectory(dir=stage.directory) as out:
        rec = pycolmap.triangulate_points(combined, str(database.directory / DATABASE), str(images), out,
                                          clear_points=False, options=known_pose_options())
    save_reconstruction(stage, rec)
    stage.complete()
    return rec


def _extend_sfm(work: Path, map_dir: Path, model: pycolmap.Reconstruction, ids: dict[str, int],
                map_names: list[str], new: list[str], extract: Stage, pairs: Stage, matches: Stage, preset: Preset,
                images: Path, overwrite: bool, layout: RigLayout | None = None) -> pycolmap.Reconstruction:
    """Register the new images into the map's model with the incremental mapper, map frames fixed
    (``layout``'s captures, and the map's own rigs, as rig frames: :func:`~vloc.mapping.rigs.extension_rigs`)."""
    cameras = {k: pycolmap.Camera(c.todict()) for k, c in model.cameras.items()}
    by_size = {(c.width, c.height): k for k, c in sorted(cameras.items())}
    camera_of = [model.images[ids[n]].camera_id for n in map_names]
    for name in new:
        size = read_image_size(extract.directory, name)
        if size not in by_size:  # a new kind of image: its own camera, from EXIF or a guess
            camera_id = max(cameras) + 1
            cameras[camera_id] = initial_camera(*size, exif_focal_px(images / name))
            by_size[size] = camera_id
        camera_of.append(by_size[size])
    next_image = max(model.images, default=0) + 1
    image_ids = [ids[n] for n in map_names] + list(range(next_image, next_image + len(new)))
    rigs_and_frames, rig_key = None, {}
    if layout is not None or any(r.num_sensors() > 1 for r in model.rigs.values()):
        new_ids = {n: next_image + i for i, n in enumerate(new)}
        cameras, new_camera, rigs_and_frames = extension_rigs(model, layout, new_ids, cameras,
                                                              dict(zip(new, camera_of[len(map_names):], strict=True)))
        camera_of = camera_of[:len(map_names)] + [new_camera[n] for n in new]
        rig_key = {"rig": digest(layout.to_dict()) if layout is not None else "map"}
    database = Stage.open(work, "database", {"matches": matches.key, "verify": asdict(preset.verify),
                                             "cameras": digest({k: c.todict() for k, c in cameras.items()}),
                                             "camera_of": digest(camera_of),
                                             "map_pairs": {"min_shared": preset.verify.min_inliers}, **rig_key},
                          overwrite)
    if not database.done:
        sfm_database(database, cameras, camera_of, extract.directory, pairs.directory, matches.directory,
                     preset.verify, image_ids, covisible_pairs(model, preset.verify.min_inliers),
                     rigs_and_frames=rigs_and_frames)
        database.complete()
    stage = Stage.open(work, "model", {"database": database.key, "mode": "extend-sfm",
                                       "mapper": asdict(preset.mapper)}, overwrite)
    if stage.done:
        return pycolmap.Reconstruction(str(stage.directory / RECONSTRUCTION))
    if len(cameras) == len(model.cameras):  # the new images use the map's cameras: keep them as they are
        refine = (False, False, False)
    else:
        refine = (True, False, True)
        logger.warning("%d new camera(s) guessed for images of another size: bundle adjustment refines focal "
                       "lengths and distortion, the map's cameras too", len(cameras) - len(model.cameras))
    options = incremental_options(preset.mapper, refine)
    options.fix_existing_frames = True
    with native_write(stage.directory / RECONSTRUCTION), tempfile.TemporaryDirectory(dir=stage.directory) as out:
        models = pycolmap.incremental_mapping(str(database.directory / DATABASE), str(images), out, options,
                                              input_path=str(map_dir / MODEL_DIR))
    if not models:
        raise RuntimeError(f"{map_dir}: the incremental mapper returned no model; the map is unchanged")
    best = max(models, key=lambda k: models[k].num_reg_images())
    save_reconstruction(stage, models[best])
    stage.complete()
    return models[best]

