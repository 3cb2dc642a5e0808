"""What the int8 summary says, and what `accept_best` keeps (issue 25, item 9): the reason a
budget is missed (accuracy, or speed), never a best graph slower than the fp32 it replaces, and
relative errors that stay finite where the reference output holds zeros (accuracy, compare)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import Budget, Calibration
from infer._diff import diff
from infer.budget import Figure
from infer.transforms.int8_search import Int8Report

from . import models
from .precision_data import image_feeds

F = TensorProto.FLOAT
vi = helper.make_tensor_value_info


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "cache"))


def _report(value: float, speedup: float, *, met: bool = False, kept: int = 273) -> Int8Report:
    """The detector's report from the issue: accuracy at its limit, 0.79x fp32."""
    return Int8Report(
        met=met,
        budget="relative error <= 1.0% on others, >= 1x the speed of fp32",
        figures=(Figure("output0", "rel_error", value, 0.01),),
        kept=tuple((f"n{i}", "Conv") for i in range(kept)),
        speedup=speedup,
        fp32_ms=10.0,
        int8_ms=10.0 / speedup,
        backend="onnxruntime[cpu]",
        validation=8,
        held_out=True,
        search_s=30.0,
        bounded_s=25.0,
        evaluations=9,
        stopped="met with 273 nodes in float",
        quantized="int8 (QDQ, minmax, 32 samples)",
        min_speedup=1.0,
    )


def test_the_summary_names_speed_when_the_accuracy_was_met():
    text = _report(0.01, 0.79).summary()
    assert text.startswith(
        "budget NOT met: accuracy met (output0: relative error 1.000% (budget <= 1.000%) on 8 "
        "held-out feeds), slower than fp32 (0.79x on onnxruntime[cpu])"
    ), text
    assert "273 nodes kept in float" in text
    # faster than fp32 but short of a higher bar: says which bar
    faster = _report(0.01, 1.1)
    faster = Int8Report(**{**faster.__dict__, "min_speedup": 1.5})
    assert "short of the speed budget (1.10x fp32 on onnxruntime[cpu], budget >= 1.5x)" in (
        faster.summary()
    )
    # the accuracy missed: the figure is the reason, as before
    missed = _report(0.02, 1.3).summary()
    assert missed.startswith("budget NOT met: output0: relative error 2.000% (budget <= 1.000%)")
    assert "accuracy met" not in missed
    assert _report(0.005, 1.3, met=True).summary().startswith("budget met: output0")
    # the long form says it too
    assert "missed: accuracy met (output0" in str(_report(0.01, 0.79))


def test_accept_best_never_keeps_a_graph_slower_than_fp32():
    # A one-conv CNN of 8x8 pixels: int8's Quantize/Dequantize steps cost more than the
    # convolution they save, so every int8 graph here runs slower than fp32 (about 0.65x).
    model = models.cnn(channels=4, size=8, depth=1)
    budget = Budget(max_drop=1.0, max_rel_error=1.0, accept_best=True, time_limit=2.0)
    with infer.Engine.load(
        model,
        "cpu",
        backend="onnxruntime",
        precision="int8",
        calibration=Calibration(image_feeds(20, 8, 0), budget=budget),
    ) as engine:
        report = engine.precision_report
        assert report is not None and report.speedup is not None
        assert report.speedup < 1, f"the premise: int8 slower here ({report.speedup:.2f}x)"
        assert report.accuracy_met and not report.met
        assert report.runs == "fp32"
        assert engine.precision.startswith("fp32 (int8 not used: budget NOT met: accuracy met")
        assert "slower than fp32" in engine.precision
        assert "fp32 runs in its place" in engine.precision
        assert "runs: fp32" in str(report)
        # it is the fp32 graph: no Q/DQ, and the same answers as an fp32 engine
        x = image_feeds(1, 8, 5)[0]
        with infer.Engine.load(model, "cpu", backend="onnxruntime") as fp32:
            np.testing.assert_array_equal(engine(x), fp32(x))


def _shifted(shift: float) -> onnx.ModelProto:
    """y = relu(x) + shift: with shift 0 the output holds zeros wherever x <= 0."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "s"], ["y"])],
        "g",
        [vi("x", F, [2, 8])],
        [vi("y", F, [2, 8])],
        [numpy_helper.from_array(np.array(shift, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_relative_error_is_finite_where_the_reference_holds_zeros():
    want = np.array([0.0, 0.0, 2.0, 4.0])
    d = diff("y", [want + 0.001], [want])
    assert d.max_rel == pytest.approx(0.001 / 4)  # of the output's largest magnitude
    zeros = diff("y", [np.full(3, 1e-4)], [np.zeros(3)])
    assert zeros.max_rel == pytest.approx(1e-4 / 1e-2)  # an all-zero output: the floor
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
    with (
        infer.Engine.load(_shifted(0.001), "cpu", backend="onnxruntime") as got,
        infer.Engine.load(_shifted(0.0), "cpu", backend="onnxruntime") as want_engine,
    ):
        report = infer.accuracy(got, reference=want_engine, feeds=[x])
    assert report["y"].max_rel == pytest.approx(0.001, rel=1e-3)
    assert "max rel 0.001" in str(report) and "inf" not in str(report)
    assert "relative to the reference output's largest magnitude" in str(report)


def test_compare_prints_a_finite_max_rel_next_to_pass(tmp_path):
    # y = x*a - x*b with a = 1 + 2^-14, b = 1: 0 everywhere at fp16 (a rounds to 1), a tiny
    # x * 2^-14 at fp32; the fp16 run is the baseline, so the reference holds only zeros.
    a = np.array(1 + 2**-14, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "a"], ["xa"]),
            helper.make_node("Mul", ["x", "b"], ["xb"]),
            helper.make_node("Sub", ["xa", "xb"], ["y"]),
        ],
        "g",
        [vi("x", F, [1, 16])],
        [vi("y", F, [1, 16])],
        [
            numpy_helper.from_array(a, "a"),
            numpy_helper.from_array(np.array(1, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    args = ["compare", str(path), "-d", "cpu", "-b", "reference@fp16,onnxruntime", "--atol", "1e-3"]
    result = subprocess.run(
        [sys.executable, "-m", "infer", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, COLUMNS="160"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("y "))
    assert "pass" in row and "inf" not in row, result.stdout
    assert "max rel: max abs over the output's largest magnitude (at least 0.01)" in result.stdout
