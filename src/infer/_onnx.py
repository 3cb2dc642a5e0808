"""The ONNX toolbox: walkers over a graph and its subgraphs, node and attribute helpers, opsets,
and the rule for saving a model too large for one protobuf.

A subgraph is a graph held in a node's attribute (If's branches, Loop's and Scan's bodies), at
any depth. Every walker here goes depth first: a graph before its subgraphs, a node before the
nodes of its subgraphs, in the order the graph lists them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto, helper

DEFAULT_DOMAINS = ("", "ai.onnx")
"""The two spellings of ONNX's default operator domain."""

LARGE_MODEL_BYTES = 1 << 30
"""Models serialized larger than this are saved with their tensors in a file beside them: a
protobuf cannot exceed 2 GiB, and a graph transform may still grow the model after the check."""

NodeHolder = onnx.GraphProto | onnx.FunctionProto
"""What holds a list of nodes: a graph, or a model-local function."""


# -- walkers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """A graph `walk` found, and where it sits."""

    graph: onnx.GraphProto
    path: str = ""
    """"" for the graph walked; below it "<holder>/<attribute>" per level, the holder named by
    its name, else "<op type>_<index>"; an attribute holding several graphs adds "[j]"."""
    depth: int = 0
    holder: onnx.NodeProto | None = None
    """The node whose attribute holds this graph (None for the graph walked)."""
    index: int = -1
    """The holder's index among its graph's nodes."""
    attribute: str = ""
    """The attribute holding this graph, "[j]" added when it holds several."""
    parent: Scope | None = None
    """The scope of the holder's graph."""


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graphs a node's attributes hold, directly: (attribute name, graph)."""
    for attr in node.attribute:
        subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for j, sub in enumerate(subs):
            yield (attr.name if len(subs) == 1 else f"{attr.name}[{j}]"), sub


def walk(graph: onnx.GraphProto, _scope: Scope | None = None) -> Iterator[Scope]:
    """`graph` and every subgraph inside it, with its path and holder."""
    scope = _scope or Scope(graph)
    yield scope
    for i, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{i}"
        for name, sub in subgraphs(node):
            path = f"{scope.path}/{label}/{name}" if scope.path else f"{label}/{name}"
            yield from walk(sub, Scope(sub, path, scope.depth + 1, node, i, name, scope))


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph inside it."""
    for scope in walk(graph):
        yield scope.graph


def walk_nodes(
    graph: NodeHolder, _holders: tuple[onnx.NodeProto, ...] = ()
) -> Iterator[tuple[onnx.NodeProto, tuple[onnx.NodeProto, ...]]]:
    """Every node of `graph`, subgraph nodes included, with the nodes holding it (outermost
    first; () for a node of `graph` itself)."""
    for node in graph.node:
        yield node, _holders
        for _, sub in subgraphs(node):
            yield from walk_nodes(sub, (*_holders, node))


def nodes(graph: NodeHolder) -> Iterator[onnx.NodeProto]:
    """Every node of `graph` (a graph or a function), subgraph nodes included."""
    for node, _ in walk_nodes(graph):
        yield node


def tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a model holds: initializers (a sparse one as its values and indices) and
    attribute tensors, in the graph, its functions and all their subgraphs."""
    tops = [model.graph] + [sub for f in model.functions for n in f.node for _, sub in subgraphs(n)]
    for top in tops:
        for g in graphs(top):
            yield from g.initializer
            for sparse in g.sparse_initializer:
                yield from (sparse.values, sparse.indices)
    for holder in (model.graph, *model.functions):
        for node in nodes(holder):
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sparse in (attr.sparse_tensor, *attr.sparse_tensors):
                    yield from (sparse.values, sparse.indices)


def constants(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """The graph's constant tensors by name: initializers and Constant nodes' `value` (exporters
    such as Paddle2ONNX hold weights in Constant nodes)."""
    out = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            value = attribute(n, "value")
            if value is not None:
                out[n.output[0]] = value
    return out


# -- nodes and attributes ---------------------------------------------------------------------


def node_name(node: onnx.NodeProto) -> str:
    """A node's name, else its first named output, else its op type (what ONNX tools call it)."""
    return node.name or next((o for o in node.output if o), node.op_type)


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of a node's attribute `name` (onnx.helper's reading), or `default`."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# -- opsets -----------------------------------------------------------------------------------


def opset(model: onnx.ModelProto, domain: str = "") -> int | None:
    """The opset version `model` imports for `domain` ("" or "ai.onnx": the default domain);
    None when it imports none."""
    wanted = DEFAULT_DOMAINS if domain in DEFAULT_DOMAINS else (domain,)
    for entry in model.opset_import:
        if entry.domain in wanted:
            return int(entry.version)
    return None


# -- shapes -----------------------------------------------------------------------------------

_PROPAGATED = 64
"""Initializers of at most this many elements keep their values for shape inference (shapes,
axes, indices); larger ones (weights) are given to it as typed inputs without data."""


def output_shapes(
    model: onnx.ModelProto, inputs: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...] | None]:
    """{graph output: its shape} when the graph inputs have the shapes given, as ONNX shape
    inference (with data propagation) works it out; None where a dimension is not known."""
    graph = onnx.GraphProto()
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.output.extend(model.graph.output)
    for declared_output in graph.output:
        declared_output.type.tensor_type.ClearField(
            "shape"
        )  # the declared symbols would be kept otherwise
    graph.input.extend(model.graph.input)
    for value in graph.input:
        if value.name in inputs and value.type.HasField("tensor_type"):
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for size in inputs[value.name]:
                shape.dim.add().dim_value = int(size)
    declared = {v.name for v in graph.input}
    for init in model.graph.initializer:
        if (
            helper.tensor_dtype_to_np_dtype(init.data_type) is not None
            and _elements(init) <= _PROPAGATED
        ):
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    probe = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    probe.functions.extend(model.functions)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:  # a graph shape inference cannot follow: nothing known
        return {o.name: None for o in model.graph.output}
    out: dict[str, tuple[int, ...] | None] = {}
    for value in inferred.graph.output:
        t = value.type.tensor_type
        dims = (
            list(t.shape.dim)
            if value.type.HasField("tensor_type") and t.HasField("shape")
            else None
        )
        known = dims is not None and all(d.HasField("dim_value") for d in dims)
        out[value.name] = (
            tuple(int(d.dim_value) for d in dims) if known and dims is not None else None
        )
    return out


_COMPRESSED = frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4})


def compressed_matmuls(graph: onnx.GraphProto) -> list[str]:
    """MatMul/Gemm nodes (by name, else op and index) of a weight-compressed graph: their
    weights are an 8- or 4-bit constant dequantized in the graph (DequantizeLinear of an
    initializer), their activations float (not dequantized: the model quantizes none)."""
    consts = {t.name: t.data_type for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def dequantized(value: str, constant: bool) -> bool:
        node = producer.get(value)
        if node is not None and node.op_type == "Transpose":
            node = producer.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear":
            return False
        return not constant or consts.get(node.input[0]) in _COMPRESSED

    out = []
    for i, node in enumerate(graph.node):
        if (
            node.op_type in ("MatMul", "Gemm")
            and len(node.input) > 1
            and dequantized(node.input[1], True)
            and not dequantized(node.input[0], False)
        ):
            out.append(node.name or f"{node.op_type}_{i}")
    return out


def _elements(tensor: TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count


# -- saving -----------------------------------------------------------------------------------


def is_large(model: onnx.ModelProto) -> bool:
    """Whether `model` is saved with external data (over LARGE_MODEL_BYTES serialized)."""
    return model.ByteSize() > LARGE_MODEL_BYTES


def save(model: onnx.ModelProto, path: str | Path, *, external: bool = False) -> None:
    """Write `model` to `path`; a large one (or any, with `external`) keeps its tensors in
    "<file name>.data" beside it. `model` is left holding its tensors."""
    path = Path(path)
    if external or is_large(model):
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
        # onnx moved the tensors' bytes out of `model` into the file: read them back in.
        onnx.load_external_data_for_model(model, str(path.parent))
        for tensor in tensors(model):
            if tensor.HasField("data_location") and tensor.data_location == TensorProto.DEFAULT:
                tensor.ClearField("data_location")
    else:
        onnx.save_model(model, str(path))
