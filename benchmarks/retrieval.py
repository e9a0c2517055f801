"""Multi-scene retrieval: recall@1/5/10 of the right scene and of a covisible map image.

    python benchmarks/retrieval.py [--work /tmp/vloc-retrieval] [--data ../shared/data]
                                   [--delg-weights DELG.pt] [--descriptors LABEL ...]
                                   [--rerank-features LABEL ...] [--rerank-k 100] [--k 1 5 10]
    python benchmarks/retrieval.py --write-scene-labels labels.csv   # DELG-small's training labels

One index over every map image (those in each set's ``ref_model/images.txt``) of all prepared
sets; the queries are every set's ``queries.txt`` images. A query's relevant images are the map
images of its own scene ("scene"), or those covisible with it ("covisible":
:func:`vloc.evaluation.retrieval.covisible_images` on the set's map triangulated from the
ground-truth poses, with the query at its ground-truth pose). The maps are built once under
``--work/maps`` and reused.

Global descriptors: each entry of :func:`descriptors` is one model for the whole index
(whitening learned from the index's own map images, as a map does); DELG-small needs
``--delg-weights`` (a ``vloc train delg`` file; docs/benchmarks.md says how it was made). Each
entry of ``ADAPTED`` is ``vloc map adapt`` run on each set's map (copies under
``--work/adapted``, reused): every map then has its own model, so a query is described by each
map's model and scored against that map's images by raw cosine (:func:`per_map_scores`).
Every descriptor is run with and without re-ranking by each local feature of
:func:`rerank_features` (global top-``--rerank-k`` verified by RANSAC, :mod:`vloc.retrieval.rerank`).
Prints a markdown table with the median time per 640x480 image of the global descriptor (all the
maps' models for a per-map entry), and per query of re-ranking (local features of the query +
matching + RANSAC against the candidates).
"most-covisible" counts a hit only for the one map image that shares the most 3D points with
the query: on these small sets nearly every map image of a scene is covisible with its queries,
so that column is the one that separates methods.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pycolmap
import torch

from vloc.config import FeatureConf, GlobalConf, MatcherConf, RerankConf, get_preset
from vloc.evaluation.retrieval import covisible_images, rankings_from_scores, recall_at_k
from vloc.evaluation.timing import median_seconds
from vloc.features import make_extractor
from vloc.io.cameras import read_queries
from vloc.io.datasets import PreparedSet, open_prepared
from vloc.io.images import read_image
from vloc.io.poses import read_poses
from vloc.mapping.build import build_map
from vloc.mapping.map_dir import MapFormatError, load_map, read_manifest
from vloc.matching import make_matcher
from vloc.retrieval import make_global_model
from vloc.retrieval.index import Whitening, build_index, search
from vloc.retrieval.rerank import Candidate, rerank
from vloc.training.adapt import AdaptConf, adapt_map, adapted_global_conf

SETS = ("kitti", "lund", "sacre_coeur", "virtual_gallery")
DELG_WEIGHTS = Path("/tmp/vloc-retrieval/delg-small/delg.pt")  # --delg-weights; how to make it: docs/benchmarks.md


def descriptors(delg: Path) -> dict[str, GlobalConf]:
    """label -> global descriptor configuration; one entry per model to compare (one index, one model)."""
    return {
        "EfficientNet-Lite0 GeM 320 px": GlobalConf(),  # the default (448 px until issue 12)
        "EfficientNet-Lite0 GeM 448 px": GlobalConf(resize_max=448),
        "DELG-small": GlobalConf(name="delg", variant="small", weights=str(delg)),
    }


# label -> per-map adaptation (``vloc map adapt`` on each set's map): each map has its own model, so
# the index holds each map's own adapted descriptors and a query is described by every map's model
# (see :func:`per_map_scores`).
ADAPTED: dict[str, AdaptConf] = {
    "DELG-small map-adapted": AdaptConf(),
}


def rerank_features(delg: Path) -> dict[str, tuple[FeatureConf, FeatureConf, MatcherConf]]:
    """label -> (map-image features, query features, matcher) for re-ranking; one entry per local feature."""
    sift = get_preset("sift")
    # DELG local features at <= 640 px (7 scales, so up to 1280 px), 1,000 per image; mutual NN
    # under a descriptor distance of 0.8 (unit-norm 128-D codes), no ratio test.
    delg_local = FeatureConf(name="delg", max_keypoints=1000, resize_max=640, root_sift=False, variant="small",
                             weights=str(delg))
    return {
        "SIFT": (sift.features, sift.query_features, sift.matcher),
        "DELG-small local": (delg_local, delg_local, MatcherConf(name="mnn", ratio=1.0, max_distance=0.8)),
    }


TIMING_SIZE = (640, 480)


@dataclass
class Scene:
    name: str
    data: PreparedSet
    map_names: list[str]  # "scene/image" keys
    queries: list[str]
    covisible: dict[str, set[str]]  # query key -> covisible map keys
    best: dict[str, set[str]]  # query key -> the map key sharing the most 3D points with it


def load_scene(ds: PreparedSet, work: Path, min_shared: int) -> Scene:
    """Build (or reuse) the set's map triangulated from its ground-truth poses, and the
    covisible map images of every query at its ground-truth pose."""
    map_dir = work / "maps" / ds.name
    try:
        rec = load_map(map_dir).reconstruction
    except MapFormatError:
        logging.info("building the %s map under %s", ds.name, map_dir)
        build_map(ds.images, map_dir, get_preset("sift"), reference=ds.ref_model, overwrite=True)
        rec = load_map(map_dir).reconstruction
    ref_names = sorted(im.name for im in pycolmap.Reconstruction(str(ds.ref_model)).images.values())
    gt = read_poses(ds.gt)
    queries = read_queries(ds.queries)
    key = f"{ds.name}/{{}}".format
    counts = {key(q.name): covisible_images(rec, q.camera, gt[q.name], min_shared) for q in queries}
    covisible = {q: {key(n) for n in c} for q, c in counts.items()}
    best = {q: {key(max(c, key=c.get))} if c else set() for q, c in counts.items()}
    return Scene(ds.name, ds, [key(n) for n in ref_names], [key(q.name) for q in queries], covisible, best)


def image_of(scenes: dict[str, Scene], key: str) -> np.ndarray:
    scene, name = key.split("/", 1)
    return read_image(scenes[scene].data.images / name)


def timing_image(scenes: dict[str, Scene]) -> np.ndarray:
    """A real map image resized to 640x480 (aspect not kept: only the pixel count matters)."""
    first = next(iter(scenes.values()))
    return cv2.resize(image_of(scenes, first.map_names[0]), TIMING_SIZE, interpolation=cv2.INTER_AREA)


def extract_all(fn: Callable[[np.ndarray], object], scenes: dict[str, Scene], keys: list[str]) -> dict:
    return {k: fn(image_of(scenes, k)) for k in keys}


def evaluate_rankings(rankings: dict[str, list[str]], scenes: dict[str, Scene], ks) -> dict[str, object]:
    queries = [q for s in scenes.values() for q in s.queries]
    scene_of = {k: k.split("/", 1)[0] for s in scenes.values() for k in s.map_names}
    same_scene = [{m for m in scene_of if scene_of[m] == q.split("/", 1)[0]} for q in queries]
    covisible = [scenes[q.split("/", 1)[0]].covisible[q] for q in queries]
    best = [scenes[q.split("/", 1)[0]].best[q] for q in queries]
    ranked = [rankings[q] for q in queries]
    misses = [q for q, names in zip(queries, ranked, strict=True) if scene_of[names[0]] != q.split("/", 1)[0]]
    return dict(scene=recall_at_k(ranked, same_scene, ks), covisible=recall_at_k(ranked, covisible, ks),
                best=recall_at_k(ranked, best, ks), scene_misses_at_1=misses)


def adapt_maps(scenes: dict[str, Scene], work: Path, label: str, conf: AdaptConf) -> dict[str, Path]:
    """Each scene's map copied to ``work/adapted/LABEL/SCENE`` and adapted (``vloc map adapt``);
    reused when already adapted there."""
    out = {}
    for name, scene in scenes.items():
        target = work / "adapted" / label.replace(" ", "_") / name
        if not (target / "manifest.json").is_file() or read_manifest(target).adaptation is None:
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(work / "maps" / name, target)
            t = time.perf_counter()
            adaptation = adapt_map(target, conf, images=scene.data.images)
            first, last = adaptation["losses_first_epoch"], adaptation["losses_last_epoch"]
            print(f"{label}: adapted {name} in {time.perf_counter() - t:.0f} s, covisibility clusters "
                  f"{adaptation['clusters']['sizes']}, ArcFace loss first -> last epoch "
                  f"{first['arcface']:.2f} -> {last['arcface']:.2f}")
        out[name] = target
    return out


def per_map_scores(scenes: dict[str, Scene], map_dirs: dict[str, Path], query_keys: list[str],
                   probe: np.ndarray, repeat: int) -> tuple[np.ndarray, float]:
    """``(Q, M)`` scores of every query against every map image, each map image's column scored with
    its own map's model: cosine of the raw (unwhitened) descriptors, the only scale the maps' models
    share (each map's PCA-whitening is learned from its own few images). Also the median seconds to
    describe one 640x480 query with all the maps' models (a multi-scene query needs each)."""
    columns, models = [], []
    for name, scene in scenes.items():
        data = load_map(map_dirs[name])
        model = make_global_model(adapted_global_conf(map_dirs[name]))
        raw = dict(zip(data.global_names, data.global_raw, strict=True))
        missing = [k for k in scene.map_names if k.split("/", 1)[1] not in raw]
        if missing:
            raise ValueError(f"{map_dirs[name]}: the adapted map lacks global descriptors of {missing[:3]}")
        index = np.stack([raw[k.split("/", 1)[1]] for k in scene.map_names])
        queries = np.stack(list(extract_all(model, scenes, query_keys).values()))
        columns.append(queries @ index.T)
        models.append(model)
    seconds = median_seconds(lambda: [m(probe) for m in models], repeat)
    return np.concatenate(columns, axis=1), seconds


def rows_for(label: str, candidates: dict[str, list[Candidate]], seconds: float, local: dict, scenes, ks,
             num_candidates: int) -> list[dict]:
    """One row without re-ranking, one per local feature of ``local`` with re-ranking."""
    rankings = {q: [c.name for c in cands] for q, cands in candidates.items()}
    rows = [dict(descriptor=label, rerank="none", global_s=seconds, rerank_s=0.0,
                 **evaluate_rankings(rankings, scenes, ks))]
    rerank_conf = RerankConf(num_candidates=num_candidates)
    for feat_label, feats in local.items():
        reranked, times = {}, []
        for q, cands in candidates.items():
            t = time.perf_counter()
            reranked[q] = [c.name for c in rerank(feats["query"][q], cands, feats["map"], feats["matcher"],
                                                  rerank_conf)]
            times.append(time.perf_counter() - t)
        rows.append(dict(descriptor=label, rerank=f"{feat_label} top-{num_candidates}", global_s=seconds,
                         rerank_s=feats["seconds"] + float(np.median(times)),
                         **evaluate_rankings(reranked, scenes, ks)))
    return rows


def ranked_candidates(scores: np.ndarray, ids: np.ndarray, map_keys: list[str],
                      query_keys: list[str]) -> dict[str, list[Candidate]]:
    return {q: [Candidate(map_keys[i], float(s)) for s, i in zip(scores[r], ids[r], strict=True)]
            for r, q in enumerate(query_keys)}


def run(scenes: dict[str, Scene], ks: tuple[int, ...], repeat: int, num_candidates: int,
        global_confs: dict[str, GlobalConf], adapted: dict[str, dict[str, Path]],
        local_confs: dict[str, tuple[FeatureConf, FeatureConf, MatcherConf]]) -> list[dict]:
    map_keys = [k for s in scenes.values() for k in s.map_names]
    query_keys = [q for s in scenes.values() for q in s.queries]
    probe = timing_image(scenes)
    local = {}
    for label, (map_conf, query_conf, matcher_conf) in local_confs.items():
        map_extractor, query_extractor = make_extractor(map_conf), make_extractor(query_conf)
        local[label] = dict(
            map=extract_all(map_extractor, scenes, map_keys), query=extract_all(query_extractor, scenes, query_keys),
            matcher=make_matcher(matcher_conf), seconds=median_seconds(lambda e=query_extractor: e(probe), repeat))
    rows = []
    for label, conf in global_confs.items():
        model = make_global_model(conf)
        seconds = median_seconds(lambda m=model: m(probe), repeat)
        raw_map = np.stack(list(extract_all(model, scenes, map_keys).values()))
        raw_query = np.stack(list(extract_all(model, scenes, query_keys).values()))
        whitening = Whitening.learn(raw_map, conf.pca_dim)
        scores, ids = search(build_index(whitening(raw_map)), whitening(raw_query), len(map_keys))
        rows += rows_for(label, ranked_candidates(scores, ids, map_keys, query_keys), seconds, local, scenes, ks,
                         num_candidates)
    for label, map_dirs in adapted.items():
        all_scores, seconds = per_map_scores(scenes, map_dirs, query_keys, probe, repeat)
        ids = rankings_from_scores(all_scores)
        scores = np.take_along_axis(all_scores, ids, axis=1)
        rows += rows_for(label, ranked_candidates(scores, ids, map_keys, query_keys), seconds, local, scenes, ks,
                         num_candidates)
    return rows


def format_table(rows: list[dict], ks: tuple[int, ...]) -> str:
    head = (["global descriptor", "re-ranking"] + [f"scene R@{k}" for k in ks] + [f"covisible R@{k}" for k in ks]
            + [f"most-covisible R@{k}" for k in ks]
            + ["global ms / 640x480 img", "re-ranking s / query"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["descriptor"], r["rerank"]] + [f"{100 * r['scene'].recall[k]:.1f}" for k in ks]
        cells += [f"{100 * r['covisible'].recall[k]:.1f}" for k in ks]
        cells += [f"{100 * r['best'].recall[k]:.1f}" for k in ks]
        cells += [f"{1000 * r['global_s']:.0f}", f"{r['rerank_s']:.2f}" if r["rerank_s"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_scene_labels(data_root: Path, sets: list[str], path: Path) -> None:
    """``image,label`` CSV for ``vloc train delg --images DATA/prepared --csv PATH``: every map image
    (``ref_model``) of the sets, labelled by its set; queries are left out (an error if a name is both)."""
    rows = []
    for name in sets:
        ds = open_prepared(data_root / "prepared" / name)
        names = sorted(im.name for im in pycolmap.Reconstruction(str(ds.ref_model)).images.values())
        leaked = set(names) & {q.name for q in read_queries(ds.queries)}
        if leaked:
            raise ValueError(f"{ds.ref_model}: map images that are also queries: {sorted(leaked)[:3]}")
        rows += [f"{name}/images/{n},{name}" for n in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("image,label\n" + "\n".join(rows) + "\n")
    print(f"{path}: {len(rows)} map images of {len(sets)} sets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vloc-retrieval"), help="cache of the built maps")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--delg-weights", type=Path, default=DELG_WEIGHTS, help="DELG-small weights (delg.pt of "
                        "'vloc train delg')")
    parser.add_argument("--descriptors", nargs="+", help="labels of the global descriptors to run (default: all)")
    parser.add_argument("--rerank-features", nargs="*", help="labels of the re-ranking local features (default: all)")
    parser.add_argument("--write-scene-labels", type=Path, metavar="CSV", help="write the map images' set labels "
                        "(training data of DELG-small) and exit")
    parser.add_argument("--k", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--rerank-k", type=int, default=100, help="global top-K verified when re-ranking")
    parser.add_argument("--min-shared", type=int, default=20, help="3D points shared with the query for a "
                        "map image to count as covisible")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs on the 640x480 image")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    if args.write_scene_labels:
        write_scene_labels(args.data, args.sets, args.write_scene_labels)
        return
    global_confs, local_confs = descriptors(args.delg_weights), rerank_features(args.delg_weights)
    adapt_confs = dict(ADAPTED)
    every = sorted(global_confs) + sorted(adapt_confs)
    unknown = set(args.descriptors or []) - set(every) | set(args.rerank_features or []) - set(local_confs)
    if unknown:
        parser.error(f"unknown labels {sorted(unknown)}; descriptors: {every}, re-ranking: {sorted(local_confs)}")
    if args.descriptors:
        global_confs = {k: v for k, v in global_confs.items() if k in args.descriptors}
        adapt_confs = {k: v for k, v in adapt_confs.items() if k in args.descriptors}
    if args.rerank_features is not None:
        local_confs = {k: v for k, v in local_confs.items() if k in args.rerank_features}
    uses_delg = any(c.name == "delg" for c in global_confs.values()) or any(
        c[0].name == "delg" for c in local_confs.values())
    if uses_delg and not args.delg_weights.is_file():
        parser.error(f"{args.delg_weights}: no DELG-small weights; make them with --write-scene-labels CSV then "
                     "'vloc train delg' (docs/benchmarks.md), or leave the DELG entries out")
    scenes = {name: load_scene(open_prepared(args.data / "prepared" / name), args.work, args.min_shared)
              for name in args.sets}
    ks = tuple(args.k)
    for s in scenes.values():
        sizes = [len(c) for c in s.covisible.values()]
        print(f"{s.name}: {len(s.map_names)} map images, {len(s.queries)} queries, covisible map images per "
              f"query (>= {args.min_shared} shared points): min {min(sizes)}, median {np.median(sizes):g}")
    adapted = {label: adapt_maps(scenes, args.work, label, conf) for label, conf in adapt_confs.items()}
    rows = run(scenes, ks, args.repeat, args.rerank_k, global_confs, adapted, local_confs)
    n_map = sum(len(s.map_names) for s in scenes.values())
    n_query = sum(len(s.queries) for s in scenes.values())
    print(f"\n{n_map} map images of {len(scenes)} scenes in one index, {n_query} queries; torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs; times are medians\n")
    print(format_table(rows, ks))
    for r in rows:
        if r["scene_misses_at_1"]:
            print(f"\n{r['descriptor']} / {r['rerank']}: wrong scene at rank 1 for {', '.join(r['scene_misses_at_1'])}")
        skipped = r["covisible"].skipped
        if skipped:
            print(f"{r['descriptor']} / {r['rerank']}: {skipped} queries without a covisible map image left out")


if __name__ == "__main__":
    main()
