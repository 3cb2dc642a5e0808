"""Which ops an ONNX model runs, at which opset: the nodes of every graph (subgraphs included)
and of every model-local function body, for the backends' op checks (`unsupported_ops`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import onnx

from . import _onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpUse:
    """One node as a backend must implement it."""

    node: onnx.NodeProto
    domain: str  # "" for the default ai.onnx domain
    version: int | None  # the opset its graph imports for the domain (None: none)

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def label(self) -> str:
        """'Conv', 'com.microsoft:QLSTM': the op as inspect names it."""
        return self.node.op_type if not self.domain else f"{self.domain}:{self.node.op_type}"


def domain_of(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def op_uses(proto: onnx.ModelProto) -> Iterator[OpUse]:
    """Every node a runtime executes: those of the main graph and its subgraphs, and those of
    model-local function bodies (at the function's opsets) instead of the calls to them."""
    opsets = _opsets(proto.opset_import)
    local = {(f.domain, f.name) for f in proto.functions}
    yield from _nodes_uses(proto.graph.node, opsets, local)
    for f in proto.functions:
        yield from _nodes_uses(f.node, {**opsets, **_opsets(f.opset_import)}, local)


def value_types(proto: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """{value name: type} over every graph, from the model's annotations and onnx's shape
    inference (which may know less on graphs it cannot follow; never raises)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False)
    except Exception:  # a graph shape inference refuses: keep what the model declares
        log.debug("shape inference failed", exc_info=True)
        inferred = proto
    out: dict[str, onnx.TypeProto] = {}
    for graph in _onnx.graphs(inferred.graph):
        for v in (*graph.input, *graph.output, *graph.value_info):
            if v.type.WhichOneof("value") is not None:
                out.setdefault(v.name, v.type)
        for t in graph.initializer:
            out.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, None))
    return out


def type_name(t: onnx.TypeProto) -> str | None:
    """'tensor(float)', 'seq(tensor(int64))', as ONNX schemas spell types (None: unknown)."""
    kind = t.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(t, kind).elem_type
        if not elem:
            return None
        name = onnx.TensorProto.DataType.Name(elem).lower()
        return f"{'tensor' if kind == 'tensor_type' else 'sparse_tensor'}({name})"
    if kind == "sequence_type":
        inner = type_name(t.sequence_type.elem_type)
        return f"seq({inner})" if inner else None
    if kind == "optional_type":
        inner = type_name(t.optional_type.elem_type)
        return f"optional({inner})" if inner else None
    return None


def _opsets(imports: object) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in imports}  # type: ignore[attr-defined]


def _nodes_uses(
    nodes: object, opsets: Mapping[str, int], local: set[tuple[str, str]]
) -> Iterator[OpUse]:
    for node in nodes:  # type: ignore[attr-defined]
        if (node.domain, node.op_type) not in local:
            domain = domain_of(node)
            yield OpUse(node, domain, opsets.get(domain))
        for _, sub in _onnx.subgraphs(node):
            yield from _nodes_uses(sub.node, opsets, local)
