"""Build a map: features, retrieval pairs, matching, verification, then pycolmap triangulation
(known poses) or SfM (incremental or global), written atomically as a map directory."""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import Callable

import numpy as np
import pycolmap
from tqdm import tqdm

from vloc.config import Preset, fallback_preset
from vloc.io.cameras import initial_camera
from vloc.io.images import ImageReadError, exif_focal_px, image_size, list_images
from vloc.io.text import data_lines
from vloc.mapping.database import write_database
from vloc.mapping.extract import extract_images
from vloc.mapping.manifest import Manifest, Source, read_manifest, write_manifest
from vloc.mapping.map_dir import FALLBACK_DIR, atomic_map_dir, write_map
from vloc.matching import make_matcher
from vloc.matching.verify import num_inliers, verify_known_poses
from vloc.retrieval.index import Whitening
from vloc.retrieval.pairs import select_pairs

logger = logging.getLogger(__name__)

MAPPERS = ("incremental", "global")


class RefineIntrinsics(StrEnum):
    """Which camera parameters SfM's bundle adjustment refines."""

    NONE = "none"
    FOCAL = "focal"
    ALL = "all"  # focal length, principal point and distortion


# (focal, principal point, extra params); without given intrinsics vloc refines what COLMAP's
# incremental and global mappers refine by default.
REFINE_FLAGS = {RefineIntrinsics.NONE: (False, False, False), RefineIntrinsics.FOCAL: (True, False, False),
                RefineIntrinsics.ALL: (True, True, True)}
COLMAP_DEFAULT_REFINE = (True, False, True)

Cameras = pycolmap.Camera | dict[str, pycolmap.Camera]
RANDOM_SEED = 0  # RANSAC and mapper seeds: the same inputs give the same map


def read_image_list(path: Path) -> list[str]:
    return [fields[0] for _, fields in data_lines(path, "image list")]


def build_map(
    images: Path, out: Path, preset: Preset, reference: Path | None = None, image_list: Path | None = None,
    mapper: str = "incremental", skip_bad_images: bool = False, overwrite: bool = False,
    cameras: Cameras | None = None, refine_intrinsics: RefineIntrinsics | str | None = None,
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
    """
    images, out = Path(images), Path(out)
    if mapper not in MAPPERS:
        raise ValueError(f"Unknown mapper {mapper!r}; valid: {', '.join(MAPPERS)}")
    layer = fallback_preset(preset)  # an unknown fallback name fails here, before any work
    ref = None
    if reference is not None:
        ref = pycolmap.Reconstruction(str(reference))
        names = sorted(im.name for im in ref.images.values())
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
    given = _given_cameras(cameras, names, reference)
    if given is not None:
        _check_camera_sizes(images, given)
    refine = _refine_flags(refine_intrinsics, given is not None, reference)

    seconds: dict[str, float] = {}  # per stage, recorded in the manifest
    t = time.perf_counter()
    with atomic_map_dir(out, overwrite) as tmp:
        extracted = extract_images(images, names, preset, skip_bad_images)  # raises unless skipping
        t = _lap(seconds, "extract", t)
        names = [n for n in names if n in extracted.features]
        if len(names) < 2:
            raise ValueError(f"{images}: fewer than 2 readable map images ({len(extracted.skipped)} skipped)")
        raw = np.stack([extracted.global_desc[n] for n in names])
        whitening = Whitening.learn(raw, preset.global_desc.pca_dim)
        pairs = select_pairs(whitening(raw), preset.pairs.num_retrieved, preset.pairs.num_sequential)
        logger.info("%d images, %d pairs", len(names), len(pairs))
        t = _lap(seconds, "pairs", t)
        matches = _match_pairs(names, pairs, extracted, preset)
        t = _lap(seconds, "match", t)
        with tempfile.TemporaryDirectory(dir=tmp) as work:
            db_path = Path(work) / "database.db"
            if ref is not None:
                rec = _triangulate(ref, names, matches, extracted, preset, db_path, images)
            else:
                rec = _sfm(names, matches, extracted, preset, db_path, images, Path(work), mapper, given, refine)
        t = _lap(seconds, "triangulate" if ref is not None else "sfm", t)
        registered = {im.name for im in rec.images.values() if im.has_pose}
        source = Source(mode="triangulation" if reference else f"sfm-{mapper}",
                        reference=str(reference) if reference else None,
                        images=str(images.resolve()),  # where `vloc map adapt` finds them
                        skipped_images=extracted.skipped,
                        unregistered_images=sorted(set(extracted.features) - registered),
                        intrinsics=_intrinsics_note(reference, given, refine))
        manifest = write_map(tmp, rec, extracted.features, extracted.global_desc, whitening, preset.to_dict(), source)
        t = _lap(seconds, "write", t)
        if layer is not None:
            _build_fallback_layer(images, tmp, layer, skip_bad_images)
            _lap(seconds, "fallback layer", t)
        manifest = manifest.replace(build_seconds={k: round(v, 3) for k, v in seconds.items()})
        write_manifest(tmp, manifest)
    logger.info("map written to %s: %s", out, manifest.summary)
    return manifest


def _given_cameras(cameras: Cameras | None, names: list[str],
                   reference: Path | None) -> dict[str, pycolmap.Camera] | None:
    """``cameras`` as name -> camera for every map image, or None; refused with a reference model
    (whose cameras are the map's) and when an image has none."""
    if cameras is None:
        return None
    if reference is not None:
        raise ValueError(f"{reference}: a reference model brings its own cameras; drop --camera/--cameras")
    if isinstance(cameras, pycolmap.Camera):
        return {n: cameras for n in names}
    missing = [n for n in names if n not in cameras]
    if missing:
        raise ValueError(f"--cameras: no camera for {len(missing)} map images, e.g. {missing[:3]}")
    return {n: cameras[n] for n in names}


def _check_camera_sizes(images: Path, given: dict[str, pycolmap.Camera]) -> None:
    """Each image's size (from its header) must be its camera's; unreadable files are left to extraction."""
    for name, cam in given.items():
        try:
            width, height = image_size(images / name)
        except ImageReadError:
            continue
        if (width, height) != (cam.width, cam.height):
            raise ValueError(f"{images / name}: the image is {width}x{height} but its camera is "
                             f"{cam.width}x{cam.height}")


def _refine_flags(refine: RefineIntrinsics | str | None, given: bool,
                  reference: Path | None) -> tuple[bool, bool, bool]:
    if refine is None:
        return REFINE_FLAGS[RefineIntrinsics.NONE] if given else COLMAP_DEFAULT_REFINE
    if reference is not None:
        raise ValueError(f"{reference}: triangulation keeps the reference cameras fixed; drop --refine-intrinsics")
    try:
        return REFINE_FLAGS[RefineIntrinsics(refine)]
    except ValueError:
        raise ValueError(f"Unknown --refine-intrinsics {refine!r}; valid: "
                         f"{', '.join(r.value for r in RefineIntrinsics)}") from None


def _intrinsics_note(reference: Path | None, given: dict | None, refine: tuple[bool, bool, bool]) -> str:
    if reference is not None:
        return "reference model, fixed"
    refined = [n for n, on in zip(("focal", "principal point", "distortion"), refine, strict=True) if on]
    return f"{'given' if given else 'EXIF or guessed'}, refined: {', '.join(refined) or 'none'}"


def _lap(seconds: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    seconds[stage] = now - since
    logger.info("%s: %.1f s", stage, seconds[stage])
    return now


def _build_fallback_layer(images: Path, map_dir: Path, layer: Preset, skip_bad_images: bool) -> None:
    """Triangulate ``layer``'s features from the poses and cameras of the map in ``map_dir``."""
    logger.info("fallback layer %r: triangulating from the map's poses", layer.name)
    out = map_dir / FALLBACK_DIR
    build_map(images, out, layer, reference=map_dir / "model", skip_bad_images=skip_bad_images)
    manifest = read_manifest(out)  # the enclosing map's model, wherever the map moves:
    write_manifest(out, manifest.replace(source=dataclasses.replace(manifest.source, reference="../model")))


def _match_pairs(names, pairs, extracted, preset) -> dict[tuple[int, int], np.ndarray]:
    """Raw matches ``(K, 2)`` per pair of name indices."""
    matcher = make_matcher(preset.matcher)
    return {(i, j): matcher(extracted.features[names[i]], extracted.features[names[j]])
            for i, j in tqdm(pairs, desc="match", unit="pair")}


def _triangulate(ref, names, matches, extracted, preset, db_path, image_dir) -> pycolmap.Reconstruction:
    by_name = {im.name: im for im in ref.images.values()}
    for name, im in list(by_name.items()):
        if name not in extracted.features:
            ref.deregister_frame(im.frame_id)  # skipped bad image: keep the others fixed
    geometries = {}
    for (i, j), m in matches.items():
        a, b = by_name[names[i]], by_name[names[j]]
        geometry = verify_known_poses(
            extracted.features[a.name].keypoints, extracted.features[b.name].keypoints, m,
            ref.cameras[a.camera_id], ref.cameras[b.camera_id], a.cam_from_world(), b.cam_from_world(), preset.verify)
        if num_inliers(geometry) >= preset.verify.min_inliers:
            geometries[(a.image_id, b.image_id)] = geometry
    logger.info("%d of %d pairs verified against the known poses", len(geometries), len(matches))
    write_database(
        db_path, dict(ref.cameras.items()),
        {im.image_id: (n, im.camera_id) for n, im in by_name.items()},
        {im.image_id: extracted.features[n].keypoints if n in extracted.features else np.zeros((0, 2), np.float32)
         for n, im in by_name.items()},
        {(by_name[names[i]].image_id, by_name[names[j]].image_id): m for (i, j), m in matches.items()},
        geometries)
    empty = pycolmap.Reconstruction(ref)
    empty.delete_all_points2D_and_points3D()
    with tempfile.TemporaryDirectory(dir=db_path.parent) as out:
        return pycolmap.triangulate_points(empty, str(db_path), str(image_dir), out)


def _group_cameras(names: list[str], key_of: Callable[[str], tuple], make: Callable[[str], pycolmap.Camera]
                   ) -> tuple[dict[int, pycolmap.Camera], list[int]]:
    """One camera per distinct ``key_of(name)``, made by ``make`` from the first image with that key:
    camera_id -> camera (ids from 1), and each image's camera id."""
    ids: dict[tuple, int] = {}
    cameras: dict[int, pycolmap.Camera] = {}
    camera_of_image = []
    for name in names:
        key = key_of(name)
        if key not in ids:
            ids[key] = len(ids) + 1
            cameras[ids[key]] = make(name)
        camera_of_image.append(ids[key])
    return cameras, camera_of_image


def _given_shared_cameras(names: list[str], given: dict[str, pycolmap.Camera]
                          ) -> tuple[dict[int, pycolmap.Camera], list[int]]:
    """The given cameras, one per distinct calibration (sizes checked by :func:`_check_camera_sizes`)."""
    def make(name: str) -> pycolmap.Camera:
        camera = pycolmap.Camera(given[name].todict())
        camera.has_prior_focal_length = True
        return camera

    cameras, camera_of_image = _group_cameras(
        names, lambda n: (given[n].model.name, given[n].width, given[n].height, tuple(map(float, given[n].params))),
        make)
    logger.info("%d images share %d given camera(s)", len(names), len(cameras))
    return cameras, camera_of_image


def _shared_cameras(names, extracted, image_dir: Path) -> tuple[dict[int, pycolmap.Camera], list[int]]:
    """One SIMPLE_RADIAL camera per group of images with the same size and EXIF focal length
    (COLMAP's automatic camera mode): a shared camera makes focal refinement far more stable.

    The EXIF focal (else 1.2 * max(width, height)) is only the starting value: the camera is not
    marked as having a trusted prior, so the mapper refines it. Phones' 35 mm-equivalent EXIF
    values are often off (lund: EXIF 996 px, SfM 801 px), and COLMAP never refines the focal of a
    "prior" camera while registering images: with the prior trusted, lund broke into 2-image
    fragments for most seeds; untrusted, all 29 images registered for every seed tried.
    """
    focals = {n: exif_focal_px(image_dir / n) for n in names}

    def key_of(name: str) -> tuple:
        focal = focals[name]
        return (*extracted.features[name].image_size, None if focal is None else round(focal, 1))

    def make(name: str) -> pycolmap.Camera:
        (width, height), focal = extracted.features[name].image_size, focals[name]
        camera = initial_camera(width, height, focal)
        logger.info("camera: %dx%d, initial focal %.1f px (%s)", width, height, camera.params[0],
                    "EXIF" if focal else "no EXIF: 1.2 * max side")
        return camera

    cameras, camera_of_image = _group_cameras(names, key_of, make)
    logger.info("%d images share %d camera(s)", len(names), len(cameras))
    return cameras, camera_of_image


def _sfm(names, matches, extracted, preset, db_path, image_dir, work: Path, mapper, given,
         refine: tuple[bool, bool, bool]) -> pycolmap.Reconstruction:
    """Verify the matches with pycolmap (C++, multi-threaded), then map."""
    if given is not None:
        cameras, camera_of = _given_shared_cameras(names, given)
    else:
        cameras, camera_of = _shared_cameras(names, extracted, image_dir)
    write_database(db_path, cameras, {i + 1: (n, camera_of[i]) for i, n in enumerate(names)},
                   {i + 1: extracted.features[n].keypoints for i, n in enumerate(names)},
                   {(i + 1, j + 1): m for (i, j), m in matches.items() if len(m)})
    pairs_path = work / "pairs.txt"
    pairs_path.write_text("".join(f"{names[i]} {names[j]}\n" for (i, j), m in matches.items() if len(m)))
    verify = pycolmap.TwoViewGeometryOptions()
    verify.ransac.max_error = preset.verify.max_error_px
    verify.min_num_inliers = preset.verify.min_inliers
    verify.compute_relative_pose = True
    verify.ransac.random_seed = RANDOM_SEED
    pycolmap.verify_matches(str(db_path), str(pairs_path), verify)
    out = work / "sfm"
    out.mkdir()
    focal, principal, extra = refine
    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        ba = options.mapper.bundle_adjustment
        ba.refine_focal_length, ba.refine_principal_point, ba.refine_extra_params = focal, principal, extra
        models = pycolmap.global_mapping(str(db_path), str(image_dir), str(out), options)
    else:
        options = pycolmap.IncrementalPipelineOptions()
        options.random_seed = RANDOM_SEED
        options.ba_refine_focal_length, options.ba_refine_principal_point = focal, principal
        options.ba_refine_extra_params = extra
        for key, value in dataclasses.asdict(preset.mapper).items():
            setattr(options.mapper, key, value)
        models = pycolmap.incremental_mapping(str(db_path), str(image_dir), str(out), options)
    if not models:
        raise RuntimeError(f"SfM registered no images out of {len(names)} ({len(matches)} image pairs matched): "
                           "too little overlap or texture; try --retrieval-k, --sequential or more images")
    sizes = {k: m.num_reg_images() for k, m in models.items()}
    best = max(sizes, key=sizes.get)
    logger.info("SfM models (id: registered images): %s; keeping %d", sizes, best)
    return models[best]
