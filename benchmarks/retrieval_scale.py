"""Global retrieval at 10k, 100k and 1M map images: build time, memory, query time and recall@10
of each FAISS index kind against exact search.

    python benchmarks/retrieval_scale.py [--sizes 10000 100000 1000000] [--kinds flat ivf-sq8 ...]
                                         [--nprobe 16 32 64 128] [--data ../shared/data] [--work DIR]

Descriptors are in the map's dimension (the default global model, EfficientNet-Lite0 GeM, 1280-D,
PCA-whitened to 256-D as a map does):

- real: the 1000 frames of ``7scenes_seq1000``; the 950 non-query frames go into every database,
  the 50 query frames (10, 30, ..., 990) are queries;
- synthetic, for the rest of each database: a model fitted to the real whitened descriptors.
  A synthetic *sequence* of 50 frames starts at a draw from N(mu, S) (mean and covariance of the
  real descriptors) and moves by steps drawn from N(0, S_step), S_step the covariance of the
  differences between consecutive real frames; every frame is L2-normalised. This keeps what
  matters to an approximate index: the global spread of real descriptors and the tight runs of
  near-duplicates that sequences of map images form. 150 synthetic queries are frames generated
  half a step off sequences of the database.

recall@10 = |approximate top-10 & exact top-10| / 10, averaged over the 200 queries (50 real,
150 synthetic). Query time: one query per ``search`` call (as the Localizer searches), median
over the queries after one warm-up, FAISS's OpenMP threads at their default. Memory: the index's
serialised size (what it holds in RAM). The index is built with the parameters ``build_index``
uses for a map; ``--nprobe`` and ``--ef-search`` add rows for other probe counts of the IVF kinds
and other search depths of HNSW.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

QUERY_FRAMES = set(range(10, 1000, 20))
SEQUENCE = 50
K = 10


def real_descriptors(seq: Path, cache: Path) -> np.ndarray:
    """``(1000, 1280)`` raw global descriptors of the sequence's frames (cached in ``cache``)."""
    if cache.is_file():
        return np.load(cache)
    from tqdm import tqdm

    from vloc.config import get_preset
    from vloc.io.images import read_image
    from vloc.retrieval import make_global_model

    model = make_global_model(get_preset("sift").global_desc)
    raw = np.stack([model(read_image(seq / f"frame-{i:06d}.color.jpg")) for i in tqdm(range(1000), desc="describe")])
    np.save(cache, raw)
    return raw


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class SequenceModel:
    """The synthetic model of the module docstring, fitted to ``(N, d)`` whitened real descriptors
    in sequence order."""

    def __init__(self, real: np.ndarray, seed: int = 0):
        self.mean = real.mean(axis=0)
        self.chol = np.linalg.cholesky(np.cov(real.T) + 1e-6 * np.eye(real.shape[1]))
        self.step_chol = np.linalg.cholesky(np.cov(np.diff(real, axis=0).T) + 1e-8 * np.eye(real.shape[1]))
        self.rng = np.random.default_rng(seed)

    def _gauss(self, chol: np.ndarray, n: int) -> np.ndarray:
        return self.rng.standard_normal((n, chol.shape[0])) @ chol.T

    def sequences(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` frames (whole sequences of ``SEQUENCE``) -> unit frames ``(n, d)`` and the
        unnormalised walk (for queries between frames)."""
        m = -(-n // SEQUENCE)
        start = self.mean + self._gauss(self.chol, m)
        steps = self._gauss(self.step_chol, m * SEQUENCE).reshape(m, SEQUENCE, -1)
        steps[:, 0] = 0
        walk = (start[:, None] + np.cumsum(steps, axis=1)).reshape(m * SEQUENCE, -1)[:n]
        return _unit(walk), walk

    def queries_near(self, walk: np.ndarray, n: int) -> np.ndarray:
        """``n`` unit descriptors half a step off random frames of ``walk``."""
        rows = self.rng.choice(len(walk), n, replace=False)
        return _unit(walk[rows] + 0.5 * self._gauss(self.step_chol, n))


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / K for a, b in zip(found, exact, strict=True)]))


def time_queries(index: faiss.Index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    from vloc.retrieval.index import search

    search(index, queries[:1], K)
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        ids.append(search(index, q[None], K)[1][0])
        times.append(time.perf_counter() - t)
    return float(np.median(times)), np.array(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw-sq8"])
    parser.add_argument("--nprobe", type=int, nargs="*", default=[16, 32, 128], help="extra nprobe rows (IVF)")
    parser.add_argument("--ef-search", type=int, nargs="*", default=[64, 256, 512], help="extra efSearch rows (HNSW)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="KIND@SIZE",
                        help="combinations not to build, e.g. hnsw-sq8@1000000")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, help="cache the real descriptors here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from vloc.retrieval.index import IndexKind, Whitening, build_index, index_params

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        raw = real_descriptors(args.data / "7scenes_seq1000", work / "7scenes_seq1000-effnet_lite0_gem.npy")
    whitening = Whitening.learn(raw, 256)
    real = whitening(raw)
    is_query = np.array([i in QUERY_FRAMES for i in range(len(real))])
    model = SequenceModel(real)
    rows = []
    for size in args.sizes:
        synthetic, walk = model.sequences(size - int((~is_query).sum()))
        database = np.concatenate([real[~is_query], synthetic])
        queries = np.concatenate([real[is_query], model.queries_near(walk, 150)])
        exact = faiss.IndexFlatIP(database.shape[1])
        exact.add(database)
        truth = exact.search(queries, K)[1]
        for kind in args.kinds:
            if f"{kind}@{size}" in args.skip:
                continue
            t = time.perf_counter()
            index = build_index(database, kind)
            build_s = time.perf_counter() - t
            memory_mb = len(faiss.serialize_index(index)) / 2**20
            probes = [None]
            if IndexKind(kind).value.startswith("ivf"):
                probes += [p for p in args.nprobe if p != faiss.extract_index_ivf(index).nprobe]
            elif IndexKind(kind) is IndexKind.HNSW_SQ8:
                probes += [p for p in args.ef_search if p != index.hnsw.efSearch]
            for nprobe in probes:
                if nprobe is not None and IndexKind(kind) is IndexKind.HNSW_SQ8:
                    index.hnsw.efSearch = nprobe
                elif nprobe is not None:
                    faiss.extract_index_ivf(index).nprobe = nprobe
                query_s, found = time_queries(index, queries)
                _, params = index_params(index)
                row = dict(size=size, kind=kind, params=params, build_s=build_s if nprobe is None else float("nan"),
                           memory_mb=memory_mb, query_ms=1000 * query_s, recall=recall_at_k(found, truth),
                           recall_real=recall_at_k(found[:50], truth[:50]), default=nprobe is None)
                rows.append(row)
                print(row, flush=True)
            del index
    print(f"\n{os.cpu_count()} CPUs, FAISS {faiss.__version__}, OpenMP threads {faiss.omp_get_max_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}; 256-D; recall@{K} vs exact over 200 queries (50 real)")
    head = (f"{'images':>9}  {'index':<10}{'parameters':<28}{'build s':>9}{'memory MB':>11}{'query ms':>10}"
            f"{'recall@10':>11}{'(real)':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) + ("" if r["default"] else " *")
        print(f"{r['size']:>9}  {r['kind']:<10}{params:<28}{r['build_s']:>9.1f}{r['memory_mb']:>11.1f}"
              f"{r['query_ms']:>10.2f}{r['recall']:>11.3f}{r['recall_real']:>8.3f}")
    print("* a probe count (IVF) or search depth (HNSW) other than build_index's default")


if __name__ == "__main__":
    main()
