"""What a SavedModel's graph (``saved_model.pb``) says about a DELG network, read without TensorFlow.

Only the protobuf fields needed are parsed (with the reader of :mod:`vloc.models.tf_checkpoint`):
``SavedModel{2: meta_graphs}``, ``MetaGraphDef{2: graph_def, 5: signature_def, 7: object_graph_def}``,
``GraphDef{1: node, 2: library}``, ``FunctionDefLibrary{1: function}``, ``FunctionDef{1: signature,
3: node_def}``, ``NodeDef{1: name, 2: op, 3: input, 5: attr}``. A TF1 SavedModel keeps its ops in
``graph_def.node``; a TF2 one in the library's functions (the traced ``tf.function`` bodies) and has
an object graph (field 7).

From the function that holds the network (the one with the attention's ``Softplus`` and the most
convolutions) :func:`read_graph` reports the convolutions' strides and padding, the max pools, the
batch-norm epsilons (a ``FusedBatchNorm`` attribute, or the constant added to the variance before
``Rsqrt``), the resize ops' flags, the GeM power (the constant exponent of ``pow(max(x, eps), p)``)
and which tensor the attention's first convolution reads: ``block3`` (a residual unit's output or
its subsampling) or ``reconstruction`` (the autoencoder's ReLU output, a convolution without batch
norm).
"""
from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vloc.models.tf_checkpoint import DT_BFLOAT16, DTYPES, CheckpointError, _proto_fields, _varint

# TensorFlow DataType enum -> name (the numeric ones as the checkpoint reader maps them)
DTYPE_NAMES = {**{k: np.dtype(v).name for k, v in DTYPES.items()}, DT_BFLOAT16: "bfloat16", 7: "string"}
RESIZE_OPS = ("ResizeBilinear", "ResizeBicubic", "ResizeNearestNeighbor", "ResizeArea", "ScaleAndTranslate")


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]  # producers' node names (data inputs only, output index dropped)
    attrs: dict[str, Any]


@dataclass
class Signature:
    inputs: dict[str, tuple[str, str]]  # key -> (tensor name, dtype)
    outputs: dict[str, tuple[str, str]]


@dataclass
class GraphFacts:
    """The findings of :func:`read_graph`; ``None`` where the graph does not say."""

    path: Path
    tf2: bool
    signatures: dict[str, Signature]
    network: str  # the function (or "graph" for a TF1 graph) the facts come from
    convs: Counter = field(default_factory=Counter)  # (strides, padding) -> count
    max_pools: Counter = field(default_factory=Counter)  # (ksize, strides, padding) -> count
    bn_epsilons: list[float] = field(default_factory=list)
    resize: Counter = field(default_factory=Counter)  # (op, half_pixel_centers, align_corners) -> count
    gem_power: float | None = None
    attention_input: str | None = None  # "block3" | "reconstruction"
    attention_reads: str = ""  # the op chain found in front of the attention's first convolution

    def format(self) -> str:
        lines = [f"graph: {self.path} ({'TF2: object graph present' if self.tf2 else 'TF1: no object graph'})"]
        for name, sig in self.signatures.items():
            ins = ", ".join(f"{k}={n} {d}" for k, (n, d) in sig.inputs.items())
            outs = ", ".join(f"{k}={n} {d}" for k, (n, d) in sig.outputs.items())
            lines.append(f"  signature {name}: inputs {ins or '-'}; outputs {outs or '-'}")
        lines.append(f"  network ops from: {self.network or '-'}")
        lines.append("  Conv2D: " + (", ".join(f"strides {s} {p} x{n}" for (s, p), n in sorted(self.convs.items()))
                                     or "none"))
        lines.append("  MaxPool: " + (", ".join(f"ksize {k} strides {s} {p} x{n}"
                                                for (k, s, p), n in sorted(self.max_pools.items())) or "none"))
        eps = sorted({round(e, 9) for e in self.bn_epsilons})
        lines.append(f"  batch-norm epsilon: {', '.join(f'{e:g}' for e in eps) or 'not found'}")
        lines.append("  resize: " + (", ".join(f"{op} half_pixel_centers={h} align_corners={a} x{n}"
                                               for (op, h, a), n in sorted(self.resize.items())) or "none found"))
        lines.append(f"  GeM power: {self.gem_power if self.gem_power is not None else 'not found'}")
        lines.append(f"  attention input: {self.attention_input or 'not determined'}"
                     + (f" ({self.attention_reads})" if self.attention_reads else ""))
        return "\n".join(lines)


def _first(fields: list[tuple[int, Any]], number: int, default: Any = None) -> Any:
    return next((v for n, v in fields if n == number), default)


def _packed(value: int | bytes, fmt: str) -> list:
    """Repeated scalar field: packed (bytes) or one unpacked value."""
    if isinstance(value, bytes):
        if fmt == "varint":
            out, pos = [], 0
            while pos < len(value):
                v, pos = _varint(value, pos)
                out.append(v - (1 << 64) if v >= 1 << 63 else v)
            return out
        return list(struct.unpack(f"<{len(value) // 4}f", value))
    return [struct.unpack("<f", struct.pack("<I", value))[0]] if fmt == "f" else [value]


def _tensor_value(buf: bytes) -> np.ndarray | None:
    """A float/int ``TensorProto``'s values (flattened), or None for other dtypes."""
    f = _proto_fields(buf)
    dtype = _first(f, 1, 0)
    content = _first(f, 4)
    if dtype == 1:
        if content:
            return np.frombuffer(content, "<f4").copy()
        return np.array([x for n, v in f if n == 5 for x in _packed(v, "f")], np.float32)
    if dtype == 3:
        if content:
            return np.frombuffer(content, "<i4").copy()
        return np.array([x for n, v in f if n == 7 for x in _packed(v, "varint")], np.int64)
    return None


def _attr(buf: bytes) -> Any:
    f = _proto_fields(buf)
    for number, value in f:
        if number == 1:  # ListValue
            lf = _proto_fields(value)
            ints = [x for n, v in lf if n == 3 for x in _packed(v, "varint")]
            strings = [v.decode("utf-8", "replace") for n, v in lf if n == 2]
            return tuple(ints) if ints else tuple(strings)
        if number == 2:
            return value.decode("utf-8", "replace")
        if number == 3:
            return value - (1 << 64) if value >= 1 << 63 else value
        if number == 4:
            return struct.unpack("<f", struct.pack("<I", value))[0]
        if number == 5:
            return bool(value)
        if number == 6:
            return DTYPE_NAMES.get(value, str(value))
        if number == 8:
            return _tensor_value(value)
        if number == 10:
            return _first(_proto_fields(value), 1, b"").decode()
    return None


def _node(buf: bytes, function: bool) -> Node:
    f = _proto_fields(buf)
    inputs = []
    for n, v in f:
        if n == 3:
            ref = v.decode()
            if ref.startswith("^"):
                continue
            inputs.append(ref.split(":", 1)[0])  # "conv/BiasAdd:output:0" (function) or "conv/BiasAdd:0"
    attrs = {}
    for n, v in f:
        if n == 5:
            entry = _proto_fields(v)
            attrs[_first(entry, 1, b"").decode()] = _attr(_first(entry, 2, b""))
    return Node(_first(f, 1, b"").decode(), _first(f, 2, b"").decode(), inputs, attrs)


def _tensor_info(buf: bytes) -> tuple[str, str]:
    f = _proto_fields(buf)
    return _first(f, 1, b"").decode(), DTYPE_NAMES.get(_first(f, 2, 0), str(_first(f, 2, 0)))


def _signature(buf: bytes) -> Signature:
    f = _proto_fields(buf)
    out: list[dict[str, tuple[str, str]]] = [{}, {}]
    for n, v in f:
        if n in (1, 2):
            entry = _proto_fields(v)
            out[n - 1][_first(entry, 1, b"").decode()] = _tensor_info(_first(entry, 2, b""))
    return Signature(*out)


def saved_model_pb(path: str | Path) -> Path | None:
    """``saved_model.pb`` of a SavedModel directory, or of the one above a ``variables/`` folder or prefix."""
    path = Path(path)
    for candidate in (path / "saved_model.pb", path.parent / "saved_model.pb", path.parent.parent / "saved_model.pb"):
        if candidate.is_file():
            return candidate
    return None


def _functions(pb: Path) -> tuple[bool, dict[str, Signature], dict[str, dict[str, Node]]]:
    try:
        meta = [v for n, v in _proto_fields(pb.read_bytes()) if n == 2]
    except CheckpointError as exc:
        raise CheckpointError(f"{pb}: not a SavedModel protobuf ({exc})") from None
    if not meta:
        raise CheckpointError(f"{pb}: a SavedModel without a MetaGraphDef")
    mg = _proto_fields(meta[0])
    tf2 = _first(mg, 7) is not None
    signatures = {}
    for n, v in mg:
        if n == 5:
            entry = _proto_fields(v)
            signatures[_first(entry, 1, b"").decode()] = _signature(_first(entry, 2, b""))
    graph = _proto_fields(_first(mg, 2, b""))
    functions = {"graph": {nd.name: nd for nd in (_node(v, False) for n, v in graph if n == 1)}}
    for fn in (v for n, v in _proto_fields(_first(graph, 2, b"")) if n == 1):
        ff = _proto_fields(fn)
        name = _first(_proto_fields(_first(ff, 1, b"")), 1, b"").decode()
        functions[name] = {nd.name: nd for nd in (_node(v, True) for n, v in ff if n == 3)}
    return tf2, signatures, functions


def _upstream(nodes: dict[str, Node], start: Node, op: str) -> Node | None:
    """The nearest node of type ``op`` feeding ``start`` (breadth first over data inputs)."""
    seen, queue = {start.name}, deque(start.inputs)
    while queue:
        name = queue.popleft()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        node = nodes[name]
        if node.op == op:
            return node
        queue.extend(node.inputs)
    return None


def _producer(nodes: dict[str, Node], name: str) -> Node | None:
    node = nodes.get(name)
    while node is not None and node.op == "Identity" and node.inputs:
        node = nodes.get(node.inputs[0])
    return node


def _attention_input(nodes: dict[str, Node]) -> tuple[str | None, str]:
    softplus = next((n for n in nodes.values() if n.op == "Softplus"), None)
    if softplus is None:
        return None, "no Softplus in the network"
    conv2 = _upstream(nodes, softplus, "Conv2D")
    conv1 = _upstream(nodes, conv2, "Conv2D") if conv2 is not None else None
    x = _producer(nodes, conv1.inputs[0]) if conv1 is not None and conv1.inputs else None
    if x is None:
        return None, "Softplus without two convolutions in front"
    if x.op == "MaxPool":
        return "block3", f"attention conv1 <- MaxPool ksize {x.attrs.get('ksize')} (block3 subsampled)"
    if x.op == "Relu" and x.inputs:
        y = _producer(nodes, x.inputs[0])
        if y is not None and y.op in ("BiasAdd", "AddV2", "Add"):
            feeders = [_producer(nodes, i) for i in y.inputs]
            if any(f is not None and f.op == "Conv2D" for f in feeders):
                return "reconstruction", "attention conv1 <- Relu <- bias add <- Conv2D, no batch norm (autoencoder)"
            return "block3", f"attention conv1 <- Relu <- {y.op} of two branches (a residual unit)"
    return None, f"attention conv1 <- {x.op} (not recognised)"


def _epsilons(nodes: dict[str, Node]) -> list[float]:
    eps = [float(n.attrs["epsilon"]) for n in nodes.values() if n.op.startswith("FusedBatchNorm") and "epsilon" in n.attrs]
    for node in nodes.values():
        if node.op != "Rsqrt" or not node.inputs:
            continue
        add = _producer(nodes, node.inputs[0])
        if add is None or add.op not in ("AddV2", "Add"):
            continue
        for i in add.inputs:
            const = _producer(nodes, i)
            if const is not None and const.op == "Const" and isinstance(const.attrs.get("value"), np.ndarray):
                value = const.attrs["value"]
                if value.size == 1:
                    eps.append(float(value.reshape(())))
    return eps


def _gem_power(nodes: dict[str, Node]) -> float | None:
    for node in nodes.values():
        if node.op != "Pow" or len(node.inputs) != 2:
            continue
        base, exponent = (_producer(nodes, i) for i in node.inputs)
        if base is not None and base.op == "Maximum" and exponent is not None and exponent.op == "Const":
            value = exponent.attrs.get("value")
            if isinstance(value, np.ndarray) and value.size == 1:
                return float(value.reshape(()))
    return None


def read_graph(path: str | Path) -> GraphFacts:
    """Parse ``saved_model.pb`` (a file or a SavedModel directory) into :class:`GraphFacts`."""
    pb = Path(path)
    if pb.is_dir():
        pb = pb / "saved_model.pb"
    if not pb.is_file():
        raise FileNotFoundError(f"{pb}: no saved_model.pb")
    tf2, signatures, functions = _functions(pb)

    def weight(item: tuple[str, dict[str, Node]]) -> tuple[bool, int]:
        ops = [n.op for n in item[1].values()]
        return "Softplus" in ops, ops.count("Conv2D")

    network, nodes = max(functions.items(), key=weight)
    facts = GraphFacts(pb, tf2, signatures, network if weight((network, nodes))[1] else "")
    for n in nodes.values():
        if n.op == "Conv2D":
            facts.convs[(tuple(n.attrs.get("strides", ())), n.attrs.get("padding", "?"))] += 1
        elif n.op == "MaxPool":
            facts.max_pools[(tuple(n.attrs.get("ksize", ())), tuple(n.attrs.get("strides", ())),
                             n.attrs.get("padding", "?"))] += 1
    for fn in functions.values():  # the resize may sit outside the network's function
        for n in fn.values():
            if n.op in RESIZE_OPS:
                facts.resize[(n.op, n.attrs.get("half_pixel_centers"), n.attrs.get("align_corners"))] += 1
    facts.bn_epsilons = _epsilons(nodes)
    facts.gem_power = _gem_power(nodes)
    facts.attention_input, facts.attention_reads = _attention_input(nodes)
    return facts
