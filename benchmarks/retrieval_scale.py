"""Global retrieval at 10k, 100k and 1M map images: build time, memory, query time and recall@10
of each FAISS index kind (and of candidate designs not in vloc) against exact search.

    python benchmarks/retrieval_scale.py [--data-model fitted|clustered] [--sizes 10000 100000 1000000]
                                         [--kinds flat ivf-sq8 pqfs-fp16 pqfs+mmap ...] [--nprobe 16 32 128]
                                         [--k-factor 50 200] [--data ../shared/data] [--work DIR]

Descriptors are 256-D. ``--data-model fitted`` (the default) models the map's descriptors (the
default global model, EfficientNet-Lite0 GeM, 1280-D, PCA-whitened to 256-D as a map does):

- real: the 1000 frames of ``7scenes_seq1000``; the 950 non-query frames go into every database,
  the 50 query frames (10, 30, ..., 990) are queries;
- synthetic, for the rest of each database: a model fitted to the real whitened descriptors.
  A synthetic *sequence* of 50 frames starts at a draw from N(mu, S) (mean and covariance of the
  real descriptors) and moves by steps drawn from N(0, S_step), S_step the covariance of the
  differences between consecutive real frames; every frame is L2-normalised. This keeps what
  matters to an approximate index: the global spread of real descriptors and the tight runs of
  near-duplicates that sequences of map images form. 150 synthetic queries are frames generated
  half a step off sequences of the database.

``--data-model clustered`` is issue 24's clustered set
(:func:`vloc.evaluation.descriptor_sets.clustered_set`: 4,096 centres drawn from N(0, I) in 256-D;
database = a random centre + 0.6 N(0, I); queries = 200 database vectors + 0.05 N(0, I); all
L2-normalised; numpy seed 0).

recall@10 = |approximate top-10 & exact top-10| / 10, averaged over the 200 queries (fitted: 50
real, 150 synthetic; "(real)" is the 50 real ones). Query time: one query per search call (as the
Localizer searches), median over the queries after one warm-up, FAISS's OpenMP threads at their
default. Memory: the index's serialised size (what it holds in RAM); "mmap MB": a float32 copy of
the database that a design re-ranks from through a memory-mapped file (a map stores exactly this
as ``global/whitened.npy``): page cache, not the process's own memory, but it must stay cached
for these query times. Every ``vloc`` kind is built with the parameters ``build_index`` uses for
a map; ``--nprobe``, ``--ef-search`` and ``--k-factor`` add rows for other probe counts (IVF),
search depths (HNSW) and re-ranking depths (``pqfs-fp16`` and the ``+mmap`` designs).

Designs measured beside vloc's kinds (``--kinds``; :data:`DESIGNS`):

- ``ivf-sq8+mmap``: ``ivf-sq8`` as ``build_index`` makes it, its top ``k * k_factor`` re-ranked
  exactly from the memory-mapped float32 rows;
- ``pqfs+mmap``: ``pqfs-fp16``'s 4-bit fast-scan PQ codes alone, re-ranked exactly from the
  memory-mapped rows instead of in-RAM float16 copies;
- ``opq-pqfs-fp16``: ``pqfs-fp16`` with an OPQ rotation and 64 sub-quantisers (4 dimensions each);
- ``hnsw-pca64-fp16``: HNSW (M 32, efSearch 128) over the PCA-reduced 64-D vectors, top
  ``k * k_factor`` re-ranked from float16 copies of the full vectors.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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


@dataclass
class Searcher:
    """One design under test: ``search((1, d) query, k) -> (1, k)`` ids; ``settings`` are the
    values of ``setting`` to measure in turn (first: the design's default); memory in MB."""

    search: Callable[[np.ndarray, int], np.ndarray]
    params: Callable[[], dict[str, Any]]
    memory_mb: float
    mmap_mb: float = 0.0
    setting: Callable[[Any], None] | None = None
    settings: list[Any] = field(default_factory=lambda: [None])


class MmapRerank:
    """Top-``k * k_factor`` candidates of ``base``, re-ranked exactly from ``rows``, an ``(N, d)``
    float32 memory-mapped array (rows gathered in id order, for locality)."""

    def __init__(self, base: faiss.Index, rows: np.ndarray, k_factor: float):
        self.base, self.rows, self.k_factor = base, rows, k_factor

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        cand = self.base.search(query, min(self.base.ntotal, int(k * self.k_factor)))[1][0]
        cand = np.sort(cand[cand >= 0])
        scores = np.asarray(self.rows[cand]) @ query[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return cand[top][None]


def _train(index: faiss.Index, x: np.ndarray, cap: int = 65_536, one_thread: bool = True) -> None:
    """Train ``index`` on a reproducible sample of ``x``; ``one_thread``: FAISS on one thread (as
    build_index trains pqfs-fp16: many tiny k-means are slow on busy OpenMP threads)."""
    sample = x if len(x) <= cap else x[np.sort(np.random.default_rng(0).choice(len(x), cap, replace=False))]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 if one_thread else threads)
    try:
        index.train(sample)
    finally:
        faiss.omp_set_num_threads(threads)


def _memory_mb(index: faiss.Index) -> float:
    return len(faiss.serialize_index(index)) / 2**20


def vloc_kind(kind: str, database: np.ndarray, args: argparse.Namespace, work: Path) -> Searcher:
    """An index exactly as ``build_index`` builds it for a map, with rows for other settings."""
    from vloc.retrieval.index import IndexKind, build_index, index_params, search

    kind = IndexKind(kind)
    index = build_index(database, kind)
    searcher = Searcher(lambda q, k: search(index, q, k)[1], lambda: index_params(index)[1], _memory_mb(index))
    if kind.value.startswith("ivf"):
        ivf = faiss.extract_index_ivf(index)
        searcher.setting = lambda v: setattr(ivf, "nprobe", v)
        searcher.settings = [ivf.nprobe] + [p for p in args.nprobe if p != ivf.nprobe]
    elif kind is IndexKind.HNSW_SQ8:
        searcher.setting = lambda v: setattr(index.hnsw, "efSearch", v)
        searcher.settings = [index.hnsw.efSearch] + [e for e in args.ef_search if e != index.hnsw.efSearch]
    elif kind is IndexKind.PQFS_FP16:
        searcher.setting = lambda v: setattr(index, "k_factor", float(v))
        searcher.settings = [index.k_factor] + [f for f in args.k_factor if f != index.k_factor]
    return searcher


def _mmap_rows(database: np.ndarray, work: Path) -> np.ndarray:
    """``database`` saved as ``.npy`` under ``work`` and opened memory-mapped (as a map's
    ``global/whitened.npy``), read once so that it is in the page cache."""
    path = work / f"rows-{len(database)}.npy"
    np.save(path, database)
    rows = np.load(path, mmap_mode="r")
    for s in range(0, len(rows), 100_000):
        np.asarray(rows[s:s + 100_000]).sum()
    return rows


def _mmap_design(base: faiss.Index, extra: Callable[[], dict[str, Any]], database: np.ndarray, args, work) -> Searcher:
    from vloc.retrieval.index import REFINE_K_FACTOR

    rerank = MmapRerank(base, _mmap_rows(database, work), REFINE_K_FACTOR)
    return Searcher(rerank.search, lambda: {**extra(), "k_factor": rerank.k_factor}, _memory_mb(base),
                    mmap_mb=database.nbytes / 2**20, setting=lambda v: setattr(rerank, "k_factor", v),
                    settings=[REFINE_K_FACTOR] + [f for f in args.k_factor if f != REFINE_K_FACTOR])


def ivf_sq8_mmap(database: np.ndarray, args: argparse.Namespace, work: Path) -> Searcher:
    from vloc.retrieval.index import build_index

    index = build_index(database, "ivf-sq8")
    ivf = faiss.extract_index_ivf(index)
    return _mmap_design(index, lambda: dict(nlist=ivf.nlist, nprobe=ivf.nprobe), database, args, work)


def pqfs_mmap(database: np.ndarray, args: argparse.Namespace, work: Path) -> Searcher:
    from vloc.retrieval.index import pq_subquantizers

    m = pq_subquantizers(database.shape[1])
    index = faiss.index_factory(database.shape[1], f"PQ{m}x4fs", faiss.METRIC_INNER_PRODUCT)
    _train(index, database)
    index.add(database)
    return _mmap_design(index, lambda: dict(M=m, nbits=4), database, args, work)


def _refined(factory: str, params: dict[str, Any]) -> Callable[[np.ndarray, argparse.Namespace, Path], Searcher]:
    def build(database: np.ndarray, args: argparse.Namespace, work: Path) -> Searcher:
        from vloc.retrieval.index import REFINE_K_FACTOR, search

        index = faiss.index_factory(database.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        _train(index, database, one_thread="OPQ" not in factory and "HNSW" not in factory)
        index.add(database)
        index.k_factor = float(REFINE_K_FACTOR)
        hnsw = [faiss.downcast_index(faiss.downcast_index(index.base_index).index)] if "HNSW" in factory else []
        for h in hnsw:
            h.hnsw.efSearch = 128
        return Searcher(lambda q, k: search(index, q, k)[1], lambda: {**params, "k_factor": index.k_factor},
                        _memory_mb(index), setting=lambda v: setattr(index, "k_factor", float(v)),
                        settings=[index.k_factor] + [f for f in args.k_factor if f != index.k_factor])
    return build


DESIGNS: dict[str, Callable[[np.ndarray, argparse.Namespace, Path], Searcher]] = {
    "ivf-sq8+mmap": ivf_sq8_mmap,
    "pqfs+mmap": pqfs_mmap,
    "opq-pqfs-fp16": _refined("OPQ64,PQ64x4fs,Refine(SQfp16)", dict(OPQ=64, M=64, nbits=4)),
    "hnsw-pca64-fp16": _refined("PCA64,HNSW32,Refine(SQfp16)", dict(PCA=64, M=32, efSearch=128)),
}


def time_queries(search: Callable[[np.ndarray, int], np.ndarray], queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Median seconds of one-query searches (after one warm-up) and the ``(Q, K)`` ids found."""
    search(queries[:1], K)
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        ids.append(search(q[None], K)[0])
        times.append(time.perf_counter() - t)
    return float(np.median(times)), np.array(ids)


def fitted_data(args: argparse.Namespace, work: Path):
    """``size -> (database, queries)`` for the fitted model (50 real queries first)."""
    from vloc.retrieval.index import Whitening

    raw = real_descriptors(args.data / "7scenes_seq1000", work / "7scenes_seq1000-effnet_lite0_gem.npy")
    real = Whitening.learn(raw, 256)(raw)
    is_query = np.array([i in QUERY_FRAMES for i in range(len(real))])
    model = SequenceModel(real)

    def make(size: int) -> tuple[np.ndarray, np.ndarray]:
        synthetic, walk = model.sequences(size - int((~is_query).sum()))
        database = np.concatenate([real[~is_query], synthetic])
        del synthetic
        return database, np.concatenate([real[is_query], model.queries_near(walk, 150)])
    return make


def main() -> None:
    from vloc.evaluation.descriptor_sets import clustered_set, recall_at_k
    from vloc.retrieval.index import IndexKind

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-model", choices=["fitted", "clustered"], default="fitted")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    kinds = [k.value for k in IndexKind] + list(DESIGNS)
    parser.add_argument("--kinds", nargs="+",
                        default=["flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw-sq8", "pqfs-fp16"],
                        help=f"any of: {', '.join(kinds)}")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[16, 32, 128], help="extra nprobe rows (IVF)")
    parser.add_argument("--ef-search", type=int, nargs="*", default=[64, 256, 512], help="extra efSearch rows (HNSW)")
    parser.add_argument("--k-factor", type=float, nargs="*", default=[50],
                        help="extra re-ranking depth rows (pqfs-fp16 and the +mmap / -fp16 designs)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="KIND@SIZE",
                        help="combinations not to build, e.g. hnsw-sq8@1000000")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, help="cache the real descriptors here (and the +mmap designs' rows)")
    args = parser.parse_args()
    unknown = [k for k in args.kinds if k not in kinds]
    if unknown:
        parser.error(f"unknown kinds {unknown}; valid: {', '.join(kinds)}")
    logging.basicConfig(level=logging.WARNING)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        make = fitted_data(args, work) if args.data_model == "fitted" else (lambda size: clustered_set(size))
        for size in args.sizes:
            database, queries = make(size)
            truth = faiss.knn(queries, database, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
            for kind in args.kinds:
                if f"{kind}@{size}" in args.skip:
                    continue
                t = time.perf_counter()
                searcher = (DESIGNS[kind] if kind in DESIGNS else lambda x, a, w: vloc_kind(kind, x, a, w))(
                    database, args, work)
                build_s = time.perf_counter() - t
                for i, value in enumerate(searcher.settings):
                    if value is not None and searcher.setting is not None:
                        searcher.setting(value)
                    load = os.getloadavg()[0]
                    query_s, found = time_queries(searcher.search, queries)
                    row = dict(size=size, kind=kind, params=searcher.params(),
                               build_s=build_s if i == 0 else float("nan"), memory_mb=searcher.memory_mb,
                               mmap_mb=searcher.mmap_mb, query_ms=1000 * query_s,
                               recall=recall_at_k(found, truth, K), default=i == 0, load=load,
                               recall_real=recall_at_k(found[:50], truth[:50], K) if args.data_model == "fitted"
                               else float("nan"))
                    rows.append(row)
                    print(row, flush=True)
                del searcher
            for f in work.glob("rows-*.npy"):
                f.unlink()
            del database
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n{os.cpu_count()} CPUs, FAISS {faiss.__version__}, OpenMP threads {faiss.omp_get_max_threads()}, "
          f"data model {args.data_model}, peak RSS {peak_gb:.1f} GB; 256-D; recall@{K} vs exact over 200 queries"
          + (" (50 real)" if args.data_model == "fitted" else ""))
    head = (f"{'images':>9}  {'index':<16}{'parameters':<38}{'build s':>8}{'memory MB':>10}{'mmap MB':>8}"
            f"{'query ms':>9}{'recall@10':>10}{'(real)':>7}{'load':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        params += "" if r["default"] else " *"
        real = f"{r['recall_real']:>7.3f}" if r["recall_real"] == r["recall_real"] else f"{'-':>7}"
        mmap = f"{r['mmap_mb']:>8.0f}" if r["mmap_mb"] else f"{'-':>8}"
        build = f"{r['build_s']:>8.1f}" if r["default"] else f"{'':>8}"
        print(f"{r['size']:>9}  {r['kind']:<16}{params:<38}{build}{r['memory_mb']:>10.1f}{mmap}"
              f"{r['query_ms']:>9.2f}{r['recall']:>10.3f}{real}{r['load']:>6.2f}")
    print("* a setting other than the design's default (nprobe, efSearch or k_factor); load: 1-min load average "
          "before the row's queries")


if __name__ == "__main__":
    main()
