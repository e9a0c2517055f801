"""Local feature matchers behind one registry.

A matcher is called with two :class:`vloc.features.Features` and returns ``(K, 2)`` int64 index
pairs ``(i0, i1)``. ``needs_keypoints`` says whether it looks at keypoints (LightGlue) or only at
descriptors (mutual nearest neighbour, which also offers ``match_descriptors``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

from vloc.config import MatcherConf
from vloc.matching.lightglue import LightGlueMatcher
from vloc.matching.nearest_neighbor import MutualNNMatcher
from vloc.registry import create

MATCHERS: dict[str, Callable[[MatcherConf], Callable]] = {
    "mnn": MutualNNMatcher,
    "lightglue": LightGlueMatcher,  # LighterGlue too, for XFeat: conf.features picks the weights
}


def make_matcher(conf: MatcherConf, device: "torch.device | str" = "cpu"):
    """The matcher ``conf`` names, its network or matrix products on ``device``."""
    return create(MATCHERS, conf, "matcher", device=device)


__all__ = ["MATCHERS", "make_matcher"]
