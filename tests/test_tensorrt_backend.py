"""The TensorRT backend on a machine without a GPU or TensorRT: probe reasons, selection, the
precision and format rules, and the CUDA helpers' errors. The GPU paths are in
test_tensorrt_gpu.py."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import infer
from infer import BackendUnavailable
from infer.backends import base
from infer.backends.base import GRAPH, NATIVE
from infer.device import Capabilities, Device, HardwareReport, probe_hardware
from infer.model import Model
from infer.options import Options
from infer.selection import BACKENDS, TABLE, Choice, needs_graph_precision

from .models import relu

HERE_HAS_GPU = any(d.kind == "cuda" for d in probe_hardware().devices)
no_gpu_here = pytest.mark.skipif(HERE_HAS_GPU, reason="this machine has an NVIDIA GPU")


def trt_backend():
    return base.get("tensorrt")


@pytest.fixture
def fresh_probe():
    b = trt_backend()
    saved = b._info
    b._info = None
    yield b
    b._info = saved


@no_gpu_here
def test_probe_says_why_it_is_unavailable():
    info = trt_backend().probe()
    assert not info.available and info.devices == ()
    assert "no CUDA driver or NVIDIA GPU" in info.reason
    assert "tensorrt is not installed" in info.reason
    assert 'pip install "infer-engine[tensorrt]"' in info.install


def test_probe_with_a_gpu_but_no_tensorrt(fresh_probe, monkeypatch):
    """The hardware report is replaced; the import of tensorrt really fails here."""
    pytest.importorskip("cuda.bindings")
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    gpu = Device("cuda", 0, "NVIDIA L4", Capabilities(vendor="NVIDIA", compute_capability=(8, 9)))
    report = HardwareReport((probe_hardware().devices[0], gpu), ())
    module = importlib.import_module("infer.backends.tensorrt")
    monkeypatch.setattr(module, "probe_hardware", lambda: report)
    info = fresh_probe.probe()
    assert not info.available
    assert info.reason.startswith("tensorrt is not installed (No module named 'tensorrt')")


def test_tensorrt_leads_the_cuda_rows():
    assert "tensorrt" in BACKENDS
    for kind in ("cuda", "gpu", "auto"):
        rows = TABLE[kind]
        labels = [r.label for r in rows]
        assert labels.index("tensorrt") < labels.index("onnxruntime[tensorrt]")
        assert labels.index("onnxruntime[tensorrt]") < labels.index("onnxruntime[cuda]")
    assert TABLE["cuda"][0] == Choice("tensorrt", "cuda")
    assert all(r.backend != "tensorrt" for r in TABLE["cpu"])


@no_gpu_here
def test_selection_skips_tensorrt_here_and_says_why():
    with infer.Engine.load(relu(), device="auto") as engine:
        first = engine.selection[0]
        assert (first.backend, first.device, first.verdict) == ("tensorrt", "cuda", "unavailable")
        assert "no CUDA driver" in first.reason and "install:" in first.reason
        assert engine.backend == "onnxruntime"
        x = np.array([[-1.0, 2.0, -3.0]], np.float32)
        np.testing.assert_array_equal(engine.run({"x": x})["y"], np.maximum(x, 0))


@no_gpu_here
def test_asking_for_tensorrt_here_says_why_not():
    with pytest.raises(BackendUnavailable, match=r"tensorrt on cuda: unavailable: no CUDA driver"):
        infer.Engine.load(relu(), backend="tensorrt")
    with pytest.raises(BackendUnavailable) as e:
        infer.Engine.load(relu(), device="cuda:0")
    lines = str(e.value).splitlines()[1:]
    assert [line.split(":")[0].strip(" -") for line in lines] == [
        "tensorrt on cuda",
        "onnxruntime[tensorrt] on cuda",
        "onnxruntime[cuda] on cuda",
    ]


@no_gpu_here
def test_backends_lists_tensorrt():
    infos = {i.name: i for i in infer.backends()}
    assert not infos["tensorrt"].available


def gpu(*precisions):
    return Device("cuda", 0, "GPU", Capabilities(precisions=frozenset(precisions)))


def test_precision_comes_from_the_graph():
    b = trt_backend()
    assert b.precisions(gpu("fp32", "fp16", "int8")) == {
        "fp32": NATIVE,
        "fp16": GRAPH,
        "int8": GRAPH,
    }
    assert b.precisions(gpu("fp32")) == {"fp32": NATIVE}  # a GPU without fast fp16 / int8
    assert b.precisions(Device("cuda", 0)) == {"fp32": NATIVE, "fp16": GRAPH, "int8": GRAPH}
    assert needs_graph_precision(b, gpu("fp32", "fp16"), Options(precision="fp16"), None)
    assert not needs_graph_precision(b, gpu("fp32", "fp16"), Options(), None)


def test_supports_onnx_and_plans():
    b = trt_backend()
    device = gpu("fp32", "fp16", "int8")
    onnx_model = Model.load(relu())
    plan = Model.load(b"ftrt" + bytes(60))
    assert b.supports(onnx_model, device, Options(precision="fp16")) is None
    assert b.supports(plan, device, Options()) is None
    why = b.supports(plan, device, Options(precision="fp16"))
    assert "precision was fixed when it was built" in why and "ONNX model" in why
    why = b.supports(onnx_model, gpu("fp32"), Options(precision="int8"))
    assert why == "runs fp32 on cuda:0, not int8"


def test_importing_infer_loads_no_gpu_library():
    code = (
        "import sys, infer\n"
        "infer.Engine\n"
        "bad = [m for m in ('tensorrt', 'cuda', 'infer.cuda', 'infer.backends.tensorrt') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@no_gpu_here
def test_cuda_helpers_fail_in_words_without_a_driver():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from infer import cuda

    assert "cudaErrorInsufficientDriver" in cuda.unavailable()
    with pytest.raises(
        cuda.CudaError, match=r"cudaMalloc\(256 B\) failed: cudaErrorInsufficientDriver"
    ):
        cuda.DeviceMemory(10)
    with pytest.raises(cuda.CudaError, match="cudaStreamCreate failed"):
        cuda.Stream()
    with pytest.raises(cuda.CudaError, match=r"cudaSetDevice\(0\) failed"):
        cuda.set_device(0)


def qdq_model(zero_point):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="quant_x"),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dequant_x"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
            numpy_helper.from_array(zero_point, "zero"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_asymmetric_quantization_is_refused_in_words():
    from infer import CompileError
    from infer.backends._trt_build import check_quantization

    check_quantization(qdq_model(np.array(0, np.int8)), "m.onnx")
    check_quantization(relu(), "m.onnx")  # no Q/DQ at all
    with pytest.raises(
        CompileError, match=r"node 'quant_x' \(QuantizeLinear\) has a uint8 zero point \[128\]"
    ):
        check_quantization(qdq_model(np.array(128, np.uint8)), "m.onnx")
    with pytest.raises(CompileError, match=r"int8 zero point \[3\].*symmetric"):
        check_quantization(qdq_model(np.array(3, np.int8)), "m.onnx")


def test_options_are_checked_before_any_transform():
    b = trt_backend()
    with pytest.raises(infer.OptionError, match=r"unknown option\(s\) \['bacth'\]"):
        b.supports(
            Model.load(relu()),
            gpu("fp32", "fp16"),
            Options(precision="fp16", backend_options={"tensorrt": {"bacth": 4}}),
        )


def test_open_dimensions_pass_tensorrt_over_instead_of_stopping_the_load():
    from . import models

    gpu = Device("cuda", 0, "GPU", Capabilities(precisions=frozenset({"fp32", "fp16", "int8"})))
    open_hw = Model.load(models.cnn(size="H"))  # input [N, 3, H, H]: only N can be derived
    reason = trt_backend().supports(open_hw, gpu, Options())
    assert reason and "leaves dimension(s)" in reason and "'H'" in reason
    assert trt_backend().supports(open_hw, gpu, Options(shapes={"input": (1, 3, 64, 64)})) is None
    with pytest.raises(
        infer.OptionError, match="unknown input"
    ):  # a wrong shapes= is still an error
        trt_backend().supports(open_hw, gpu, Options(shapes={"nope": (1, 3, 64, 64)}))
