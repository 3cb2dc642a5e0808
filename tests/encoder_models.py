"""BERT-shaped encoders built in code, for the tests and benchmarks of sequence batching."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .models import _model

BATCH, SEQUENCE = "batch_size", "sequence_length"


def encoder(
    *,
    vocab: int = 100,
    hidden: int = 16,
    heads: int = 2,
    layers: int = 2,
    ffn: int | None = None,
    max_positions: int = 64,
    mask: bool = True,
    token_types: bool = False,
    positions: bool = False,
    pooling: str = "mean",
    seed: int = 0,
) -> onnx.ModelProto:
    """A BERT-shaped encoder: word (+ position, + token type) embedding Gathers, LayerNorm, then
    `layers` blocks of multi-head self-attention (additive mask from attention_mask: padding
    gets -10000) and a GELU feed-forward, each with a residual and a LayerNorm.

    Inputs: input_ids int64[batch_size, sequence_length], attention_mask (mask=True),
    token_type_ids (token_types=True), position_ids (positions=True; else positions are
    0..sequence_length-1 taken from a table of max_positions rows inside the graph).
    Outputs: last_hidden_state float32[batch_size, sequence_length, hidden] and pooled
    float32[batch_size, hidden]: the masked mean over tokens (pooling="mean") or the first
    token's state (pooling="cls").
    """
    rng = np.random.default_rng(seed)
    ffn = ffn or 4 * hidden
    head = hidden // heads
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(name: str, *shape: int, scale: float = 1.0) -> str:
        value = rng.standard_normal(shape) * scale / math.sqrt(shape[0] if len(shape) > 1 else 1)
        return const(name, value.astype(np.float32))

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def layer_norm(x: str, name: str) -> str:
        gamma = const(f"{name}.g", np.ones(hidden, np.float32))
        beta = const(f"{name}.b", np.zeros(hidden, np.float32))
        return node("LayerNormalization", [x, gamma, beta], f"{name}.out", axis=-1, epsilon=1e-5)

    def linear(x: str, name: str, fan_in: int, fan_out: int) -> str:
        w = weight(f"{name}.w", fan_in, fan_out)
        b = const(f"{name}.b", (0.02 * rng.standard_normal(fan_out)).astype(np.float32))
        return node("Add", [node("MatMul", [x, w], f"{name}.mm"), b], f"{name}.out")

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [BATCH, SEQUENCE])]
    x = node("Gather", [weight("word", vocab, hidden, scale=0.5), "input_ids"], "word.out")
    table = weight("position", max_positions, hidden, scale=0.5)
    if positions:
        inputs.append(
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, [BATCH, SEQUENCE])
        )
        pos = node("Gather", [table, "position_ids"], "pos.out")
    else:
        shape = node("Shape", ["input_ids"], "ids.shape")
        length = node("Gather", [shape, const("one", np.array(1, np.int64))], "ids.length", axis=0)
        zero, step = const("zero", np.array(0, np.int64)), const("step", np.array(1, np.int64))
        pos = node("Gather", [table, node("Range", [zero, length, step], "pos.ids")], "pos.out")
    x = node("Add", [x, pos], "embed.pos")
    if token_types:
        inputs.append(
            helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [BATCH, SEQUENCE])
        )
        types = node("Gather", [weight("type", 2, hidden, scale=0.5), "token_type_ids"], "type.out")
        x = node("Add", [x, types], "embed.type")
    x = layer_norm(x, "embed.ln")

    bias = None
    if mask:
        inputs.append(
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [BATCH, SEQUENCE])
        )
        m = node("Cast", ["attention_mask"], "mask.f", to=TensorProto.FLOAT)
        one = const("one.f", np.array(1.0, np.float32))
        big = const("neg.big", np.array(-10000.0, np.float32))
        additive = node("Mul", [node("Sub", [one, m], "mask.inv"), big], "mask.add")
        bias = node("Unsqueeze", [additive, const("axes12", np.array([1, 2], np.int64))], "bias")

    split_shape = const("split.shape", np.array([0, 0, heads, head], np.int64))
    merge_shape = const("merge.shape", np.array([0, 0, hidden], np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(head), np.float32))
    for i in range(layers):
        p = f"l{i}"

        def heads_of(t: str, name: str) -> str:
            r = node("Reshape", [t, split_shape], f"{name}.r")
            return node("Transpose", [r], f"{name}.t", perm=[0, 2, 1, 3])

        q = heads_of(linear(x, f"{p}.q", hidden, hidden), f"{p}.q")
        k = heads_of(linear(x, f"{p}.k", hidden, hidden), f"{p}.k")
        v = heads_of(linear(x, f"{p}.v", hidden, hidden), f"{p}.v")
        kt = node("Transpose", [k], f"{p}.kt", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, kt], f"{p}.qk"), scale], f"{p}.scores")
        if bias is not None:
            scores = node("Add", [scores, bias], f"{p}.masked")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = node(
            "Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t", perm=[0, 2, 1, 3]
        )
        ctx = node("Reshape", [ctx, merge_shape], f"{p}.ctx.m")
        x = layer_norm(
            node("Add", [x, linear(ctx, f"{p}.o", hidden, hidden)], f"{p}.res1"), f"{p}.ln1"
        )
        h = linear(x, f"{p}.up", hidden, ffn)
        # GELU: h * 0.5 * (1 + erf(h / sqrt(2)))
        erf = node(
            "Erf",
            [
                node(
                    "Mul", [h, const(f"{p}.rs2", np.array(1 / math.sqrt(2), np.float32))], f"{p}.hs"
                )
            ],
            f"{p}.erf",
        )
        gate = node("Add", [erf, const(f"{p}.one", np.array(1.0, np.float32))], f"{p}.gate1")
        act = node(
            "Mul",
            [node("Mul", [h, gate], f"{p}.hg"), const(f"{p}.half", np.array(0.5, np.float32))],
            f"{p}.gelu",
        )
        x = layer_norm(
            node("Add", [x, linear(act, f"{p}.down", ffn, hidden)], f"{p}.res2"), f"{p}.ln2"
        )
    last = node("Identity", [x], "last_hidden_state")

    if pooling == "cls":
        node("Gather", [last, const("first", np.array(0, np.int64))], "pooled", axis=1)
    elif mask:
        weights = node("Unsqueeze", ["mask.f", const("axis2", np.array([2], np.int64))], "mask.w")
        axis1 = const("axis1", np.array([1], np.int64))
        masked = node("Mul", [last, weights], "masked")
        total = node("ReduceSum", [masked, axis1], "sum", keepdims=0)
        count = node("ReduceSum", ["mask.f", axis1], "count", keepdims=1)
        node("Div", [total, count], "pooled")
    else:
        node("ReduceMean", [last], "pooled", axes=[1], keepdims=0)
    outputs = [
        helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, [BATCH, SEQUENCE, hidden]
        ),
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [BATCH, hidden]),
    ]
    return _model(nodes, inputs, outputs, inits)
