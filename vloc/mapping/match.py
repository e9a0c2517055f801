"""The pair-selection and matching stages.

```
WORK/pairs/stage.json        configuration (extraction's, pair selection's, the image list)
WORK/pairs/images.txt        the readable map images, one per line: image i is line i
WORK/pairs/pairs.txt         "name1 name2" per pair (hloc's format), i < j in images.txt order
WORK/pairs/whitening.npz     PCA whitening learned on these images' global descriptors
WORK/matches/stage.json      configuration (the pairs stage's, the matcher's)
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
from tqdm import tqdm

from vloc.config import MatcherConf, PairsConf
from vloc.io.files import atomic_path, write_text_atomic
from vloc.mapping.executor import Executor
from vloc.mapping.extract import LruFeatures, read_features, read_global
from vloc.mapping.stages import Stage
from vloc.retrieval.index import Whitening
from vloc.retrieval.pairs import select_pairs

logger = logging.getLogger(__name__)

CHUNK = 64  # pairs per matching task and file


def pairs_stage(stage: Stage, extract_dir: Path, names: list[str], conf: PairsConf, pca_dim: int) -> None:
    """Select pairs by global descriptor (and name order); writes the stage's three files."""
    raw = np.stack([read_global(extract_dir, n) for n in tqdm(names, desc="read global", unit="img",
                                                              disable=len(names) < 1000)])
    whitening = Whitening.learn(raw, pca_dim)
    pairs = select_pairs(whitening(raw), conf.num_retrieved, conf.num_sequential)
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
class MatchChunk:
    """One task: match ``pairs`` (indices into ``names``) and write chunk ``index`` to ``out``."""

    matcher: MatcherConf
    extract_dir: Path
    out: Path
    index: int
    names: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]


def chunk_path(stage_dir: Path, index: int) -> Path:
    return Path(stage_dir) / f"chunk-{index:06d}.npz"


@functools.lru_cache(maxsize=2)
def _matcher(conf: MatcherConf):
    from vloc.matching import make_matcher

    return make_matcher(conf)


@functools.lru_cache(maxsize=2)
def _feature_cache(extract_dir: Path) -> LruFeatures:
    return LruFeatures(functools.partial(read_features, extract_dir))


def match_chunk(task: MatchChunk) -> tuple[int, int]:
    """Match and write one chunk; returns (pairs, matches)."""
    matcher, features = _matcher(task.matcher), _feature_cache(task.extract_dir)
    found = [np.asarray(matcher(features(task.names[i]), features(task.names[j])), np.uint32).reshape(-1, 2)
             for i, j in task.pairs]
    with atomic_path(chunk_path(task.out, task.index)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, counts=np.array([len(m) for m in found], np.int64),
                     matches=np.concatenate(found) if found else np.zeros((0, 2), np.uint32))
    return len(found), sum(len(m) for m in found)


def match_stage(stage: Stage, pairs_dir: Path, extract_dir: Path, conf: MatcherConf, executor: Executor) -> None:
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
                                tuple((local[i], local[j]) for i, j in block)))
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
