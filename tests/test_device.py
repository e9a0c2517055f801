"""The device choice (issue 29), on the CPU: names are checked, ``cuda`` without a GPU is refused,
and every model and matcher of every registry follows the device it is given. The check runs
them on torch's ``meta`` device: a component that left a parameter, a buffer or an input on the
CPU would show it (a parameter elsewhere than ``meta``, or a call that computes real numbers)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vloc.config import FeatureConf, GlobalConf, MatcherConf, get_preset
from vloc.device import check_device_name, device_report, resolve_device
from vloc.features import EXTRACTORS, Features, make_extractor
from vloc.localization.localizer import Localizer
from vloc.localization.models import ModelCache
from vloc.matching import MATCHERS, make_matcher
from vloc.matching.lightglue import WEIGHTS_FOR
from vloc.models.delg import build_delg, save_delg
from vloc.retrieval import GLOBAL_MODELS, make_global_model

META = torch.device("meta")
NO_GPU = not torch.cuda.is_available()


def test_device_names_are_checked_and_resolved():
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert check_device_name(name) == name
    for bad in ("tpu", "gpu", "cuda:", "CPU", "cuda:x", ""):
        with pytest.raises(ValueError, match=f"device {bad!r} is not one of auto, cpu, cuda, cuda:N"):
            resolve_device(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu" if NO_GPU else "cuda:0")
    assert resolve_device(None) == resolve_device("auto")
    assert device_report()["auto"] == str(resolve_device("auto"))


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: cuda resolves")
def test_cuda_without_a_gpu_is_refused_not_replaced_by_the_cpu():
    with pytest.raises(ValueError, match=r"device 'cuda:0': torch .* sees no GPU; use --device cpu"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="sees no GPU"):
        Localizer.load("unused", device="cuda")


@pytest.fixture(scope="module")
def delg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("delg") / "small.pt"
    save_delg(build_delg("small"), path)
    return str(path)


def _modules(component) -> list[torch.nn.Module]:
    """The torch modules a component holds (its ``model``, ``model.net``, ...)."""
    return [v for v in vars(component).values() if isinstance(v, torch.nn.Module)]


def _assert_all_on(component, device: torch.device) -> None:
    modules = _modules(component)
    assert modules, f"{type(component).__name__} holds no torch module"
    for module in modules:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            assert tensor.device == device, f"{type(component).__name__}.{name} on {tensor.device}, not {device}"


def _fails_on_meta(call, *args) -> None:
    """``call`` cannot give real numbers on the meta device; had an input stayed on the CPU, torch
    would have said so (tensors on different devices) instead."""
    with pytest.raises((NotImplementedError, RuntimeError, ValueError)) as failure:
        call(*args)
    message = str(failure.value)
    assert "same device" not in message and "device type" not in message, message


def _feature_confs(delg_file: str) -> list[FeatureConf]:
    return [FeatureConf(name=n, **({"variant": "small", "weights": delg_file} if n == "delg" else {}))
            for n in EXTRACTORS]


@pytest.mark.parametrize("index", range(len(EXTRACTORS)))
def test_every_extractor_follows_its_device(index, delg_file):
    conf = _feature_confs(delg_file)[index]
    extractor = make_extractor(conf, META)
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8)
    if getattr(extractor, "cpu_only", False):  # OpenCV / pycolmap SIFT: the device is accepted, the CPU used
        assert not _modules(extractor) and len(extractor(image)) > 0
        return
    _assert_all_on(extractor, META)
    _fails_on_meta(extractor, image)


@pytest.mark.parametrize("features", sorted(WEIGHTS_FOR))
def test_lightglue_follows_its_device(features):
    matcher = make_matcher(MatcherConf(name="lightglue", features=features), META)
    _assert_all_on(matcher, META)
    dim = 64 if features == "xfeat" else 128
    rng = np.random.default_rng(0)
    feats = Features(rng.uniform(0, 100, (50, 2)).astype(np.float32), rng.normal(size=(50, dim)).astype(np.float32),
                     np.ones(50, np.float32), (128, 96))
    _fails_on_meta(matcher, feats, feats)


def test_mutual_nn_follows_its_device():
    desc = np.eye(4, dtype=np.float32)
    assert len(make_matcher(MatcherConf(name="mnn"), "cpu").match_descriptors(desc, desc)) == 4
    _fails_on_meta(make_matcher(MatcherConf(name="mnn"), META).match_descriptors, desc, desc)
    assert set(MATCHERS) == {"mnn", "lightglue"}  # a new matcher needs its own test here


@pytest.mark.parametrize("name", sorted(GLOBAL_MODELS))
def test_every_global_model_follows_its_device(name, delg_file):
    conf = GlobalConf(name=name, **({"variant": "small", "weights": delg_file} if name == "delg" else {}))
    model = make_global_model(conf, META)
    _assert_all_on(model, META)
    _fails_on_meta(model, np.zeros((64, 64, 3), np.uint8))


def test_a_localizer_puts_every_model_on_its_cache_device(kitti_map):
    localizer = Localizer.load(kitti_map, "sift", ModelCache(META))
    assert localizer.device == META and len(localizer.models) >= 3
    for component in localizer.models:  # SIFT holds no torch module; the mutual NN matcher no parameter
        if _modules(component):
            _assert_all_on(component, META)
        elif type(component).__name__ == "MutualNNMatcher":
            assert component.device == META
    with pytest.raises(ValueError, match="differs from the shared model cache"):
        Localizer.load(kitti_map, "sift", ModelCache(META), device="cpu")


@pytest.mark.parametrize("preset", ["aliked", "accurate", "fast"])
def test_learned_presets_build_their_models_on_the_cache_device(preset):
    p, cache = get_preset(preset), ModelCache(META)
    for kind, conf, factory in (("extractor", p.query_features, make_extractor),
                                ("matcher", p.query_matcher, make_matcher), ("global", p.global_desc, make_global_model)):
        component = cache.get(kind, conf, factory)
        if _modules(component):
            _assert_all_on(component, META)


def test_a_build_runs_its_tasks_on_the_executors_device(kitti, tmp_path):
    from vloc.mapping.executor import SerialExecutor
    from vloc.mapping.extract import extract_stage
    from vloc.mapping.stages import Stage

    preset = get_preset("aliked")
    stage = Stage.open(tmp_path, "extract", {"test": 1}, False)
    names = sorted(p.name for p in kitti.images.iterdir())[:1]
    _fails_on_meta(extract_stage, stage, kitti.images, names, preset.features, preset.global_desc, False,
                   SerialExecutor("meta"))
    cpu = extract_stage(stage, kitti.images, names, dataclasses.replace(preset.features, max_keypoints=256),
                        preset.global_desc, False, SerialExecutor("cpu"))
    assert cpu == {} and (stage.directory / "features" / f"{names[0]}.npz").is_file()
