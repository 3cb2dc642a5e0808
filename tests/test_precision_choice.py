"""What a precision no fast backend here runs does, and `infer build`'s check run (issue 25,
item 7): it stops with the backends passed over and the alternatives, instead of building for
the reference evaluator; the check runs at the shapes `infer run` takes and fails the command."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer

from . import models

pytest.importorskip("onnxruntime", reason="the fast backends under test are the installed ones")
pytest.importorskip("openvino", reason="the fast backends under test are the installed ones")

F = TensorProto.FLOAT
vi = helper.make_tensor_value_info


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m infer ARGS` in a fresh process, as a user runs it."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def topk_model() -> onnx.ModelProto:
    """Relu then TopK with K given at run time: OpenVINO answers it wrongly (equal values out of
    index order), so the default passes OpenVINO over, and ONNX Runtime's CPU provider has no
    fp16: nothing fast here runs it at fp16, whatever the CPU."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("TopK", ["r", "k"], ["v", "i"])],
        "g",
        [vi("x", F, [1, 8]), vi("k", TensorProto.INT64, [1])],
        [vi("v", F, [1, None]), vi("i", TensorProto.INT64, [1, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def detector(imgsz: int = 64) -> onnx.ModelProto:
    """A YOLO-shaped detector: images[batch, 3, height, width] with Ultralytics' `imgsz` in its
    metadata; a stride-2 branch upsampled and joined to a stride-1 one, which holds only for
    even sizes (at 1x1, as a YOLO at 1x1, the Concat fails)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w"], ["a"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["images", "w"], ["b"], pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Resize", ["b", "", "scales"], ["up"], mode="nearest"),
            helper.make_node("Concat", ["a", "up"], ["c"], axis=1),
            helper.make_node("Reshape", ["c", "flat"], ["f"]),
            helper.make_node("Sigmoid", ["f"], ["output0"]),
        ],
        "g",
        [vi("images", F, ["batch", 3, "height", "width"])],
        [vi("output0", F, ["batch", 8, "anchors"])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
            numpy_helper.from_array(np.array([0, 8, -1], np.int64), "flat"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"imgsz": f"[{imgsz}, {imgsz}]", "task": "detect"})
    onnx.checker.check_model(model, full_check=True)
    return model


def test_fp16_that_no_fast_backend_here_runs_stops_with_why_and_the_alternatives():
    with pytest.raises(infer.PrecisionError) as err:
        infer.Engine.load(topk_model(), "cpu", precision="fp16")
    text = str(err.value)
    assert "no fast backend here runs fp16" in text
    # each backend passed over, and why
    assert "onnxruntime[cpu] on cpu:0: unsupported: runs fp32, int8 on cpu:0, not fp16" in text
    assert "openvino on cpu:0: skipped: answers wrongly" in text
    assert "reference on cpu:0: skipped: the slowest backend" in text
    # what would run: another precision here, a device that runs fp16, or the reference named
    assert "Run it at fp32 (onnxruntime[cpu])" in text
    assert "a device that runs fp16: cuda (tensorrt, onnxruntime)" in text
    assert "backend='reference' runs fp16 all the same, slowly" in text


def test_the_reference_evaluator_runs_fp16_when_named():
    feeds = {"x": np.arange(8, dtype=np.float32)[None] - 3, "k": np.array([3], np.int64)}
    with infer.Engine.load(topk_model(), "cpu", backend="reference", precision="fp16") as e:
        assert e.backend == "reference" and e.precision.startswith("fp16")
        np.testing.assert_allclose(e.run(feeds)["v"], [[4, 3, 2]])
    listed = ["onnxruntime", "reference"]  # named among others: the caller asked for it too
    with infer.Engine.load(topk_model(), "cpu", backend=listed, precision="fp16") as e:
        assert e.backend == "reference"


def test_fp32_still_falls_back_to_the_reference_evaluator():
    with infer.Engine.load(models.bf16_add(), "cpu", backend=["onnxruntime", "reference"]) as e:
        assert e.backend == "reference"


def test_build_fp16_that_no_fast_backend_runs_exits_2_with_the_reason(tmp_path):
    path = tmp_path / "topk.onnx"
    onnx.save(topk_model(), path)
    result = run_cli("build", path, "--device", "cpu", "--precision", "fp16")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: no fast backend here runs fp16" in result.stderr
    assert "Run it at fp32" in result.stderr and "built for" not in result.stdout


def test_build_checks_a_detector_at_its_metadata_size(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(detector(imgsz=64), path)
    result = run_cli("build", path, "--device", "cpu", "--backend", "onnxruntime")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checked: one run on random inputs at images=1x3x64x64" in result.stdout
    assert "failed" not in result.stderr


def test_build_whose_check_run_fails_exits_1_with_the_reason(tmp_path):
    # x[N, L] reshaped to a fixed 2x2: it compiles, and fails at L=1 (nothing sizes L)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "g",
        [vi("x", F, ["N", "L"])],
        [vi("y", F, [2, 2])],
        [numpy_helper.from_array(np.array([2, 2], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "reshape.onnx"
    onnx.save(model, path)
    result = run_cli("build", path, "--device", "cpu", "--backend", "onnxruntime")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "built for onnxruntime" in result.stdout
    assert "error: the check run on random inputs at x=1x1 failed" in result.stderr
    assert "--no-check skips it" in result.stderr
    # sized where it fits, the same build passes its check
    fits = run_cli("build", path, "--device", "cpu", "-b", "onnxruntime", "--shape", "x=2x2")
    assert fits.returncode == 0, fits.stdout + fits.stderr
    assert "at x=2x2" in fits.stdout
