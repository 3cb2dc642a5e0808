"""Where OpenVINO's 64-bit narrowing changes an ONNX model's answer.

OpenVINO's CPU plugin computes float64 in float32 and int64 in int32 (measured with 2026.4:
1e10 + 5 in float64 gives 1e10, 1e300 gives FLT_MAX, an int64 input of 2**40 + 1 moved
through a Transpose comes back as 1, 2**20 * 2**20 as 0; its GPU and NPU plugins have no
64-bit types either). Nearly every model holds int64 shape arithmetic (Shape, Gather of
shapes, Reshape targets), which narrowing leaves exact, so the rule follows where numbers come
from (`_onnx_facts.Origin`) and refuses only:

- float64 data: any node reading a float64 value that is not shape arithmetic or an exact
  float32 constant (an input, a Cast to double of data, a float64 weight), or a float64 output
  so computed. Even data movement (Transpose, Concat) goes through float32.
- int64 arithmetic on numbers that are not shape arithmetic: an int64 graph input, or int64
  numbers the model computes (a Cast of float data, constants beyond int32), flowing into Add,
  Mul, ReduceSum, CumSum, ... (the result can leave int32 however small the inputs).
- int64 numbers the model computes from data (not fed, not shapes), read by anything but data
  movement and indexing, or returned as an output.

int64 inputs that are only moved, compared, cast or used as indices (token ids, masks, sample
rates) are taken to hold what their names say: values that fit int32.
"""

from __future__ import annotations

import onnx

from .. import _onnx
from ..model import Model
from ._onnx_facts import DOUBLE, INT64, Facts, Origin, facts

ARITHMETIC = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Mod",
        "Pow",
        "Neg",
        "Abs",
        "Sum",
        "Mean",
        "CumSum",
        "CumProd",
        "MatMul",
        "Gemm",
        "Einsum",
        "Det",
        "BitShift",
        "BitwiseAnd",
        "BitwiseOr",
        "BitwiseXor",
        "BitwiseNot",
        "ReduceSum",
        "ReduceProd",
        "ReduceMean",
        "ReduceL1",
        "ReduceL2",
        "ReduceSumSquare",
        "ReduceLogSum",
        "ReduceLogSumExp",
    }
)
"""Ops whose int64 result can leave the int32 range of their operands."""
MOVEMENT = frozenset(
    {
        "Identity",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "Expand",
        "Tile",
        "Pad",
        "Where",
        "Compress",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "ReverseSequence",
        "DepthToSpace",
        "SpaceToDepth",
        "Dropout",
        "If",
        "Loop",
        "Scan",
        "Optional",
        "OptionalGetElement",
        "SequenceConstruct",
        "SequenceAt",
        "SequenceInsert",
        "SplitToSequence",
        "ConcatFromSequence",
    }
)
"""Ops that move int64 numbers without computing on them (narrowing shows only at the end)."""


def narrowed(model: Model, version: str) -> str:
    """Why OpenVINO's narrowing would change this ONNX model's answer ("" when it would not)."""
    f = facts(model)
    graph = model._skeleton.graph
    for node, holders in _onnx.walk_nodes(graph):
        if node.domain not in _onnx.DEFAULT_DOMAINS:
            continue
        why = _reads(f, node)
        if why:
            where = f" (inside {_onnx.node_name(holders[0])!r})" if holders else ""
            return f"OpenVINO {version} {why}{where}"
    fed = {v.name for v in graph.input}
    for v in graph.output:
        t, origin = f.type(v.name), f.origin(v.name)
        if v.name in fed:
            continue
        if t == DOUBLE and origin > Origin.SHAPE:
            return (
                f"OpenVINO {version} computes float64 in float32: output {v.name!r} is float64 data"
            )
        if t == INT64 and origin is Origin.DATA:
            return (
                f"OpenVINO {version} computes int64 in int32: output {v.name!r} holds int64 "
                "numbers the model computes from data"
            )
    return ""


def _reads(f: Facts, node: onnx.NodeProto) -> str:
    """What the node reads that narrowing would change, as text ("" for nothing)."""
    op, name = node.op_type, _onnx.node_name(node)
    for _, value in f.values(node):
        t, origin = f.type(value), f.origin(value)
        if t == DOUBLE and origin > Origin.SHAPE:
            return f"computes float64 in float32: {op} node {name!r} reads float64 data {value!r}"
        if t != INT64:
            continue
        if op in ARITHMETIC and origin >= Origin.FED:
            source = "an int64 input" if origin is Origin.FED else "int64 data"
            return (
                f"computes int64 in int32: {op} node {name!r} computes on {source} "
                f"({value!r}), whose result can leave the int32 range"
            )
        if origin is Origin.DATA and op not in MOVEMENT:
            return (
                f"computes int64 in int32: {op} node {name!r} reads {value!r}, int64 numbers "
                "the model computes from data"
            )
    return ""
