"""PCA-whitening learned from the map's own descriptors, and the FAISS inner-product index.

:func:`build_index` picks the index kind by size (:data:`EXACT_MAX_SIZE`, measured in
``benchmarks/retrieval_scale.py``, docs/benchmarks.md "Retrieval at scale"): exact search up to it;
above it ``pqfs-fp16``: every vector's 4-bit product-quantised code is scanned (FAISS fast-scan,
so no inverted list can miss a neighbour), and the best ``k * k_factor`` candidates are re-ranked
from float16 copies of the vectors held in the index; its quantisers are trained on the map's own
descriptors. :func:`index_params` says what an index is, for the map's manifest. Maps written
with the other kinds (``ivf-sq8`` was the default above 100k images before) still load and search.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import faiss
import numpy as np


@dataclass(frozen=True)
class Whitening:
    """``y = normalize(projection @ (x - mean))``. ``projection``: ``(d, D)``; ``mean``: ``(D,)``."""

    mean: np.ndarray
    projection: np.ndarray

    @staticmethod
    def learn(descriptors: np.ndarray, dim: int, shrinkage: float = 0.1) -> "Whitening":
        """Learn from ``(N, D)`` unit descriptors. The output size is clipped to ``N - 1``;
        eigenvalues are shrunk toward their mean so that a small map does not amplify noise."""
        n, full = descriptors.shape
        mean = descriptors.mean(axis=0)
        centred = (descriptors - mean).astype(np.float64)
        dim = max(1, min(dim, n - 1, full))
        if n < 2:
            return Whitening(mean.astype(np.float32), np.eye(full, dtype=np.float32))
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        eig = s[:dim] ** 2 / max(n - 1, 1)
        eig = eig + shrinkage * eig.mean()
        projection = vt[:dim] / np.sqrt(eig)[:, None]
        return Whitening(mean.astype(np.float32), projection.astype(np.float32))

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:
        y = (np.atleast_2d(descriptors) - self.mean) @ self.projection.T
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class IndexKind(StrEnum):
    FLAT = "flat"  # exact inner product
    IVF_FLAT = "ivf-flat"  # inverted file, full vectors
    IVF_SQ8 = "ivf-sq8"  # inverted file, 8-bit scalar-quantised vectors (4x smaller than flat)
    IVF_PQ = "ivf-pq"  # inverted file, product-quantised vectors (d/4 bytes per vector)
    HNSW_SQ8 = "hnsw-sq8"  # graph over 8-bit scalar-quantised vectors
    # every vector's 4-bit PQ code (d/2 sub-quantisers: d/4 bytes) scanned with SIMD fast-scan, then
    # the top k * k_factor re-ranked from float16 vectors (2d bytes): (2.25 d) bytes per vector
    PQFS_FP16 = "pqfs-fp16"


# Up to this many vectors the exact index is used: at 100k x 256-D it answers in 11 ms on two cores
# (docs/benchmarks.md, "Retrieval at scale"), beside ~150 ms of local features and matching, with
# recall 1; at 1M exact search takes 124 ms and 1 GB.
EXACT_MAX_SIZE = 100_000
TRAIN_SEED = 0
FACTORY = {IndexKind.FLAT: "Flat", IndexKind.IVF_FLAT: "IVF{nlist},Flat", IndexKind.IVF_SQ8: "IVF{nlist},SQ8",
           IndexKind.IVF_PQ: "IVF{nlist},PQ{m}", IndexKind.HNSW_SQ8: "HNSW32,SQ8",
           IndexKind.PQFS_FP16: "PQ{m}x4fs,Refine(SQfp16)"}
IVF_KINDS = (IndexKind.IVF_FLAT, IndexKind.IVF_SQ8, IndexKind.IVF_PQ)
# pqfs-fp16: candidates re-ranked per result. At 10^6 x 256-D (docs/benchmarks.md, "Retrieval at
# scale"), 200 (2,000 candidates for the top 10) reached recall@10 0.995 on the fitted model and
# 0.998 on the clustered set in ~3-4 ms; 50 gave 0.991 / 0.998.
REFINE_K_FACTOR = 200
PQ_TRAIN_MAX = 65_536  # PQ training vectors (k-means with 16 centroids per sub-quantiser)
PQ_TRAIN_MIN = 39 * 16  # FAISS's minimum for 16 centroids


TRAIN_PER_LIST = 64  # k-means training vectors per inverted list (FAISS accepts 39 to 256)


def num_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: about ``sqrt(n)``, a power of two, at least 16."""
    return max(16, 2 ** round(math.log2(math.sqrt(max(n, 1)))))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: a quarter of them, at least 8. Whitened 256-D global descriptors
    fill their space evenly, so a query's neighbours spread over many lists: at 10^6 images
    (1024 lists) 256 probes gave recall@10 0.88 in 6.8 ms, 32 probes 0.75 (docs/benchmarks.md)."""
    return max(8, nlist // 4)


def default_kind(n: int) -> IndexKind:
    """Exact search up to :data:`EXACT_MAX_SIZE` vectors, ``pqfs-fp16`` above."""
    return IndexKind.FLAT if n <= EXACT_MAX_SIZE else IndexKind.PQFS_FP16


def pq_subquantizers(d: int) -> int:
    """Sub-quantisers of a ``pqfs-fp16`` index over ``d``-D vectors: one per 2 dimensions (one per
    dimension when ``d`` is odd)."""
    return d // 2 if d % 2 == 0 else d


def build_index(descriptors: np.ndarray, kind: IndexKind | str | None = None, *, nprobe: int | None = None,
                k_factor: float | None = None, progress: bool = False) -> faiss.Index:
    """An inner-product index over ``(N, d)`` unit descriptors (rows = ids ``0..N-1``).

    Args:
        descriptors: ``(N, d)`` float32, unit L2 norm.
        kind: an :class:`IndexKind` (its value or the enum); None picks by size (:func:`default_kind`).
        nprobe: inverted lists visited per query (IVF kinds); None: :func:`default_nprobe`.
        k_factor: ``pqfs-fp16`` only: a top-``k`` search re-ranks the ``k * k_factor`` best PQ
            candidates; None: :data:`REFINE_K_FACTOR`.
        progress: log FAISS's training progress.

    Raises:
        ValueError: an unknown kind (the message lists the valid ones), too few vectors to train it,
            or ``k_factor < 1``.
    """
    x = np.ascontiguousarray(np.atleast_2d(descriptors), dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"descriptors must be (N, d), got shape {descriptors.shape}")
    n, d = x.shape
    try:
        kind = default_kind(n) if kind is None else IndexKind(kind)
    except ValueError:
        raise ValueError(f"Unknown index kind {kind!r}; valid: {', '.join(k.value for k in IndexKind)}") from None
    factory = FACTORY[kind]
    if kind is IndexKind.PQFS_FP16:
        if n < PQ_TRAIN_MIN:
            raise ValueError(f"a {kind.value} index needs at least {PQ_TRAIN_MIN} vectors to train its 16-centroid "
                             f"sub-quantisers, got {n}; use kind='flat'")
        k_factor = REFINE_K_FACTOR if k_factor is None else k_factor
        if not k_factor >= 1:
            raise ValueError(f"k_factor must be >= 1 (candidates re-ranked per result), got {k_factor}")
        return _build_pqfs_fp16(x, factory.format(m=pq_subquantizers(d)), k_factor)
    if kind in IVF_KINDS:
        nlist = num_lists(n)
        if n < 39 * nlist:
            raise ValueError(f"an {kind.value} index over {n} vectors would have {nlist} lists with fewer than 39 "
                             f"training vectors each; use kind='flat'")
        factory = factory.format(nlist=nlist, m=max(1, d // 4))
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if kind is IndexKind.HNSW_SQ8:
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    if not index.is_trained:
        sample = x
        if kind is not IndexKind.HNSW_SQ8:
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed, ivf.verbose = TRAIN_SEED, progress
            sample = _training_sample(x, TRAIN_PER_LIST * ivf.nlist)
            ivf.nprobe = nprobe or default_nprobe(ivf.nlist)
        index.train(sample)
    index.add(x)
    return index


def _training_sample(x: np.ndarray, cap: int) -> np.ndarray:
    """``x``, or a reproducible sample of ``cap`` of its rows (in order) when it has more: it keeps
    the quantisers' k-means cost bounded (1M vectors: 65k samples)."""
    if len(x) <= cap:
        return x
    return x[np.sort(np.random.default_rng(TRAIN_SEED).choice(len(x), cap, replace=False))]


def _build_pqfs_fp16(x: np.ndarray, factory: str, k_factor: float) -> faiss.IndexRefine:
    """``pqfs-fp16`` over ``(N, d)`` float32 ``x``: PQ trained on a reproducible sample of at most
    :data:`PQ_TRAIN_MAX` rows, float16 re-ranking vectors (need no training)."""
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    sample = _training_sample(x, PQ_TRAIN_MAX)
    # One k-means per sub-quantiser (16 centroids, 2-D): too small to share between threads. With
    # FAISS's OpenMP threads on a busy 2-core machine, training 65k x 256-D took 50 s, on one 1.8 s.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(sample)
    finally:
        faiss.omp_set_num_threads(threads)
    index.add(x)
    index.k_factor = float(k_factor)
    return index


def index_params(index: faiss.Index) -> tuple[str, dict[str, Any]]:
    """``(kind, parameters)`` of an index built by :func:`build_index` (what a map's manifest records)."""
    if isinstance(index, faiss.IndexFlat):
        return IndexKind.FLAT.value, {}
    if isinstance(index, faiss.IndexRefine):
        base, refine = faiss.downcast_index(index.base_index), faiss.downcast_index(index.refine_index)
        if not (isinstance(base, faiss.IndexPQFastScan) and isinstance(refine, faiss.IndexScalarQuantizer)
                and refine.sq.qtype == faiss.ScalarQuantizer.QT_fp16):
            raise ValueError(f"not an index vloc builds: IndexRefine({type(base).__name__}, {type(refine).__name__})")
        return IndexKind.PQFS_FP16.value, dict(M=base.pq.M, nbits=base.pq.nbits, k_factor=index.k_factor)
    if isinstance(index, faiss.IndexHNSW):
        return IndexKind.HNSW_SQ8.value, dict(M=index.hnsw.nb_neighbors(1), efSearch=index.hnsw.efSearch)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    kinds = {faiss.IndexIVFFlat: IndexKind.IVF_FLAT, faiss.IndexIVFScalarQuantizer: IndexKind.IVF_SQ8,
             faiss.IndexIVFPQ: IndexKind.IVF_PQ}
    if type(ivf) not in kinds:
        raise ValueError(f"not an index vloc builds: {type(ivf).__name__}")
    kind = kinds[type(ivf)]
    return kind.value, dict(nlist=ivf.nlist, nprobe=ivf.nprobe)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (clipped to the index size) -> ``(scores, ids)``, each ``(Q, k)``; an approximate
    index may return fewer hits, padded with id -1."""
    k = min(k, index.ntotal)
    if k == 0:
        q = len(np.atleast_2d(queries))
        return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
    return index.search(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k)
