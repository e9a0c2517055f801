"""Retrieval quality: the Revisited Oxford/Paris mAP protocol, and recall@k for localization.

Revisited Oxford/Paris (Radenović et al., CVPR 2018). The ground truth is their pickle file
(``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``): a dict with ``imlist`` (database image names),
``qimlist`` (query names) and ``gnd``, one dict per query with ``easy``, ``hard`` and ``junk``
lists of database indices (and ``bbx``, the query's box, unused here). The three protocols:

=========  ===============  ===================
protocol   positives        ignored ("junk")
=========  ===============  ===================
easy       easy             junk + hard
medium     easy + hard      junk
hard       hard             junk + easy
=========  ===============  ===================

Junk images are removed from a ranking before scoring. AP is the area under the
precision-recall curve accumulated as trapezoids between consecutive positives, as the
revisitop evaluation does: the ``j``-th positive (0-based) at junk-free 0-based rank ``r``
adds ``(j / r + (j + 1) / (r + 1)) / 2 / num_positives`` (``j / r`` read as 1 when ``r = 0``).
Queries without positives are left out of the mean (their AP is NaN). mP@k follows the same
evaluation: for each query, ``k' = min(k, rank of the last positive)`` (1-based) and precision
is the count of positives within the first ``k'`` junk-free places divided by ``k'``.

Localization recall@k: a query is a hit at ``k`` when one of its first ``k`` retrieved map
images is relevant: from the right scene (multi-scene index), or covisible with the query.
"Covisible" is defined from the map's 3D points and the query's ground-truth pose, see
:func:`covisible_images`.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np
import pycolmap

PROTOCOLS = ("easy", "medium", "hard")
DEFAULT_KAPPAS = (1, 5, 10)
# A map image is covisible with a query when it observes at least this many of the map's 3D
# points that project into the ground-truth-posed query camera (in front of it, inside the image).
DEFAULT_MIN_SHARED_POINTS = 20


# ----------------------------------------------------------------------------- Revisited mAP


def average_precision(ranks: np.ndarray, num_positives: int) -> float:
    """AP of one query from the sorted, junk-free, 0-based ranks ``(P,)`` of its retrieved positives.

    ``num_positives`` counts every positive of the query, retrieved or not (unretrieved ones add
    nothing). Trapezoids between consecutive recall levels, as in the revisitop evaluation.
    """
    if num_positives <= 0:
        raise ValueError(f"average_precision: num_positives must be positive, got {num_positives}")
    ranks = np.sort(np.asarray(ranks, dtype=np.float64))
    j = np.arange(len(ranks), dtype=np.float64)
    before = np.divide(j, ranks, out=np.ones_like(ranks), where=ranks > 0)  # precision just before the positive
    after = (j + 1) / (ranks + 1)  # precision including it
    return float(np.sum(before + after) / (2.0 * num_positives))


def positive_ranks(ranking: np.ndarray, positives: Collection[int], junk: Collection[int] = ()) -> np.ndarray:
    """0-based places ``(P,)`` of ``positives`` in ``ranking`` ``(N,)`` (database indices, best first)
    once the ``junk`` indices are removed from it."""
    ranking = np.asarray(ranking)
    kept = ranking[~np.isin(ranking, np.asarray(list(junk), dtype=ranking.dtype))]
    return np.flatnonzero(np.isin(kept, np.asarray(list(positives), dtype=ranking.dtype)))


@dataclass(frozen=True)
class MapResult:
    """``mean_ap`` over queries with positives; ``aps`` ``(Q,)`` (NaN without positives);
    ``precisions`` ``(Q, len(kappas))``; ``mean_precision`` maps each k to mP@k."""

    mean_ap: float
    aps: np.ndarray
    kappas: tuple[int, ...]
    precisions: np.ndarray
    mean_precision: dict[int, float]


def mean_average_precision(
    rankings: np.ndarray, ground_truth: Sequence[tuple[Collection[int], Collection[int]]],
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> MapResult:
    """mAP and mP@k of ``rankings`` ``(Q, N)`` (row q: database indices for query q, best first)
    against ``ground_truth``: one ``(positives, junk)`` pair of index collections per query."""
    rankings = np.atleast_2d(np.asarray(rankings))
    if len(rankings) != len(ground_truth):
        raise ValueError(f"rankings have {len(rankings)} rows but the ground truth has {len(ground_truth)} "
                         f"queries (rankings are (queries, database); revisitop's arrays are the transpose)")
    kappas = tuple(int(k) for k in kappas)
    aps = np.full(len(rankings), np.nan)
    precisions = np.full((len(rankings), len(kappas)), np.nan)
    for q, (ranking, (positives, junk)) in enumerate(zip(rankings, ground_truth, strict=True)):
        positives = set(positives)
        if not positives:
            continue
        ranks = positive_ranks(ranking, positives, junk)
        aps[q] = average_precision(ranks, len(positives))
        if len(ranks):
            last = ranks.max() + 1  # 1-based place of the last retrieved positive
            for i, k in enumerate(kappas):
                cut = min(k, last)
                precisions[q, i] = np.count_nonzero(ranks + 1 <= cut) / cut
        else:
            precisions[q] = 0.0
    valid = ~np.isnan(aps)
    mean_ap = float(aps[valid].mean()) if valid.any() else float("nan")
    mean_precision = {k: float(precisions[valid, i].mean()) if valid.any() else float("nan")
                      for i, k in enumerate(kappas)}
    return MapResult(mean_ap, aps, kappas, precisions, mean_precision)


@dataclass(frozen=True)
class RevisitedGroundTruth:
    """The content of a ``gnd_r*.pkl`` file."""

    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]

    def protocol(self, name: str) -> list[tuple[set[int], set[int]]]:
        """``(positives, junk)`` per query under protocol ``name`` (easy, medium or hard)."""
        if name not in PROTOCOLS:
            raise ValueError(f"Unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
        out = []
        for g in self.gnd:
            easy, hard, junk = set(g["easy"]), set(g["hard"]), set(g["junk"])
            out.append({"easy": (easy, junk | hard), "medium": (easy | hard, junk), "hard": (hard, junk | easy)}[name])
        return out


def read_revisited_gnd(path: Path | str) -> RevisitedGroundTruth:
    """Read a Revisited Oxford/Paris ground-truth pickle; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ground-truth file")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable ground-truth pickle ({exc})") from exc
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise ValueError(f"{path}: expected a dict with 'imlist', 'qimlist' and 'gnd'")
    imlist, qimlist, gnd = list(data["imlist"]), list(data["qimlist"]), list(data["gnd"])
    if len(gnd) != len(qimlist):
        raise ValueError(f"{path}: {len(qimlist)} queries but {len(gnd)} ground-truth entries")
    for q, g in enumerate(gnd):
        missing = [k for k in ("easy", "hard", "junk") if k not in g]
        if missing:
            raise ValueError(f"{path}: query {q} ({qimlist[q]}) lacks {missing}")
        bad = [i for k in ("easy", "hard", "junk") for i in g[k] if not 0 <= int(i) < len(imlist)]
        if bad:
            raise ValueError(f"{path}: query {q} ({qimlist[q]}) has database indices out of range, e.g. {bad[:3]}")
    return RevisitedGroundTruth(imlist, qimlist, gnd)


def evaluate_revisited(rankings: np.ndarray, gnd: RevisitedGroundTruth | Path | str,
                       kappas: Sequence[int] = DEFAULT_KAPPAS) -> dict[str, MapResult]:
    """Easy / Medium / Hard mAP and mP@k of ``rankings`` ``(Q, N)`` (indices into ``imlist``)."""
    if not isinstance(gnd, RevisitedGroundTruth):
        gnd = read_revisited_gnd(gnd)
    return {p: mean_average_precision(rankings, gnd.protocol(p), kappas) for p in PROTOCOLS}


def rankings_from_scores(scores: np.ndarray) -> np.ndarray:
    """``(Q, N)`` similarities -> ``(Q, N)`` database indices, most similar first (stable on ties)."""
    return np.argsort(-np.atleast_2d(scores), axis=1, kind="stable")


# ----------------------------------------------------------------------------- localization recall


@dataclass(frozen=True)
class RecallResult:
    """``recall[k]``: fraction of evaluated queries with a relevant image in their top ``k``.
    Queries with no relevant image at all are not evaluated; ``skipped`` counts them."""

    recall: dict[int, float]
    evaluated: int
    skipped: int


def recall_at_k(retrieved: Sequence[Sequence[str]], relevant: Sequence[Collection[str]],
                ks: Sequence[int] = DEFAULT_KAPPAS) -> RecallResult:
    """``retrieved[q]``: names best first; ``relevant[q]``: the names that count as a hit."""
    if len(retrieved) != len(relevant):
        raise ValueError(f"{len(retrieved)} retrieval lists but {len(relevant)} relevance sets")
    hits = {k: 0 for k in ks}
    evaluated = 0
    for names, good in zip(retrieved, relevant, strict=True):
        if not good:
            continue
        evaluated += 1
        first = next((i for i, n in enumerate(names) if n in good), None)
        for k in ks:
            hits[k] += first is not None and first < k
    return RecallResult({k: hits[k] / evaluated if evaluated else float("nan") for k in ks},
                        evaluated, len(retrieved) - evaluated)


def visible_points(xyz: np.ndarray, camera: pycolmap.Camera, cam_from_world: pycolmap.Rigid3d) -> np.ndarray:
    """``(P,)`` bool: which world points ``(P, 3)`` lie in front of the camera and project inside
    its image (``[0, width] x [0, height]``, COLMAP pixel convention). No occlusion test."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(xyz) == 0:
        return np.zeros(0, bool)
    in_cam = cam_from_world * xyz
    front = in_cam[:, 2] > 1e-9
    uv = np.full((len(xyz), 2), np.nan)
    if front.any():
        uv[front] = camera.img_from_cam(in_cam[front])
    with np.errstate(invalid="ignore"):
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= camera.height)
    return front & inside


def shared_point_counts(visible_ids: Collection[int], observations: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Per map image, how many of ``visible_ids`` it observes (``observations``: name -> point ids)."""
    visible = np.asarray(sorted(set(int(i) for i in visible_ids)), dtype=np.int64)
    return {name: int(np.count_nonzero(np.isin(np.unique(np.asarray(ids, np.int64)), visible)))
            for name, ids in observations.items()}


def covisible_images(
    reconstruction: pycolmap.Reconstruction, camera: pycolmap.Camera, cam_from_world: pycolmap.Rigid3d,
    min_shared: int = DEFAULT_MIN_SHARED_POINTS,
) -> dict[str, int]:
    """Map images covisible with a query seen by ``camera`` at its ground-truth ``cam_from_world``.

    Rule: the map's 3D points that project into the query image (in front of the camera, inside
    the image bounds; no occlusion reasoning, the map is sparse) are what the query would see; a
    map image is covisible when its own observations include at least ``min_shared`` of them.
    Returns ``{name: shared point count}`` for the covisible images only.
    """
    ids = np.array(sorted(reconstruction.points3D), dtype=np.int64)
    if len(ids) == 0:
        return {}
    xyz = np.stack([reconstruction.points3D[int(i)].xyz for i in ids])
    visible = ids[visible_points(xyz, camera, cam_from_world)]
    observations = {}
    for image in reconstruction.images.values():
        if image.has_pose:
            observations[image.name] = np.array([p.point3D_id for p in image.points2D if p.has_point3D()], np.int64)
    counts = shared_point_counts(visible, observations)
    return {n: c for n, c in counts.items() if c >= min_shared}
