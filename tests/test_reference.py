"""The ONNX reference evaluator backend: numpy's warnings kept inside it, onnx kernels it
corrects, and failures that name the node."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import infer

from . import models


def _one_node(node, inputs, outputs, opset=17):
    return models._model([node], inputs, outputs, opset=opset)


def _sigmoid():
    return _one_node(
        helper.make_node("Sigmoid", ["x"], ["y"]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )


X = np.array([-1000, -1, 1, 1000], np.float32)


def test_sigmoid_of_large_values_warns_nothing():
    """onnx's Sigmoid computes both branches of np.where: inf/inf in the dropped one made numpy
    print "invalid value encountered in divide" under bench and compare."""
    before = np.geterr()
    with infer.Engine.load(_sigmoid(), backend="reference") as engine, warnings.catch_warnings():
        warnings.simplefilter("error")
        y = engine.run({"x": X})["y"]
    np.testing.assert_allclose(y, [0, 0.26894143, 0.7310586, 1], rtol=1e-6)
    assert np.geterr() == before  # silenced within the run only
    with warnings.catch_warnings(), pytest.raises(RuntimeWarning):
        warnings.simplefilter("error")
        np.float32(1) / np.float32(0)


def test_compare_prints_no_numpy_warning(tmp_path):
    path = tmp_path / "sigmoid.onnx"
    onnx.save(_sigmoid(), path)
    out = subprocess.run(
        [sys.executable, "-m", "infer", "compare", str(path), "-b", "onnxruntime,reference",
         "-i", "x=[-1000.0, -1.0, 1.0, 1000.0]"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "100"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RuntimeWarning" not in out.stderr and "invalid value" not in out.stderr, out.stderr


def test_squeeze_with_negative_axes_before_opset_13():
    """onnx's Squeeze-1/11 kernel squeezed [-2, -1] one at a time, the second axis shifted
    onto N: "cannot select an axis to squeeze out", on a model ONNX Runtime runs."""
    model = _one_node(
        helper.make_node("Squeeze", ["x"], ["y"], axes=[-2, -1]),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        opset=11,
    )
    x = np.arange(3, dtype=np.float32).reshape(3, 1, 1)
    with infer.Engine.load(model, backend="reference") as engine:
        np.testing.assert_array_equal(engine.run({"x": x})["y"], [0, 1, 2])


def test_a_node_that_fails_is_named_with_its_op():
    model = _one_node(
        helper.make_node("Gather", ["data", "index"], ["y"], name="lookup"),
        [
            helper.make_tensor_value_info("data", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("index", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with (
        infer.Engine.load(model, backend="reference") as engine,
        pytest.raises(infer.RuntimeFailure) as e,
    ):
        engine.run({"data": np.ones(4, np.float32), "index": np.array([1, 9])})
    assert str(e.value).startswith(
        "reference failed to run on cpu:0: node 'lookup' (Gather): IndexError: index 9"
    ), e.value
