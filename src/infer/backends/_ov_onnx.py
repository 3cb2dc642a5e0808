"""OpenVINO's ONNX frontend, checked: the ONNX models it would run wrongly (`miscomputed`, which
`supports` refuses whoever asks; `deviation`, which `miscomputes` reports so that the default
choice passes OpenVINO over), and which ONNX input or output each port of a compiled model
stands for (names, symbolic dims, dropped inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from .. import _onnx, tensors
from ..errors import CompileError
from ..model import Model, ModelFormat
from ..tensors import TensorSpec, dtype_info
from . import _onnx_rules
from ._onnx_facts import Facts, facts
from ._ov_narrowing import narrowed


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
    """Why OpenVINO would run this ONNX model and answer wrongly whatever the input, so that
    `supports` refuses it even when named ("" when no known reason).

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


def deviation(model: Model) -> str:
    """Why OpenVINO would run this ONNX model and answer differently from the spec, for
    `miscomputes` ("" when no known reason): an op it computes otherwise (`RULES`, each
    measured against the ONNX backend suite with OpenVINO 2026.4.1), or its 64-bit
    narrowing (`_ov_narrowing`)."""
    if model.format is not ModelFormat.ONNX:
        return ""
    runtime = f"OpenVINO {version()}"
    return _onnx_rules.first(model, RULES, runtime) or narrowed(model, version())


_FLOAT8_SATURATING = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
_SIGNED = {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64}


def _cast(node: onnx.NodeProto, model: Model) -> str:
    cast = node.op_type == "Cast"
    to = _onnx.attribute(node, "to") if cast else facts(model).type(node.input[1])
    if to in _FLOAT8_SATURATING and _onnx.attribute(node, "saturate", 1):
        # test_cast(like)_FLOAT(16)_to_FLOAT8E4M3FN/E5M2: NaN/inf where the spec gives 448/57344
        return "turns values beyond the float8 range into NaN or inf, where saturate=1 clamps them"
    if to == TensorProto.FLOAT4E2M1:
        return "casts NaN to float4e2m1 as 6, where the spec gives -0"  # test_cast*_to_FLOAT4E2M1
    if to == getattr(TensorProto, "FLOAT8E8M0", None) and _text(node, "round_mode", "up") == "up":
        return "rounds to float8e8m0 down (1.1 to 1), where round_mode='up' gives 2"
    return ""


def _bitshift(node: onnx.NodeProto, model: Model) -> str:
    if facts(model).type(node.input[0]) in _SIGNED:  # test_bitshift_*_int8/int32_*
        return "saturates left shifts of signed integers and shifts negative ones logically"
    return ""


def _topk(node: onnx.NodeProto, model: Model) -> str:
    if (
        facts(model).constant(node.input[1]) is None
    ):  # test_top_k_same_values*: [1, 2, 0] for [0, 1, 2]
        return "orders equal values by other than their index when K is known only at run time"
    return ""


def _resize(node: onnx.NodeProto, model: Model) -> str:
    mode = _text(node, "mode", "nearest")
    if (
        _onnx_rules.given(node, 3)
        and _text(node, "keep_aspect_ratio_policy", "stretch") != "stretch"
    ):
        return "ignores keep_aspect_ratio_policy and returns exactly `sizes`"
    if mode == "cubic" and _onnx.attribute(node, "exclude_outside", 0):
        return "computes other values for cubic interpolation with exclude_outside=1"
    if mode != "nearest" and _onnx.attribute(node, "antialias", 0):
        return "computes other values for antialiased downsampling"
    return _onnx_rules.align_corners_by_fractional_scale(node, model)


def _attention(node: onnx.NodeProto, model: Model) -> str:
    windows = [_onnx.attribute(node, k, -1) for k in ("left_window_size", "right_window_size")]
    if any(w >= 0 for w in windows):  # test_attention_*local_window*, *_bidirectional_window
        return "attends over the whole sequence, ignoring left/right_window_size"
    return _onnx_rules.causal_mask_over_past(node, model)


def _tile(node: onnx.NodeProto, model: Model) -> str:
    # test_tile: uninitialised memory, reproduced with OpenVINO's own API, for repeats given at
    # run time over 4 axes ([2, 2, 2, 2], [7, 6, 4, 2]); 2 and 3 axes measured right
    f = facts(model)
    if f.constant(node.input[1]) is not None:
        return ""
    shape = f.shape(node.input[1])
    if shape is None or not shape or shape[0] is None or shape[0] >= 4:
        return "returns uninitialised memory for repeats of 4 axes known only at run time"
    return ""


def _maxpool(node: onnx.NodeProto, model: Model) -> str:
    if _onnx.attribute(node, "ceil_mode", 0) and _text(node, "auto_pad", "NOTSET") == "NOTSET":
        kernel = _onnx.attribute(node, "kernel_shape", [])
        n = len(kernel)
        strides = _onnx.attribute(node, "strides") or [1] * n
        dilations = _onnx.attribute(node, "dilations") or [1] * n
        pads = _onnx.attribute(node, "pads") or [0] * (2 * n)
        for k, s, d, end in zip(kernel, strides, dilations, pads[n:]):
            if s > (k - 1) * d + 1 - end:  # the last window can start in the end padding
                return "counts a last window that starts in the padding (ceil_mode=1)"
    return _extreme(node, model)


def _extreme(node: onnx.NodeProto, model: Model) -> str:
    """The fully masked rows of Attention's expansion (test_attention_*fullymasked*_expanded)
    and test_reduce_max_empty_set: a max starts from -FLT_MAX (a min from FLT_MAX), so a row
    of -inf, or none, gives -FLT_MAX where the spec gives -inf. Measured for ReduceMax,
    ReduceMin and MaxPool; an infinity can reach them from a constant (a -inf mask) only
    where the model says so, so others are taken to hold finite values."""
    name, f = node.input[0], facts(model)
    if _infinite(f, name):
        return "takes the max (min) of -inf (inf) values as -FLT_MAX (FLT_MAX), not -inf (inf)"
    shape = f.shape(name)
    floating = f.type(name) in _FLOATS
    if node.op_type == "ReduceMax" and floating and shape is not None and 0 in shape:
        return "reduces an empty axis to -FLT_MAX, not -inf"  # ReduceMin's gives inf, as specified
    return ""


# Ops that carry an infinity from their value inputs to their output unchanged or summed.
_CARRY_INF = frozenset(
    {
        "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat",
        "Slice", "Gather", "Expand", "Tile", "Pad", "Where", "Cast", "CastLike", "Add", "Sub",
        "Max", "Min", "Neg",
    }
)  # fmt: skip


def _infinite(f: Facts, name: str) -> bool:
    """Whether `name` may hold an infinity taken from a small constant (a -inf attention mask),
    followed back through the ops that carry one."""
    producers = f.derived.get("producers")
    if producers is None:
        producers = {o: n for n in _onnx.nodes(f.graph) for o in n.output if o}
        f.derived["producers"] = producers
    seen, todo = set(), [name]
    while todo:
        value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        tensor = f.tensors.get(value)
        if tensor is not None:
            v = f.constant(value) if tensor.data_type in _FLOATS else None
            if v is not None and np.isinf(v.astype(np.float32)).any():
                return True
            continue
        node = producers.get(value)
        if node is not None and node.op_type in _CARRY_INF:
            todo.extend(i for _, i in f.values(node))
    return False


def _text(node: Any, name: str, default: str) -> str:
    return _onnx_rules.text(node, name, default)


RULES: dict[str, _onnx_rules.Rule] = {
    "Cast": _cast,
    "CastLike": _cast,
    "BitShift": _bitshift,
    "TopK": _topk,
    "Resize": _resize,
    "Attention": _attention,
    "Tile": _tile,
    "MaxPool": _maxpool,
    "ReduceMax": _extreme,
    "ReduceMin": _extreme,
    "DynamicQuantizeLinear": lambda node, model: (
        "rounds halves (25.5 to 25) where the spec rounds to even (26)"
    ),
    "SpaceToDepth": lambda node, model: (
        "orders mode='CRD' output channels as DCR" if _text(node, "mode", "DCR") == "CRD" else ""
    ),
    "DFT": lambda node, model: (
        "keeps the real input's last dim in a onesided DFT's output shape"
        if _onnx.attribute(node, "onesided", 0)
        else ""
    ),
    "RoiAlign": lambda node, model: (
        "takes the max of the interpolated samples, where mode='max' takes the max of the "
        "weighted corner terms"
        if _text(node, "mode", "avg") == "max"
        else ""
    ),
}
"""op type -> what OpenVINO 2026.4.1 computes differently for it (measured with the ONNX
backend suite, tests/conformance: each rule names the suite tests it comes from)."""


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
