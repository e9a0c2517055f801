"""Build a map in stages connected by files: extraction, pair selection, matching, verification
(the COLMAP database), triangulation from known poses or SfM, then the map directory.

The stages live in a work directory (``OUT.partial`` beside the map, or ``work``); each records
the configuration that produced it (:mod:`vloc.mapping.stages`), so re-running the same build
after a crash, Ctrl-C or ``kill -9`` skips the finished stages, resumes extraction and matching
where they stopped, and gives the same map. The map itself is written into a temporary
directory and renamed into place last: it appears only complete. The default work directory is
removed once the map is written; a given ``work`` is kept (its stages can seed another build).
One build at a time writes a map or a work directory (a lock, :mod:`vloc.mapping.faults`), and a
write the filesystem refuses (full, read-only) stops the build with a
:class:`~vloc.mapping.faults.MapWriteError` that names the path: the previous map is unchanged
and the same command resumes.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pycolmap

from vloc.config import Preset, fallback_preset
from vloc.io.gps import EnuFrame, GpsFix, read_gps
from vloc.io.images import exif_focal_px, list_images
from vloc.io.rigs import RigLayout, read_rig
from vloc.io.text import data_lines
from vloc.mapping import match as matching
from vloc.mapping.cameras import (
    Cameras,
    RefineIntrinsics,
    check_camera_sizes,
    given_cameras,
    given_shared_cameras,
    intrinsics_note,
    refine_flags,
    shared_cameras,
)
from vloc.device import resolve_device
from vloc.mapping.executor import Executor, make_executor
from vloc.mapping.extract import ExtractedFeatures, extract_stage, read_global, read_image_size
from vloc.mapping.faults import guarded, map_lock, work_lock
from vloc.mapping.georegister import georegister, position_priors
from vloc.mapping.manifest import Manifest, Source, read_manifest, write_manifest
from vloc.mapping.map_dir import FALLBACK_DIR, MODEL_DIR, atomic_map_dir, write_map
from vloc.mapping.match import guided_views, match_stage, pairs_stage, read_whitening
from vloc.mapping.mapper import CHECKPOINT_SECONDS, Mapper, choose_mapper, parse_mapper
from vloc.mapping.rigs import rig_reconstruction, sfm_rigs
from vloc.mapping.reconstruct import (
    RECONSTRUCTION,
    reference_key,
    sfm,
    sfm_database,
    triangulate,
    triangulation_database,
)
from vloc.mapping.stages import Stage, digest, lap

logger = logging.getLogger(__name__)

__all__ = ["Mapper", "RefineIntrinsics", "build_map", "default_work_dir", "read_image_list"]


def read_image_list(path: Path) -> list[str]:
    return [fields[0] for _, fields in data_lines(path, "image list")]


def default_work_dir(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A validated build: what to read, what to make, and how."""

    images: Path
    out: Path
    work: Path
    preset: Preset
    names: list[str]
    reference: Path | None
    mapper: Mapper
    skip_bad_images: bool
    overwrite: bool
    given: dict[str, pycolmap.Camera] | None
    refine: tuple[bool, bool, bool]
    gps: dict[str, GpsFix] | None = None  # name -> position, for --gps
    gps_source: str = ""
    rig: RigLayout | None = None  # --rig
    refine_rigs: bool = False


def build_map(
    images: Path, out: Path, preset: Preset, reference: Path | None = None, image_list: Path | None = None,
    mapper: Mapper | str = Mapper.AUTO, skip_bad_images: bool = False, overwrite: bool = False,
    cameras: Cameras | None = None, refine_intrinsics: RefineIntrinsics | str | None = None, *,
    work: Path | None = None, workers: int = 1, ray: str | bool | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS, gps: str | Path | None = None,
    rig: str | Path | None = None, refine_rigs: bool = False, device: str | None = None,
) -> Manifest:
    """Build the map directory ``out`` from the images under ``images``.

    With ``reference`` (a COLMAP model with posed images), the map holds exactly its images with
    fixed poses and cameras, and points are triangulated from our matches. Without it, SfM:
    ``cameras`` gives the intrinsics (one camera for every image, or name -> camera; images with
    equal calibrations share a camera), else they start from EXIF or a guess;
    ``refine_intrinsics`` says what bundle adjustment refines (default: nothing of a given
    calibration; focal length and distortion of a guessed one, as COLMAP does).
    A preset with a fallback layer (``preset.fallback``) also gets that layer, triangulated from
    the map's own poses into ``out/fallback``; the directory appears only when both are complete.

    ``work``: the stages' directory (default ``OUT.partial``, removed after success);
    ``overwrite``: replace ``out``, and recompute stages written under another configuration
    (without it they are refused). ``workers``: local processes for extraction and matching;
    ``ray``: run them as Ray tasks (True: a local instance; a string: a cluster address).
    ``mapper``: ``auto`` (:func:`~vloc.mapping.mapper.choose_mapper`), ``incremental`` or ``global``;
    the incremental mapper writes its model every ``checkpoint_seconds`` into the work directory,
    and a rerun after a kill goes on from there (:mod:`vloc.mapping.mapper`).
    ``gps``: ``"exif"`` or a file of ``name lat lon alt [sigma]`` lines; SfM takes them as pose
    priors (:func:`~vloc.mapping.georegister.position_priors`), and the finished model is moved
    by a similarity onto those positions (after SfM with priors: close to the identity; known
    poses: the whole registration), in east-north-up metres about their median, recorded in the
    manifest's ``geo`` (:mod:`vloc.mapping.georegister`).
    ``rig``: a kapture ``rigs.txt`` or COLMAP rig JSON (:mod:`vloc.io.rigs`): the model holds
    COLMAP rigs and frames, each capture moves as one body (known poses: they must agree with
    the calibration; SfM keeps it unless ``refine_rigs``), :mod:`vloc.mapping.rigs`.
    ``device``: where extraction and matching run their torch models (``auto``, the default: CUDA
    when torch sees a GPU; :func:`vloc.device.resolve_device`); it does not change the stages'
    configuration, so a build may resume on another device.
    """
    plan = _plan(images, out, preset, reference, image_list, mapper, skip_bad_images, overwrite, cameras,
                 refine_intrinsics, work)
    if gps is not None:
        plan = dataclasses.replace(plan, gps=read_gps(gps, plan.images, plan.names), gps_source=str(gps))
    if rig is not None:
        plan = dataclasses.replace(plan, rig=read_rig(rig, plan.names), refine_rigs=refine_rigs)
    with guarded("map build", plan.out, plan.work, existed=plan.out.exists()), map_lock(plan.out):
        if plan.out.exists() and not overwrite:  # written by another build since _plan looked
            raise FileExistsError(f"{plan.out}: already exists (pass --overwrite to replace it)")
        with work_lock(plan.work):
            executor = make_executor(workers, ray, "cpu" if ray and device is None else str(resolve_device(device)))
            try:
                manifest = _run(plan, executor, checkpoint_seconds)
            finally:
                executor.close()
            if work is None:
                shutil.rmtree(plan.work, ignore_errors=True)
    return manifest


def _plan(images, out, preset, reference, image_list, mapper, skip_bad_images, overwrite, cameras,
          refine_intrinsics, work) -> _Plan:
    """Check everything that can be checked before any work; raises with the file and the problem."""
    images, out = Path(images), Path(out)
    mapper = parse_mapper(mapper)
    fallback_preset(preset)  # an unknown fallback name fails here, before any work
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    if reference is not None:
        names = sorted(im.name for im in pycolmap.Reconstruction(str(reference)).images.values() if im.has_pose)
        if image_list is not None:
            wanted = set(read_image_list(image_list))
            names = [n for n in names if n in wanted]
    elif image_list is not None:
        names = read_image_list(image_list)
    else:
        names = list_images(images)
    missing = [n for n in names if not (images / n).is_file()]
    if missing and not skip_bad_images:
        raise FileNotFoundError(f"{images}: {len(missing)} map images missing, e.g. {missing[:3]}")
    if len(names) < 2:
        raise ValueError(f"{images}: need at least 2 map images, found {len(names)}")
    given = given_cameras(cameras, names, reference)
    if given is not None:
        check_camera_sizes(images, given)
    refine = refine_flags(refine_intrinsics, given is not None, reference)
    return _Plan(images, out, Path(work) if work is not None else default_work_dir(out), preset, names,
                 Path(reference) if reference is not None else None, mapper, skip_bad_images, overwrite, given, refine)


def _run(plan: _Plan, executor: Executor, checkpoint_seconds: float = CHECKPOINT_SECONDS) -> Manifest:
    preset, work, overwrite = plan.preset, plan.work, plan.overwrite
    work.mkdir(parents=True, exist_ok=True)
    logger.info("building %s in %s", plan.out, work)
    seconds: dict[str, float] = {}  # per stage, this run (a reused stage takes ~0 s)
    t = time.perf_counter()

    extract = Stage.open(work, "extract", {"features": asdict(preset.features),
                                           "global_desc": asdict(preset.global_desc),
                                           "images": str(plan.images.resolve())}, overwrite)
    skipped = extract_stage(extract, plan.images, plan.names, preset.features, preset.global_desc,
                            plan.skip_bad_images, executor)
    extract.complete()
    names = [n for n in plan.names if n not in skipped]
    if len(names) < 2:
        raise ValueError(f"{plan.images}: fewer than 2 readable map images ({len(skipped)} skipped)")
    t = lap(seconds, "extract", t)

    pairs_conf = preset.pairs if plan.reference is not None else preset.pairs.for_sfm(len(names))
    # SfM with --gps: the fixes as pose priors, in east-north-up metres (also the spatial pairs' positions)
    priors = (position_priors(plan.gps, EnuFrame.around(list(plan.gps.values())))
              if plan.gps is not None and plan.reference is None else None)
    positions = None if priors is None else np.array([priors[n][0] if n in priors else np.full(3, np.nan)
                                                      for n in names]).reshape(-1, 3)
    spatial = {} if positions is None else {"gps": digest(positions.round(3).tolist()),
                                            "gps_pairs": [matching.GPS_NEIGHBOURS, matching.GPS_MAX_DISTANCE_M]}
    pairs = Stage.open(work, "pairs", {"extract": extract.key, "pairs": asdict(pairs_conf),
                                       "pca_dim": preset.global_desc.pca_dim, "images": digest(names), **spatial},
                       overwrite)
    if not pairs.done:
        pairs_stage(pairs, extract.directory, names, pairs_conf, preset.global_desc.pca_dim, positions)
        pairs.complete()
    t = lap(seconds, "pairs", t)

    ref = pycolmap.Reconstruction(str(plan.reference)) if plan.reference is not None else None
    if ref is not None and plan.rig is not None:
        ref = rig_reconstruction(ref, plan.rig)
    rig_key = {} if plan.rig is None else {"rig": digest(plan.rig.to_dict()), "refine_rigs": plan.refine_rigs}
    views = guided_views(preset.matcher, ref)
    guided = {} if views is None else {"guided_by": reference_key(ref)}
    matches = Stage.open(work, "matches", {"pairs": pairs.key, "matcher": asdict(preset.matcher),
                                           "chunk": matching.CHUNK, **guided}, overwrite)
    if not matches.done:
        match_stage(matches, pairs.directory, extract.directory, preset.matcher, executor, views)
        matches.complete()
    t = lap(seconds, "match", t)

    if ref is not None:
        database = Stage.open(work, "database", {"matches": matches.key, "verify": asdict(preset.verify),
                                                 "reference": reference_key(ref), **rig_key}, overwrite)
        if not database.done:
            triangulation_database(database, ref, extract.directory, pairs.directory, matches.directory,
                                   preset.verify)
            database.complete()
    else:
        cameras, camera_of = _sfm_cameras(plan, extract.directory, names)
        rigs_and_frames = None
        if plan.rig is not None:
            cameras, camera_of, rigs_and_frames = sfm_rigs(plan.rig, names, cameras, camera_of)
        database = Stage.open(work, "database", {
            "matches": matches.key, "verify": asdict(preset.verify),
            "cameras": {k: [c.model.name, c.width, c.height, list(map(float, c.params)), c.has_prior_focal_length]
                        for k, c in cameras.items()}, "camera_of": digest(camera_of),
            **({} if plan.gps is None else {"gps_priors": digest({n: asdict(f) for n, f in plan.gps.items()})}),
            **rig_key},
            overwrite)
        if not database.done:
            sfm_database(database, cameras, camera_of, extract.directory, pairs.directory, matches.directory,
                         preset.verify, position_priors=priors, rigs_and_frames=rigs_and_frames)
            database.complete()
    t = lap(seconds, "verify", t)

    mapper = choose_mapper(plan.mapper, len(names))
    mode = "triangulation" if ref is not None else f"sfm-{mapper}"
    model = Stage.open(work, "model", {"database": database.key, "mode": mode, "refine": list(plan.refine),
                                       "mapper": asdict(preset.mapper) if mode == "sfm-incremental" else None},
                       overwrite)
    if model.done:
        rec = pycolmap.Reconstruction(str(model.directory / RECONSTRUCTION))
    else:
        if ref is not None:
            rec = triangulate(model, ref, set(names), database.directory, plan.images)
        else:
            rec = sfm(model, database.directory, plan.images, mapper, preset.mapper, plan.refine, len(names),
                      checkpoint_seconds, position_priors=plan.gps is not None, refine_rigs=plan.refine_rigs)
        model.complete()
    t = lap(seconds, "triangulate" if ref is not None else "sfm", t)

    geo = None if plan.gps is None else georegister(rec, plan.gps, plan.gps_source)
    registered = sorted(im.name for im in rec.images.values() if im.has_pose)
    source = Source(mode=mode, reference=str(plan.reference) if plan.reference else None,
                    images=str(plan.images.resolve()),  # where `vloc map adapt` finds them
                    skipped_images=skipped, unregistered_images=sorted(set(names) - set(registered)),
                    intrinsics=intrinsics_note(plan.reference, plan.given, plan.refine),
                    rig=plan.rig.source if plan.rig is not None else None)
    layer = fallback_preset(preset)
    with atomic_map_dir(plan.out, overwrite) as tmp:
        manifest = write_map(tmp, rec, ExtractedFeatures(extract.directory, names),
                             {n: read_global(extract.directory, n) for n in registered},
                             read_whitening(pairs.directory), preset.to_dict(), source)
        t = lap(seconds, "write", t)
        if layer is not None:
            # the layer takes the map's poses: geo-registered ones when --gps moved the model
            posed = tmp / MODEL_DIR if geo is not None else model.directory / RECONSTRUCTION
            _build_fallback_layer(plan, layer, posed, tmp, executor)
            lap(seconds, "fallback layer", t)
        manifest = manifest.replace(build_seconds={k: round(v, 3) for k, v in seconds.items()}, geo=geo,
                                    exif_cameras=_exif_cameras(plan, rec))
        write_manifest(tmp, manifest)
    logger.info("map written to %s: %s", plan.out, manifest.summary)
    return manifest


def _exif_cameras(plan: _Plan, rec: pycolmap.Reconstruction) -> list[dict]:
    """SfM cameras that started from their images' EXIF focal length and whose focal SfM refined:
    the refined calibration a query with the same EXIF (and size) takes (:class:`Localizer`)."""
    if plan.reference is not None or plan.given is not None or not plan.refine[0]:
        return []
    first = {}
    for im in sorted(rec.images.values(), key=lambda im: im.name):
        first.setdefault(im.camera_id, im.name)
    out = []
    for camera_id, name in sorted(first.items()):
        focal = exif_focal_px(plan.images / name)
        camera = rec.cameras[camera_id]
        if focal is not None:
            out.append({"width": camera.width, "height": camera.height, "exif_focal_px": round(float(focal), 3),
                        "model": camera.model.name, "params": [float(v) for v in camera.params]})
    return out


def _sfm_cameras(plan: _Plan, extract_dir: Path, names: list[str]) -> tuple[dict[int, pycolmap.Camera], list[int]]:
    if plan.given is not None:
        return given_shared_cameras(names, plan.given)
    sizes = {n: read_image_size(extract_dir, n) for n in names}
    return shared_cameras(names, sizes, plan.images)



def _build_fallback_layer(plan: _Plan, layer: Preset, model: Path, map_dir: Path, executor: Executor) -> None:
    """Triangulate ``layer``'s features from the poses and cameras of ``model`` into ``map_dir``'s
    fallback directory; its stages live in the work directory's ``fallback/``."""
    logger.info("fallback layer %r: triangulating from the map's poses", layer.name)
    out = map_dir / FALLBACK_DIR
    sub = _plan(plan.images, out, layer, model, None, Mapper.AUTO, plan.skip_bad_images, plan.overwrite, None,
                None, plan.work / FALLBACK_DIR)
    _run(sub, executor)
    manifest = read_manifest(out)  # the enclosing map's model, wherever the map moves:
    write_manifest(out, manifest.replace(source=dataclasses.replace(manifest.source, reference="../model")))
