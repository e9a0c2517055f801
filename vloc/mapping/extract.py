"""The extraction stage: local features and the global descriptor of each image, one file per
image, written as it is computed.

```
WORK/extract/stage.json                 configuration (extractor, global model, image folder)
WORK/extract/features/NAME.npz          keypoints (N, 2) float32 (COLMAP pixel convention),
                                        descriptors (N, D) float16, scores (N,) float32,
                                        image_size (2,) (width, height), global (D_g,) float32
WORK/extract/skipped/NAME.txt           why NAME could not be read (--skip-bad-images)
```
Each file is renamed into place complete, so a build killed mid-stage keeps every image it
finished and the rerun extracts only the others. Descriptors are stored as float16, as the map
stores them; matching reads these files, so an interrupted and an uninterrupted build match the
same numbers. The build never holds more than a few images' features in memory.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from tqdm import tqdm

from vloc.config import FeatureConf, GlobalConf
from vloc.features.base import Features
from vloc.io.files import atomic_path, write_text_atomic
from vloc.io.images import ImageReadError, read_image
from vloc.mapping.executor import Executor
from vloc.mapping.stages import Stage

logger = logging.getLogger(__name__)

CHUNK = 8  # images per task: small enough to lose little on a kill, large enough to amortise a task


@dataclass(frozen=True)
class ExtractChunk:
    """One task: extract ``names`` from ``image_dir`` into the stage directory ``out``."""

    features: FeatureConf
    global_desc: GlobalConf
    image_dir: Path
    out: Path
    names: tuple[str, ...]
    skip_bad_images: bool
    device: str = "cpu"


def feature_path(stage_dir: Path, name: str) -> Path:
    return Path(stage_dir) / "features" / f"{name}.npz"


def skipped_path(stage_dir: Path, name: str) -> Path:
    return Path(stage_dir) / "skipped" / f"{name}.txt"


@functools.lru_cache(maxsize=2)
def _models(features: FeatureConf, global_desc: GlobalConf, device: str):
    """The extractor and global model of one configuration, loaded once per process."""
    from vloc.features import make_extractor
    from vloc.retrieval import make_global_model

    return make_extractor(features, device), make_global_model(global_desc, device)


def _read(task: ExtractChunk, name: str) -> np.ndarray | str:
    """The image, or why it cannot be read (``skip_bad_images``; else the error is raised)."""
    try:
        return read_image(task.image_dir / name)
    except ImageReadError as exc:
        if not task.skip_bad_images:
            raise
        return str(exc)


def extract_chunk(task: ExtractChunk) -> list[tuple[str, str | None]]:
    """Extract and write each image of ``task``; returns (name, reason it was skipped or None).
    On the CPU one image at a time; on a GPU the chunk's images are decoded by a thread pool and
    go through a learned extractor in batches of equal size
    (:meth:`vloc.features.learned.LearnedExtractor.batch`).

    Raises :class:`ImageReadError` on an unreadable image unless ``task.skip_bad_images``."""
    extractor, global_model = _models(task.features, task.global_desc, task.device)
    if task.device == "cpu" or not hasattr(extractor, "batch"):
        return [_write(task, name, _read(task, name), extractor, global_model) for name in task.names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="vloc-decode") as pool:
        images = list(pool.map(lambda name: _read(task, name), task.names))
    readable = [k for k, image in enumerate(images) if not isinstance(image, str)]
    features = dict(zip(readable, extractor.batch([images[k] for k in readable]), strict=True))
    return [_write(task, name, image, features.get(k), global_model)
            for k, (name, image) in enumerate(zip(task.names, images))]


def _write(task: ExtractChunk, name: str, image: np.ndarray | str, extractor, global_model) -> tuple[str, str | None]:
    """One image's features file (``extractor``: an extractor, or the image's features already
    extracted), or its skipped record when ``image`` is the reason it could not be read."""
    if isinstance(image, str):
        write_text_atomic(skipped_path(task.out, name), image)
        return name, image
    feats = extractor if isinstance(extractor, Features) else extractor(image)
    with atomic_path(feature_path(task.out, name)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keypoints=feats.keypoints.astype(np.float32),
                     descriptors=feats.descriptors.astype(np.float16), scores=feats.scores.astype(np.float32),
                     image_size=np.asarray(feats.image_size, np.int64),
                     global_desc=np.asarray(global_model(image), np.float32))
    skipped_path(task.out, name).unlink(missing_ok=True)
    return name, None


def extract_stage(stage: Stage, image_dir: Path, names: list[str], features: FeatureConf, global_desc: GlobalConf,
                  skip_bad_images: bool, executor: Executor) -> dict[str, str]:
    """Extract every image of ``names`` not already in ``stage``; returns name -> reason for the
    images that could not be read (only with ``skip_bad_images``; otherwise the first raises)."""
    skipped: dict[str, str] = {}
    todo = []
    for name in names:
        if feature_path(stage.directory, name).is_file():
            continue
        if skipped_path(stage.directory, name).is_file() and skip_bad_images:
            skipped[name] = skipped_path(stage.directory, name).read_text()
            continue
        todo.append(name)
    if len(todo) < len(names):
        logger.info("extract: %d of %d images already extracted in %s, reused", len(names) - len(todo) - len(skipped),
                    len(names), stage.directory)
    tasks = [ExtractChunk(features, global_desc, Path(image_dir), stage.directory, tuple(todo[i:i + CHUNK]),
                          skip_bad_images, executor.device) for i in range(0, len(todo), CHUNK)]
    with tqdm(total=len(todo), desc="extract", unit="img") as bar:
        for result in executor.map(extract_chunk, tasks):
            for name, reason in result:
                if reason is not None:
                    logger.warning("skipping %s", reason)
                    skipped[name] = reason
            bar.update(len(result))
    return skipped


def read_features(stage_dir: Path, name: str) -> Features:
    with np.load(feature_path(stage_dir, name)) as f:
        return Features(f["keypoints"], f["descriptors"].astype(np.float32), f["scores"],
                        tuple(int(v) for v in f["image_size"]))


def read_image_size(stage_dir: Path, name: str) -> tuple[int, int]:
    with np.load(feature_path(stage_dir, name)) as f:
        return tuple(int(v) for v in f["image_size"])


def read_global(stage_dir: Path, name: str) -> np.ndarray:
    with np.load(feature_path(stage_dir, name)) as f:
        return f["global_desc"]


class ExtractedFeatures(Mapping[str, Features]):
    """name -> :class:`Features` of the extracted ``names``, read from disk on each access."""

    def __init__(self, stage_dir: Path, names: list[str]):
        self.stage_dir, self._names = Path(stage_dir), list(names)
        self._known = set(names)

    def __getitem__(self, name: str) -> Features:
        if name not in self._known:
            raise KeyError(name)
        return read_features(self.stage_dir, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class LruFeatures:
    """The last ``size`` images' features read through ``read`` (matching visits each image's
    pairs together, so a small cache reads most files once)."""

    def __init__(self, read, size: int = 32):
        self._get = functools.lru_cache(maxsize=size)(read)

    def __call__(self, name: str) -> Features:
        return self._get(name)
