"""A tiny decoder built with onnx.helper for the decoder's tests (and a raw ONNX Runtime loop).

One attention layer over an embedding: ids and positions are looked up (Gather), keys and
values are concatenated to the past along axis 2 and returned as the present, a causal mask
and the attention mask hide the future and the padding, and a projection gives the logits.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, WIDTH, HEADS, POSITIONS = 48, 16, 2, 64


def tiny_decoder(seed: int = 0, *, positions: int = POSITIONS) -> onnx.ModelProto:
    """input_ids, attention_mask, position_ids, past_key_values.0.{key,value} ->
    logits, present.0.{key,value}."""
    rng = np.random.default_rng(seed)
    head = WIDTH // HEADS

    def weight(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    def const(name: str, value: object, dtype: type = np.int64) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, dtype), name)

    inits = [
        weight("embed", VOCAB, WIDTH, scale=1.0),
        weight("pos_embed", positions, WIDTH, scale=1.0),
        weight("wq", WIDTH, WIDTH),
        weight("wk", WIDTH, WIDTH),
        weight("wv", WIDTH, WIDTH),
        weight("wo", WIDTH, WIDTH),
        weight("wout", WIDTH, VOCAB, scale=1.0),
        const("split_heads", [0, 0, HEADS, head]),
        const("merge_heads", [0, 0, WIDTH]),
        const("one", 1),
        const("zero", 0),
        const("axis1", [1]),
        const("axes01", [0, 1]),
        const("axes12", [1, 2]),
        const("neg", -1e9, np.float32),
        const("scale", 1.0 / np.sqrt(head), np.float32),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["embed", "input_ids"], ["tok"]),
        n("Gather", ["pos_embed", "position_ids"], ["pos"]),
        n("Add", ["tok", "pos"], ["x"]),
    ]
    for p in ("q", "k", "v"):
        nodes += [
            n("MatMul", ["x", f"w{p}"], [f"{p}_flat"]),
            n("Reshape", [f"{p}_flat", "split_heads"], [f"{p}_heads"]),
            n("Transpose", [f"{p}_heads"], [f"{p}_new"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        n("Concat", ["past_key_values.0.key", "k_new"], ["present.0.key"], axis=2),
        n("Concat", ["past_key_values.0.value", "v_new"], ["present.0.value"], axis=2),
        n("Transpose", ["present.0.key"], ["k_t"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q_new", "k_t"], ["raw_scores"]),
        n("Mul", ["raw_scores", "scale"], ["scores"]),
        # causal: query i (at absolute position total - new + i) sees keys up to it
        n("Shape", ["attention_mask"], ["mask_shape"]),
        n("Gather", ["mask_shape", "one"], ["total"]),
        n("Shape", ["input_ids"], ["ids_shape"]),
        n("Gather", ["ids_shape", "one"], ["new"]),
        n("Sub", ["total", "new"], ["start"]),
        n("Range", ["start", "total", "one"], ["q_pos"]),
        n("Range", ["zero", "total", "one"], ["k_pos"]),
        n("Unsqueeze", ["q_pos", "axis1"], ["q_col"]),
        n("LessOrEqual", ["k_pos", "q_col"], ["causal"]),
        n("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL),
        n("Unsqueeze", ["mask_bool", "axes12"], ["mask_4d"]),
        n("Unsqueeze", ["causal", "axes01"], ["causal_4d"]),
        n("And", ["mask_4d", "causal_4d"], ["allowed"]),
        n("Where", ["allowed", "scores", "neg"], ["masked"]),
        n("Softmax", ["masked"], ["attn"], axis=-1),
        n("MatMul", ["attn", "present.0.value"], ["ctx_heads"]),
        n("Transpose", ["ctx_heads"], ["ctx_t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", "merge_heads"], ["ctx"]),
        n("MatMul", ["ctx", "wo"], ["attn_out"]),
        n("Add", ["x", "attn_out"], ["h"]),
        n("MatMul", ["h", "wout"], ["logits"]),
    ]
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    past = ["batch", HEADS, "past_sequence", head]
    total = ["batch", HEADS, "past_sequence + sequence", head]
    graph = helper.make_graph(
        nodes,
        "tiny_decoder",
        [
            helper.make_tensor_value_info("input_ids", i64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", i64, ["batch", "past_sequence + sequence"]
            ),
            helper.make_tensor_value_info("position_ids", i64, ["batch", "sequence"]),
            helper.make_tensor_value_info("past_key_values.0.key", f, past),
            helper.make_tensor_value_info("past_key_values.0.value", f, past),
        ],
        [
            helper.make_tensor_value_info("logits", f, ["batch", "sequence", VOCAB]),
            helper.make_tensor_value_info("present.0.key", f, total),
            helper.make_tensor_value_info("present.0.value", f, total),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def raw_greedy(model: onnx.ModelProto, prompts: list[list[int]], new: int) -> list[list[int]]:
    """Greedy decoding written out by hand against ONNX Runtime: left padding, a mask over
    past and new tokens, positions counted over the real tokens, past fed back from numpy."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    head = WIDTH // HEADS
    past = np.zeros((len(prompts), HEADS, 0, head), np.float32)
    feeds = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "past_key_values.0.key": past,
        "past_key_values.0.value": past,
    }
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(new):
        logits, key, value = sess.run(None, feeds)
        token = logits[:, -1].argmax(-1)
        for row, t in zip(out, token):
            row.append(int(t))
        seen = mask.sum(axis=1, keepdims=True)
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
        feeds = {
            "input_ids": token[:, None].astype(np.int64),
            "attention_mask": mask,
            "position_ids": seen,
            "past_key_values.0.key": key,
            "past_key_values.0.value": value,
        }
    return out
