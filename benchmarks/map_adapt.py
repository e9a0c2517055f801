"""Does map adaptation (``vloc map adapt``) improve retrieval? Before / after, on the prepared GT sets.

    python benchmarks/map_adapt.py [--sets kitti virtual_gallery lund sacre_coeur] [--data ../shared/data]
                                   [--maps DIR] [--epochs 20] [--image-size 320]
                                   [--backbone frozen|last|all]

For each set, a map is built by triangulation from the ground-truth poses of its map images
(reused from ``--maps`` when already there), then copied three times:

- ``base``: the map as built (EfficientNet-Lite0 GeM at 448 px, one scale, PCA-whitened);
- ``delg0``: ``adapt`` with 0 epochs: DELG-small with untrained heads (identity whitening FC,
  GeM p = 3), multi-scale. Separates the effect of training from the change of extractor;
- ``adapted``: ``adapt`` with the given epochs (covisibility-cluster labels).

A query's relevant map images are those covisible with it at its ground-truth pose
(:func:`vloc.evaluation.retrieval.covisible_images`: at least 20 of the map's 3D points that
project into the query also observed by the map image). On these small maps most map images
are covisible with most queries, so recall@k saturates; the ranking-sensitive figures are the
mAP over the covisible images, ``best@1`` (the top-1 is the map image sharing the most points
with the query) and ``share@1`` (points the top-1 shares with the query / the most any map image
shares, averaged over queries). Each figure is given for the map's pipeline (PCA-whitened, as
the Localizer retrieves) and for the raw descriptors (``raw``): the map's PCA-whitening, learned
from a handful of images, undoes most of any linear change to the descriptors, including a
trained whitening FC. Also printed: queries localized by the Localizer, adaptation time.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from vloc.config import get_preset
from vloc.evaluation.retrieval import (
    average_precision,
    covisible_images,
    positive_ranks,
    rankings_from_scores,
    recall_at_k,
)
from vloc.io.cameras import read_queries
from vloc.io.datasets import open_prepared
from vloc.io.images import read_image
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer
from vloc.mapping.build import build_map
from vloc.mapping.map_dir import load_map
from vloc.retrieval import make_global_model
from vloc.training.adapt import AdaptConf, adapt_map, adapted_global_conf

VARIANTS = ("base", "delg0", "adapted")


def rankings(map_dir: Path, image_dir: Path, names: list[str]) -> dict[str, list[list[str]]]:
    """Map image names ranked for each query by the map's own global model: ``{"white": ..., "raw": ...}``."""
    data = load_map(map_dir)
    model = make_global_model(adapted_global_conf(map_dir))
    raw = np.stack([model(read_image(image_dir / n)) for n in names])
    scores = dict(white=data.whitening(raw) @ data.whitening(data.global_raw).T, raw=raw @ data.global_raw.T)
    return {k: [[data.global_names[i] for i in row] for row in rankings_from_scores(v)] for k, v in scores.items()}


def metrics(ranked: list[list[str]], counts: list[dict[str, int]]) -> dict[str, float]:
    """R@1, R@5, mAP over covisible images, best@1 and share@1 (see the module docstring)."""
    relevant = [set(c) for c in counts]
    rec = recall_at_k(ranked, relevant, (1, 5))
    pairs = [(r, c) for r, c in zip(ranked, counts, strict=True) if c]
    aps = [average_precision(positive_ranks(np.arange(len(r)), [i for i, n in enumerate(r) if n in c]), len(c))
           for r, c in pairs]
    return dict(recall_at_1=rec.recall[1], recall_at_5=rec.recall[5], evaluated=rec.evaluated, mAP=float(np.mean(aps)),
                best_at_1=float(np.mean([r[0] == max(c, key=c.get) for r, c in pairs])),
                share_at_1=float(np.mean([c.get(r[0], 0) / max(c.values()) for r, c in pairs])))


def run_set(name: str, data_root: Path, maps: Path, conf: AdaptConf) -> dict:
    ds = open_prepared(data_root / "prepared" / name)
    base = maps / name
    if not base.exists():
        build_map(ds.images, base, get_preset("sift"), reference=ds.ref_model)
    queries = read_queries(ds.queries)
    gt = read_poses(ds.gt)
    rec = load_map(base).reconstruction
    counts = [covisible_images(rec, q.camera, gt[q.name]) for q in queries]
    out = dict(queries=len(queries), clusters=None)
    for variant in VARIANTS:
        map_dir = maps / f"{name}-{variant}"
        if map_dir.exists():
            shutil.rmtree(map_dir)
        shutil.copytree(base, map_dir)
        t = time.perf_counter()
        if variant != "base":
            epochs = 0 if variant == "delg0" else conf.train.epochs
            adaptation = adapt_map(map_dir, dataclasses.replace(
                conf, train=dataclasses.replace(conf.train, epochs=epochs)), images=ds.images)
            out["clusters"] = adaptation["clusters"]["sizes"]
        seconds = time.perf_counter() - t
        ranked = rankings(map_dir, ds.images, [q.name for q in queries])
        localizer = Localizer.load(map_dir)
        localized = sum(localizer.localize(ds.images / q.name, q.camera).success for q in queries)
        raw = metrics(ranked["raw"], counts)
        out[variant] = dict(metrics(ranked["white"], counts), raw_mAP=raw["mAP"], raw_best_at_1=raw["best_at_1"],
                            raw_share_at_1=raw["share_at_1"], localized=localized, adapt_seconds=round(seconds, 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["kitti", "virtual_gallery", "lund", "sacre_coeur"])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--maps", type=Path, default=Path("/tmp/vloc-map-adapt"))
    parser.add_argument("--epochs", type=int, default=AdaptConf().train.epochs)
    parser.add_argument("--image-size", type=int, default=AdaptConf().train.image_size)
    parser.add_argument("--lr", type=float, default=AdaptConf().train.lr)
    parser.add_argument("--backbone", choices=["frozen", "last", "all"], default=AdaptConf().train.backbone)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    conf = AdaptConf()
    conf = dataclasses.replace(conf, train=dataclasses.replace(conf.train, epochs=args.epochs,
                                                               image_size=args.image_size, lr=args.lr,
                                                               backbone=args.backbone))
    print(f"adaptation: {args.epochs} epochs, {args.image_size} px crops, lr {args.lr}, backbone {args.backbone}")
    print(f"{'set':<16}{'variant':<9}{'R@1':>6}{'R@5':>6}{'mAP':>7}{'best@1':>7}{'share@1':>8}"
          f"{'raw mAP':>8}{'best@1':>7}{'share@1':>8}{'eval':>5}{'loc':>6}{'adapt s':>8}  clusters")
    for name in args.sets:
        res = run_set(name, args.data, args.maps, conf)
        for variant in VARIANTS:
            r = res[variant]
            print(f"{name:<16}{variant:<9}{r['recall_at_1']:>6.2f}{r['recall_at_5']:>6.2f}{r['mAP']:>7.3f}"
                  f"{r['best_at_1']:>7.2f}{r['share_at_1']:>8.3f}{r['raw_mAP']:>8.3f}{r['raw_best_at_1']:>7.2f}"
                  f"{r['raw_share_at_1']:>8.3f}{r['evaluated']:>5}"
                  f"{str(r['localized']) + '/' + str(res['queries']):>6}{r['adapt_seconds']:>8.1f}  "
                  f"{res['clusters'] if variant == 'adapted' else ''}", flush=True)


if __name__ == "__main__":
    main()
