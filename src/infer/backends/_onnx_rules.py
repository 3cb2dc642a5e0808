"""ONNX semantics that runtimes are known to compute differently, as predicates over nodes,
for the backends' `miscomputes`: the walk that applies a backend's rules, and the rules that
more than one runtime shares.

A rule takes a node of the default domain and its model and returns what the node does that
its runtime answers differently ("" when nothing); a rule that needs more than the node's
attributes reads the model's `Facts` (built on first use, once per model). The walk returns the first
rule's text with the node named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx

from .. import _onnx
from ..model import Model, ModelFormat
from ._onnx_facts import facts

Rule = Callable[[onnx.NodeProto, Model], str]


def first(model: Model, rules: Mapping[str, Rule], runtime: str) -> str:
    """ "<runtime> <what the node does>: node '<name>'" for the first node a rule of its op
    type matches, "" when none does. Only the op types named in `rules` are looked at, so a
    model without them costs one pass over its node types."""
    if model.format is not ModelFormat.ONNX:
        return ""
    for node, holders in _onnx.walk_nodes(model._skeleton.graph):
        rule = rules.get(node.op_type)
        if rule is None or node.domain not in _onnx.DEFAULT_DOMAINS:
            continue
        why = rule(node, model)
        if why:
            inside = f" inside {_onnx.node_name(holders[0])!r}" if holders else ""
            return f"{runtime} {why}: {node.op_type} node {_onnx.node_name(node)!r}{inside}"
    return ""


def text(node: onnx.NodeProto, name: str, default: str = "") -> str:
    """A string attribute, decoded."""
    value = _onnx.attribute(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def given(node: onnx.NodeProto, index: int) -> str:
    """The name of the node's input `index`, "" when it is absent or left empty."""
    return node.input[index] if len(node.input) > index else ""


# -- rules shared by several runtimes ---------------------------------------------------------


def align_corners_by_fractional_scale(node: onnx.NodeProto, model: Model) -> str:
    """Resize with align_corners and scales whose output length is not length * scale.

    The spec maps x_out to x_out * (in - 1) / (in * scale - 1), with the unrounded length
    in * scale (onnx.reference); ONNX Runtime 1.32 and OpenVINO 2026.4 use the rounded output
    length instead (test_resize_downsample_scales_*_align_corners: 4.0 where the spec gives
    3.142857). The two agree where in * scale is whole; scales not known when the model is
    loaded, or a length not fixed in the graph with a fractional scale, count as differing.
    """
    if text(node, "coordinate_transformation_mode", "half_pixel") != "align_corners":
        return ""
    scales_name = given(node, 2)
    if not scales_name or given(node, 3):
        return ""
    f = facts(model)
    scales = f.constant(scales_name)
    if scales is None:
        return "maps align_corners coordinates by the rounded output length, and scales are not known when the model is loaded"
    if scales.size == 0:
        return ""
    shape = f.shape(node.input[0])
    axes = _onnx.attribute(node, "axes") or range(len(scales))
    for axis, scale in zip(axes, scales.tolist()):
        length = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        whole = float(scale).is_integer() if length is None else (length * scale).is_integer()
        if not whole:
            return (
                "maps align_corners coordinates by the rounded output length, where the spec "
                f"takes length * scale (scale {scale:g} on axis {axis})"
            )
    return ""


def causal_mask_over_past(node: onnx.NodeProto, model: Model) -> str:
    """Attention with is_causal=1, an attn_mask and past key/value: ONNX Runtime 1.32 and
    OpenVINO 2026.4 both place the causal mask differently from onnx.reference over the
    cached positions (test_attention_4d_with_past_and_present_qk_matmul_bias_*_mask_causal);
    without the mask or without the past they agree."""
    causal = _onnx.attribute(node, "is_causal", 0)
    if causal and given(node, 3) and given(node, 4):
        return "combines is_causal=1 with an attn_mask over past keys differently from the spec"
    return ""
