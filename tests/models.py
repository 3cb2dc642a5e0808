"""Small ONNX models built in code for the tests (and the benchmarks)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(
    nodes, inputs, outputs, initializers=(), opset: int = OPSET, name: str = "g"
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), name, list(inputs), list(outputs), initializer=list(initializers)
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(
        model, full_check=True
    )  # type-checks every node: no silent dtype slips
    return model


def relu(batch: str | int = "N", width: int = 3) -> onnx.ModelProto:
    """x: float32[batch, width] -> y = relu(x). One node."""
    return _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])],
    )


def double(batch: str | int = "N") -> onnx.ModelProto:
    """x: float32[batch] -> y = x + x. A batched rank-1 tensor."""
    return _model(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch])],
    )


def multi_io() -> onnx.ModelProto:
    """Several inputs and outputs of several dtypes, sharing the dynamic batch dim "N".

    a: float32[N, 4], b: int64[N, 4], mask: bool[N, 4]
    -> sum = a + float(b) (float32), masked = where(mask, a, 0) (float32), count = b * 2 (int64)
    """
    return _model(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "bf"], ["sum"]),
            helper.make_node("Where", ["mask", "a", "zero"], ["masked"]),
            helper.make_node("Mul", ["b", "two"], ["count"]),
        ],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 4]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("masked", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("count", TensorProto.INT64, ["N", 4]),
        ],
        [
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array(2, np.int64), "two"),
        ],
    )


def bf16_add() -> onnx.ModelProto:
    """x, y: bfloat16[N] -> z = x + y. ONNX Runtime has no CPU kernel for bfloat16 Add."""
    return _model(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        [
            helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N"]),
            helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N"]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.BFLOAT16, ["N"])],
        opset=21,
    )


def bf16_cast() -> onnx.ModelProto:
    """x: float32[N] -> y = bfloat16(x), z = float32(y). Runs on ONNX Runtime's CPU provider."""
    return _model(
        [
            helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16),
            helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N"]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N"]),
        ],
        opset=21,
    )


def cnn(
    channels: int = 16,
    size: int | str = 32,
    classes: int = 10,
    depth: int = 3,
    seed: int = 0,
    batch: str | int = "N",
) -> onnx.ModelProto:
    """A small image classifier: [Conv 3x3 -> BatchNorm -> Relu] x depth -> GlobalAveragePool -> Gemm.

    input: float32[batch, 3, size, size] -> logits: float32[batch, classes]. Seeded weights.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "input", 3
    for i in range(depth):
        w = (rng.standard_normal((channels, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(
            np.float32
        )
        inits += [
            numpy_helper.from_array(w, f"conv{i}.w"),
            numpy_helper.from_array(
                rng.standard_normal(channels).astype(np.float32) * 0.1, f"conv{i}.b"
            ),
            numpy_helper.from_array(
                1 + 0.1 * rng.standard_normal(channels).astype(np.float32), f"bn{i}.scale"
            ),
            numpy_helper.from_array(
                0.1 * rng.standard_normal(channels).astype(np.float32), f"bn{i}.bias"
            ),
            numpy_helper.from_array(
                0.1 * rng.standard_normal(channels).astype(np.float32), f"bn{i}.mean"
            ),
            numpy_helper.from_array(
                1 + 0.1 * rng.random(channels).astype(np.float32), f"bn{i}.var"
            ),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [prev, f"conv{i}.w", f"conv{i}.b"],
                [f"c{i}"],
                pads=[1, 1, 1, 1],
                strides=[2, 2] if i else [1, 1],
            ),
            helper.make_node(
                "BatchNormalization",
                [f"c{i}", f"bn{i}.scale", f"bn{i}.bias", f"bn{i}.mean", f"bn{i}.var"],
                [f"n{i}"],
            ),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"]),
        ]
        prev, cin = f"r{i}", channels
    fc = (rng.standard_normal((classes, channels)) * np.sqrt(1.0 / channels)).astype(np.float32)
    inits += [
        numpy_helper.from_array(fc, "fc.w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )


def custom_op() -> onnx.ModelProto:
    """An op from a custom domain that no runtime implements: every backend must refuse it."""
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 8
    return model


def encoder(
    vocab: int = 100,
    hidden: int = 64,
    ffn: int = 256,
    *,
    int8_weights: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """A token encoder, the shape of a weight-compressed BERT block's feed-forward part.

    input_ids: int64[batch, sequence] -> Gather from an embedding table [vocab, hidden] ->
    MatMul [hidden, ffn] -> Relu -> MatMul [ffn, hidden] -> + embedding ->
    last_hidden_state: float32[batch, sequence, hidden]. With `int8_weights` the MatMul weights
    are stored int8 and dequantized in the graph (per output channel), as weight-compressed
    exports are. Outputs are of order 1. Opset 21 (the reference evaluator's DequantizeLinear).
    """
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
    inits = [numpy_helper.from_array(emb, "embeddings")]
    nodes = [helper.make_node("Gather", ["embeddings", "input_ids"], ["h0"])]

    def matmul(x: str, k: int, n: int, tag: str) -> str:
        q = rng.integers(-127, 128, (k, n)).astype(np.int8)
        scale = (rng.uniform(0.5, 1.5, n) / (np.sqrt(k) * 73)).astype(np.float32)
        if int8_weights:
            inits.extend(
                [
                    numpy_helper.from_array(q, f"{tag}.q"),
                    numpy_helper.from_array(scale, f"{tag}.scale"),
                ]
            )
            nodes.append(
                helper.make_node(
                    "DequantizeLinear", [f"{tag}.q", f"{tag}.scale"], [f"{tag}.w"], axis=1
                )
            )
        else:
            inits.append(numpy_helper.from_array(q.astype(np.float32) * scale, f"{tag}.w"))
        nodes.append(helper.make_node("MatMul", [x, f"{tag}.w"], [f"{tag}.y"]))
        return f"{tag}.y"

    up = matmul("h0", hidden, ffn, "fc1")
    nodes.append(helper.make_node("Relu", [up], ["act"]))
    down = matmul("act", ffn, hidden, "fc2")
    nodes.append(helper.make_node("Add", [down, "h0"], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden]
            )
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_decoder(
    vocab: int = 50,
    positions: int = 256,
    *,
    past: str = "past_sequence_length",
    total: str = "past_sequence_length + sequence_length",
    position_ids: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """A one-layer attention decoder with a KV cache, named as optimum exports them:
    input_ids, attention_mask [batch, total], position_ids, past_key_values.0.key/value
    [batch, 2, past, 4] -> logits [batch, sequence, vocab], present.0.key/value. Causal over
    the new tokens, masked by attention_mask: decoding with the cache equals a prefill of the
    whole sequence."""
    rng = np.random.default_rng(seed)
    hidden, heads, head = 8, 2, 4

    def w(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    def const(name: str, value) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [
        w("embed", vocab, hidden),
        w("wq", hidden, hidden),
        w("wk", hidden, hidden),
        w("wv", hidden, hidden),
        w("wo", hidden, vocab),
        const("split_heads", np.array([0, 0, heads, head], dtype=np.int64)),
        const("merge_heads", np.array([0, 0, hidden], dtype=np.int64)),
        const("one_f", np.array(1.0, dtype=np.float32)),
        const("neg", np.array(-1e4, dtype=np.float32)),
        const("scale", np.array(1 / np.sqrt(head), dtype=np.float32)),
        const("axes_12", np.array([1, 2], dtype=np.int64)),
        const("one_i", np.array([1], dtype=np.int64)),
        const("two_i", np.array([2], dtype=np.int64)),
        const("three_i", np.array([3], dtype=np.int64)),
    ]
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["tok"])]
    if position_ids:
        inits.append(w("pos_embed", positions, hidden))
        nodes += [
            helper.make_node("Gather", ["pos_embed", "position_ids"], ["pos"]),
            helper.make_node("Add", ["tok", "pos"], ["h"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["tok"], ["h"]))
    for name in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", ["h", f"w{name}"], [f"{name}_flat"]),
            helper.make_node("Reshape", [f"{name}_flat", "split_heads"], [f"{name}_4d"]),
            helper.make_node("Transpose", [f"{name}_4d"], [f"{name}_new"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        helper.make_node("Concat", ["past_key_values.0.key", "k_new"], ["present.0.key"], axis=2),
        helper.make_node(
            "Concat", ["past_key_values.0.value", "v_new"], ["present.0.value"], axis=2
        ),
        helper.make_node("Transpose", ["present.0.key"], ["k_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q_new", "k_t"], ["scores_raw"]),
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores"]),
        # Causal: new token i (at position past + i) sees the first past + i + 1 tokens.
        helper.make_node("Shape", ["present.0.key"], ["kshape"]),
        helper.make_node("Slice", ["kshape", "two_i", "three_i"], ["total_len"]),
        helper.make_node("Shape", ["q_new"], ["qshape"]),
        helper.make_node("Slice", ["qshape", "two_i", "three_i"], ["new_len"]),
        helper.make_node("Sub", ["total_len", "new_len"], ["past_len"]),
        helper.make_node("Squeeze", ["total_len"], ["total_s"]),
        helper.make_node("Squeeze", ["new_len"], ["new_s"]),
        helper.make_node("Squeeze", ["past_len"], ["past_s"]),
        helper.make_node("Range", ["zero_s", "total_s", "one_s"], ["cols"]),
        helper.make_node("Range", ["past_s", "total_s", "one_s"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "one_i"], ["rows_2d"]),
        helper.make_node("Greater", ["cols", "rows_2d"], ["future"]),
        helper.make_node("Cast", ["future"], ["future_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axes_12"], ["mask_4d"]),
        helper.make_node("Sub", ["one_f", "mask_4d"], ["masked"]),
        helper.make_node("Add", ["masked", "future_f"], ["blocked"]),
        helper.make_node("Mul", ["blocked", "neg"], ["bias"]),
        helper.make_node("Add", ["scores", "bias"], ["scores_masked"]),
        helper.make_node("Softmax", ["scores_masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "present.0.value"], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge_heads"], ["ctx_flat"]),
        helper.make_node("MatMul", ["ctx_flat", "wo"], ["logits"]),
    ]
    inits += [
        const("zero_s", np.array(0, dtype=np.int64)),
        const("one_s", np.array(1, dtype=np.int64)),
    ]
    kv_past = ["batch_size", heads, past, head]
    kv_present = ["batch_size", heads, total, head]
    inputs = [
        helper.make_tensor_value_info(
            "input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]
        ),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", total]),
    ]
    if position_ids:
        inputs.append(
            helper.make_tensor_value_info(
                "position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]
            )
        )
    inputs += [
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, kv_past),
        helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, kv_past),
    ]
    outputs = [
        helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab]
        ),
        helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, kv_present),
        helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, kv_present),
    ]
    return _model(nodes, inputs, outputs, inits)


def _conv(rng, name: str, cin: int, cout: int, k: int) -> list[onnx.TensorProto]:
    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]


def yolo(imgsz: int | None = 320, classes: int = 80, seed: int = 0) -> onnx.ModelProto:
    """A YOLO-shaped detector, as Ultralytics exports one with dynamic=True.

    images: float32[batch, 3, height, width] -> output0: float32[batch, 4 + classes, anchors]
    (anchors = height/2 * width/2), metadata imgsz "[imgsz, imgsz]" (none for None). Like
    YOLO's neck it upsamples a stride-4 map and concatenates it with the stride-2 one, so it
    runs only at sizes divisible by 4 (not at 1x1).
    """
    rng = np.random.default_rng(seed)
    heads = 4 + classes
    nodes = [
        helper.make_node("Conv", ["images", "c0.w", "c0.b"], ["c0"], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "c1.w", "c1.b"], ["c1"], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Resize", ["r1", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["r0", "up"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "head.w", "head.b"], ["head"]),
        helper.make_node("Reshape", ["head", "flat"], ["raw"]),
        helper.make_node("Sigmoid", ["raw"], ["output0"]),
    ]
    inits = [
        *_conv(rng, "c0", 3, 8, 3),
        *_conv(rng, "c1", 8, 8, 3),
        *_conv(rng, "head", 16, heads, 1),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array([0, heads, -1], np.int64), "flat"),
    ]
    model = _model(
        nodes,
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, ["batch", 3, "height", "width"]
            )
        ],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", heads, "anchors"])],
        inits,
        name="yolo",
    )
    if imgsz is not None:
        helper.set_model_props(model, {"imgsz": f"[{imgsz}, {imgsz}]", "stride": "4"})
    return model


def text_recognizer(classes: int = 40, seed: int = 0) -> onnx.ModelProto:
    """A CTC text-line recognizer shaped like PP-OCR's: x: float32[batch, 3, height, width]
    -> probs: float32[batch, steps, classes] (steps = width/4, softmax over classes)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "c0.w", "c0.b"], ["c0"], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "c1.w", "c1.b"], ["c1"], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("ReduceMean", ["c1", "height_axis"], ["col"], keepdims=0),
        helper.make_node("Transpose", ["col"], ["seq"], perm=[0, 2, 1]),
        helper.make_node("Softmax", ["seq"], ["probs"], axis=-1),
    ]
    inits = [
        *_conv(rng, "c0", 3, 8, 3),
        *_conv(rng, "c1", 8, classes, 3),
        numpy_helper.from_array(np.array([2], np.int64), "height_axis"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", "steps", classes])],
        inits,
        opset=18,
        name="recognizer",
    )
