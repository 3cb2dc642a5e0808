"""Casts to the sub-byte integer types on the reference evaluator follow the spec, whatever
ml_dtypes is installed: round half to even, then keep the type's low bits (int4.md's rule)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import infer

# (name, bits, signed, opset): INT2/UINT2 came with opset 25 (onnx 1.20).
TYPES = [
    ("INT4", 4, True, 21),
    ("UINT4", 4, False, 21),
    ("INT2", 2, True, 25),
    ("UINT2", 2, False, 25),
]
X = np.array([*range(-9, 16), 2.5, 3.5, -2.5, 0.5, 1.5, 7.5, -8.5, 1.7, -1.7], np.float32)


def _spec(x: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """The spec's answer, written out: nearest integer (ties to even), then the low bits."""
    out = []
    for v in x.tolist():
        n = round(v) % (1 << bits)  # Python's round: ties to even
        out.append(n - (1 << bits) if signed and n >= 1 << (bits - 1) else n)
    return np.array(out, np.int8)


def _cast_model(to: int, opset: int, like: bool) -> onnx.ModelProto:
    """x: float32[N] -> Cast (or CastLike) to `to`, back to int8 so every backend can return it."""
    if like:
        target = helper.make_tensor("t", to, [1], [0])
        nodes = [
            helper.make_node("Constant", [], ["t"], value=target),
            helper.make_node("CastLike", ["x", "t"], ["q"]),
        ]
    else:
        nodes = [helper.make_node("Cast", ["x"], ["q"], to=to)]
    nodes.append(helper.make_node("Cast", ["q"], ["y"], to=TensorProto.INT8))
    graph = helper.make_graph(
        nodes,
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11 if opset >= 25 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("like", [False, True], ids=["Cast", "CastLike"])
@pytest.mark.parametrize(("name", "bits", "signed", "opset"), TYPES, ids=[t[0] for t in TYPES])
def test_reference_casts_to_sub_byte_integers_as_the_spec_says(name, bits, signed, opset, like):
    if not hasattr(TensorProto, name) or onnx.defs.onnx_opset_version() < opset:
        pytest.skip(f"onnx {onnx.__version__} has no {name} (opset {opset})")
    model = _cast_model(getattr(TensorProto, name), opset, like)
    with infer.Engine.load(model, backend="reference") as engine:
        got = engine.run({"x": X})["y"]
    np.testing.assert_array_equal(got, _spec(X, bits, signed), err_msg=f"{X}")
