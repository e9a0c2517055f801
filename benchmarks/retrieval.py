"""Multi-scene retrieval: recall@1/5/10 of the right scene and of a covisible map image.

    python benchmarks/retrieval.py [--work /tmp/vloc-retrieval] [--data ../shared/data]
                                   [--descriptors NAME ...] [--k 1 5 10]

One index over every map image (those in each set's ``ref_model/images.txt``) of all prepared
sets; the queries are every set's ``queries.txt`` images. A query's relevant images are the map
images of its own scene ("scene"), or those covisible with it ("covisible":
:func:`vloc.evaluation.retrieval.covisible_images` on the set's map triangulated from the
ground-truth poses, with the query at its ground-truth pose). The maps are built once under
``--work/maps`` and reused.

For each global descriptor of ``DESCRIPTORS`` (whitening learned from the index's own map
images, as a map does), retrieval with and without re-ranking by each local feature of
``RERANK_FEATURES`` (top-100 verified by RANSAC, :mod:`vloc.retrieval.rerank`). Prints a markdown
table with the median time per 640x480 image of the global descriptor, and per query of
re-ranking (local features of the query + matching + RANSAC against the candidates).
"most-covisible" counts a hit only for the one map image that shares the most 3D points with
the query: on these small sets nearly every map image of a scene is covisible with its queries,
so that column is the one that separates methods.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pycolmap
import torch

from vloc.config import FeatureConf, GlobalConf, MatcherConf, RerankConf, get_preset
from vloc.evaluation.retrieval import covisible_images, recall_at_k
from vloc.features import make_extractor
from vloc.io.cameras import read_queries
from vloc.io.datasets import PreparedSet, open_prepared
from vloc.io.images import read_image
from vloc.io.poses import read_poses
from vloc.mapping.build import build_map
from vloc.mapping.map_dir import MapFormatError, load_map
from vloc.matching import make_matcher
from vloc.retrieval import make_global_model
from vloc.retrieval.index import Whitening, build_index, search
from vloc.retrieval.rerank import Candidate, rerank

SETS = ("kitti", "lund", "sacre_coeur", "virtual_gallery")
# label -> global descriptor configuration; one entry per model to compare.
# Once the DELG global model is registered (branches delg-model / delg-train), one line each, e.g.
#   "DELG-small": GlobalConf(name="delg", variant="small", weights="PATH/delg_small.pt"),
#   "DELG-small map-adapted": GlobalConf(name="delg", variant="small", weights="PATH/delg_small_adapted.pt"),
DESCRIPTORS: dict[str, GlobalConf] = {
    "EfficientNet-Lite0 GeM": GlobalConf(),
}
# label -> (map-image features, query features, matcher) for re-ranking; one entry per local feature.
RERANK_FEATURES: dict[str, tuple[FeatureConf, FeatureConf, MatcherConf]] = {
    "SIFT": (get_preset("sift").features, get_preset("sift").query_features, get_preset("sift").matcher),
    # DELG local features (extractor "delg"), e.g. with conf = FeatureConf(name="delg", max_keypoints=1000,
    # root_sift=False, variant="small", weights=...): "DELG-small local": (conf, conf, MatcherConf(...)),
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
        rec = build_map(ds.images, map_dir, get_preset("sift"), reference=ds.ref_model, overwrite=True).reconstruction
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


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


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


def run(scenes: dict[str, Scene], ks: tuple[int, ...], repeat: int, num_candidates: int) -> list[dict]:
    map_keys = [k for s in scenes.values() for k in s.map_names]
    query_keys = [q for s in scenes.values() for q in s.queries]
    probe = timing_image(scenes)
    rerank_conf = RerankConf(num_candidates=num_candidates)
    local = {}
    for label, (map_conf, query_conf, matcher_conf) in RERANK_FEATURES.items():
        map_extractor, query_extractor = make_extractor(map_conf), make_extractor(query_conf)
        local[label] = dict(
            map=extract_all(map_extractor, scenes, map_keys), query=extract_all(query_extractor, scenes, query_keys),
            matcher=make_matcher(matcher_conf), seconds=median_seconds(lambda e=query_extractor: e(probe), repeat))
    rows = []
    for label, conf in DESCRIPTORS.items():
        model = make_global_model(conf)
        seconds = median_seconds(lambda m=model: m(probe), repeat)
        raw_map = np.stack(list(extract_all(model, scenes, map_keys).values()))
        raw_query = np.stack(list(extract_all(model, scenes, query_keys).values()))
        whitening = Whitening.learn(raw_map, conf.pca_dim)
        scores, ids = search(build_index(whitening(raw_map)), whitening(raw_query), len(map_keys))
        candidates = {q: [Candidate(map_keys[i], float(s)) for s, i in zip(scores[r], ids[r], strict=True)]
                      for r, q in enumerate(query_keys)}
        rankings = {q: [c.name for c in cands] for q, cands in candidates.items()}
        rows.append(dict(descriptor=label, rerank="none", global_s=seconds, rerank_s=0.0,
                         **evaluate_rankings(rankings, scenes, ks)))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vloc-retrieval"), help="cache of the built maps")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--descriptors", nargs="+", choices=sorted(DESCRIPTORS), help="default: all")
    parser.add_argument("--k", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--rerank-k", type=int, default=100, help="global top-K verified when re-ranking")
    parser.add_argument("--min-shared", type=int, default=20, help="3D points shared with the query for a "
                        "map image to count as covisible")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs on the 640x480 image")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    if args.descriptors:
        for name in set(DESCRIPTORS) - set(args.descriptors):
            del DESCRIPTORS[name]
    scenes = {name: load_scene(open_prepared(args.data / "prepared" / name), args.work, args.min_shared)
              for name in args.sets}
    ks = tuple(args.k)
    for s in scenes.values():
        sizes = [len(c) for c in s.covisible.values()]
        print(f"{s.name}: {len(s.map_names)} map images, {len(s.queries)} queries, covisible map images per "
              f"query (>= {args.min_shared} shared points): min {min(sizes)}, median {np.median(sizes):g}")
    rows = run(scenes, ks, args.repeat, args.rerank_k)
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
