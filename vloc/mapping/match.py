"""The pair-selection and matching stages.

```
WORK/pairs/stage.json        configuration (extraction's, pair selection's, the image list)
WORK/pairs/images.txt        the readable map images, one per line: image i is line i
WORK/pairs/pairs.txt         "name1 name2" per pair (hloc's format), i < j in images.txt order
WORK/pairs/whitening.npz     PCA whitening learned on these images' global descriptors
WORK/matches/stage.json      configuration (the pairs stage's, the matcher's; for guided matching
                             the reference poses')
WORK/matches/chunk-K.npz     counts (P,) int64, matches (sum of counts, 2) uint32: the raw matches
                             (keypoint indices) of pairs K*CHUNK ... K*CHUNK + P - 1, in order
```
A chunk is renamed into place complete; a rerun matches only the chunks that are missing.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pycolmap
from tqdm import tqdm

from vloc.config import MatcherConf, PairsConf
from vloc.io.files import atomic_path, write_text_atomic
from vloc.mapping.executor import Executor
from vloc.mapping.extract import LruFeatures, read_features, read_global
from vloc.mapping.stages import Stage
from vloc.matching.verify import epipolar_mask
from vloc.retrieval.index import Whitening
from vloc.retrieval.pairs import select_pairs, spatial_pairs

logger = logging.getLogger(__name__)

CHUNK = 64  # pairs per matching task and file
# --gps: each image also pairs with its nearest GPS neighbours (COLMAP's spatial matcher, bounded
# tighter: phone fixes are ~5 m off, so 5 neighbours within 50 m reach the images that overlap)
GPS_NEIGHBOURS = 5
GPS_MAX_DISTANCE_M = 50.0


def pairs_stage(stage: Stage, extract_dir: Path, names: list[str], conf: PairsConf, pca_dim: int,
                positions: np.ndarray | None = None) -> None:
    """Select pairs by global descriptor (and name order; with ``positions``, ``(N, 3)`` GPS metres
    with NaN rows for images without, also by distance: :data:`GPS_NEIGHBOURS` nearest within
    :data:`GPS_MAX_DISTANCE_M`); writes the stage's three files."""
    raw = np.stack([read_global(extract_dir, n) for n in tqdm(names, desc="read global", unit="img",
                                                              disable=len(names) < 1000)])
    whitening = Whitening.learn(raw, pca_dim)
    pairs = select_pairs(whitening(raw), conf.num_retrieved, conf.num_sequential)
    if positions is not None:
        retrieved = len(pairs)
        pairs = sorted(set(pairs) | set(spatial_pairs(positions, GPS_NEIGHBOURS, GPS_MAX_DISTANCE_M)))
        logger.info("GPS: %d pairs of nearby images that retrieval did not choose", len(pairs) - retrieved)
    logger.info("%d images, %d pairs", len(names), len(pairs))
    write_pairs(stage, names, pairs, whitening)


def write_pairs(stage: Stage, names: list[str], pairs: list[tuple[int, int]], whitening: Whitening) -> None:
    """The pairs stage's files: ``pairs`` ``(i, j)``, ``i < j``, index ``names``."""
    with atomic_path(stage.directory / "whitening.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, mean=whitening.mean, projection=whitening.projection)
    write_text_atomic(stage.directory / "pairs.txt", "".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
    write_text_atomic(stage.directory / "images.txt", "".join(f"{n}\n" for n in names))


def read_pairs(stage_dir: Path) -> tuple[list[str], list[tuple[int, int]]]:
    """The pairs stage's images and pairs (as indices into the images)."""
    names = (Path(stage_dir) / "images.txt").read_text().splitlines()
    index = {n: i for i, n in enumerate(names)}
    lines = (Path(stage_dir) / "pairs.txt").read_text().splitlines()
    pairs = [tuple(index[n] for n in line.split(" ")) for line in lines]
    return names, pairs


def read_whitening(stage_dir: Path) -> Whitening:
    with np.load(Path(stage_dir) / "whitening.npz") as f:
        return Whitening(f["mean"], f["projection"])


@dataclass(frozen=True)
class KnownView:
    """An image's camera and pose for guided matching, in plain values (tasks cross processes)."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]
    cam_from_world: tuple[tuple[float, ...], ...]  # (3, 4)

    @classmethod
    def of(cls, camera: pycolmap.Camera, cam_from_world: pycolmap.Rigid3d) -> "KnownView":
        return cls(camera.model.name, camera.width, camera.height, tuple(map(float, camera.params)),
                   tuple(tuple(map(float, row)) for row in cam_from_world.matrix()))

    def camera(self) -> pycolmap.Camera:
        return pycolmap.Camera(model=self.model, width=self.width, height=self.height, params=list(self.params))

    def pose(self) -> pycolmap.Rigid3d:
        return pycolmap.Rigid3d(np.asarray(self.cam_from_world))


@dataclass(frozen=True)
class MatchChunk:
    """One task: match ``pairs`` (indices into ``names``) and write chunk ``index`` to ``out``;
    with ``views`` (one per name), guided by the known poses (``matcher.epipolar_px``)."""

    matcher: MatcherConf
    extract_dir: Path
    out: Path
    index: int
    names: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    views: tuple[KnownView, ...] | None = None
    device: str = "cpu"


def chunk_path(stage_dir: Path, index: int) -> Path:
    return Path(stage_dir) / f"chunk-{index:06d}.npz"


@functools.lru_cache(maxsize=2)
def _matcher(conf: MatcherConf, device: str):
    from vloc.matching import make_matcher

    return make_matcher(conf, device)


@functools.lru_cache(maxsize=2)
def _feature_cache(extract_dir: Path) -> LruFeatures:
    return LruFeatures(functools.partial(read_features, extract_dir))


def match_chunk(task: MatchChunk) -> tuple[int, int]:
    """Match and write one chunk; returns (pairs, matches)."""
    matcher, features = _matcher(task.matcher, task.device), _feature_cache(task.extract_dir)
    found = [np.asarray(_match_pair(task, matcher, features, i, j), np.uint32).reshape(-1, 2) for i, j in task.pairs]
    with atomic_path(chunk_path(task.out, task.index)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, counts=np.array([len(m) for m in found], np.int64),
                     matches=np.concatenate(found) if found else np.zeros((0, 2), np.uint32))
    return len(found), sum(len(m) for m in found)


def _match_pair(task: MatchChunk, matcher, features: LruFeatures, i: int, j: int) -> np.ndarray:
    f0, f1 = features(task.names[i]), features(task.names[j])
    if task.views is None:
        return matcher(f0, f1)
    v0, v1 = task.views[i], task.views[j]
    allowed = epipolar_mask(f0.keypoints, f1.keypoints, v0.camera(), v1.camera(), v0.pose(), v1.pose(),
                            task.matcher.epipolar_px)
    return matcher.match_descriptors(f0.descriptors, f1.descriptors, allowed)


def guided_views(conf: MatcherConf, reference: pycolmap.Reconstruction | None) -> dict[str, KnownView] | None:
    """The reference's views by name when ``conf`` asks for guided matching and poses are known
    (None otherwise: matching is unguided); refused for a matcher that cannot be guided."""
    if conf.epipolar_px <= 0 or reference is None:
        return None
    if conf.name != "mnn":
        raise ValueError(f"matcher {conf.name!r} cannot be guided by known poses: epipolar_px is for 'mnn' only")
    return {im.name: KnownView.of(reference.cameras[im.camera_id], im.cam_from_world())
            for im in reference.images.values() if im.has_pose}


def match_stage(stage: Stage, pairs_dir: Path, extract_dir: Path, conf: MatcherConf, executor: Executor,
                views: dict[str, KnownView] | None = None) -> None:
    """Match every pair of ``pairs_dir``; guided by ``views`` (:func:`guided_views`) when given."""
    names, pairs = read_pairs(pairs_dir)
    num_chunks = (len(pairs) + CHUNK - 1) // CHUNK
    todo = [k for k in range(num_chunks) if not chunk_path(stage.directory, k).is_file()]
    if len(todo) < num_chunks:
        logger.info("match: %d of %d chunks of %d pairs already matched in %s, reused",
                    num_chunks - len(todo), num_chunks, CHUNK, stage.directory)
    # Each task carries only the names its pairs use.
    tasks = []
    for k in todo:
        block = pairs[k * CHUNK:(k + 1) * CHUNK]
        used = sorted({i for pair in block for i in pair})
        local = {i: n for n, i in enumerate(used)}
        tasks.append(MatchChunk(conf, Path(extract_dir), stage.directory, k, tuple(names[i] for i in used),
                                tuple((local[i], local[j]) for i, j in block),
                                None if views is None else tuple(views[names[i]] for i in used), executor.device))
    with tqdm(total=sum(len(t.pairs) for t in tasks), desc="match", unit="pair") as bar:
        for num_pairs, _ in executor.map(match_chunk, tasks):
            bar.update(num_pairs)


def iter_matches(stage_dir: Path, pairs_dir: Path) -> Iterator[tuple[int, int, np.ndarray]]:
    """(i, j, raw matches ``(K, 2)`` uint32) for every pair, in pairs.txt order."""
    _, pairs = read_pairs(pairs_dir)
    for k in range((len(pairs) + CHUNK - 1) // CHUNK):
        block = pairs[k * CHUNK:(k + 1) * CHUNK]
        with np.load(chunk_path(stage_dir, k)) as f:
            counts, matches = f["counts"], f["matches"]
        ends = np.cumsum(counts)
        for (i, j), end, count in zip(block, ends, counts, strict=True):
            yield i, j, matches[end - count:end]
