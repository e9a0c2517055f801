"""SfM options chosen for large image sets (issue 25): pairs per image and the global BA's stop."""
from __future__ import annotations

import pycolmap
import pytest

from vloc.cli import build_parser, map_build_preset
from vloc.config import MapperConf, PairsConf, get_preset
from vloc.mapping.mapper import incremental_options


def test_large_sfm_sets_keep_fewer_retrieval_pairs():
    conf = PairsConf()
    assert conf.for_sfm(500) == conf
    assert conf.for_sfm(501).num_retrieved == 10
    assert conf.for_sfm(501).num_sequential == conf.num_sequential
    assert PairsConf(num_retrieved=5).for_sfm(5000).num_retrieved == 5  # never more than the preset's
    assert PairsConf(sfm_large_set=0).for_sfm(10**6).num_retrieved == 20


@pytest.mark.parametrize("argv, retrieved, large_set", [
    ([], 20, 500),
    (["--retrieval-k", "30"], 30, 0),  # a k the user names holds at every size
    (["--sequential", "3"], 20, 500),
])
def test_map_build_retrieval_k(tmp_path, argv, retrieved, large_set):
    args = build_parser().parse_args(["map", "build", "--images", str(tmp_path), "--out", str(tmp_path / "map"), *argv])
    pairs = map_build_preset(args).pairs
    assert (pairs.num_retrieved, pairs.sfm_large_set) == (retrieved, large_set)
    assert pairs.num_sequential == (3 if "--sequential" in argv else get_preset(args.preset).pairs.num_sequential)


def test_global_ba_stops_on_small_relative_decrease():
    options = incremental_options(MapperConf(), (True, False, True))
    assert options.ba_global_function_tolerance == pytest.approx(1e-4)
    ba = options.get_global_bundle_adjustment()
    assert ba.ceres.solver_options.function_tolerance == pytest.approx(1e-4)
    assert pycolmap.IncrementalPipelineOptions().ba_global_function_tolerance == 0  # COLMAP's default
