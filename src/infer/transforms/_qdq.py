"""Edits of Q/DQ graphs: which nodes read quantized tensors, and putting nodes back in float.

A node "kept in float" reads float tensors where the quantized graph gave it dequantized ones:
its activation inputs come from before their QuantizeLinear, its weights and bias are the float
initializers of the graph the quantizer started from. Quantize/dequantize nodes nobody reads any
more are dropped. The result is the graph a quantizer told to exclude those nodes would write
(onnxruntime's nodes_to_exclude, NNCF's ignored_scope), without quantizing again.

Nodes are grouped by the quantized tensor they read (NNCF's quantizer groups): one activation
quantizer feeds every node that reads that tensor, and its error reaches all of them, so a group
goes back to float as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import onnx
from onnx import numpy_helper

from .. import _onnx

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class Group:
    """Nodes that read one quantized tensor (or one node quantized on its weights only)."""

    tensor: str
    nodes: tuple[str, ...]
    weights: int  # weight elements of those nodes: what keeping them in float costs, roughly


def quantized_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Named nodes, other than Q/DQ, that read a DequantizeLinear's output."""
    producer = _producers(graph)
    return [
        n
        for n in graph.node
        if n.name
        and n.op_type not in QDQ_OPS
        and any(_is(producer.get(i), "DequantizeLinear") for i in n.input)
    ]


def groups(graph: onnx.GraphProto) -> list[Group]:
    """The quantizer groups of a Q/DQ graph, in graph order."""
    inits = _onnx.constants(graph)
    readers = _readers(graph)
    producer = _producers(graph)
    covered: set[str] = set()
    out: list[Group] = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        names: list[str] = []
        for dq in readers.get(q.output[0], []):
            if dq.op_type != "DequantizeLinear":
                continue
            for n in readers.get(dq.output[0], []):
                if n.name and n.op_type not in QDQ_OPS and n.name not in names:
                    names.append(n.name)
        if names:
            covered.update(names)
            out.append(Group(q.input[0], tuple(names), 0))
    for n in quantized_nodes(graph):  # quantized on weights only (e.g. a float activation)
        if n.name not in covered:
            out.append(Group(n.name, (n.name,), 0))
    by_name = {n.name: n for n in graph.node if n.name}
    sized = []
    for g in out:
        weights = 0
        for name in g.nodes:
            for i in by_name[name].input:
                reader = producer.get(i)
                if not _is(reader, "DequantizeLinear"):
                    continue
                source = reader.input[0]
                quantizer = producer.get(source)
                if _is(quantizer, "QuantizeLinear"):  # NNCF quantizes float weights in the graph
                    source = quantizer.input[0]
                if source in inits:
                    weights += int(np.prod(inits[source].dims, dtype=np.int64))
        sized.append(Group(g.tensor, g.nodes, weights))
    return sized


def revert(
    quantized: onnx.ModelProto, float_model: onnx.ModelProto, names: Iterable[str]
) -> onnx.ModelProto:
    """A copy of `quantized` with the nodes `names` back in float (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    graph = out.graph
    wanted = set(names)
    if not wanted:
        return out
    producer = _producers(graph)
    inits = {t.name: t for t in graph.initializer}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node if n.name}
    added: dict[str, str] = {}
    for node in graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if not _is(dq, "DequantizeLinear"):
                continue
            q = producer.get(dq.input[0])
            if _is(q, "QuantizeLinear"):  # an activation (or NNCF's Q on a float weight)
                node.input[i] = q.input[0]
                continue
            node.input[i] = _float_initializer(
                graph, dq, node, i, float_nodes, float_inits, inits, producer, added
            )
    _prune(graph)
    _float_islands(graph, set(wanted))
    return out


def _float_islands(graph: onnx.GraphProto, reverted: set[str]) -> None:
    """Put back in float the weightless nodes (Relu, Reshape, MaxPool, ...) left between nodes
    put back in float: a node whose inputs are dequantized outputs of reverted nodes and whose
    outputs only reverted nodes read would otherwise keep quantize/dequantize pairs that only
    cost time. Nodes next to quantized ones keep theirs: ONNX Runtime fuses Conv -> Q into one
    integer op, and OpenVINO fuses quantized inputs of Add/Mul (NNCF places them on purpose)."""
    while True:
        producer = _producers(graph)
        readers = _readers(graph)
        inits = {t.name for t in graph.initializer}
        outputs = {o.name for o in graph.output}
        changed = False
        for node in graph.node:
            if node.op_type in QDQ_OPS or not node.name or node.name in reverted:
                continue
            dqs = [
                (i, d)
                for i, x in enumerate(node.input)
                if _is(d := producer.get(x), "DequantizeLinear")
            ]
            if not dqs or any(d.input[0] in inits for _, d in dqs):
                continue
            if any(o in outputs for o in node.output):
                continue
            after = [r for o in node.output for r in readers.get(o, [])]
            if not after or any(r.name not in reverted for r in after):
                continue
            sources = [producer.get(d.input[0]) for _, d in dqs]
            if any(not _is(q, "QuantizeLinear") for q in sources):
                continue
            before = [producer.get(q.input[0]) for q in sources if q is not None]
            if any(b is None or b.name not in reverted for b in before):
                continue
            for (i, _), q in zip(dqs, sources):
                assert q is not None
                node.input[i] = q.input[0]
            reverted.add(node.name)
            changed = True
        if not changed:
            return
        _prune(graph)


def _float_initializer(
    graph: onnx.GraphProto,
    dq: onnx.NodeProto,
    node: onnx.NodeProto,
    index: int,
    float_nodes: dict[str, onnx.NodeProto],
    float_inits: dict[str, onnx.TensorProto],
    inits: dict[str, onnx.TensorProto],
    producer: dict[str, onnx.NodeProto],
    added: dict[str, str],
) -> str:
    """The float initializer for input `index` of `node`: the float graph's own when the same
    node reads one there, else the dequantized values. Returns the name it is added under."""
    source = float_nodes.get(node.name)
    tensor: onnx.TensorProto | None = None
    if source is not None and index < len(source.input) and source.input[index] in float_inits:
        key = f"float\0{source.input[index]}"
        if key in added:
            return added[key]
        tensor = onnx.TensorProto()
        tensor.CopyFrom(float_inits[source.input[index]])
    elif dq.input[0] in inits:
        key = f"dequantized\0{dq.output[0]}"
        if key in added:
            return added[key]
        tensor = numpy_helper.from_array(_dequantized(dq, inits), "")
    if tensor is None:
        return dq.output[0]  # nothing to go back to: leave it dequantized
    base = tensor.name or f"{dq.input[0]}_float"
    name, k = base, 0
    taken = set(inits) | set(producer) | {i.name for i in graph.input}
    while name in taken and inits.get(name) is not tensor:
        k += 1
        name = f"{base}_float{k}"
    tensor.name = name
    graph.initializer.append(tensor)
    inits[name] = tensor
    added[key] = name
    return name


def _dequantized(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zero = (
        numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32)
        if len(dq.input) > 2 and dq.input[2] in inits
        else np.zeros_like(scale)
    )
    if scale.ndim == 1 and q.ndim > 1:
        axis = _onnx.attribute(dq, "axis", 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output) or _has_subgraph(node):
            keep.append(node)
            needed.update(node.input)
            needed.update(_outer_reads(node))
    keep.reverse()
    _keep_only(graph.node, keep)
    used = {i for n in graph.node for i in n.input} | needed
    _keep_only(graph.initializer, [t for t in graph.initializer if t.name in used])


def _keep_only(field: Any, kept: list[Any]) -> None:
    """Leave a repeated protobuf field holding `kept` (a subset of it, in order)."""
    if len(kept) == len(field):
        return
    copies = []  # copied first: deleting from the field releases the messages it held
    for message in kept:
        c = type(message)()
        c.CopyFrom(message)
        copies.append(c)
    del field[:]
    field.extend(copies)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return next(_onnx.subgraphs(node), None) is not None


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """Every name the node's subgraphs read, at any depth."""
    return {i for _, sub in _onnx.subgraphs(node) for n in _onnx.nodes(sub) for i in n.input}


def op_types(model: onnx.ModelProto, names: Sequence[str]) -> list[tuple[str, str]]:
    """(name, op type) of the named nodes, in the order given."""
    types = {n.name: n.op_type for n in model.graph.node if n.name}
    return [(n, types.get(n, "?")) for n in names]


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _is(node: onnx.NodeProto | None, op: str) -> TypeGuard[onnx.NodeProto]:
    return node is not None and node.op_type == op
