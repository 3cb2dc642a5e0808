"""The ONNX side of `Preprocess`: the resize geometry numpy and the graph share, the graph
builder, and `build`, which prepends a model's preprocessing to it.

Resizing is bilinear (or nearest) with the half-pixel convention, antialiasing off: the same
definition as ONNX `Resize(mode="linear", coordinate_transformation_mode="half_pixel")`, with
out-of-range coordinates clamped to the edge. It is emitted as index arithmetic in int64 plus
`Gather` nodes rather than as a `Resize` node, for two reasons:

- Runtimes compute `Resize`'s source coordinates in float32, each in its own way, so on a
  1080p frame two backends (or a backend and numpy) disagree by up to ~1e-3 after
  normalization. Integer coordinates and one correctly rounded division per weight give the
  same answer on every backend and in numpy.
- The gathers pick the source pixels while they are still uint8, so only the pixels the
  output needs are converted to float, never the whole full-resolution frame.

`placement` and `source_index` are written once, over `Math`, which computes each op in numpy
or emits it as a node: numpy (`Preprocess.apply`) and the graph agree bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from .. import _onnx
from ..errors import ModelError, OptionError
from ..tensors import TensorSpec, dtype_info, graph_inputs

METADATA_KEY = "infer.preprocess"
"""metadata_props key under which a fused model records its specs as JSON."""

MIN_OPSET = 9  # Where, int64 Less/Greater


class Spec(Protocol):
    """What `build` needs of a resolved spec (preprocess.py's ImagePreprocess, TensorPreprocess)."""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]: ...

    def _raw_spec(self, spec: TensorSpec, dims: tuple[str, str]) -> TensorSpec: ...

    def _emit(self, g: Builder, raw: str, spec: TensorSpec) -> str: ...


def specs_json(specs: Mapping[str, Spec]) -> str:
    """The specs as canonical JSON ({input name: spec dict})."""
    return json.dumps({n: s.to_dict() for n, s in specs.items()}, sort_keys=True)


# -- geometry, shared by numpy and the graph ------------------------------------------------


def placement(mode: str, fh: Any, fw: Any, th: int, tw: int, g: Builder | None = None) -> Any:
    """((resized_h, offset_h), (resized_w, offset_w)) for a frame fh x fw and target th x tw.

    Integer arithmetic only, identical in numpy (ints) and in the graph (int64 scalars):
    the scaled side is round-half-up(side * target / other side).
    """
    m = Math(g)
    if mode == "stretch":
        return (th, 0), (tw, 0)
    # letterbox scales by the smaller of th/fh and tw/fw (fits), center_crop by the larger (covers).
    lhs = m.mul(fw, th)  # th / fh <= tw / fw  <=>  th * fw <= tw * fh
    rhs = m.mul(fh, tw)
    # letterbox: th/fh <= tw/fw (height limits); center_crop: th/fh >= tw/fw (height covers)
    use_height = m.not_(m.less(rhs, lhs)) if mode == "letterbox" else m.not_(m.less(lhs, rhs))
    # scaled by th / fh: width = round(fw * th / fh); by tw / fw: height = round(fh * tw / fw)
    w_by_h = m.round_div(m.mul(fw, th), fh)
    h_by_w = m.round_div(m.mul(fh, tw), fw)
    rh = m.max1(m.where(use_height, th, h_by_w))
    rw = m.max1(m.where(use_height, w_by_h, tw))
    if mode == "letterbox":
        oh = m.floordiv(m.sub(th, rh), 2)
        ow = m.floordiv(m.sub(tw, rw), 2)
    else:
        oh = m.neg(m.floordiv(m.sub(rh, th), 2))
        ow = m.neg(m.floordiv(m.sub(rw, tw), 2))
    return (rh, oh), (rw, ow)


@dataclass(frozen=True)
class Axis:
    """Source indices (and weights) for each output pixel along one axis."""

    i0: Any
    i1: Any | None  # None for nearest
    weight: Any | None  # float32, weight of i1
    valid: Any  # bool: inside the resized frame (what letterbox keeps)


def source_index(interp: str, t: int, s: Any, r: Any, o: Any, g: Builder | None = None) -> Axis:
    """Output pixels 0..t-1 sample a frame axis of size s resized to r and placed at o.

    linear (half-pixel): x = (i - o + 0.5) * s / r - 0.5, clamped to [0, s - 1];
    i0 = floor(x), weight = x - i0 as (n mod d) / d with n = (2(i-o)+1)s - r, d = 2r.
    nearest: floor((i - o + 0.5) * s / r), the source pixel whose centre is nearest.
    """
    m = Math(g)
    pos = m.sub(m.arange(t), o)  # position in the resized frame
    valid = m.and_(m.not_(m.less(pos, 0)), m.less(pos, r))
    last = m.sub(r, 1)
    pos = m.where(m.less(pos, 0), 0, m.where(m.less(last, pos), last, pos))
    smax = m.sub(s, 1)
    if interp == "nearest":
        i0 = m.floordiv(m.mul(m.add(m.mul(pos, 2), 1), s), m.mul(r, 2))
        i0 = m.where(m.less(smax, i0), smax, i0)
        return Axis(i0, None, None, valid)
    n = m.sub(m.mul(m.add(m.mul(pos, 2), 1), s), r)
    n = m.where(m.less(n, 0), 0, n)
    d = m.mul(r, 2)
    i0 = m.floordiv(n, d)
    rem = m.sub(n, m.mul(i0, d))
    weight = m.fdiv(m.to_float(rem), m.to_float(d))
    i1 = m.add(i0, 1)
    i1 = m.where(m.less(smax, i1), smax, i1)
    return Axis(i0, i1, weight, valid)


class Math:
    """The integer/float ops `placement` and `source_index` need, on numpy values or as nodes.

    With a builder, an op becomes a node only when an operand is one (a node name); ops on
    known values are computed here, so the graph holds only what depends on the frame's size.
    """

    def __init__(self, g: Builder | None) -> None:
        self.g = g

    def _v(self, x: Any) -> str:
        if isinstance(x, str):
            return x
        arr = np.asarray(x)
        return self.g.const(arr if arr.dtype in (np.bool_, np.float32) else arr.astype(np.int64))  # type: ignore[union-attr]

    def _op(self, op: str, *args: Any, fn: Any) -> Any:
        if self.g is None or not any(isinstance(a, str) for a in args):
            return fn(*args)
        return self.g.op(op, [self._v(a) for a in args])

    def arange(self, t: int) -> Any:
        return np.arange(t, dtype=np.int64)

    def add(self, a: Any, b: Any) -> Any:
        return self._op("Add", a, b, fn=lambda x, y: np.add(x, y, dtype=np.int64))

    def sub(self, a: Any, b: Any) -> Any:
        return self._op("Sub", a, b, fn=lambda x, y: np.subtract(x, y, dtype=np.int64))

    def mul(self, a: Any, b: Any) -> Any:
        return self._op("Mul", a, b, fn=lambda x, y: np.multiply(x, y, dtype=np.int64))

    def neg(self, a: Any) -> Any:
        return self._op("Neg", a, fn=lambda x: np.negative(x, dtype=np.int64))

    def floordiv(self, a: Any, b: Any) -> Any:
        # Only used on non-negative operands, where ONNX's truncating Div is floor division.
        return self._op("Div", a, b, fn=lambda x, y: np.floor_divide(x, y, dtype=np.int64))

    def round_div(self, a: Any, b: Any) -> Any:
        """round-half-up(a / b) for positive a, b: (2a + b) // 2b."""
        return self.floordiv(self.add(self.mul(a, 2), b), self.mul(b, 2))

    def less(self, a: Any, b: Any) -> Any:
        return self._op("Less", a, b, fn=np.less)

    def not_(self, a: Any) -> Any:
        return self._op("Not", a, fn=np.logical_not)

    def and_(self, a: Any, b: Any) -> Any:
        return self._op("And", a, b, fn=np.logical_and)

    def where(self, c: Any, a: Any, b: Any) -> Any:
        return self._op(
            "Where", c, a, b, fn=lambda c, x, y: np.asarray(np.where(c, x, y)).astype(np.int64)
        )

    def max1(self, a: Any) -> Any:
        return self.where(self.less(a, 1), 1, a)

    def to_float(self, a: Any) -> Any:
        if isinstance(a, str):
            return self.g.op("Cast", [a], to=TensorProto.FLOAT)  # type: ignore[union-attr]
        return np.asarray(a).astype(np.float32)

    def fdiv(self, a: Any, b: Any) -> Any:
        """float32 a / b, correctly rounded (IEEE division) in numpy and in every runtime."""
        return self._op("Div", a, b, fn=lambda x, y: np.divide(x, y, dtype=np.float32))


def np_along(v: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * 4
    shape[axis] = -1
    return np.asarray(v).reshape(shape)


def np_sample(x: np.ndarray, ys: Axis, xs: Axis, hax: int, wax: int, interp: str) -> np.ndarray:
    if interp == "nearest":
        return x.take(ys.i0, axis=hax).take(xs.i0, axis=wax).astype(np.float32)
    assert ys.i1 is not None and xs.i1 is not None  # linear: source_index gave both neighbours
    assert ys.weight is not None and xs.weight is not None
    r0, r1 = x.take(ys.i0, axis=hax), x.take(ys.i1, axis=hax)
    a = r0.take(xs.i0, axis=wax).astype(np.float32)
    b = r0.take(xs.i1, axis=wax).astype(np.float32)
    c = r1.take(xs.i0, axis=wax).astype(np.float32)
    d = r1.take(xs.i1, axis=wax).astype(np.float32)
    # Materialised weights: numpy broadcasts a stride-0 axis over a short inner one slowly.
    wx = np.ascontiguousarray(np.broadcast_to(np_along(xs.weight, wax), a.shape))
    wy = np.ascontiguousarray(np.broadcast_to(np_along(ys.weight, hax), a.shape))
    top = a + (b - a) * wx
    bottom = c + (d - c) * wx
    return top + (bottom - top) * wy


def onnx_along(g: Builder, v: Any, axis: int) -> str:
    """`v` (a node, or a value known when building) laid along `axis` of a rank-4 tensor."""
    if not isinstance(v, str):
        return g.const(np_along(v, axis))
    shape = [1] * 4
    shape[axis] = -1
    return g.op("Reshape", [v, g.const(np.asarray(shape, np.int64))])


def onnx_sample(
    g: Builder,
    x: str,
    ys: Axis,
    xs: Axis,
    axes: tuple[int, int, int],
    channels: int,
    interp: str,
) -> str:
    hax, wax, cax = axes

    def gather(data: str, index: Any, axis: int) -> str:
        return g.op(
            "Gather", [data, index if isinstance(index, str) else g.const(index)], axis=axis
        )

    def as_float(v: str) -> str:
        return g.op("Cast", [v], to=TensorProto.FLOAT)

    if interp == "nearest":
        return as_float(gather(gather(x, ys.i0, hax), xs.i0, wax))
    r0, r1 = gather(x, ys.i0, hax), gather(x, ys.i1, hax)
    a, b = as_float(gather(r0, xs.i0, wax)), as_float(gather(r0, xs.i1, wax))
    c, d = as_float(gather(r1, xs.i0, wax)), as_float(gather(r1, xs.i1, wax))
    wx, wy = onnx_along(g, xs.weight, wax), onnx_along(g, ys.weight, hax)
    # Weights broadcast over the channel axis when it is innermost are slow to broadcast in
    # some runtimes (ONNX Runtime: ~10x); repeat them over the channels instead.
    if cax == 3:
        wx = g.op("Tile", [wx, g.const(np.asarray([1, 1, 1, channels], np.int64))])
    top = g.op("Add", [a, g.op("Mul", [g.op("Sub", [b, a]), wx])])
    bottom = g.op("Add", [c, g.op("Mul", [g.op("Sub", [d, c]), wx])])
    return g.op("Add", [top, g.op("Mul", [g.op("Sub", [bottom, top]), wy])])


# -- the graph ------------------------------------------------------------------------------


class Builder:
    """Collects nodes and constants for one input's preprocessing, every name under `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: Any) -> str:
        if isinstance(value, float):
            value = np.float32(value)
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = self._name("const")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=f"{out}_node", **attrs)
        )
        return out


def build(proto: onnx.ModelProto, specs: Mapping[str, Spec]) -> onnx.ModelProto:
    """The fused model: each spec's nodes feed the model input it names (`specs` resolved)."""
    opset = _onnx.opset(proto)
    if opset is None:
        raise ModelError("the model imports no default ONNX opset")
    if opset < MIN_OPSET:
        raise OptionError(
            f"preprocess needs a model of opset >= {MIN_OPSET}; this one is opset {opset} "
            "(convert it with onnx.version_converter.convert_version)"
        )
    inputs = {s.name: s for s in graph_inputs(proto.graph)}
    taken = _all_names(proto.graph)
    dim_names = _dim_names(proto, specs)
    nodes, initializers, raw_inputs, outputs, io_map = [], [], [], [], []
    for name, spec in specs.items():
        g = Builder(_fresh_prefix(f"infer_pre/{name}/", taken))
        model_input = inputs[name]
        out = spec._emit(g, name, model_input)
        raw = spec._raw_spec(model_input, dim_names[name])
        raw_inputs.append(_value_info(raw))
        outputs.append(_value_info(TensorSpec(out, model_input.shape, model_input.dtype)))
        io_map.append((out, name))
        nodes += g.nodes
        initializers += g.initializers
    pre = helper.make_graph(nodes, "infer_preprocess", raw_inputs, outputs, initializers)
    pre_model = helper.make_model(pre, opset_imports=[helper.make_opsetid("", opset)])
    pre_model.ir_version = proto.ir_version
    onnx.checker.check_model(pre_model)  # small: catches a malformed preprocessing graph early
    merged = compose.merge_graphs(pre, proto.graph, io_map, name=proto.graph.name)
    # merge_graphs lists the raw inputs first; keep the model's own input order.
    order = {v.name: i for i, v in enumerate(proto.graph.input)}
    ordered = sorted(merged.input, key=lambda v: order.get(v.name, len(order)))
    del merged.input[:]
    merged.input.extend(ordered)
    merged.doc_string = proto.graph.doc_string
    fused = onnx.ModelProto()
    for field, value in proto.ListFields():  # everything but the graph, without copying it
        if field.name == "graph":
            continue
        if hasattr(value, "extend"):  # repeated
            getattr(fused, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # message
            getattr(fused, field.name).CopyFrom(value)
        else:
            setattr(fused, field.name, value)
    fused.graph.CopyFrom(merged)
    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_KEY] = specs_json(specs)
    helper.set_model_props(fused, props)
    return fused


def _value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    shape = None if spec.shape is None else [d if d is not None else "" for d in spec.shape]
    return helper.make_tensor_value_info(spec.name, dtype_info(spec.dtype).onnx, shape)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _fresh_prefix(prefix: str, taken: set[str]) -> str:
    """`prefix`, or `prefix` with a number, such that no model name starts with it."""
    candidate, n = prefix, 0
    while any(t.startswith(candidate) for t in taken):
        n += 1
        candidate = f"{prefix[:-1]}_{n}/"
    return candidate


def _dim_names(proto: onnx.ModelProto, specs: Mapping[str, Spec]) -> dict[str, tuple[str, str]]:
    """Names for the raw frames' dynamic height and width, distinct per input and from the
    model's own dimension names (inputs sharing a name would have to share a size)."""
    used = set()
    for v in proto.graph.input:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param:
                used.add(d.dim_param)
    images = [n for n, s in specs.items() if s.kind == "image"]
    out = {}
    for name in specs:
        base = ("height", "width") if len(images) == 1 else (f"{name}_height", f"{name}_width")
        if used & set(base):
            base = (f"{name}_height", f"{name}_width")
        out[name] = base
    return out
