"""Synthetic global-descriptor sets for retrieval tests and ``benchmarks/retrieval_scale.py``.

Two models of what a large map's whitened global descriptors look like to an index:

- :func:`clustered_set` (issue 24): places seen by many images. ``centres`` centres drawn from
  ``N(0, I)`` in ``d``-D; each database vector is a random centre + ``spread * N(0, I)``;
  queries are database vectors + ``query_noise * N(0, I)``; all L2-normalised.
- :func:`sequence_set`: image sequences in a space whitening fills evenly (the hard case of the
  fitted model in the benchmark, whose real queries' 10th neighbour is barely above the random
  tail). Each sequence is a stationary AR(1) walk ``x_t = c x_{t-1} + sqrt(1 - c^2) N(0, I)``
  (consecutive frames' cosine ~``c``, lag ``j``: ~``c^j``); queries are frames held out of the
  database, as a map's query images lie between its images.

:func:`recall_at_k` scores an approximate search against exact search.
"""
from __future__ import annotations

import numpy as np

CHUNK = 100_000  # database rows generated at a time (bounds float64 temporaries)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_set(n: int, d: int = 256, *, centres: int = 4096, spread: float = 0.6, queries: int = 200,
                  query_noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Issue 24's clustered set -> ``(database (n, d), queries (queries, d))``, float32 unit rows.

    Draws, in this order from ``numpy.random.default_rng(seed)``: the ``(centres, d)`` centres, the
    ``n`` centre indices, the database noise (``CHUNK`` rows at a time), the ``queries`` database
    rows the queries copy (without replacement) and their noise.
    """
    if n < queries:
        raise ValueError(f"need at least as many database vectors as queries, got n={n} < queries={queries}")
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    assign = rng.integers(0, centres, n)
    database = np.empty((n, d), np.float32)
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        database[s:e] = _unit(c[assign[s:e]] + spread * rng.standard_normal((e - s, d)))
    rows = rng.choice(n, queries, replace=False)
    return database, _unit(database[rows] + query_noise * rng.standard_normal((queries, d)))


def sequence_set(n: int, d: int = 256, *, length: int = 50, correlation: float = 0.8, queries: int = 200,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of ``length`` frames (see the module docstring) -> ``(database (n, d), queries
    (queries, d))``, float32 unit rows; ``queries`` random frames are held out of the database."""
    if not 0 <= correlation < 1:
        raise ValueError(f"correlation must be in [0, 1), got {correlation}")
    rng = np.random.default_rng(seed)
    total = n + queries
    frames = np.empty((total, d), np.float32)
    sequences = -(-total // length)
    done = 0
    for s in range(0, sequences, max(1, CHUNK // length)):
        m = min(sequences - s, max(1, CHUNK // length))
        walk = np.empty((m, length, d))
        walk[:, 0] = rng.standard_normal((m, d))
        for t in range(1, length):
            walk[:, t] = correlation * walk[:, t - 1] + np.sqrt(1 - correlation**2) * rng.standard_normal((m, d))
        rows = _unit(walk.reshape(-1, d))[: total - done]
        frames[done:done + len(rows)] = rows
        done += len(rows)
    held = np.zeros(total, bool)
    held[rng.choice(total, queries, replace=False)] = True
    return frames[~held], frames[held]


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean over queries of ``|found top-k & exact top-k| / k``; ``found``, ``exact``: ``(Q, >= k)``
    row ids (``-1`` in ``found``: no hit)."""
    if len(found) != len(exact):
        raise ValueError(f"{len(found)} found rows for {len(exact)} exact rows")
    return float(np.mean([len(set(a[:k][a[:k] >= 0].tolist()) & set(b[:k].tolist())) / k
                          for a, b in zip(found, exact, strict=True)]))
