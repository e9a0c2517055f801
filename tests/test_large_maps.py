"""Large maps without image processing: the lazy map format, memory that does not grow with the
map, retrieval index kinds, prior search, and the version-1 upgrade path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from vloc.evaluation.synthetic import SyntheticScene, project_query, write_synthetic_map
from vloc.io.arrays import NpyAppender, open_array
from vloc.localization.layer import Layer
from vloc.localization.localizer import Localizer
from vloc.localization.result import Prior
from vloc.mapping.manifest import FORMAT_VERSION, MANIFEST, Manifest, MapFormatError, read_manifest
from vloc.mapping.map_dir import load_map
from vloc.mapping.upgrade import upgrade_map
from vloc.memory import status_mb
from vloc.retrieval.index import EXACT_MAX_SIZE, IndexKind, build_index, default_kind, index_params, search

BIG = SyntheticScene(num_images=5000)
SMALL = SyntheticScene(num_images=200, seed=1)


@pytest.fixture(scope="module")
def big_map(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("large") / "big"
    write_synthetic_map(out, BIG)
    return out


@pytest.fixture(scope="module")
def small_map(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("large") / "small"
    write_synthetic_map(out, SMALL)
    return out


def _centre_error(result, truth) -> float:
    return float(np.linalg.norm(result.cam_from_world.inverse().translation - truth.inverse().translation))


def _rotation_error(result, truth) -> float:
    r = result.cam_from_world.rotation.matrix() @ truth.rotation.matrix().T
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_synthetic_5000_image_map_localizes_a_projected_query(big_map):
    manifest = read_manifest(big_map)
    assert manifest.format_version == FORMAT_VERSION and manifest.counts.images == 5000
    assert manifest.counts.observations > 250_000 and manifest.index.kind == "flat"
    assert manifest.prior_radius == pytest.approx(5 * BIG.spacing, rel=1e-6)
    localizer = Localizer.load(big_map)
    for x in (0.05, 250.05, 499.85):  # the corridor's two ends and its middle
        query = project_query(BIG, x)
        result = localizer.localize_features(query.features, query.global_descriptor, query.camera)
        assert result.success, result.reason
        assert _centre_error(result, query.cam_from_world) < 1e-3
        assert _rotation_error(result, query.cam_from_world) < 1e-3
        centres = localizer.store.centres[[localizer.store.row(n) for n in result.retrieved]]
        assert np.all(np.abs(centres[:, 0] - x) < 1.0)  # retrieval found the neighbouring cameras


def test_opening_a_map_costs_its_index_not_its_features(small_map, big_map):
    Layer.open(small_map)  # allocates what any layer allocates (extractor, matcher, allocator pools)
    before = status_mb("RssAnon")
    layer = Layer.open(big_map)
    grown = status_mb("RssAnon") - before
    features_mb = sum(p.stat().st_size for p in (big_map / "features").iterdir()) / 2**20
    index_mb = layer.retriever.index.ntotal * layer.retriever.index.d * 4 / 2**20
    assert features_mb > 60  # what a map that loads its features would hold
    assert grown < index_mb + 15, f"RssAnon grew {grown:.1f} MB on opening (index {index_mb:.1f} MB)"


def test_memory_is_flat_over_queries(big_map):
    localizer = Localizer.load(big_map)
    queries = [project_query(BIG, x, seed=i) for i, x in enumerate(np.linspace(1, 499, 40))]
    localizer.localize_features(queries[0].features, queries[0].global_descriptor, queries[0].camera)
    after_first = status_mb("RssAnon")
    results = [localizer.localize_features(q.features, q.global_descriptor, q.camera) for q in queries[1:]]
    assert all(r.success for r in results)
    assert status_mb("RssAnon") - after_first < 5.0


def test_prior_retrieval_uses_camera_centres(big_map):
    localizer = Localizer.load(big_map)
    query = project_query(BIG, 100.05)
    near = Prior(query.cam_from_world, radius=0.3)
    result = localizer.localize_features(query.features, query.global_descriptor, query.camera, prior=near)
    assert result.success and result.retrieval == "prior"
    centres = localizer.store.centres[[localizer.store.row(n) for n in result.retrieved]]
    assert np.all(np.abs(centres[:, 0] - 100.05) <= 0.3)
    elsewhere = Prior(project_query(BIG, 300.0).cam_from_world, radius=0.3)  # wrong prior: global rescues it
    result = localizer.localize_features(query.features, query.global_descriptor, query.camera, prior=elsewhere)
    assert result.success and result.retrieval == "global after prior"
    nowhere = Prior(project_query(BIG, 900.0).cam_from_world, radius=1.0)  # no camera there
    result = localizer.localize_features(query.features, query.global_descriptor, query.camera, prior=nowhere)
    assert result.success and result.retrieval == "global after prior"


def test_wrong_descriptor_size_is_refused(small_map):
    localizer = Localizer.load(small_map)
    query = project_query(SMALL, 5.0)
    bad = type(query.features)(query.features.keypoints, query.features.descriptors[:, :64],
                               query.features.scores, query.features.image_size)
    with pytest.raises(ValueError, match=r"the map's are \(N, 128\)"):
        localizer.localize_features(bad, query.global_descriptor, query.camera)


def _write_version_1(v2: Path, out: Path) -> None:
    """The same map in the layout of format version 1 (features.h5, global.npz, global.faiss)."""
    from vloc.io.h5 import write_features

    data = load_map(v2)
    out.mkdir()
    shutil.copytree(v2 / "model", out / "model")
    names = data.global_names
    write_features(out / "features.h5", {n: data.features[n] for n in names},
                   {n: data.point3D_ids(n) for n in names})
    np.savez(out / "global.npz", names=np.array(names), descriptors=data.global_raw,
             mean=data.whitening.mean, projection=data.whitening.projection)
    faiss.write_index(build_index(data.whitening(data.global_raw), "flat"), str(out / "global.faiss"))
    m = data.manifest
    (out / MANIFEST).write_text(json.dumps(dict(
        format_version=1, vloc_version="0.1.0", preset=m.preset, summary=m.summary,
        source=dict(mode=m.source.mode, reference=None, skipped_images={}, unregistered_images=[]),
        counts=dict(images=m.counts.images, points3D=m.counts.points3D, cameras=1, indexed_images=m.counts.images))))


def test_version_1_map_is_refused_then_upgraded(small_map, tmp_path):
    from vloc.cli import main

    old = tmp_path / "old"
    _write_version_1(small_map, old)
    with pytest.raises(MapFormatError, match=f"vloc map upgrade {old}"):
        Localizer.load(old)
    assert main(["map", "upgrade", str(old)]) == 0
    new, ref = load_map(old), load_map(small_map)
    assert new.manifest.format_version == FORMAT_VERSION and new.manifest.counts == ref.manifest.counts
    for part in ("keypoints", "descriptors", "point3D_ids"):
        np.testing.assert_array_equal(getattr(new.store, part), getattr(ref.store, part))
    np.testing.assert_array_equal(new.store.xyz, ref.store.xyz)
    query = project_query(SMALL, 7.05)
    result = Localizer.load(old).localize_features(query.features, query.global_descriptor, query.camera)
    assert result.success and _centre_error(result, query.cam_from_world) < 1e-3
    with pytest.raises(MapFormatError, match="not 1: nothing to upgrade"):
        upgrade_map(old)


def test_incomplete_map_names_the_missing_part(small_map, tmp_path):
    copy = tmp_path / "map"
    shutil.copytree(small_map, copy)
    (copy / "features" / "descriptors.npy").unlink()
    with pytest.raises(MapFormatError, match="missing features/descriptors.npy"):
        Localizer.load(copy)


def test_manifest_is_strict():
    good = dict(preset={"name": "sift"}, source=dict(mode="synthetic"),
                counts=dict(images=1, points3D=0, cameras=1, indexed_images=1),
                index=dict(kind="flat", dim=8), prior_radius=None)
    m = Manifest.from_dict(good)
    assert m.prior_radius == float("inf") and Manifest.from_dict(m.to_dict()) == m
    with pytest.raises(MapFormatError, match=r"fields this vloc does not know: \['colour'\]"):
        Manifest.from_dict(dict(good, source=dict(mode="x", colour=1)))
    with pytest.raises(MapFormatError, match="missing field 'index'"):
        Manifest.from_dict({k: v for k, v in good.items() if k != "index"})


def _clustered_unit_rows(n: int, d: int, clusters: int = 500, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (places seen by many images, as in a map)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((clusters, d))[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_index_kind_follows_size_and_is_recorded(tmp_path):
    assert default_kind(EXACT_MAX_SIZE) is IndexKind.FLAT and default_kind(EXACT_MAX_SIZE + 1) is IndexKind.PQFS_FP16
    x = _clustered_unit_rows(20_000, 32)
    exact = search(build_index(x, "flat"), x[:200], 10)[1]
    for kind in ("ivf-flat", "ivf-sq8", "hnsw-sq8"):
        index = build_index(x, kind)
        faiss.write_index(index, str(tmp_path / "i.faiss"))
        back = faiss.read_index(str(tmp_path / "i.faiss"))
        assert index_params(back) == index_params(index) and index_params(back)[0] == kind
        ids = search(back, x[:200], 10)[1]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
        assert recall > 0.9, (kind, recall)
        assert np.all(ids[:, 0] == np.arange(200))  # each vector finds itself first
    with pytest.raises(ValueError, match="valid: flat, ivf-flat"):
        build_index(x, "lsh")
    with pytest.raises(ValueError, match="use kind='flat'"):
        build_index(x[:1000], "ivf-sq8")


def test_npy_appender_round_trip(tmp_path):
    with NpyAppender(tmp_path / "a.npy", np.float16, (3,)) as a:
        a.append(np.ones((2, 3)))
        a.append(np.zeros((0, 3)))
        a.append(np.full((1, 3), 2.0))
    np.testing.assert_array_equal(open_array(tmp_path / "a.npy"), [[1, 1, 1], [1, 1, 1], [2, 2, 2]])
    with NpyAppender(tmp_path / "empty.npy", np.int64):
        pass
    assert open_array(tmp_path / "empty.npy").shape == (0,)
    with pytest.raises(ValueError, match=r"rows of shape \(2,\), expected \(3,\)"):
        with NpyAppender(tmp_path / "b.npy", np.float32, (3,)) as b:
            b.append(np.zeros((1, 2)))


def test_info_reads_the_manifest_without_torch(small_map):
    import subprocess
    import sys

    code = ("import sys; from vloc.cli import main; code = main(['info', sys.argv[1]]); "
            "print('torch' in sys.modules, 'faiss' in sys.modules); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code, str(small_map)], capture_output=True, text=True, check=True)
    assert '"format_version": 2' in out.stdout and '"kind": "flat"' in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "False False"
