"""OpenVINO's ONNX frontend, checked: the ONNX models it would run wrongly, and which ONNX input
or output each port of a compiled model stands for (names, symbolic dims, dropped inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import _onnx, tensors
from ..errors import CompileError
from ..model import Model, ModelFormat
from ..tensors import TensorSpec, dtype_info


def version() -> str:
    """OpenVINO's version, without its build suffix ("2026.4.1")."""
    import openvino as ov

    return ov.get_version().split("-")[0]


def string_io(model: Model) -> str:
    """The ONNX model's string inputs/outputs, as text ("" when it has none)."""
    from onnx import TensorProto

    graph = model._skeleton.graph
    names = [
        v.name
        for v in (*graph.input, *graph.output)
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == TensorProto.STRING
    ]
    return ", ".join(names)


def miscomputed(model: Model) -> str:
    """Why OpenVINO would run this ONNX model and answer wrongly ("" when no known reason).

    Measured with OpenVINO 2026.4 against the ONNX backend suite: its RNN/GRU/LSTM ignore
    layout=1 (batch first) and run the batch as the sequence (test_*_batchwise).
    """
    for node in _onnx.nodes(model._skeleton.graph):
        recurrent = node.op_type in ("RNN", "GRU", "LSTM") and node.domain in _onnx.DEFAULT_DOMAINS
        if recurrent and _onnx.attribute(node, "layout", 0):
            return (
                f"OpenVINO {version()} runs {node.op_type} with layout=1 (batch first) as "
                f"if it were layout=0: node {_onnx.node_name(node)!r}"
            )
    return ""


def specs(
    compiled: Any, model: Model
) -> tuple[list[TensorSpec], list[TensorSpec], list[tuple[int, str]]]:
    """Input and output specs, and which inputs OpenVINO has a port for ([(port, name)]).

    For ONNX models the inputs are the graph's declared inputs in its order, with names and
    symbolic dims from the ONNX graph (OpenVINO keeps no dim names). OpenVINO drops some inputs
    (those no output depends on, or whose value it never reads); they stay in the specs (a
    feed that includes them is valid) and are not handed to OpenVINO.
    """
    if model.format is not ModelFormat.ONNX:
        inputs = [_spec(port, {}) for port in compiled.inputs]
        outputs = [_spec(port, {}) for port in compiled.outputs]
        return inputs, outputs, [(i, s.name) for i, s in enumerate(inputs)]
    graph = model._skeleton.graph
    initializers = {t.name for t in graph.initializer}
    onnx_in = {
        v.name: tensors.spec_from_value_info(v) for v in graph.input if v.name not in initializers
    }
    onnx_out = {v.name: tensors.spec_from_value_info(v) for v in graph.output}
    names = _input_names(list(compiled.inputs), onnx_in, model)
    ported = {name: _spec(port, onnx_in, name) for port, name in zip(compiled.inputs, names)}
    inputs = [ported.get(name, spec) for name, spec in onnx_in.items()]
    _check_dropped(inputs, set(ported), model)
    return (
        inputs,
        [_spec(port, onnx_out) for port in compiled.outputs],
        list(enumerate(names)),
    )


def _input_names(ports: list[Any], onnx_in: Mapping[str, TensorSpec], model: Model) -> list[str]:
    """The ONNX input each of OpenVINO's input ports stands for.

    A port usually carries its input's name. Where an input flows unchanged to an output
    (Identity, Dropout at inference), OpenVINO's ONNX frontend names the Parameter after the
    output instead. Its Parameters keep the graph's input order (less the inputs it drops), so
    such a port is the input between its named neighbours, or the one of those that fits it
    (element type, rank, static dims); where that leaves a choice, the model is refused rather
    than fed the wrong input.
    """
    names = list(onnx_in)
    index = {n: i for i, n in enumerate(names)}
    found: list[int | None] = [
        min((index[n] for n in port.get_names() if n in index), default=None) for port in ports
    ]
    for k, port in enumerate(ports):
        if found[k] is not None:
            continue
        lo = max((f for f in found[:k] if f is not None), default=-1) + 1
        nxt = next((j for j in range(k + 1, len(ports)) if found[j] is not None), len(ports))
        after = found[nxt] if nxt < len(ports) else None
        hi = len(names) if after is None else after
        if hi - lo == nxt - k:  # none of these inputs was dropped: they are in order
            found[k] = lo
            continue
        fits = [i for i in range(lo, hi) if _fits(port, onnx_in[names[i]])]
        if len(fits) == 1:
            found[k] = fits[0]
            continue
        raise CompileError(
            f"OpenVINO's input {port.get_any_name()!r} of {model!r} carries none of the ONNX "
            f"inputs' names, and which of {[names[i] for i in range(lo, hi)]} it stands for "
            "cannot be told"
        )
    return [names[f] for f in found if f is not None]


def _fits(port: Any, spec: TensorSpec) -> bool:
    """Whether an OpenVINO port can be the ONNX input `spec`: same element type and rank, and
    no static dims that differ."""
    if dtype_info(port.get_element_type().get_type_name()).numpy != spec.dtype:
        return False
    pshape = port.get_partial_shape()
    if pshape.rank.is_dynamic or spec.shape is None:
        return True
    if pshape.rank.get_length() != len(spec.shape):
        return False
    return all(
        not (d.is_static and isinstance(want, int)) or d.get_length() == want
        for d, want in zip(pshape, spec.shape)
    )


# (op, input index) whose value ONNX says is not read at inference: Dropout's ratio when the
# node has no training_mode input (Dropout is then the identity).
_UNREAD_AT_INFERENCE = {("Dropout", 1)}


def _check_dropped(inputs: Sequence[TensorSpec], ported: set[str], model: Model) -> None:
    """Refuse a model whose ONNX inputs OpenVINO dropped although their values matter.

    OpenVINO's ONNX frontend drops inputs no output depends on, but also some whose use it
    does not implement (measured with 2026.4: LSTM's peephole input P, DFT's runtime axis, a
    float8 QuantizeLinear's zero point): a feed for those would be ignored and the answer
    silently wrong. An input may be dropped when it holds no elements or when no node reads
    its value.
    """
    dropped = [
        s.name
        for s in inputs
        if s.name not in ported and not (s.shape is not None and 0 in s.shape)
    ]
    if not dropped:
        return
    readers = _readers(model._skeleton.graph)
    for name in dropped:
        if name in readers:
            op, where = readers[name]
            raise CompileError(
                f"OpenVINO dropped input {name!r} of {model!r}, which {op} node {where!r} "
                "reads: its value would be ignored"
            )


def _readers(graph: Any) -> dict[str, tuple[str, str]]:
    """{value name: (op, node name) of its first reader} over a graph and its subgraphs (a
    value a subgraph reads counts as read by the node holding the subgraph)."""
    out: dict[str, tuple[str, str]] = {}
    for node, holders in _onnx.walk_nodes(graph):
        outermost = holders[0] if holders else node
        reader = (outermost.op_type, _onnx.node_name(outermost))
        training = node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]
        for i, name in enumerate(node.input):
            unread = (node.op_type, i) in _UNREAD_AT_INFERENCE and not training
            if name and not unread:
                out.setdefault(name, reader)
    return out


def _spec(port: Any, onnx: Mapping[str, TensorSpec], name: str | None = None) -> TensorSpec:
    """A port's spec, named `name`, else the first ONNX name it carries, else OpenVINO's."""
    if name is None:
        names = port.get_names()
        name = next((n for n in onnx if n in names), None) or port.get_any_name()
    dtype = dtype_info(port.get_element_type().get_type_name()).numpy
    pshape = port.get_partial_shape()
    if pshape.rank.is_dynamic:
        return TensorSpec(name, None, dtype)
    known = onnx.get(name)
    symbols = known.shape if known is not None and known.shape is not None else ()
    dims: list[int | str | None] = []
    for axis, d in enumerate(pshape):
        if d.is_static:
            dims.append(d.get_length())
        else:
            symbol = symbols[axis] if axis < len(symbols) else None
            dims.append(symbol if isinstance(symbol, str) else None)
    return TensorSpec(name, tuple(dims), dtype)
