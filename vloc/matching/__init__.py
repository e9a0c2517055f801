"""Local feature matchers behind one registry.

A matcher takes two ``(N, D)`` / ``(M, D)`` float32 unit-norm descriptor arrays and returns
``(K, 2)`` int64 index pairs ``(i0, i1)``.
"""
from __future__ import annotations

from typing import Callable

from vloc.config import MatcherConf
from vloc.matching.nearest_neighbor import MutualNNMatcher
from vloc.registry import create

MATCHERS: dict[str, Callable[[MatcherConf], Callable]] = {
    "mnn": MutualNNMatcher,
}


def make_matcher(conf: MatcherConf):
    return create(MATCHERS, conf, "matcher")


__all__ = ["MATCHERS", "make_matcher"]
