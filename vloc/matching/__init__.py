"""Local feature matchers behind one registry.

A matcher takes two ``(N, D)`` / ``(M, D)`` float32 unit-norm descriptor arrays and returns
``(K, 2)`` int64 index pairs ``(i0, i1)``.
"""
from __future__ import annotations

from typing import Callable

from vloc.config import MatcherConf
from vloc.matching.nearest_neighbor import MutualNNMatcher

MATCHERS: dict[str, Callable[[MatcherConf], Callable]] = {
    "mnn": MutualNNMatcher,
}


def make_matcher(conf: MatcherConf):
    try:
        factory = MATCHERS[conf.name]
    except KeyError:
        raise ValueError(f"Unknown matcher {conf.name!r}; valid: {', '.join(sorted(MATCHERS))}") from None
    return factory(conf)


__all__ = ["MATCHERS", "make_matcher"]
