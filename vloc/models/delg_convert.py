"""Convert a DELG checkpoint in the TF-Slim layout into a :func:`vloc.models.delg.save_delg` file.

Expected variable names (``D`` = 50 or 101; TF-Slim ``conv2d`` weights are ``(kh, kw, in, out)``,
``fully_connected`` weights ``(in, out)``):

- backbone: ``resnet_v1_D/conv1/...`` and ``resnet_v1_D/blockB/unit_U/bottleneck_v1/{conv1,conv2,conv3,
  shortcut}/{weights, BatchNorm/{gamma,beta,moving_mean,moving_variance}}``;
- attention: ``attonly/attention/compute/conv1/{weights, BatchNorm/...}`` and
  ``attonly/attention/compute/conv2/{weights,biases}`` (the scope of the released TF-Slim DELF);
- autoencoder: ``dim_reduction/{weights,biases}``, ``dim_expand/{weights,biases}``;
- global head: ``embed/{weights,biases}`` (its output size is the descriptor size) and optionally
  ``gem/gem_power`` (3.0 when absent).

Other variables (optimizer slots, ``global_step``, classifier logits) are ignored. TF2 object-based
checkpoints (keys ending in ``/.ATTRIBUTES/VARIABLE_VALUE``, e.g. the official TF2 DELG SavedModels,
whose backbone is a Keras ResNet with a different layout) are refused by name.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vloc.models.delg import DELG, save_delg
from vloc.models.tf_checkpoint import TFCheckpoint
from vloc.models.tfslim_resnet import tfslim_names

logger = logging.getLogger(__name__)

ATTENTION_SCOPE = "attonly/attention/compute"
RESNET_DEPTH = {"r50": 50, "r101": 101}
# The official DELG configurations' attention thresholds (r50 / r101, GLDv2-clean).
OFFICIAL_THRESHOLD = {"r50": 454.6, "r101": 357.48}


def head_names(variant: str) -> dict[str, str]:
    """torch state-dict key -> TF variable name for the DELG heads (all but the optional GeM power)."""
    names = {"attention.conv1.weight": f"{ATTENTION_SCOPE}/conv1/weights",
             "attention.conv2.weight": f"{ATTENTION_SCOPE}/conv2/weights",
             "attention.conv2.bias": f"{ATTENTION_SCOPE}/conv2/biases",
             "autoencoder.dim_reduction.weight": "dim_reduction/weights",
             "autoencoder.dim_reduction.bias": "dim_reduction/biases",
             "autoencoder.dim_expand.weight": "dim_expand/weights",
             "autoencoder.dim_expand.bias": "dim_expand/biases",
             "whiten.weight": "embed/weights",
             "whiten.bias": "embed/biases"}
    for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                         ("running_var", "moving_variance")):
        names[f"attention.bn1.{ours}"] = f"{ATTENTION_SCOPE}/conv1/BatchNorm/{theirs}"
    return names


def delg_names(variant: str) -> dict[str, str]:
    if variant not in RESNET_DEPTH:
        raise ValueError(f"DELG variant {variant!r} has no TF-Slim checkpoint layout; valid: {sorted(RESNET_DEPTH)}")
    backbone = {f"backbone.{k}": v for k, v in tfslim_names(RESNET_DEPTH[variant]).items()}
    return {**backbone, **head_names(variant)}


def _to_torch(tf_name: str, array: np.ndarray) -> torch.Tensor:
    if array.ndim == 4:  # conv (kh, kw, in, out) -> (out, in, kh, kw)
        array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:  # fully connected (in, out) -> (out, in)
        array = array.T
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def detect_variant(ckpt: TFCheckpoint) -> str:
    """The TF-Slim backbone of ``ckpt`` ("r50" / "r101"); any other layout is refused with what
    ``vloc weights inspect`` sees in it (the first keys), so support can be added from a report."""
    from vloc.models.weights_inspect import Layout, inspect_weights

    keys = ckpt.keys()
    layout = inspect_weights(ckpt.prefix).layout
    if layout is not Layout.TF_SLIM:
        what = {Layout.DELF_KERAS: "delf's TF2 Keras ResNet layout, which this vloc does not convert yet",
                Layout.UNKNOWN: "an unknown layout"}[layout]
        listing = ", ".join(keys[:20]) + (f" ... ({len(keys)} keys)" if len(keys) > 20 else "")
        raise ValueError(f"{ckpt.prefix}: {what} (TF2 object-based: {any(k.endswith('/.ATTRIBUTES/VARIABLE_VALUE') for k in keys)}); "
                         f"vloc converts TF-Slim-layout DELG checkpoints (variables named 'resnet_v1_50/block1/...'). "
                         f"Keys: {listing}. See `vloc weights inspect {ckpt.prefix}`.")
    found = [v for v, d in RESNET_DEPTH.items() if f"resnet_v1_{d}/conv1/weights" in ckpt]
    if len(found) != 1:
        raise ValueError(f"{ckpt.prefix}: no TF-Slim ResNet backbone found (expected exactly one of "
                         f"{[f'resnet_v1_{d}/conv1/weights' for d in RESNET_DEPTH.values()]}; first keys: {keys[:5]})")
    return found[0]


def convert_delg(ckpt_path: str | Path, out: str | Path, variant: str | None = None,
                 attention_threshold: float | None = None) -> Path:
    """Read the TF checkpoint at ``ckpt_path`` (prefix, ``.index`` file, ``variables/`` or SavedModel
    directory), check every tensor's shape against the model, and write a vloc DELG file to ``out``."""
    ckpt = TFCheckpoint(ckpt_path)
    found = detect_variant(ckpt)
    if variant is not None and variant != found:
        raise ValueError(f"{ckpt.prefix}: holds a {found!r} backbone, not {variant!r}")
    variant = found
    names = delg_names(variant)
    missing = [tf for tf in names.values() if tf not in ckpt]
    if missing:
        raise ValueError(f"{ckpt.prefix}: not a DELG checkpoint in the TF-Slim layout; {len(missing)} variables "
                         f"missing, e.g. {missing[:4]}")
    global_dim = ckpt.shape("embed/weights")[-1]
    model = DELG(variant, global_dim)
    state = model.state_dict()
    new_state = {}
    for ours, theirs in names.items():
        tensor = _to_torch(theirs, ckpt.read(theirs))
        if tensor.shape != state[ours].shape:
            raise ValueError(f"{ckpt.prefix}: {theirs} has shape {tuple(ckpt.shape(theirs))}, the model expects "
                             f"{tuple(state[ours].shape)} (as torch {ours})")
        new_state[ours] = tensor
    if "gem/gem_power" in ckpt:
        new_state["gem_p"] = torch.tensor(float(ckpt.read("gem/gem_power").reshape(())))
    else:
        logger.info("%s: no gem/gem_power; using GeM power 3.0", ckpt.prefix)
        new_state["gem_p"] = torch.tensor(3.0)
    leftover = [k for k in state if k not in new_state and not k.endswith("num_batches_tracked")]
    if leftover:
        raise ValueError(f"internal: DELG parameters without a TF name: {leftover[:4]}")
    model.load_state_dict(new_state, strict=False)
    used = set(names.values()) | {"gem/gem_power"}
    ignored = [k for k in ckpt.keys() if k not in used]
    if ignored:
        logger.info("%s: ignored %d variables not used by DELG inference (e.g. %s)", ckpt.prefix, len(ignored),
                    ignored[:3])
    threshold = OFFICIAL_THRESHOLD[variant] if attention_threshold is None else attention_threshold
    extra = {"source": str(ckpt.prefix), "attention_threshold": float(threshold)}
    return save_delg(model.eval(), out, variant, extra)
