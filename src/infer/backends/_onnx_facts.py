"""What an ONNX graph says about its values before anything runs: element types, declared
static shapes, small constant values, and where each value comes from (shapes, the caller's
int64 feeds, or computed data).

The backends' `miscomputes` rules read these facts. They come from one walk over the graph
and its subgraphs, kept with the model (`facts(model)`), so several rules and several
checks of one load pay for one walk.
"""

from __future__ import annotations

import enum
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .. import _onnx
from ..model import Model

INT64, DOUBLE, BOOL = TensorProto.INT64, TensorProto.DOUBLE, TensorProto.BOOL
_SMALL_INTS = frozenset(
    {
        TensorProto.BOOL,
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT16,
        TensorProto.UINT16,
        TensorProto.INT32,
        TensorProto.INT4,
        TensorProto.UINT4,
        *(t for t in (getattr(TensorProto, n, None) for n in ("INT2", "UINT2")) if t),
    }
)
"""Integer types whose every value fits in 32 signed bits."""
CONSTANT_ELEMENTS = 4096
"""Constants up to this many elements are kept as arrays for the rules to read."""


class Origin(enum.IntEnum):
    """Where a value's numbers come from, ordered from the most to the least bounded."""

    SHAPE = 0
    """Shapes, sizes, indices and constants, and what is computed from those alone: small
    integers (exact in float32 and int32)."""
    NARROW = 1
    """Computed by the model in 32-bit (or narrower) integers and widened: fits int32."""
    FED = 2
    """An int64 graph input, moved but not computed on: what the caller feeds (ids, lengths,
    flags)."""
    DATA = 3
    """Anything else: float data, and int64 or float64 numbers the model computes."""


# Inputs (by index) that only size or index a result: their values do not flow into it.
NON_VALUE: dict[str, frozenset[int]] = {
    op: frozenset(slots)
    for op, slots in {
        "Reshape": (1,),
        "Expand": (1,),
        "Tile": (1,),
        "Slice": (1, 2, 3, 4),
        "Pad": (1, 3),
        "Squeeze": (1,),
        "Unsqueeze": (1,),
        "Gather": (1,),
        "GatherElements": (1,),
        "GatherND": (1,),
        "Scatter": (1,),
        "ScatterElements": (1,),
        "ScatterND": (1,),
        "OneHot": (0, 1),
        "TopK": (1,),
        "Resize": (1, 2, 3),
        "Upsample": (1,),
        "ConstantOfShape": (0,),
        "Split": (1,),
        "CumSum": (1,),
        "Compress": (1,),
        "Trilu": (1,),
        "RoiAlign": (2,),
        "MaxUnpool": (1, 2),
        "NonMaxSuppression": (2, 3, 4),
        "DFT": (1, 2),
        "STFT": (1, 3),
        "CenterCropPad": (1,),
        "Col2Im": (1, 2),
        "ReverseSequence": (1,),
        "Where": (0,),
        "Dropout": (1, 2),
        "AffineGrid": (1,),
        "Shape": (0,),
        "Size": (0,),
        "EyeLike": (0,),
        "RandomNormalLike": (0,),
        "RandomUniformLike": (0,),
        "CastLike": (1,),
        "Loop": (0, 1),
        "If": (0,),
    }.items()
}
_REDUCE = (
    "ReduceSum",
    "ReduceProd",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)
NON_VALUE.update({op: frozenset({1}) for op in _REDUCE})

# Outputs (by index) that hold indices or counts, whatever the inputs hold.
_INDEX_OUTPUTS: dict[str, frozenset[int] | None] = {
    "Shape": None,
    "Size": None,
    "NonZero": None,
    "NonMaxSuppression": None,
    "ArgMax": None,
    "ArgMin": None,
    "EyeLike": None,
    "SequenceLength": None,
    "TopK": frozenset({1}),
    "Unique": frozenset({1, 2, 3}),
    "MaxPool": frozenset({1}),
}
_RANDOM = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
_COMPARISONS = frozenset(
    {
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Not",
        "And",
        "Or",
        "Xor",
        "IsNaN",
        "IsInf",
    }
)


@dataclass
class Facts:
    """Per value name: element type, declared static shape, origin, and small constants."""

    graph: onnx.GraphProto
    types: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    tensors: dict[str, onnx.TensorProto] = field(default_factory=dict)
    """The small constants (initializers and Constant nodes), read into arrays on demand."""
    constants: dict[str, np.ndarray | None] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)
    """Analyses a rule builds from these facts once per model, by the rule's own key."""

    def type(self, name: str) -> int | None:
        return self.types.get(name)

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """The declared shape, a dim None where it is not a fixed number; None if unknown."""
        return self.shapes.get(name)

    def origin(self, name: str) -> Origin:
        return self.origins.get(name, Origin.DATA)

    def constant(self, name: str) -> np.ndarray | None:
        """A constant's value (an initializer or a Constant node) of at most
        CONSTANT_ELEMENTS elements; None for anything else."""
        if name not in self.constants:
            tensor = self.tensors.get(name)
            self.constants[name] = None if tensor is None else _array(tensor)
        return self.constants[name]

    def values(self, node: onnx.NodeProto) -> Iterator[tuple[int, str]]:
        """(index, name) of the node's inputs whose values flow into its result."""
        skip = NON_VALUE.get(node.op_type, frozenset())
        for i, name in enumerate(node.input):
            if name and i not in skip:
                yield i, name


_CACHE: weakref.WeakKeyDictionary[Model, Facts] = weakref.WeakKeyDictionary()


def facts(model: Model) -> Facts:
    """The facts of an ONNX model's main graph and its subgraphs (computed once per model)."""
    found = _CACHE.get(model)
    if found is None:
        found = _CACHE[model] = _build(model._skeleton.graph)
    return found


def _build(graph: onnx.GraphProto) -> Facts:
    out = Facts(graph)
    for g in _onnx.graphs(graph):
        for v in (*g.input, *g.output, *g.value_info):
            _declare(out, v)
    inits = {t.name for t in graph.initializer}
    for v in graph.input:
        if v.name not in inits:
            out.origins[v.name] = Origin.FED if out.types.get(v.name) == INT64 else Origin.DATA
    _walk(out, graph)
    return out


def _declare(out: Facts, v: onnx.ValueInfoProto) -> None:
    if not v.type.HasField("tensor_type"):
        return
    t = v.type.tensor_type
    if t.elem_type:
        out.types[v.name] = t.elem_type
    if t.HasField("shape"):
        out.shapes[v.name] = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
        )


def _constant(out: Facts, name: str, tensor: onnx.TensorProto) -> None:
    """Record an initializer or a Constant's tensor: type, shape, value when small, origin."""
    out.types.setdefault(name, tensor.data_type)
    out.shapes.setdefault(name, tuple(tensor.dims))
    external = tensor.data_location == TensorProto.EXTERNAL
    if not external and math.prod(tensor.dims) <= CONSTANT_ELEMENTS:
        out.tensors[name] = tensor
    if tensor.data_type not in (INT64, DOUBLE):
        out.origins[name] = Origin.SHAPE
        return
    # Whether the numbers fit 32 bits: read them (int64 and float64 constants are few).
    value = out.constant(name) if name in out.tensors else None if external else _array(tensor)
    out.origins[name] = _constant_origin(tensor.data_type, value, external)


def _array(tensor: onnx.TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # an element type this numpy cannot hold: no value, no harm
        return None


def _constant_origin(dtype: int, value: np.ndarray | None, external: bool) -> Origin:
    if dtype not in (INT64, DOUBLE):
        return Origin.SHAPE
    if value is None:
        return Origin.DATA if external else Origin.SHAPE
    if value.size == 0:
        return Origin.SHAPE
    if dtype == INT64:
        info = np.iinfo(np.int32)
        inside = info.min <= value.min() and value.max() <= info.max
        return Origin.SHAPE if inside else Origin.DATA
    exact = np.isfinite(value).all() and (value.astype(np.float32) == value).all()
    return Origin.SHAPE if exact else Origin.DATA


def _walk(out: Facts, graph: onnx.GraphProto) -> None:
    for t in graph.initializer:
        _constant(out, t.name, t)
    for node in graph.node:
        _node(out, node)


def _node(out: Facts, node: onnx.NodeProto) -> None:
    op, default = node.op_type, node.domain in _onnx.DEFAULT_DOMAINS
    subs = [sub for _, sub in _onnx.subgraphs(node)]
    for sub in subs:
        _enter(out, node, sub)
        _walk(out, sub)
    if op == "Constant" and default:
        _constant_node(out, node)
        return
    types = _output_types(out, node, subs) if default else [None] * len(node.output)
    origins = _output_origins(out, node, subs, types)
    for name, t, o in zip(node.output, types, origins):
        if not name:
            continue
        if t is not None:
            out.types.setdefault(name, t)
        out.origins[name] = o


def _constant_node(out: Facts, node: onnx.NodeProto) -> None:
    name = node.output[0]
    for attr in node.attribute:
        if attr.name == "value":
            _constant(out, name, attr.t)
            return
        if attr.name in ("value_int", "value_ints"):
            ints = np.array(attr.ints if attr.name == "value_ints" else attr.i, np.int64)
            _constant(out, name, numpy_helper.from_array(ints))
            return
        if attr.name in ("value_float", "value_floats"):
            floats = np.array(attr.floats if attr.name == "value_floats" else attr.f, np.float32)
            _constant(out, name, numpy_helper.from_array(floats))
            return
    out.origins[name] = Origin.DATA  # sparse or string constants: nothing the rules read


def _enter(out: Facts, node: onnx.NodeProto, sub: onnx.GraphProto) -> None:
    """Give a subgraph's formal inputs the origin of what the holder passes them."""
    names = [v.name for v in sub.input]
    if node.op_type == "Loop":
        passed: list[str | None] = [None, None, *node.input[2:]]  # iteration, condition
    else:  # Scan: state and scanned inputs line up with the node's last inputs
        passed = [None] * max(0, len(names) - len(node.input)) + list(node.input)
        passed = passed[len(passed) - len(names) :]
    for k, name in enumerate(names):
        outer = passed[k] if k < len(passed) else None
        if outer is None and node.op_type == "Loop" and k < 2:
            out.origins[name] = Origin.SHAPE
        else:
            out.origins[name] = out.origin(outer) if outer else Origin.DATA
            if outer and name not in out.types and outer in out.types:
                out.types[name] = out.types[outer]


def _output_types(out: Facts, node: onnx.NodeProto, subs: list[onnx.GraphProto]) -> list:
    op, n = node.op_type, len(node.output)
    t = out.type
    first = next((t(i) for i in node.input if i), None)
    if op in (
        "Shape",
        "Size",
        "NonZero",
        "NonMaxSuppression",
        "ArgMax",
        "ArgMin",
        "SequenceLength",
    ):
        return [INT64] * n
    if op in _COMPARISONS:
        return [BOOL] * n
    if op in ("MatMulInteger", "ConvInteger"):
        return [TensorProto.INT32] * n
    if op in ("TopK", "Unique", "MaxPool"):
        return [first] + [INT64] * (n - 1)
    if op == "Dropout":
        return [first] + [BOOL] * (n - 1)
    if op == "Cast":
        return [_onnx.attribute(node, "to")] * n
    if op == "CastLike":
        return [t(node.input[1])] * n
    if op in ("EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli"):
        return [_onnx.attribute(node, "dtype") or first] * n
    if op in ("RandomNormal", "RandomUniform"):
        return [_onnx.attribute(node, "dtype", TensorProto.FLOAT)] * n
    if op == "Multinomial":
        return [_onnx.attribute(node, "dtype", TensorProto.INT32)] * n
    if op == "ConstantOfShape":
        value = _onnx.attribute(node, "value")
        return [value.data_type if value is not None else TensorProto.FLOAT] * n
    if op == "OneHot":
        return [t(node.input[2])] * n
    if op == "Where":
        return [t(node.input[1])] * n
    if op == "DequantizeLinear":
        return [_onnx.attribute(node, "output_dtype") or t(node.input[1])] * n
    if op == "QuantizeLinear":
        zero = t(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return [zero or _onnx.attribute(node, "output_dtype") or TensorProto.UINT8] * n
    if op == "DynamicQuantizeLinear":
        return [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8][:n]
    if subs:
        body = subs[0]
        results = [t(v.name) for v in body.output]
        return (results[1:] if op == "Loop" else results)[:n] + [None] * n
    return [first] * n


def _output_origins(
    out: Facts, node: onnx.NodeProto, subs: list[onnx.GraphProto], types: list
) -> list[Origin]:
    op, n = node.op_type, len(node.output)
    if op in _RANDOM:
        return [Origin.DATA] * n
    if op == "ConstantOfShape":
        value = _onnx.attribute(node, "value")
        if value is None:
            return [Origin.SHAPE] * n
        return [_constant_origin(value.data_type, numpy_helper.to_array(value), False)] * n
    inputs = [out.origin(name) for _, name in out.values(node)]
    inputs += [out.origin(v.name) for sub in subs for v in sub.output]
    merged = max(inputs, default=Origin.SHAPE)
    if op in _INDEX_OUTPUTS:
        index = _INDEX_OUTPUTS[op]
        return [Origin.SHAPE if index is None or k in index else merged for k in range(n)]
    if op in ("Cast", "CastLike") and node.input:
        source = out.type(node.input[0])
        return [_cast_origin(merged, source, types[0])] * n
    return [merged] * n


def _cast_origin(origin: Origin, source: int | None, target: int | None) -> Origin:
    """A Cast's origin: a cast into int64 of anything but integers the model computed in 32
    bits or fed as int64 is data (1e12 cast from float does not fit int32)."""
    if origin is Origin.SHAPE:
        return origin
    if target in _SMALL_INTS:
        return min(origin, Origin.NARROW)
    if target == INT64:
        if source in _SMALL_INTS:
            return min(origin, Origin.NARROW)
        return origin if source == INT64 else Origin.DATA
    return origin
