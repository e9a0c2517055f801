"""Convert a DELG checkpoint or SavedModel into a :func:`vloc.models.delg.save_delg` file.

The layout is detected (:func:`vloc.models.weights_inspect.detect_layout`) and one of two converters runs:

**TF-Slim** (``D`` = 50 or 101; ``conv2d`` weights ``(kh, kw, in, out)``, ``fully_connected`` ``(in, out)``):

- backbone: ``resnet_v1_D/conv1/...`` and ``resnet_v1_D/blockB/unit_U/bottleneck_v1/{conv1,conv2,conv3,
  shortcut}/{weights, BatchNorm/{gamma,beta,moving_mean,moving_variance}}``;
- attention: ``attonly/attention/compute/conv1/{weights, BatchNorm/...}`` and
  ``attonly/attention/compute/conv2/{weights,biases}``; it scores what the graph shows (a SavedModel),
  else the reconstruction (vloc's convention for this layout);
- autoencoder: ``dim_reduction/{weights,biases}``, ``dim_expand/{weights,biases}``;
- global head: ``embed/{weights,biases}`` and optionally ``gem/gem_power`` (3.0 when absent).

**delf's TF2 Keras model** (``training/model/export_*``; ``P`` = ``_model/``, ``model/`` or nothing,
``K`` = ``kernel`` (Keras 2) or ``_kernel`` (Keras 3), every key ending in ``/.ATTRIBUTES/VARIABLE_VALUE``):
``P backbone/{conv1,bn_conv1,l2a..l5c/{conv2a..conv_shortcut,bn2a..bn_shortcut},embedding_layer}``,
``P attention/{conv1,bn_conv1,conv2}``, ``P autoencoder/{conv1,conv2}``. Which tensor the attention
scores and the GeM power are not variables: they are read from ``saved_model.pb``
(:mod:`vloc.models.tf_graph`), or must be given when there is no graph; a value given that the graph
contradicts is refused. For both layouts the graph's batch-norm epsilon, stem max pool and resize
flags are checked against vloc's model.

Optimizer slots, ``global_step``, classifier and training-only variables are ignored. Any other
layout is refused with its keys listed, so that support can be added from a report.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vloc.models.delg import ATTENTION_INPUTS, DELG, save_delg
from vloc.models.delg_official import RELEASE_THRESHOLDS
from vloc.models.keras_resnet import keras_names
from vloc.models.tf_checkpoint import BN_NAMES, TFCheckpoint
from vloc.models.tf_graph import GraphFacts, read_graph, saved_model_pb
from vloc.models.tfslim_resnet import tfslim_names
from vloc.models.weights_inspect import ATTRIBUTE_SUFFIX, Layout, detect_layout, variable_name

logger = logging.getLogger(__name__)

ATTENTION_SCOPE = "attonly/attention/compute"
RESNET_DEPTH = {"r50": 50, "r101": 101}
# The official DELG configurations' attention thresholds (r50 / r101, GLDv2-clean): the TF-Slim default.
OFFICIAL_THRESHOLD = {"r50": 454.6, "r101": 357.48}
EXTRACTIONS = ("vloc", "official")
KERAS_BN_EPS = 1e-3
TFSLIM_BN_EPS = 1e-5
KERAS_GEM_POWER = 3.0  # delf's exporter flag default (delg_gem_power)


@dataclass(frozen=True)
class Converted:
    """What :func:`convert_delg` wrote and where each choice came from."""

    path: Path
    layout: Layout
    variant: str
    attention_input: str
    attention_source: str
    gem_power: float
    gem_source: str
    threshold: float
    threshold_source: str
    extraction: str

    def summary(self) -> str:
        return (f"{self.path}: DELG {self.variant} ({self.layout.value} layout); attention scores "
                f"{self.attention_input} ({self.attention_source}); GeM power {self.gem_power:g} ({self.gem_source}); "
                f"attention threshold {self.threshold:g} ({self.threshold_source}); {self.extraction} extraction")


def head_names(variant: str) -> dict[str, str]:
    """torch state-dict key -> TF variable name for the TF-Slim DELG heads (all but the optional GeM power)."""
    names = {"attention.conv1.weight": f"{ATTENTION_SCOPE}/conv1/weights",
             "attention.conv2.weight": f"{ATTENTION_SCOPE}/conv2/weights",
             "attention.conv2.bias": f"{ATTENTION_SCOPE}/conv2/biases",
             "autoencoder.dim_reduction.weight": "dim_reduction/weights",
             "autoencoder.dim_reduction.bias": "dim_reduction/biases",
             "autoencoder.dim_expand.weight": "dim_expand/weights",
             "autoencoder.dim_expand.bias": "dim_expand/biases",
             "whiten.weight": "embed/weights",
             "whiten.bias": "embed/biases"}
    for ours, theirs in BN_NAMES:
        names[f"attention.bn1.{ours}"] = f"{ATTENTION_SCOPE}/conv1/BatchNorm/{theirs}"
    return names


def delg_names(variant: str) -> dict[str, str]:
    if variant not in RESNET_DEPTH:
        raise ValueError(f"DELG variant {variant!r} has no TF-Slim checkpoint layout; valid: {sorted(RESNET_DEPTH)}")
    backbone = {f"backbone.{k}": v for k, v in tfslim_names(RESNET_DEPTH[variant]).items()}
    return {**backbone, **head_names(variant)}


def keras_delg_names(prefix: str = "_model/", kernel: str = "_kernel") -> dict[str, str]:
    """torch state-dict key -> bundle key of delf's Keras DELG (``prefix``: the path to the model)."""
    names = {f"backbone.{k}": f"backbone/{v}" for k, v in keras_names(kernel).items()}
    for ours, theirs in (("attention.conv1", "attention/conv1"), ("attention.conv2", "attention/conv2"),
                         ("autoencoder.dim_reduction", "autoencoder/conv1"),
                         ("autoencoder.dim_expand", "autoencoder/conv2"), ("whiten", "backbone/embedding_layer")):
        names[f"{ours}.weight"], names[f"{ours}.bias"] = f"{theirs}/{kernel}", f"{theirs}/bias"
    for ours, theirs in BN_NAMES:
        names[f"attention.bn1.{ours}"] = f"attention/bn_conv1/{theirs}"
    return {k: f"{prefix}{v}{ATTRIBUTE_SUFFIX}" for k, v in names.items()}


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 4:  # conv (kh, kw, in, out) -> (out, in, kh, kw)
        array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:  # fully connected (in, out) -> (out, in)
        array = array.T
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:20]) + (f" ... ({len(keys)} keys)" if len(keys) > 20 else "")


def detect_variant(ckpt: TFCheckpoint) -> str:
    """The TF-Slim backbone of ``ckpt`` ("r50" / "r101")."""
    keys = ckpt.keys()
    found = [v for v, d in RESNET_DEPTH.items() if f"resnet_v1_{d}/conv1/weights" in ckpt]
    if len(found) != 1:
        raise ValueError(f"{ckpt.prefix}: no TF-Slim ResNet backbone found (expected exactly one of "
                         f"{[f'resnet_v1_{d}/conv1/weights' for d in RESNET_DEPTH.values()]}; first keys: {keys[:5]})")
    return found[0]


def _keras_spelling(ckpt: TFCheckpoint) -> tuple[str, str]:
    """``(prefix, kernel)`` of delf's Keras model: where ``backbone/conv1/(_)kernel`` is."""
    for key in ckpt.keys():
        name = variable_name(key)
        for kernel in ("kernel", "_kernel"):
            tail = f"backbone/conv1/{kernel}"
            if key.endswith(ATTRIBUTE_SUFFIX) and name.endswith(tail) and ".OPTIMIZER_SLOT" not in name:
                return name[: -len(tail)], kernel
    raise ValueError(f"{ckpt.prefix}: delf Keras layout without backbone/conv1/kernel; keys: {_listing(ckpt.keys())}")


def _state(ckpt: TFCheckpoint, model: DELG, names: dict[str, str], layout: Layout) -> dict[str, torch.Tensor]:
    missing = [tf for tf in names.values() if tf not in ckpt]
    if missing:
        raise ValueError(f"{ckpt.prefix}: not a complete DELG checkpoint in the {layout.value} layout; "
                         f"{len(missing)} variables missing, e.g. {missing[:4]}")
    state, new_state = model.state_dict(), {}
    for ours, theirs in names.items():
        tensor = _to_torch(ckpt.read(theirs))
        if tensor.shape != state[ours].shape:
            raise ValueError(f"{ckpt.prefix}: {theirs} has shape {tuple(ckpt.shape(theirs))}, the model expects "
                             f"{tuple(state[ours].shape)} (as torch {ours})")
        new_state[ours] = tensor
    return new_state


def _check_graph(facts: GraphFacts, where: Path, layout: Layout) -> None:
    """The graph's findings that vloc's model of ``layout`` hard-codes."""
    eps, pool = (KERAS_BN_EPS, "VALID") if layout is Layout.DELF_KERAS else (TFSLIM_BN_EPS, "SAME")
    wrong_eps = sorted({e for e in facts.bn_epsilons if abs(e - eps) > 1e-9})
    problems = []
    if wrong_eps:
        problems.append(f"batch-norm epsilon {wrong_eps} (vloc's model: {eps})")
    pools = set(facts.max_pools)
    if pools and ((1, 3, 3, 1), (1, 2, 2, 1), pool) not in pools:
        problems.append(f"max pools {sorted(pools)} (vloc's model: 3x3/2 {pool})")
    flags = set(facts.resize)
    if flags and any(op != "ResizeBilinear" or h is not True or a for (op, h, a) in flags):
        problems.append(f"resize ops {sorted(flags, key=str)} (the official mode: bilinear, half-pixel centres)")
    if problems:
        raise ValueError(f"{where}: the graph differs from the {layout.value} DELG vloc implements: "
                         + "; ".join(problems) + f". See `vloc weights inspect {where.parent}`.")


def _from_graph(found, given, name: str, where: Path | None):
    """``(value, source)``: the graph's value, checked against the given one."""
    if found is not None:
        if given is not None and given != found:
            raise ValueError(f"{where}: the graph says {name} = {found!r}, but {given!r} was given")
        return found, "read from the graph"
    if given is not None:
        return given, "given" + ("" if where is None else " (not found in the graph)")
    return None, ""


def convert_delg(ckpt_path: str | Path, out: str | Path, variant: str | None = None,
                 attention_threshold: float | None = None, attention_input: str | None = None,
                 gem_power: float | None = None, extraction: str | None = None) -> Converted:
    """Read the TF checkpoint at ``ckpt_path`` (prefix, ``.index`` file, ``variables/`` or SavedModel
    directory), check every tensor's shape against the model, and write a vloc DELG file to ``out``.

    ``attention_threshold``: default the release's (by the directory name, :data:`RELEASE_THRESHOLDS`),
    else (TF-Slim) the GLDv2-clean configuration's; delf Keras models without a known release name
    need it. ``extraction``: ``"official"`` (default for delf Keras models and named releases) or
    ``"vloc"`` (default for other TF-Slim checkpoints)."""
    if attention_input is not None and attention_input not in ATTENTION_INPUTS:
        raise ValueError(f"attention input {attention_input!r}; valid: {', '.join(ATTENTION_INPUTS)}")
    if extraction is not None and extraction not in EXTRACTIONS:
        raise ValueError(f"extraction {extraction!r}; valid: {', '.join(EXTRACTIONS)}")
    ckpt = TFCheckpoint(ckpt_path)
    keys = ckpt.keys()
    layout = detect_layout(keys)
    release = next((r for r in RELEASE_THRESHOLDS if r in {p.name for p in (Path(ckpt_path), *Path(ckpt_path).parents)}),
                   None)
    pb = saved_model_pb(ckpt_path)
    facts = read_graph(pb) if pb is not None and layout is not Layout.UNKNOWN else None
    if facts is not None:
        _check_graph(facts, pb, layout)
    if layout is Layout.TF_SLIM:
        found = detect_variant(ckpt)
        if variant is not None and variant != found:
            raise ValueError(f"{ckpt.prefix}: holds a {found!r} backbone, not {variant!r}")
        variant = found
        attention_input, attention_source = _from_graph(facts and facts.attention_input, attention_input,
                                                        "the attention input", pb)
        if attention_input is None:
            attention_input, attention_source = "reconstruction", "vloc's TF-Slim convention (no graph says otherwise)"
        names = delg_names(variant)
        model = DELG(variant, ckpt.shape("embed/weights")[-1], attention_input=attention_input)
        state = _state(ckpt, model, names, layout)
        if "gem/gem_power" in ckpt:
            power, gem_source = float(ckpt.read("gem/gem_power").reshape(())), "gem/gem_power"
        else:
            power, gem_source = (gem_power, "given") if gem_power is not None else (3.0, "default: no gem/gem_power")
        default_threshold = (RELEASE_THRESHOLDS[release], f"release {release}") if release else \
            (OFFICIAL_THRESHOLD[variant], f"the GLDv2-clean {variant} configuration")
        default_extraction = "official" if release else "vloc"
    elif layout is Layout.DELF_KERAS:
        if variant not in (None, "keras-r50"):
            raise ValueError(f"{ckpt.prefix}: holds delf's Keras ResNet-50 ('keras-r50'), not {variant!r}")
        variant = "keras-r50"
        prefix, kernel = _keras_spelling(ckpt)
        attention_input, attention_source = _from_graph(facts and facts.attention_input, attention_input,
                                                        "the attention input", pb)
        if attention_input is None:
            raise ValueError(f"{ckpt.prefix}: " + ("no saved_model.pb beside it" if facts is None else
                             f"the graph does not show what the attention reads ({facts.attention_reads})")
                             + "; give --attention-input block3 (delf after April 2021) or reconstruction "
                             "(delf between December 2020 and April 2021)")
        power, gem_source = _from_graph(facts and facts.gem_power, gem_power, "the GeM power", pb)
        if power is None:
            power, gem_source = KERAS_GEM_POWER, "delf's exporter default (not in the file)"
            logger.warning("%s: GeM power not in the file; using delf's exporter default %g", ckpt.prefix, power)
        names = keras_delg_names(prefix, kernel)
        model = DELG(variant, ckpt.shape(names["whiten.weight"])[-1], attention_input=attention_input)
        state = _state(ckpt, model, names, layout)
        default_threshold = (RELEASE_THRESHOLDS[release], f"release {release}") if release else (None, "")
        default_extraction = "official"
    else:
        raise ValueError(f"{ckpt.prefix}: an unknown layout (TF2 object-based: "
                         f"{any(k.endswith(ATTRIBUTE_SUFFIX) for k in keys)}); vloc converts TF-Slim DELG "
                         f"checkpoints ('resnet_v1_50/block1/...') and delf's TF2 Keras DELG "
                         f"('_model/backbone/l2a/conv2a/kernel/...'). Keys: {_listing(keys)}. "
                         f"See `vloc weights inspect {ckpt.prefix}`.")
    if attention_threshold is not None:
        threshold, threshold_source = float(attention_threshold), "given"
    elif default_threshold[0] is not None:
        threshold, threshold_source = default_threshold
    else:
        raise ValueError(f"{ckpt.prefix}: not a named official release; give --attention-threshold (the "
                         f"score_threshold of the delf configuration the model was trained for)")
    state["gem_p"] = torch.tensor(float(power))
    leftover = [k for k in model.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
    if leftover:
        raise ValueError(f"internal: DELG parameters without a TF name: {leftover[:4]}")
    model.load_state_dict(state, strict=False)
    used = set(names.values()) | {"gem/gem_power"}
    ignored = [k for k in keys if k not in used]
    if ignored:
        logger.info("%s: ignored %d variables not used by DELG inference (e.g. %s)", ckpt.prefix, len(ignored),
                    ignored[:3])
    mode = extraction or default_extraction
    extra = {"source": str(ckpt.prefix), "layout": layout.value, "attention_threshold": float(threshold),
             "extraction": mode, "attention_source": attention_source, "gem_source": gem_source,
             **({"release": release} if release else {})}
    path = save_delg(model.eval(), out, variant, extra)
    return Converted(path, layout, variant, attention_input, attention_source, float(power), gem_source,
                     float(threshold), threshold_source, mode)
