"""SfM on a verified COLMAP database: pycolmap's incremental mapper (with progress and
checkpoints), its global mapper (GLOMAP), and the rule ``auto`` picks one by.

Checkpoints (incremental mapping): while the mapper runs, the model being grown is written to
``WORK/model/checkpoint`` every ``checkpoint_seconds`` (after the image registration that
crosses the interval; written beside it and renamed in, so a kill leaves the previous one
whole). A rerun of the same build after a kill starts the mapper from that model: the images
it holds stay registered, and the mapper goes on with the others. The checkpoint holds the
largest model so far, which is also the one the build keeps.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import shutil
import time
from pathlib import Path

import pycolmap
from tqdm import tqdm

from vloc.config import MapperConf
from vloc.mapping.faults import write_model

logger = logging.getLogger(__name__)

RANDOM_SEED = 0  # the mappers' and SfM verification's seed: the same inputs give the same model
CHECKPOINT = "checkpoint"
CHECKPOINT_SECONDS = 120.0


class Mapper(enum.StrEnum):
    AUTO = "auto"
    INCREMENTAL = "incremental"
    GLOBAL = "global"


def parse_mapper(name: Mapper | str) -> Mapper:
    try:
        return Mapper(name)
    except ValueError:
        raise ValueError(f"Unknown mapper {name!r}; valid: {', '.join(m.value for m in Mapper)}") from None


def choose_mapper(mapper: Mapper, num_images: int) -> Mapper:
    """The mapper ``auto`` stands for (others are returned as they are). Measured in
    docs/benchmarks.md ("SfM at scale"): the incremental mapper with vloc's BA schedule is as
    accurate as the global one and faster on the sizes measured, and it checkpoints."""
    if mapper is not Mapper.AUTO:
        return mapper
    return Mapper.INCREMENTAL


def incremental_options(conf: MapperConf, refine: tuple[bool, bool, bool], position_priors: bool = False,
                        refine_rigs: bool = False) -> pycolmap.IncrementalPipelineOptions:
    """``position_priors``: global bundle adjustments align the model to the database's pose priors
    and keep each camera centre near its prior (a robust loss: a wrong fix cannot pull hard).
    ``refine_rigs``: bundle adjustment refines multi-camera rigs' sensor_from_rig (COLMAP's
    default; vloc's keeps a given calibration)."""
    options = pycolmap.IncrementalPipelineOptions()
    options.ba_refine_sensor_from_rig = refine_rigs
    options.use_prior_position = position_priors
    options.use_robust_loss_on_prior_position = position_priors
    options.random_seed = RANDOM_SEED
    options.ba_refine_focal_length, options.ba_refine_principal_point, options.ba_refine_extra_params = refine
    for key, value in dataclasses.asdict(conf).items():
        target = options if hasattr(options, key) else options.mapper
        setattr(target, key, value)
    return options


def known_pose_options() -> pycolmap.IncrementalPipelineOptions:
    """pycolmap's triangulation from known poses: its bundle adjustment must not move a rig's
    cameras on the rig (COLMAP refines sensor_from_rig by default)."""
    options = pycolmap.IncrementalPipelineOptions()
    options.ba_refine_sensor_from_rig = False
    return options


def global_options(refine: tuple[bool, bool, bool], refine_rigs: bool = False) -> pycolmap.GlobalPipelineOptions:
    options = pycolmap.GlobalPipelineOptions()
    options.random_seed = RANDOM_SEED
    ba = options.mapper.bundle_adjustment
    ba.refine_sensor_from_rig = refine_rigs
    ba.refine_focal_length, ba.refine_principal_point, ba.refine_extra_params = refine
    return options


class _Checkpoints:
    """The largest model so far, written to ``directory`` at most every ``seconds``."""

    def __init__(self, directory: Path, seconds: float):
        self.directory, self.seconds = directory, seconds
        self.last = time.monotonic()
        self.written = 0  # registered images in the newest checkpoint

    def find(self) -> Path | None:
        """The newest complete checkpoint (``.old`` if a kill fell between the two renames)."""
        for path in (self.directory, _beside(self.directory, ".old")):
            if (path / "images.bin").is_file():
                return path
        return None

    def maybe_write(self, model: pycolmap.Reconstruction) -> None:
        registered = model.num_reg_images()
        if registered <= self.written or time.monotonic() - self.last < self.seconds:
            return
        new, old = _beside(self.directory, ".new"), _beside(self.directory, ".old")
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        write_model(model, new)
        if self.directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            self.directory.rename(old)
        new.rename(self.directory)
        shutil.rmtree(old, ignore_errors=True)
        self.written, self.last = registered, time.monotonic()
        logger.info("checkpoint: %d images registered, written to %s", registered, self.directory)


def _beside(directory: Path, suffix: str) -> Path:
    """The checkpoint being written (``.new``) or being replaced (``.old``) next to ``directory``."""
    return directory.with_name(directory.name + suffix)


def remove_checkpoint(directory: Path) -> None:
    """Remove the checkpoint in ``directory`` and any half-renamed one beside it."""
    for path in (directory, _beside(directory, ".new"), _beside(directory, ".old")):
        shutil.rmtree(path, ignore_errors=True)


def run_incremental(database: Path, image_dir: Path, options: pycolmap.IncrementalPipelineOptions, num_images: int,
                    checkpoint_dir: Path,
                    checkpoint_seconds: float = CHECKPOINT_SECONDS) -> list[pycolmap.Reconstruction]:
    """pycolmap's incremental mapper on ``database``, resumed from ``checkpoint_dir`` when it holds a
    model; shows registered / ``num_images`` while it runs. Returns every model it made."""
    options.image_path = str(image_dir)  # colours of the points
    checkpoints = _Checkpoints(checkpoint_dir, checkpoint_seconds)
    manager = pycolmap.ReconstructionManager()
    found = checkpoints.find()
    if found is not None:
        manager.read(str(found))
        checkpoints.written = manager.get(0).num_reg_images()
        logger.info("SfM resumes from the checkpoint in %s: %d of %d images kept", found,
                    checkpoints.written, num_images)
    t0 = time.monotonic()
    with tqdm(total=num_images, desc="sfm", unit="img", initial=checkpoints.written) as bar:
        def registered() -> None:
            model = manager.get(manager.size() - 1)
            count = model.num_reg_images()
            if count >= bar.n:  # the largest model so far (a later model starts again from 2)
                bar.n = count
                checkpoints.maybe_write(model)
            bar.set_postfix_str(f"model {manager.size()}, {time.monotonic() - t0:.0f} s", refresh=True)

        def model_done() -> None:
            bar.refresh()
            logger.info("SfM model %d: registration done, %d images registered, %.0f s", manager.size(),
                        manager.get(manager.size() - 1).num_reg_images(), time.monotonic() - t0)

        db = pycolmap.Database.open(str(database))
        try:
            pipeline = pycolmap.IncrementalPipeline(options, db, manager)
            pipeline.add_callback(pycolmap.IncrementalPipelineCallback.NEXT_IMAGE_REG_CALLBACK, registered)
            pipeline.add_callback(pycolmap.IncrementalPipelineCallback.LAST_IMAGE_REG_CALLBACK, model_done)
            pipeline.run()
        finally:
            db.close()
    return [manager.get(i) for i in range(manager.size())]


def run_global(database: Path, image_dir: Path, out: Path,
               options: pycolmap.GlobalPipelineOptions) -> list[pycolmap.Reconstruction]:
    """pycolmap's global mapper (GLOMAP: rotation averaging, global positioning, bundle adjustment)."""
    logger.info("global SfM: rotation averaging, global positioning, bundle adjustment (no progress "
                "reported inside; no checkpoints)")
    return list(pycolmap.global_mapping(str(database), str(image_dir), str(out), options).values())
