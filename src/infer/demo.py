"""The built-in demo model: a small image classifier that `infer bench` runs with no MODEL.

It is built in code with `onnx.helper` from a fixed seed, so every machine benches the same
bytes without downloading anything: three Conv -> BatchNormalization -> Relu stages, a
residual Add, MaxPool, GlobalAveragePool and a Gemm classifier.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NAME = "demo"
INPUT = "image"
OUTPUT = "logits"
SIZE = 64
CLASSES = 10
OPSET = 17
SEED = 20240601


@functools.cache
def _serialized() -> bytes:
    return _build().SerializeToString(deterministic=True)


def model() -> onnx.ModelProto:
    """The demo CNN: image float32[N, 3, 64, 64] -> logits float32[N, 10] (a fresh copy)."""
    return onnx.load_from_string(_serialized())


def describe() -> str:
    return f"built-in demo CNN ({INPUT}: float32[N, 3, {SIZE}, {SIZE}] -> {CLASSES} classes)"


def _build() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def conv_bn_relu(x: str, cin: int, cout: int, stride: int, tag: str) -> str:
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits.extend(
            [
                numpy_helper.from_array(w, f"{tag}.weight"),
                numpy_helper.from_array(
                    (0.05 * rng.standard_normal(cout)).astype(np.float32), f"{tag}.bias"
                ),
                numpy_helper.from_array(
                    (1 + 0.1 * rng.standard_normal(cout)).astype(np.float32), f"{tag}.bn.scale"
                ),
                numpy_helper.from_array(
                    (0.1 * rng.standard_normal(cout)).astype(np.float32), f"{tag}.bn.shift"
                ),
                numpy_helper.from_array(
                    (0.1 * rng.standard_normal(cout)).astype(np.float32), f"{tag}.bn.mean"
                ),
                numpy_helper.from_array(
                    (1 + 0.1 * rng.random(cout)).astype(np.float32), f"{tag}.bn.var"
                ),
            ]
        )
        nodes.extend(
            [
                helper.make_node(
                    "Conv",
                    [x, f"{tag}.weight", f"{tag}.bias"],
                    [f"{tag}.conv"],
                    name=f"{tag}/Conv",
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                    strides=[stride, stride],
                ),
                helper.make_node(
                    "BatchNormalization",
                    [
                        f"{tag}.conv",
                        f"{tag}.bn.scale",
                        f"{tag}.bn.shift",
                        f"{tag}.bn.mean",
                        f"{tag}.bn.var",
                    ],
                    [f"{tag}.bn"],
                    name=f"{tag}/BatchNormalization",
                ),
                helper.make_node("Relu", [f"{tag}.bn"], [f"{tag}.out"], name=f"{tag}/Relu"),
            ]
        )
        return f"{tag}.out"

    x = conv_bn_relu(INPUT, 3, 16, 1, "stem")
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        )
    )
    x = conv_bn_relu("pool1", 16, 32, 2, "block1")
    y = conv_bn_relu(x, 32, 32, 1, "block2")
    nodes.append(helper.make_node("Add", [x, y], ["residual"], name="residual"))
    fc = (rng.standard_normal((CLASSES, 32)) / np.sqrt(32)).astype(np.float32)
    inits += [
        numpy_helper.from_array(fc, "head.weight"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "head.bias"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", ["residual"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["features"], name="flatten"),
        helper.make_node(
            "Gemm", ["features", "head.weight", "head.bias"], [OUTPUT], name="head", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "infer_demo_cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", CLASSES])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="infer.demo",
        doc_string=describe(),
    )
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto
