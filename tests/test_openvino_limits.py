"""What OpenVINO answers differently from ONNX Runtime, as docs/backends.md's OpenVINO limits say:
finite values for NaN inputs, rows of zeros for out-of-range Gather indices. Measured with
OpenVINO 2026.4; a failure here means that list needs another look."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer

pytest.importorskip("openvino")

X = np.array([1.0, np.nan, -2.0, np.inf], np.float32)


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _unary(op, **attrs):
    return _model(
        [helper.make_node(op, ["x"], ["y"], **attrs)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4] if op != "ReduceMax" else [])],
    )


def _run(proto, backend, feeds):
    with infer.Engine.load(proto, "cpu", backend=backend) as engine:
        return engine.run(feeds)["y"]


@pytest.mark.parametrize(
    ("proto", "openvino", "onnxruntime"),
    [
        (_unary("Relu"), [1, 0, 0, np.inf], [1, np.nan, 0, np.inf]),
        (_unary("ReduceMax", keepdims=0), np.inf, 1.0),
        (_unary("Softmax"), [0, np.nan, 0, np.nan], [np.nan] * 4),
        (
            _model(
                [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                [
                    numpy_helper.from_array(np.array(0, np.float32), "lo"),
                    numpy_helper.from_array(np.array(6, np.float32), "hi"),
                ],
            ),
            [1, 0, 0, 6],
            [1, np.nan, 0, 6],
        ),
    ],
    ids=["Relu", "ReduceMax", "Softmax", "Clip"],
)
def test_nan_inputs(proto, openvino, onnxruntime):
    np.testing.assert_array_equal(_run(proto, "openvino", {"x": X}), np.float32(openvino))
    np.testing.assert_array_equal(_run(proto, "onnxruntime", {"x": X}), np.float32(onnxruntime))


@pytest.mark.parametrize("index", [4, 7, -5, 100000])
def test_out_of_range_gather_gives_zeros(index):
    proto = _model(
        [helper.make_node("Gather", ["data", "idx"], ["y"], axis=0)],
        [
            helper.make_tensor_value_info("data", TensorProto.FLOAT, [4, 3]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    feeds = {"data": np.arange(12, dtype=np.float32).reshape(4, 3), "idx": np.array([1, index])}
    np.testing.assert_array_equal(_run(proto, "openvino", feeds), [[3, 4, 5], [0, 0, 0]])
    for backend in ("onnxruntime", "reference"):
        with pytest.raises(infer.RuntimeFailure):
            _run(proto, backend, feeds)
