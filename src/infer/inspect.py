"""What a model file holds, in the terms of the ONNX docs, and which backends here can load it.

`inspect(model)` reads the graph without running anything (external data is not loaded:
sizes come from tensor dims) and returns frozen dataclasses; `Inspection.to_dict()` is the
JSON form `infer inspect --json` prints.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import defs, helper
from onnx.external_data_helper import uses_external_data

from . import _onnx, selection
from .backends import base
from .errors import InferError
from .model import Model, ModelFormat, ModelSource, NativeSummary
from .options import Options
from .tensors import TensorSpec, dtype_info, packed_bits, spec_from_value_info

STANDARD_DOMAINS = frozenset(
    {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"}
)


@dataclass(frozen=True)
class Weights:
    """Initializers (constants stored in the graph): how many, elements and bytes."""

    count: int
    parameters: int  # elements
    bytes: int
    external: int = 0  # how many are stored in external data files


@dataclass(frozen=True)
class Subgraph:
    """A graph held by a node attribute (If branches, Loop and Scan bodies), at any depth."""

    path: str  # "If_0/then_branch", nested: "Loop_3/body/If_1/else_branch"
    op: str
    attribute: str
    depth: int  # 1 for a subgraph of the main graph
    nodes: int


@dataclass(frozen=True)
class Node:
    """One node, with the producer of each input (a node name, "input", "initializer",
    "outer scope" for a subgraph's captured values, or "" for an omitted optional input)."""

    graph: str  # "" for the main graph, else the Subgraph.path
    index: int
    op: str
    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    producers: tuple[str, ...]
    attributes: tuple[tuple[str, Any], ...]

    @property
    def op_id(self) -> str:
        return _op_id(self.domain, self.op)


@dataclass(frozen=True)
class OnnxSummary:
    """The ONNX-specific part of an inspection."""

    ir_version: int
    producer: str
    producer_version: str
    domain: str
    model_version: int
    doc: str
    opsets: tuple[tuple[str, int], ...]  # (domain, version); "" is the default ai.onnx domain
    inputs: tuple[TensorSpec, ...]  # graph inputs that are not initializers
    outputs: tuple[TensorSpec, ...]
    nodes: int  # in the main graph
    nodes_total: int  # with every subgraph and model-local function body
    op_types: tuple[tuple[str, int], ...]  # over every graph, most frequent first
    weights: Weights
    overridable: tuple[str, ...]  # initializers also listed as graph inputs (IR < 4 style)
    constants: Weights  # Constant nodes (in every graph): another way exporters store weights
    subgraphs: tuple[Subgraph, ...]
    functions: tuple[str, ...]  # model-local functions, "domain:name"
    custom_domains: tuple[str, ...]
    # Ops outside the ONNX standard (in no ONNX schema and no model-local function): a runtime's
    # own (com.microsoft's, which ONNX Runtime runs) or ops no runtime knows; which backends
    # here run them is `Inspection.run_by`.
    nonstandard_ops: tuple[str, ...]
    external_data: tuple[str, ...]  # file names, relative to the model
    external_bytes: int
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Inspection:
    """Everything `infer.inspect` found."""

    source: str
    format: str
    size_bytes: int
    sha256: str
    onnx: OnnxSummary | None
    native: NativeSummary | None
    backends: tuple[selection.Attempt, ...]  # see `support`
    nodes: tuple[Node, ...] = ()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        part = self.onnx or self.native
        return part.inputs if part else ()

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        part = self.onnx or self.native
        return part.outputs if part else ()

    @property
    def run_by(self) -> tuple[str, ...]:
        """The backends here whose op check passed (they run every op, the non-standard ones
        included), as "backend on device"; () when the backends were not asked."""
        return tuple(
            f"{a.backend} on {a.device}" for a in self.backends if a.ok and a.device != "-"
        )

    def to_dict(self, nodes: bool = False) -> dict[str, Any]:
        """Plain JSON-ready data; `nodes=True` adds the node list."""
        out: dict[str, Any] = {
            "source": self.source,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        }
        if self.onnx is not None:
            o = self.onnx
            out["onnx"] = {
                "ir_version": o.ir_version,
                "producer": {"name": o.producer, "version": o.producer_version},
                "domain": o.domain,
                "model_version": o.model_version,
                "doc": o.doc,
                "opsets": dict(o.opsets),
                "inputs": [_tensor_dict(t) for t in o.inputs],
                "outputs": [_tensor_dict(t) for t in o.outputs],
                "nodes": o.nodes,
                "nodes_total": o.nodes_total,
                "op_types": dict(o.op_types),
                "initializers": {
                    "count": o.weights.count,
                    "parameters": o.weights.parameters,
                    "bytes": o.weights.bytes,
                    "external": o.weights.external,
                },
                "overridable_initializers": list(o.overridable),
                "constants": {
                    "count": o.constants.count,
                    "parameters": o.constants.parameters,
                    "bytes": o.constants.bytes,
                },
                "subgraphs": [vars(s) for s in o.subgraphs],
                "functions": list(o.functions),
                "custom_domains": list(o.custom_domains),
                "nonstandard_ops": list(o.nonstandard_ops),
                "nonstandard_ops_run_by": list(self.run_by),
                "external_data": {"files": list(o.external_data), "bytes": o.external_bytes},
                "metadata": dict(o.metadata),
            }
        if self.native is not None:
            n = self.native
            out["native"] = {
                "inputs": [_tensor_dict(t) for t in n.inputs],
                "outputs": [_tensor_dict(t) for t in n.outputs],
                "nodes": n.nodes,
                "op_types": dict(n.op_types),
                "notes": list(n.notes),
            }
        out["backends"] = [
            {
                "backend": a.backend,
                "device": a.device,
                "ok": a.ok,  # None: not known without compiling
                "reason": None if a.ok else a.reason,
            }
            for a in self.backends
        ]
        if nodes:
            out["node_list"] = [
                {
                    "graph": n.graph,
                    "index": n.index,
                    "op": n.op,
                    "domain": n.domain,
                    "name": n.name,
                    "inputs": list(n.inputs),
                    "outputs": list(n.outputs),
                    "producers": list(n.producers),
                    "attributes": dict(n.attributes),
                }
                for n in self.nodes
            ]
        return out


def inspect(model: ModelSource, *, backends: bool = True, compile: bool = False) -> Inspection:
    """Describe a model (path, bytes or ModelProto) without running it.

    backends: also ask `selection.preflight` whether each backend can load the model on the
        devices found here, without compiling (this imports the installed runtimes): its
        checks, and each backend's op check where the backend can tell.
    compile: also load the model on each backend here (`Engine.load`) and say how it went.
    """
    m = Model.load(model)
    onnx_part = native = None
    node_list: tuple[Node, ...] = ()
    if m.format is ModelFormat.ONNX:
        onnx_part, node_list = _inspect_onnx(m)
    else:  # a runtime's own format: the backend that reads it says what it holds
        native = next(
            (
                found
                for name in selection.BACKENDS
                if m.format in base.get(name).formats
                and (found := base.get(name).describe(m)) is not None
            ),
            None,
        )
    return Inspection(
        source=str(m.path) if m.path is not None else repr(m),
        format=m.format.value,
        size_bytes=_size(m),
        sha256=m.digest,
        onnx=onnx_part,
        native=native,
        backends=support(m, compile=compile) if backends or compile else (),
        nodes=node_list,
    )


def support(
    model: Model, options: Options | None = None, compile: bool = False
) -> tuple[selection.Attempt, ...]:
    """`selection.preflight`'s verdict on `model` for every backend on each device kind it
    serves here, grouped by backend; with `compile`, each row that has a device here and reads
    the model's format is loaded instead, and its verdict is "compiled" or "failed".

    A backend that is not installed appears once, with the reason, on device "-"; so does a
    backend with no device here, saying so.
    """
    verdicts = selection.preflight(model, None, options)
    out: list[selection.Attempt] = []
    for name in selection.BACKENDS:
        mine = [a for a in verdicts if a.row is not None and a.row.backend == name]
        if not mine:
            continue
        info = base.get(name).probe()
        if not info.available:
            out.append(selection.Attempt(name, "-", "unavailable", mine[0].reason))
            continue
        here = [a for a in mine if a.verdict != "unavailable"]  # unavailable: no such device
        absent = [a.row.kind for a in mine if a.verdict == "unavailable"]  # type: ignore[union-attr]
        out += [_compiled(model, a, options) if compile else a for a in here]
        if not here:
            kinds = ", ".join(dict.fromkeys(absent))
            out.append(
                selection.Attempt(
                    name, "-", "unavailable", f"no device of a kind it drives here ({kinds})"
                )
            )
    return tuple(out)


def _compiled(
    model: Model, verdict: selection.Attempt, options: Options | None
) -> selection.Attempt:
    """Load the model as `verdict`'s row would (its backend, on its device); how it went."""
    if verdict.verdict == "skipped":  # another format: nothing to try
        return verdict
    from .engine import Engine

    precision = options.precision if options is not None else "fp32"
    start = time.perf_counter()
    try:
        with Engine.load(
            model, verdict.device, backend=verdict.backend, precision=precision, cache=False
        ) as engine:
            summary = engine.selection[-1].reason if engine.selection else ""
    except InferError as e:
        seconds = time.perf_counter() - start
        return replace(verdict, verdict="failed", reason=str(e), seconds=seconds)
    seconds = time.perf_counter() - start
    return replace(verdict, verdict="compiled", reason=summary, seconds=seconds)


# -- ONNX ---------------------------------------------------------------------------------------


def _inspect_onnx(m: Model) -> tuple[OnnxSummary, tuple[Node, ...]]:
    proto = m._skeleton  # external data is not loaded: sizes come from dims
    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    inputs = tuple(spec_from_value_info(v) for v in graph.input if v.name not in init_names)
    outputs = tuple(spec_from_value_info(v) for v in graph.output)
    overridable = tuple(v.name for v in graph.input if v.name in init_names)

    ops: Counter[str] = Counter()
    nodes: list[Node] = []
    subgraphs: list[Subgraph] = []
    constants: list[onnx.NodeProto] = []
    for path, depth, g, outer, holder, attr in _walk(graph):
        produced = dict(outer)
        produced.update({v.name: "input" for v in g.input})
        produced.update({t.name: "initializer" for t in g.initializer})
        produced.update({t.values.name: "initializer" for t in g.sparse_initializer})
        if depth:
            subgraphs.append(Subgraph(path, holder, attr, depth, len(g.node)))
        for i, node in enumerate(g.node):
            ops[_op_id(node.domain, node.op_type)] += 1
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                constants.append(node)
            producers = tuple(
                "" if not name else produced.get(name, "outer scope" if depth else "?")
                for name in node.input
            )
            nodes.append(
                Node(
                    graph=path,
                    index=i,
                    op=node.op_type,
                    domain=node.domain,
                    name=node.name,
                    inputs=tuple(node.input),
                    outputs=tuple(node.output),
                    producers=producers,
                    attributes=tuple((a.name, _attribute(a)) for a in node.attribute),
                )
            )
            label = node.name or f"{node.op_type}_{i}"
            produced.update({o: label for o in node.output if o})
    function_ops = 0
    local = set()
    for f in proto.functions:
        local.add((f.domain, f.name))
        for node in f.node:
            ops[_op_id(node.domain, node.op_type)] += 1
            function_ops += 1

    opsets = tuple((o.domain, int(o.version)) for o in proto.opset_import)
    versions = dict(opsets)
    unknown = sorted(op_id for op_id in ops if not _known(op_id, versions, local))
    weights, external = _weights(proto)
    return (
        OnnxSummary(
            ir_version=int(proto.ir_version),
            producer=proto.producer_name,
            producer_version=proto.producer_version,
            domain=proto.domain,
            model_version=int(proto.model_version),
            doc=proto.doc_string,
            opsets=opsets,
            inputs=inputs,
            outputs=outputs,
            nodes=len(graph.node),
            nodes_total=len(nodes) + function_ops,
            op_types=tuple(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
            weights=weights,
            overridable=overridable,
            constants=_constant_weights(constants),
            subgraphs=tuple(subgraphs),
            functions=tuple(f"{f.domain}:{f.name}" for f in proto.functions),
            custom_domains=tuple(
                sorted(
                    {d for d, _ in opsets if d not in STANDARD_DOMAINS}
                    | {n.domain for n in nodes if n.domain not in STANDARD_DOMAINS}
                )
            ),
            nonstandard_ops=tuple(unknown),
            external_data=tuple(
                str(p.relative_to(m.path.parent))
                for p in m.external_data
                if m.path is not None  # external data is read from a model on disk only
            ),
            external_bytes=external,
            metadata=tuple((p.key, p.value) for p in proto.metadata_props),
        ),
        tuple(nodes),
    )


def _walk(
    graph: onnx.GraphProto,
) -> Iterator[tuple[str, int, onnx.GraphProto, dict[str, str], str, str]]:
    """Every graph, depth first: (path, depth, graph, names visible from enclosing graphs,
    op type of the node holding it, attribute name)."""
    seen: dict[int, tuple[dict[str, str], list[int]]] = {}  # per scope: names so far, next node
    for s in _onnx.walk(graph):
        outer: dict[str, str] = {}
        if s.parent is not None:  # what the parent graph defines before the holder
            visible, done = seen[id(s.parent)]
            for i in range(done[0], s.index):
                node = s.parent.graph.node[i]
                visible.update({o: node.name or f"{node.op_type}_{i}" for o in node.output if o})
            done[0] = s.index
            outer = dict(visible)
        visible = dict(outer)
        visible.update({v.name: "input" for v in s.graph.input})
        visible.update({t.name: "initializer" for t in s.graph.initializer})
        seen[id(s)] = (visible, [0])
        yield s.path, s.depth, s.graph, outer, s.holder.op_type if s.holder else "", s.attribute


def _op_id(domain: str, op: str) -> str:
    return op if domain in ("", "ai.onnx") else f"{domain}:{op}"


def _known(op_id: str, versions: dict[str, int], local: set[tuple[str, str]]) -> bool:
    domain, _, op = op_id.rpartition(":")
    if (domain, op) in local:
        return True
    version = versions.get(domain, versions.get("ai.onnx" if domain == "" else domain))
    try:
        if version is not None:
            defs.get_schema(op, version, domain)
        else:
            defs.get_schema(op, domain)
        return True
    except Exception:  # SchemaError: no such op (at this opset) in onnx's registry
        return defs.has(op, domain)


def _weights(proto: onnx.ModelProto) -> tuple[Weights, int]:
    count = params = size = external = external_bytes = 0
    for t in proto.graph.initializer:
        n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        b = _tensor_bytes(t.data_type, n)
        count += 1
        params += n
        size += b
        if uses_external_data(t):
            external += 1
            external_bytes += b
    for s in proto.graph.sparse_initializer:
        n = int(np.prod(s.values.dims, dtype=np.int64)) if s.values.dims else 0
        count += 1
        params += n
        size += _tensor_bytes(s.values.data_type, n)
    return Weights(count, params, size, external), external_bytes


def _constant_weights(nodes: list[onnx.NodeProto]) -> Weights:
    params = size = 0
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                t = a.t
            elif a.HasField("sparse_tensor"):
                t = a.sparse_tensor.values
            elif a.type in (onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS):
                n = len(a.floats) + len(a.ints)
                params += n
                size += n * (4 if a.floats else 8)
                continue
            elif a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT):
                params += 1
                size += 4 if a.type == onnx.AttributeProto.FLOAT else 8
                continue
            else:
                continue
            n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
            params += n
            size += _tensor_bytes(t.data_type, n)
    return Weights(len(nodes), params, size)


def _tensor_bytes(data_type: int, elements: int) -> int:
    try:
        info = dtype_info(data_type)
    except KeyError:
        return 0
    bits = packed_bits(info.numpy)
    if bits is not None:
        return -(-elements * bits // 8)
    if info.numpy.kind == "O":
        return 0  # strings: no fixed size
    return elements * info.itemsize


def _attribute(a: onnx.AttributeProto) -> Any:
    """A JSON-ready view of an attribute value (tensors and graphs summarised)."""
    kind = a.type
    A = onnx.AttributeProto
    if kind == A.TENSOR:
        return _tensor_text(a.t)
    if kind == A.GRAPH:
        return f"graph {a.g.name or '?'} ({len(a.g.node)} nodes)"
    if kind == A.GRAPHS:
        return [f"graph {g.name or '?'} ({len(g.node)} nodes)" for g in a.graphs]
    if kind == A.TENSORS:
        return [_tensor_text(t) for t in a.tensors]
    if kind == A.SPARSE_TENSOR:
        return f"sparse {_tensor_text(a.sparse_tensor.values)}"
    if kind == A.TYPE_PROTO:
        return helper.printable_type(a.tp)
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
    return value


def _tensor_text(t: onnx.TensorProto) -> Any:
    try:
        name = dtype_info(t.data_type).name
    except KeyError:
        name = f"type {t.data_type}"
    n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
    if n <= 8 and not uses_external_data(t):
        try:
            return onnx.numpy_helper.to_array(t).tolist()
        except Exception:
            pass
    return f"tensor {name}[{', '.join(str(d) for d in t.dims)}]"


def _tensor_dict(t: TensorSpec) -> dict[str, Any]:
    return {
        "name": t.name,
        "dtype": dtype_info(t.dtype).name,
        "shape": None if t.shape is None else list(t.shape),
    }


# -- other formats ------------------------------------------------------------------------------


def _size(m: Model) -> int:
    if m.path is None:
        return len(m.data)
    return sum(p.stat().st_size for p in m.files)
