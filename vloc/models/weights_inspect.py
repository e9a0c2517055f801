"""``vloc weights inspect PATH``: what a TensorFlow checkpoint or SavedModel holds, without TensorFlow.

Reads the variables' index (the tensor bundle of :mod:`vloc.models.tf_checkpoint`) and reports
the format (TF1 name-based, or TF2 object-based: the bundle carries an object graph), the
detected layout (TF-Slim ``resnet_v1``, delf's Keras ResNet, or unknown) and the variables
grouped by layer with their shapes; with a SavedModel's ``saved_model.pb``, also what its graph says
(:mod:`vloc.models.tf_graph`: signatures, strides and padding, BN epsilon, resize flags, GeM power,
the attention's input).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from vloc.models.tf_checkpoint import CheckpointError, TFCheckpoint
from vloc.models.tf_graph import GraphFacts, read_graph, saved_model_pb

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
ATTRIBUTE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class Layout(str, Enum):
    TF_SLIM = "tf-slim"  # resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/weights, ...
    DELF_KERAS = "delf-keras"  # _model/backbone/l2a/conv2a/kernel/.ATTRIBUTES/VARIABLE_VALUE, ...
    UNKNOWN = "unknown"


@dataclass
class Inspection:
    prefix: Path
    tf2: bool  # an object-based (TF2) checkpoint
    layout: Layout
    saved_model_pb: Path | None
    graph: GraphFacts | None = None
    graph_error: str = ""
    layers: dict[str, list[tuple[str, tuple[int, ...]]]] = field(default_factory=dict)  # layer -> (name, shape)

    def format(self, max_layers: int | None = None) -> str:
        lines = [f"checkpoint: {self.prefix}",
                 f"format: {'TF2 (object graph present)' if self.tf2 else 'TF1 (name-based, no object graph)'}",
                 f"layout: {self.layout.value}",
                 self.graph.format() if self.graph else
                 f"graph: {self.saved_model_pb}: unreadable ({self.graph_error})" if self.graph_error else
                 "graph: no saved_model.pb (a bare checkpoint: the attention input and GeM power are not in it)",
                 f"variables: {sum(len(v) for v in self.layers.values())} in {len(self.layers)} layers"]
        for k, (layer, variables) in enumerate(self.layers.items()):
            if max_layers is not None and k == max_layers:
                lines.append(f"  ... {len(self.layers) - max_layers} more layers")
                break
            lines.append(f"  {layer}: " + ", ".join(f"{name} {list(shape)}" for name, shape in variables))
        return "\n".join(lines)


def variable_name(key: str) -> str:
    """A bundle key without TF2's attribute suffix."""
    return key[: -len(ATTRIBUTE_SUFFIX)] if key.endswith(ATTRIBUTE_SUFFIX) else key


def detect_layout(keys: list[str]) -> Layout:
    names = [variable_name(k) for k in keys]
    if any(n.startswith("resnet_v1_") and n.endswith("/conv1/weights") for n in names):
        return Layout.TF_SLIM
    if any("/backbone/" in f"/{n}" and n.rsplit("/", 1)[-1] in ("kernel", "_kernel") for n in names):
        return Layout.DELF_KERAS
    return Layout.UNKNOWN


def inspect_weights(path: str | Path) -> Inspection:
    """Inspect a SavedModel directory, its ``variables/`` folder, a checkpoint prefix or ``.index``."""
    ckpt = TFCheckpoint(path)
    keys = [k for k in ckpt.keys() if k != OBJECT_GRAPH_KEY]
    layers: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for key in keys:
        layer, _, name = variable_name(key).rpartition("/")
        layers.setdefault(layer or "(top)", []).append((name, ckpt.shape(key)))
    pb = saved_model_pb(path) or saved_model_pb(ckpt.prefix)
    seen = Inspection(ckpt.prefix, OBJECT_GRAPH_KEY in ckpt, detect_layout(keys), pb, layers=layers)
    if pb is not None:
        try:
            seen.graph = read_graph(pb)
        except CheckpointError as exc:
            seen.graph_error = str(exc)
    return seen
