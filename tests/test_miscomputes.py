"""Backends name the models they would run and answer wrongly (`Backend.miscomputes`); the
default choice passes them over, and a caller who names one gets it with a warning.

The rules are checked two ways: on small graphs (what a rule takes and what it leaves alone,
shape arithmetic above all), and end to end on the real runtimes, where the wrong answer the
rule stands for is shown and the default's answer is the spec's.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import infer
from infer.backends import base
from infer.backends._onnx_facts import Origin, facts
from infer.device import Device
from infer.model import Model
from infer.options import Options

pytest.importorskip("openvino", reason="the rules under test are OpenVINO's and ONNX Runtime's")

F, D, I64, I32 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32
CPU = Device("cpu", 0)
vi = helper.make_tensor_value_info


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _const(name, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _openvino(model) -> str | None:
    return base.get("openvino").miscomputes(Model.load(model), CPU, Options(), None)


def _onnxruntime(model) -> str | None:
    return base.get("onnxruntime").miscomputes(Model.load(model), CPU, Options(), "cpu")


def _shape_plumbing() -> onnx.ModelProto:
    """The int64 arithmetic nearly every model holds: Shape, Gather, Mul/Div of dims, Concat,
    Reshape; a float64 detour through an exact constant (scale 2.0); Slice to INT64_MAX."""
    return _model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "zero"], ["n"]),
            helper.make_node("Mul", ["n", "three"], ["n3"]),
            helper.make_node("Div", ["n3", "three"], ["n1"]),
            helper.make_node("Unsqueeze", ["n1", "zero1"], ["n1v"]),
            helper.make_node("Concat", ["n1v", "minus1"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["flat"]),
            helper.make_node("Cast", ["s"], ["sd"], to=D),
            helper.make_node("Mul", ["sd", "two"], ["sd2"]),
            helper.make_node("Cast", ["sd2"], ["s2"], to=I64),
            helper.make_node("Slice", ["flat", "zero1", "big"], ["y0"]),
            helper.make_node("Expand", ["y0", "ones"], ["y"]),
            helper.make_node("Size", ["s2"], ["rank"]),
        ],
        [vi("x", F, ["N", 3, 4])],
        [vi("y", F, None), vi("rank", I64, [])],
        [
            _const("zero", np.array(0, np.int64)),
            _const("zero1", np.array([0], np.int64)),
            _const("three", np.array(3, np.int64)),
            _const("minus1", np.array([-1], np.int64)),
            _const("two", np.array(2.0)),
            _const("big", np.array([2**63 - 1], np.int64)),
            _const("ones", np.array([1, 1], np.int64)),
        ],
    )


# -- OpenVINO's narrowing, on graphs ----------------------------------------------------------


def test_shape_arithmetic_in_int64_and_exact_float64_is_left_alone():
    f = facts(Model.load(_shape_plumbing()))
    assert f.origin("n3") is Origin.SHAPE and f.origin("s2") is Origin.SHAPE
    assert _openvino(_shape_plumbing()) is None


def test_int64_inputs_moved_compared_cast_or_indexing_are_left_alone():
    # Token ids gathered, a mask cast to float, a sample rate compared (silero_vad's pattern),
    # ids returned as they came.
    model = _model(
        [
            helper.make_node("Gather", ["table", "ids"], ["emb"]),
            helper.make_node("Cast", ["mask"], ["maskf"], to=F),
            helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
            helper.make_node("Transpose", ["ids"], ["ids_t"]),
        ],
        [vi("ids", I64, [1, 5]), vi("mask", I64, [1, 5]), vi("sr", I64, [])],
        [
            vi("emb", F, [1, 5, 2]),
            vi("maskf", F, [1, 5]),
            vi("is16k", TensorProto.BOOL, []),
            vi("ids_t", I64, [5, 1]),
        ],
        [_const("table", np.zeros((10, 2), np.float32)), _const("rate", np.array(16000))],
    )
    assert _openvino(model) is None


def test_int64_arithmetic_on_an_input_is_named():
    model = _model(
        [helper.make_node("Mul", ["b", "two"], ["count"])],
        [vi("b", I64, ["N"])],
        [vi("count", I64, ["N"])],
        [_const("two", np.array(2, np.int64))],
    )
    why = _openvino(model)
    assert why is not None
    assert "int64 in int32" in why and "Mul node 'count'" in why and "'b'" in why


def test_int64_computed_from_float_data_and_returned_is_named():
    model = _model(
        [helper.make_node("Cast", ["x"], ["y"], to=I64)], [vi("x", F, [2])], [vi("y", I64, [2])]
    )
    assert "output 'y'" in (_openvino(model) or "")


def test_int32_widened_to_int64_counts_as_narrow_enough():
    # RoBERTa's position ids: CumSum in int32, widened, plus the padding index.
    model = _model(
        [
            helper.make_node("CumSum", ["m", "axis"], ["c"]),
            helper.make_node("Cast", ["c"], ["c64"], to=I64),
            helper.make_node("Add", ["c64", "pad"], ["pos"]),
        ],
        [vi("m", I32, [1, 5])],
        [vi("pos", I64, [1, 5])],
        [_const("axis", np.array(1, np.int64)), _const("pad", np.array(1, np.int64))],
    )
    assert facts(Model.load(model)).origin("pos") is Origin.NARROW
    assert _openvino(model) is None


@pytest.mark.parametrize(
    ("nodes", "inputs", "inits", "named"),
    [
        ([helper.make_node("Add", ["x", "x"], ["y"])], [vi("x", D, [3])], [], "Add node 'y'"),
        (  # a Cast to double of float data, then arithmetic
            [helper.make_node("Cast", ["f"], ["x"], to=D), helper.make_node("Neg", ["x"], ["y"])],
            [vi("f", F, [3])],
            [],
            "Neg node 'y'",
        ),
        (  # a float64 constant float32 cannot hold
            [
                helper.make_node("Cast", ["f"], ["x"], to=D),
                helper.make_node("Add", ["x", "c"], ["y"]),
            ],
            [vi("f", F, [3])],
            [_const("c", np.array(0.1))],
            "Add node 'y'",
        ),
        (  # even moving float64 data goes through float32
            [helper.make_node("Transpose", ["x"], ["y"])],
            [vi("x", D, [3])],
            [],
            "Transpose node 'y'",
        ),
    ],
)
def test_float64_data_is_named(nodes, inputs, inits, named):
    model = _model(nodes, inputs, [vi("y", D, [3])], inits)
    why = _openvino(model)
    assert why is not None and "float64 in float32" in why and named in why


def test_float64_inside_a_subgraph_names_its_holder():
    branch = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["z"])], "then", [], [vi("z", D, [1])]
    )
    model = _model(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        [vi("c", TensorProto.BOOL, []), vi("x", D, [1])],
        [vi("y", D, [1])],
    )
    assert "inside 'y'" in (_openvino(model) or "")


def test_the_real_models_stay_eligible_everywhere(real_model):
    for key in ("ocr_det", "ocr_rec", "ocr_cls", "silero_vad", "orientation"):
        model = Model.load(real_model(key))
        assert base.get("openvino").miscomputes(model, CPU, Options(), None) is None, key
        assert base.get("onnxruntime").miscomputes(model, CPU, Options(), "cpu") is None, key


def test_the_walk_is_cheap_and_done_once_per_model(real_model):
    model = Model.load(real_model("ocr_rec"))
    model._skeleton  # noqa: B018 - parse first: the load does, whoever checks
    start = time.perf_counter()
    _ = base.get("openvino").miscomputes(model, CPU, Options(), None)
    first = time.perf_counter() - start
    start = time.perf_counter()
    _ = base.get("openvino").miscomputes(model, CPU, Options(), None)
    again = time.perf_counter() - start
    assert facts(model) is facts(model)
    assert first < 0.5 and again <= first


# -- op rules, on graphs ----------------------------------------------------------------------


def _resize(scales, length=4) -> onnx.ModelProto:
    return _model(
        [
            helper.make_node(
                "Resize",
                ["x", "", "scales"],
                ["y"],
                mode="linear",
                coordinate_transformation_mode="align_corners",
            )
        ],
        [vi("x", F, [1, 1, 2, length])],
        [vi("y", F, None)],
        [_const("scales", np.array([1, 1, 1, scales], np.float32))],
    )


@pytest.mark.parametrize(
    ("scale", "length", "wrong"), [(0.6, 4, True), (0.5, 4, False), (2, 3, False)]
)
def test_align_corners_is_named_only_where_the_scaled_length_is_fractional(scale, length, wrong):
    for check in (_onnxruntime, _openvino):
        why = check(_resize(scale, length))
        assert (why is not None) is wrong, (check.__name__, why)
        if wrong:
            assert "align_corners" in why and "Resize node 'y'" in why


def _maxpool(kernel, stride) -> onnx.ModelProto:
    return _model(
        [
            helper.make_node(
                "MaxPool", ["x"], ["y"], kernel_shape=[kernel], strides=[stride], ceil_mode=1
            )
        ],
        [vi("x", F, [1, 1, 8])],
        [vi("y", F, None)],
    )


def test_ceil_mode_is_named_only_where_a_window_can_start_in_the_padding():
    assert _openvino(_maxpool(3, 2)) is None
    assert "ceil_mode" in (_openvino(_maxpool(1, 2)) or "")


def test_topk_and_tile_are_named_only_with_run_time_k_and_repeats():
    topk = _model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"])],
        [vi("x", F, [5])],
        [vi("v", F, [3]), vi("i", I64, [3])],
        [_const("k", np.array([3]))],
    )
    assert _openvino(topk) is None
    del topk.graph.initializer[:]  # K becomes an input
    topk.graph.input.append(vi("k", I64, [1]))
    assert "equal values" in (_openvino(topk) or "")
    tile = _model(
        [helper.make_node("Tile", ["x", "r"], ["y"])],
        [vi("x", F, [2, 3, 4, 5]), vi("r", I64, [4])],
        [vi("y", F, None)],
    )
    assert "uninitialised" in (_openvino(tile) or "")


def test_a_max_over_a_minus_inf_mask_is_named():
    model = _model(
        [
            helper.make_node("Where", ["keep", "zero", "ninf"], ["bias"]),
            helper.make_node("ReduceMax", ["bias"], ["m"], axes=[1], keepdims=1),
        ],
        [vi("keep", TensorProto.BOOL, [2, 2])],
        [vi("m", F, [2, 1])],
        [_const("zero", np.float32(0)), _const("ninf", np.float32(-np.inf))],
    )
    assert "-FLT_MAX" in (_openvino(model) or "")


# -- end to end on the runtimes ---------------------------------------------------------------


def _add6() -> onnx.ModelProto:
    """float64 Add at opset 6: ONNX Runtime has no kernel for it, so the default falls back."""
    return _model(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        [vi("a", D, [2]), vi("b", D, [2])],
        [vi("c", D, [2])],
        opset=6,
    )


def test_the_default_passes_openvino_over_for_float64_and_answers_exactly(caplog):
    feeds = {"a": np.array([1e10, 1e300]), "b": np.array([5.0, 1.0])}
    with infer.Engine.load(_add6(), device="cpu") as engine:
        assert engine.backend == "reference"
        skipped = next(a for a in engine.selection if a.backend == "openvino")
        assert skipped.verdict == "skipped" and "float64 in float32" in skipped.reason
        np.testing.assert_array_equal(engine.run(feeds)["c"], [1e10 + 5, 1e300])
    with caplog.at_level(logging.WARNING, logger="infer"):
        named = infer.Engine.load(_add6(), device="cpu", backend="openvino")
    with named:
        assert named.backend == "openvino"
        assert any("float64 in float32" in r.getMessage() for r in caplog.records)
        # What the rule stands for: OpenVINO's answer, narrowed.
        assert named.run(feeds)["c"][0] == 1e10


def test_a_list_of_backends_passes_over_too():
    model = _model(
        [helper.make_node("Mul", ["b", "two"], ["count"])],
        [vi("b", I64, [2])],
        [vi("count", I64, [2])],
        [_const("two", np.array(2, np.int64))],
    )
    b = np.array([2**30, 2**20], np.int64)
    with infer.Engine.load(model, device="cpu", backend=["openvino", "reference"]) as engine:
        assert engine.backend == "reference"
        np.testing.assert_array_equal(engine.run({"b": b})["count"], b * 2)


def test_onnxruntime_is_passed_over_where_it_miscomputes(caplog):
    # MaxUnpool with output_shape: ONNX Runtime 1.32 places values elsewhere than the spec;
    # OpenVINO cannot convert MaxUnpool, so the reference evaluator answers.
    model = _model(
        [
            helper.make_node(
                "MaxUnpool", ["x", "i", "shape"], ["y"], kernel_shape=[2, 2], strides=[2, 2]
            )
        ],
        [vi("x", F, [1, 1, 2, 2]), vi("i", I64, [1, 1, 2, 2]), vi("shape", I64, [4])],
        [vi("y", F, [1, 1, 5, 5])],
        opset=11,
    )
    feeds = {
        "x": np.array([[[[5, 6], [7, 8]]]], np.float32),
        "i": np.array([[[[5, 7], [13, 15]]]], np.int64),
        "shape": np.array([1, 1, 5, 5], np.int64),
    }
    spec = ReferenceEvaluator(model).run(None, feeds)[0]
    with infer.Engine.load(model, device="cpu") as engine:
        ort_verdict = engine.selection[0]
        assert ort_verdict.verdict == "skipped" and "MaxUnpool node 'y'" in ort_verdict.reason
        np.testing.assert_array_equal(engine.run(feeds)["y"], spec)
    with caplog.at_level(logging.WARNING, logger="infer"):
        named = infer.Engine.load(model, device="cpu", backend="onnxruntime")
    with named:
        assert named.backend == "onnxruntime"
        assert any("MaxUnpool" in r.getMessage() for r in caplog.records)
        assert not np.array_equal(named.run(feeds)["y"], spec)


def test_float4_casts_skip_openvino_which_turns_nan_into_six():
    model = _model(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT4E2M1)],
        [vi("x", F, [4])],
        [vi("y", TensorProto.FLOAT4E2M1, [4])],
        opset=23,
    )
    model.ir_version = 11
    x = np.array([1.0, np.nan, -2.0, 0.5], np.float32)
    spec = ReferenceEvaluator(model).run(None, {"x": x})[0]
    with infer.Engine.load(model, device="cpu") as engine:
        assert engine.backend == "reference"
        got = engine.run({"x": x})["y"]
    np.testing.assert_array_equal(got.astype(np.float32), spec.astype(np.float32))
    with infer.Engine.load(model, device="cpu", backend="openvino") as named:
        wrong = named.run({"x": x})["y"].astype(np.float32)
    assert wrong[1] == 6 and spec.astype(np.float32)[1] != 6
