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
