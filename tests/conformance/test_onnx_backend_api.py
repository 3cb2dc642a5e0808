"""infer.onnx_backend as an `onnx.backend.base.Backend`, and the ONNX container types (sequences,
optionals) through Engine on every CPU backend."""

from __future__ import annotations

import unittest

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import onnx_backend, selection
from infer.backends import base
from infer.onnx_backend import InferBackend, InferRep, infer_device, one_node_model

BACKENDS = ["onnxruntime", "reference"]


def _add_model(weight_first: bool = False) -> onnx.ModelProto:
    """z = x + y * w, with the initializer w optionally listed first among the graph inputs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["y", "w"], ["yw"]), helper.make_node("Add", ["x", "yw"], ["z"])],
        "g",
        [w, x, y] if weight_first else [x, y],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array([10, 100], np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


X = np.array([1, 2], np.float32)
Y = np.array([3, 4], np.float32)
Z = X + Y * np.array([10, 100], np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepare_and_run_by_position_and_by_name(backend):
    rep = InferBackend.prepare(_add_model(), "CPU", backend=backend)
    assert isinstance(rep, InferRep)
    assert rep.engine.backend == backend
    out = rep.run([X, Y])
    np.testing.assert_array_equal(out[0], Z)
    np.testing.assert_array_equal(out["z"], Z)
    np.testing.assert_array_equal(out.z, Z)
    np.testing.assert_array_equal(rep.run({"y": Y, "x": X})[0], Z)
    rep.close()
    assert rep.engine.closed


@pytest.mark.parametrize("backend", BACKENDS)
def test_positional_inputs_follow_the_graph_order_without_initializers(backend):
    rep = InferBackend.prepare(_add_model(weight_first=True), backend=backend)
    assert rep.input_names == ["x", "y"]
    np.testing.assert_array_equal(rep.run([X, Y])[0], Z)


def test_one_array_is_the_first_input():
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(InferBackend.run_model(model, x)[0], np.maximum(x, 0))


def test_too_many_inputs_is_an_input_error():
    rep = InferBackend.prepare(_add_model(), backend="onnxruntime")
    with pytest.raises(infer.InputError, match="3 inputs given, the model takes 2"):
        rep.run([X, Y, Y])


def test_bad_feeds_are_input_errors():
    rep = InferBackend.prepare(_add_model(), backend="onnxruntime")
    with pytest.raises(infer.InputError, match="missing input"):
        rep.run([X])
    with pytest.raises(infer.InputError, match="dimension 0 must be 2"):
        rep.run([X, np.zeros(3, np.float32)])


def test_with_options_fixes_the_load_options_and_prepare_overrides_them():
    ref = InferBackend.with_options(backend="reference")
    assert ref.__name__ == "InferBackend[reference]"
    assert issubclass(ref, InferBackend)
    assert ref.prepare(_add_model()).engine.backend == "reference"
    assert ref.prepare(_add_model(), backend="onnxruntime").engine.backend == "onnxruntime"
    # The ONNX test runner passes its comparison tolerances to prepare: they are not load options.
    assert ref.prepare(_add_model(), rtol=1e-3, atol=1e-5).engine.backend == "reference"
    assert InferBackend.options == {}


def test_auto_picks_onnxruntime_and_falls_back_down_the_cpu_row():
    assert InferBackend.prepare(_add_model()).engine.backend == "onnxruntime"
    # ONNX Runtime dropped its kernels for Add-6 (opset 6): the next backend of the CPU row that
    # is installed takes the model (OpenVINO here, else the reference evaluator).
    a = np.eye(2, dtype=np.float32)
    model = one_node_model(helper.make_node("Add", ["a", "b"], ["c"]), [a, a], opset=6)
    after = [
        c.backend
        for c in selection.TABLE["cpu"]
        if c.backend != "onnxruntime" and base.get(c.backend).probe().available
    ]
    for backend in (None, ["onnxruntime", "reference"]):
        rep = InferBackend.prepare(model, backend=backend)
        assert rep.engine.backend == (after[0] if backend is None else "reference")
        verdicts = [x.verdict for x in rep.engine.selection if x.backend.startswith("onnxruntime")]
        assert verdicts == ["failed"]
        np.testing.assert_array_equal(rep.run([a, a])[0], 2 * a)


def test_a_forced_backend_that_cannot_compile_raises_an_infer_error():
    a = np.eye(2, dtype=np.float32)
    model = one_node_model(helper.make_node("Add", ["a", "b"], ["c"]), [a, a], opset=6)
    with pytest.raises(infer.CompileError, match=r"Add\(6\)"):
        InferBackend.prepare(model, backend="onnxruntime")


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_node(backend):
    node = helper.make_node("Add", ["a", "b"], ["c"])
    out = InferBackend.run_node(node, [X, Y], backend=backend)
    np.testing.assert_array_equal(out[0], X + Y)
    out = InferBackend.run_node(node, [X, Y], opset_version=14, backend=backend)
    np.testing.assert_array_equal(out["c"], X + Y)


def test_run_node_with_outputs_info_and_an_optional_input_left_out():
    node = helper.make_node("Clip", ["x", "", "hi"], ["y"])
    x = np.array([-5, 0, 5], np.float32)
    hi = np.array(1, np.float32)
    out = InferBackend.run_node(node, [x, hi], outputs_info=[(np.float32, (3,))])
    np.testing.assert_array_equal(out[0], np.minimum(x, 1))


def test_run_node_refuses_a_wrong_number_of_inputs():
    with pytest.raises(infer.InputError, match="takes inputs"):
        InferBackend.run_node(helper.make_node("Add", ["a", "b"], ["c"]), [X])


def test_devices():
    assert infer_device("CPU") == "cpu"
    assert infer_device("CUDA") == "cuda"
    assert infer_device("CUDA:1") == "cuda:1"
    with pytest.raises(infer.OptionError, match="TPU"):
        infer_device("TPU")
    assert InferBackend.supports_device("CPU")
    assert not InferBackend.supports_device("TPU")
    has_cuda = any(d.kind == "cuda" for d in infer.devices())
    assert InferBackend.supports_device("CUDA") == has_cuda
    assert InferBackend.is_compatible(_add_model(), "CPU")


# -- the module as a backend, as onnxruntime.backend is ---------------------------------------


def test_the_module_runs_onnx_backend_tests():
    suite = onnx.backend.test.BackendTest(onnx_backend, __name__)
    names = ["test_relu_cpu", "test_add_cpu", "test_matmul_2d_cpu", "test_softmax_axis_1_cpu"]
    names.append("test_if_cpu")  # a subgraph
    for name in names:
        suite.include(f"^{name}$")
    case = suite.test_cases["OnnxBackendNodeModelTest"]
    assert case.__module__ == __name__
    result = unittest.TestResult()
    unittest.TestSuite([case(name) for name in names]).run(result)
    problems = [f"{t.id()}: {tb}" for t, tb in (*result.failures, *result.errors)]
    assert problems == []
    assert (result.testsRun, result.skipped) == (len(names), [])


def test_the_module_functions_are_the_backend_class_methods():
    model = _add_model()
    rep = onnx_backend.prepare(model, "CPU", backend="reference")
    assert isinstance(rep, InferRep) and rep.engine.backend == "reference"
    np.testing.assert_array_equal(rep.run([X, Y])[0], Z)
    rep.close()
    np.testing.assert_array_equal(onnx_backend.run_model(model, [X, Y])[0], Z)
    np.testing.assert_array_equal(onnx_backend.run(model, {"x": X, "y": Y})["z"], Z)
    node = helper.make_node("Add", ["a", "b"], ["c"])
    np.testing.assert_array_equal(onnx_backend.run_node(node, [X, Y], opset_version=14)[0], X + Y)
    assert onnx_backend.supports_device("CPU") and not onnx_backend.supports_device("TPU")
    has_cuda = any(d.kind == "cuda" for d in infer.devices())
    assert onnx_backend.supports_device("CUDA") == has_cuda
    assert onnx_backend.is_compatible(model) and not onnx_backend.is_compatible(model, "TPU")


# -- ONNX container types through Engine -------------------------------------------------------


def _seq_model() -> onnx.ModelProto:
    """seq: sequence<float[N]>, x: float[N] -> out: sequence (seq with x appended), n: its length."""
    seq_t = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, ["N"]))
    graph = helper.make_graph(
        [
            helper.make_node("SequenceInsert", ["seq", "x"], ["out"]),
            helper.make_node("SequenceLength", ["out"], ["n"]),
        ],
        "g",
        [
            helper.make_value_info("seq", seq_t),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
        ],
        [
            helper.make_value_info("out", seq_t),
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _optional_model() -> onnx.ModelProto:
    """o: optional<float[2]> -> has = OptionalHasElement(o), empty = an optional with no value."""
    tensor_t = helper.make_tensor_type_proto(TensorProto.FLOAT, [2])
    opt_t = helper.make_optional_type_proto(tensor_t)
    graph = helper.make_graph(
        [
            helper.make_node("OptionalHasElement", ["o"], ["has"]),
            helper.make_node("Optional", [], ["empty"], type=tensor_t),
        ],
        "g",
        [helper.make_value_info("o", opt_t)],
        [
            helper.make_tensor_value_info("has", TensorProto.BOOL, []),
            helper.make_value_info("empty", opt_t),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_inputs_and_outputs(backend):
    engine = infer.Engine.load(_seq_model(), "cpu", backend=backend)
    spec = {s.name: s for s in engine.inputs}["seq"]
    assert (spec.kind, spec.shape, spec.dtype) == ("sequence", None, np.float32)
    assert {s.name: s.kind for s in engine.outputs} == {"out": "sequence", "n": "tensor"}
    a, b = np.ones(2, np.float32), np.arange(2, dtype=np.float32)
    out = engine.run({"seq": [a], "x": b})
    assert isinstance(out["out"], list) and len(out["out"]) == 2
    np.testing.assert_array_equal(out["out"][1], b)
    assert int(out["n"]) == 2
    # Plain Python lists and casts within a kind are accepted per element, as for tensors;
    # integers into a float element only with cast=True (issue 25: an unscaled image).
    out = engine.run({"seq": [[1.0, 2.0], np.array([1, 2], np.float16)], "x": b})
    assert [o.dtype for o in out["out"]] == [np.float32] * 3
    with pytest.raises(infer.InputError, match=r"input 'seq\[1\]' is float32.*got int16"):
        engine.run({"seq": [[1.0, 2.0], np.array([1, 2], np.int16)], "x": b})
    widening = infer.Engine.load(_seq_model(), "cpu", backend=backend, cast=True)
    out = widening.run({"seq": [[1.0, 2.0], np.array([1, 2], np.int16)], "x": b})
    assert [o.dtype for o in out["out"]] == [np.float32] * 3
    assert int(engine.run({"seq": [], "x": b})["n"]) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_feed_errors(backend):
    engine = infer.Engine.load(_seq_model(), "cpu", backend=backend)
    b = np.zeros(2, np.float32)
    with pytest.raises(
        infer.InputError, match=r"input 'seq': expected a sequence \(list\) of float32"
    ):
        engine.run({"seq": np.zeros((1, 2), np.float32), "x": b})
    with pytest.raises(infer.InputError, match=r"input 'seq\[1\]': expected dtype float32"):
        engine.run({"seq": [b, np.zeros(2, np.float64)], "x": b})


@pytest.mark.parametrize("backend", BACKENDS)
def test_optional_inputs_and_outputs(backend):
    engine = infer.Engine.load(_optional_model(), "cpu", backend=backend)
    assert engine.inputs[0].kind == "optional"
    x = np.array([1, 2], np.float32)
    out = engine.run({"o": x})
    assert bool(out["has"]) is True
    assert out["empty"] is None
    out = engine.run({"o": None})
    assert bool(out["has"]) is False


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize(("opset", "axis"), [(11, None), (11, 2), (11, -1), (13, None), (13, 1)])
def test_reference_normalizers_follow_their_opset(op, opset, axis):
    # Before opset 13 these ops flatten to 2-D at `axis` (default 1); ONNX Runtime implements
    # each version, and infer's reference backend must agree with it (onnx.reference did not).
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    model = one_node_model(node, [x], opset=opset)
    ort_y = InferBackend.run_model(model, [x], backend="onnxruntime")[0]
    ref_y = InferBackend.run_model(model, [x], backend="reference")[0]
    np.testing.assert_allclose(ref_y, ort_y, rtol=1e-5, atol=1e-6)
