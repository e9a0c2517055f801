"""The verification and reconstruction stages.

```
WORK/database/stage.json    configuration (the matches', verification's, the cameras')
WORK/database/database.db   COLMAP database: cameras, images, keypoints, raw matches and the
                            verified two-view geometries (known poses: vloc's epipolar check;
                            SfM: pycolmap.verify_matches, seeded)
WORK/model/stage.json       configuration (the database's, the mapper's)
WORK/model/reconstruction/  the COLMAP model (binary): triangulated, or SfM's largest model
```
Both stages write into a temporary name and rename it complete; a rerun after a kill during
either one runs that stage again from its inputs. The model is read back before it is renamed
(:func:`vloc.mapping.faults.write_model`: pycolmap reports no failed write, and a full disk
would leave a truncated model a rerun took as complete).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pycolmap
from tqdm import tqdm

from vloc.config import MapperConf, VerifyConf
from vloc.mapping.database import write_database
from vloc.mapping.extract import LruFeatures, read_features
from vloc.mapping.faults import native_write, write_model
from vloc.mapping.mapper import (
    CHECKPOINT,
    CHECKPOINT_SECONDS,
    RANDOM_SEED,
    Mapper,
    global_options,
    incremental_options,
    known_pose_options,
    remove_checkpoint,
    run_global,
    run_incremental,
)
from vloc.mapping.match import iter_matches, read_pairs
from vloc.mapping.stages import Stage, digest
from vloc.matching.verify import num_inliers, verify_known_poses

logger = logging.getLogger(__name__)

DATABASE, RECONSTRUCTION = "database.db", "reconstruction"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _keypoints(extract_dir: Path, ids: dict[str, int], extracted: set[str]) -> Iterator[tuple[int, np.ndarray]]:
    """Each image's keypoints; none for the images that were not extracted (skipped or not listed)."""
    for name, image_id in tqdm(ids.items(), desc="database", unit="img", disable=len(ids) < 1000):
        yield image_id, read_features(extract_dir, name).keypoints if name in extracted else np.zeros((0, 2))


def triangulation_database(stage: Stage, reference: pycolmap.Reconstruction, extract_dir: Path, pairs_dir: Path,
                           matches_dir: Path, verify: VerifyConf) -> None:
    """Database of ``reference``'s cameras and images (and its rigs and frames when a rig has
    several cameras), every pair checked against the known poses (images of the reference that
    were not extracted get no keypoints)."""
    names, _ = read_pairs(pairs_dir)
    by_name = {im.name: im for im in reference.images.values()}
    features = LruFeatures(lambda name: read_features(extract_dir, name))
    kept = [0, 0]

    def verified():
        for i, j, m in tqdm(iter_matches(matches_dir, pairs_dir), desc="verify", unit="pair"):
            a, b = by_name[names[i]], by_name[names[j]]
            geometry = verify_known_poses(
                features(a.name).keypoints, features(b.name).keypoints, m, reference.cameras[a.camera_id],
                reference.cameras[b.camera_id], a.cam_from_world(), b.cam_from_world(), verify)
            good = num_inliers(geometry) >= verify.min_inliers
            kept[0], kept[1] = kept[0] + good, kept[1] + 1
            yield a.image_id, b.image_id, m, geometry if good else None

    multi_camera = any(rig.num_sensors() > 1 for rig in reference.rigs.values())
    rigs_and_frames = (list(reference.rigs.values()), list(reference.frames.values())) if multi_camera else None
    _write(stage, lambda path: write_database(
        path, dict(reference.cameras.items()), {im.image_id: (n, im.camera_id) for n, im in by_name.items()},
        _keypoints(extract_dir, {n: im.image_id for n, im in by_name.items()}, set(names)), verified(),
        rigs_and_frames=rigs_and_frames))
    logger.info("%d of %d pairs verified against the known poses", kept[0], kept[1])


def sfm_database(stage: Stage, cameras: dict[int, pycolmap.Camera], camera_of: list[int], extract_dir: Path,
                 pairs_dir: Path, matches_dir: Path, verify: VerifyConf, image_ids: list[int] | None = None,
                 verified: Iterable[tuple[int, int, np.ndarray, pycolmap.TwoViewGeometry]] = (),
                 position_priors: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 rigs_and_frames: tuple[list[pycolmap.Rig], list[pycolmap.Frame]] | None = None) -> None:
    """Database of the images with ``cameras`` (``camera_of``: each image's camera id, in images.txt
    order; ``image_ids``: their ids, default 1..N); pycolmap verifies the matches. ``verified``:
    pairs (by image id) already verified, written as they are (an extended map's own pairs).
    ``position_priors``: image name -> (centre, covariance) in metres, COLMAP pose priors;
    ``rigs_and_frames``: multi-camera rigs (:func:`vloc.mapping.rigs.sfm_rigs`)."""
    names, _ = read_pairs(pairs_dir)
    ids = image_ids if image_ids is not None else list(range(1, len(names) + 1))
    pairs_file = stage.directory / "verify_pairs.txt"

    def build(path: Path) -> None:
        with open(pairs_file, "w") as listed:
            def raw():
                yield from verified
                for i, j, m in tqdm(iter_matches(matches_dir, pairs_dir), desc="database", unit="pair"):
                    if len(m) >= verify.min_inliers:  # fewer cannot pass, and RANSAC would try them longest
                        listed.write(f"{names[i]} {names[j]}\n")
                        yield ids[i], ids[j], m, None

            write_database(path, cameras, {ids[i]: (n, camera_of[i]) for i, n in enumerate(names)},
                           _keypoints(extract_dir, {n: ids[i] for i, n in enumerate(names)}, set(names)), raw(),
                           {ids[i]: position_priors[n] for i, n in enumerate(names) if n in position_priors}
                           if position_priors else None, rigs_and_frames)
        options = pycolmap.TwoViewGeometryOptions()
        options.ransac.max_error = verify.max_error_px
        options.min_num_inliers = verify.min_inliers
        options.compute_relative_pose = True
        options.ransac.random_seed = RANDOM_SEED
        options.ransac.max_num_trials = verify.max_num_trials
        pycolmap.verify_matches(str(path), str(pairs_file), options)

    _write(stage, build)


def _write(stage: Stage, build) -> None:
    final = stage.directory / DATABASE
    tmp = stage.directory / f"{DATABASE}.tmp"
    for path in (final, tmp):
        for part in (path, *(path.with_name(path.name + end) for end in SQLITE_SIDE_FILES)):
            part.unlink(missing_ok=True)  # a stale -wal would be replayed into the new database
    with native_write(tmp):
        build(tmp)
    tmp.rename(final)


def triangulate(stage: Stage, reference: pycolmap.Reconstruction, keep: set[str], database_dir: Path,
                image_dir: Path) -> pycolmap.Reconstruction:
    """``reference``'s poses and cameras (images not in ``keep`` deregistered), points from the database."""
    empty = pycolmap.Reconstruction(reference)
    for im in list(empty.images.values()):
        if im.name not in keep and im.has_pose:
            empty.deregister_frame(im.frame_id)  # a skipped bad image: keep the others fixed
    empty.delete_all_points2D_and_points3D()
    # (pycolmap opens the database, which writes beside it, and writes its output: a refusal is a RuntimeError)
    with native_write(stage.directory / RECONSTRUCTION), tempfile.TemporaryDirectory(dir=stage.directory) as out:
        rec = pycolmap.triangulate_points(empty, str(database_dir / DATABASE), str(image_dir), out,
                                          options=known_pose_options())
    save_reconstruction(stage, rec)
    return rec


def sfm(stage: Stage, database_dir: Path, image_dir: Path, mapper: Mapper, mapper_conf: MapperConf,
        refine: tuple[bool, bool, bool], num_images: int,
        checkpoint_seconds: float = CHECKPOINT_SECONDS, *, position_priors: bool = False,
        refine_rigs: bool = False) -> pycolmap.Reconstruction:
    """Incremental (checkpointed in the stage's directory) or global SfM on the verified database;
    keeps the largest model. ``position_priors``: the database holds GPS pose priors, which the
    incremental mapper's global bundle adjustments use (and align the model to); ``refine_rigs``:
    bundle adjustment refines the rigs' sensor_from_rig (default: the calibration is kept)."""
    database = database_dir / DATABASE
    with native_write(stage.directory / RECONSTRUCTION):
        if mapper is Mapper.GLOBAL:
            with tempfile.TemporaryDirectory(dir=stage.directory) as out:
                models = run_global(database, image_dir, Path(out), global_options(refine, refine_rigs))
        else:
            options = incremental_options(mapper_conf, refine, position_priors, refine_rigs)
            models = run_incremental(database, image_dir, options, num_images, stage.directory / CHECKPOINT,
                                     checkpoint_seconds)
    models = [m for m in models if m.num_reg_images() > 0]
    if not models:
        raise RuntimeError(f"SfM registered no images out of {num_images}: too little overlap or texture; "
                           "try --retrieval-k, --sequential or more images")
    best = max(models, key=lambda m: m.num_reg_images())
    logger.info("SfM models (registered images): %s; keeping the largest",
                ", ".join(str(m.num_reg_images()) for m in models))
    save_reconstruction(stage, best)
    remove_checkpoint(stage.directory / CHECKPOINT)
    return best


def save_reconstruction(stage: Stage, rec: pycolmap.Reconstruction) -> None:
    final = stage.directory / RECONSTRUCTION
    tmp = stage.directory / f"{RECONSTRUCTION}.tmp"
    for path in (final, tmp):
        if path.exists():
            shutil.rmtree(path)
    tmp.mkdir()
    write_model(rec, tmp)
    tmp.rename(final)


def reference_key(reference: pycolmap.Reconstruction) -> str:
    """What a stage records of a reference model: its cameras and posed images (not its points)."""
    cams = {int(k): [c.model.name, c.width, c.height, [round(float(p), 9) for p in c.params]]
            for k, c in reference.cameras.items()}
    ims = sorted((im.name, im.camera_id, [round(float(v), 9) for v in im.cam_from_world().matrix().ravel()])
                 for im in reference.images.values() if im.has_pose)
    return digest({"cameras": cams, "images": ims})
