"""On a CUDA GPU (issue 29): the same answers as on the CPU. Skipped, with the reason, where torch
sees no GPU (CI and these development machines); ``benchmarks/gpu.py`` measures the speed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vloc.config import get_preset
from vloc.features import make_extractor
from vloc.io.cameras import read_queries
from vloc.io.images import read_image
from vloc.localization.localizer import Localizer
from vloc.matching import make_matcher

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"no CUDA GPU: torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only build'}) "
           "sees none")


@pytest.fixture(scope="module")
def image(kitti) -> np.ndarray:
    return read_image(kitti.images / read_queries(kitti.root / "queries.txt")[0].name)


@pytest.mark.parametrize("preset", ["aliked", "fast"])
def test_learned_features_match_the_cpus(preset, image):
    conf = get_preset(preset).features
    cpu, gpu = make_extractor(conf, "cpu")(image), make_extractor(conf, "cuda")(image)
    assert abs(len(cpu) - len(gpu)) <= 0.02 * len(cpu)
    # the same keypoints, to float rounding: most of the GPU's lie within 0.1 px of one of the CPU's
    d = np.linalg.norm(gpu.keypoints[:, None] - cpu.keypoints[None], axis=2).min(axis=1)
    assert np.mean(d < 0.1) > 0.95


def test_mutual_nn_matches_the_cpus():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 128)).astype(np.float32)
    b = a + 0.05 * rng.normal(size=a.shape).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    conf = get_preset("sift").matcher
    cpu = make_matcher(conf, "cpu").match_descriptors(a, b)
    gpu = make_matcher(conf, "cuda").match_descriptors(a, b)
    assert len(set(map(tuple, cpu)) ^ set(map(tuple, gpu))) <= 0.01 * len(cpu)


@pytest.mark.parametrize("preset", ["sift", "aliked"])
def test_localization_on_the_gpu_gives_the_cpus_poses(preset, kitti, tmp_path):
    from vloc.mapping.build import build_map

    build_map(kitti.images, tmp_path / "map", get_preset(preset), reference=kitti.ref_model, device="cuda")
    queries = read_queries(kitti.root / "queries.txt")
    on = {d: Localizer.load(tmp_path / "map", device=d) for d in ("cpu", "cuda")}
    assert on["cuda"].device.type == "cuda"
    for q in queries:
        image = read_image(kitti.images / q.name)
        cpu, gpu = (on[d].localize(image, q.camera, name=q.name) for d in ("cpu", "cuda"))
        assert cpu.success == gpu.success
        if cpu.success:
            assert np.linalg.norm(cpu.cam_from_world.inverse().translation
                                  - gpu.cam_from_world.inverse().translation) < 0.02  # metres
