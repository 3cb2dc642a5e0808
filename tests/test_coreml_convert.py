"""infer.convert.to_coreml: PyTorch -> Core ML packages, read back through the Core ML backend.

Converting needs torch and coremltools, both of which install on Linux; predictions on the
converted packages are marked `macos`.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import onnx
import pytest

from infer import BackendUnavailable, CompileError, Engine, Model, OptionError
from infer.backends import base
from infer.convert import to_coreml

ct = pytest.importorskip(
    "coremltools", reason="coremltools is not installed (the [test] extra has it)"
)
torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")

BACKEND = base.get("coreml")
PROBE = BACKEND.probe()
on_coreml = pytest.mark.skipif(
    not PROBE.available, reason=f"Core ML cannot run here: {PROBE.reason}"
)
logging.getLogger("coremltools").setLevel(logging.ERROR)


class Net(torch.nn.Module):
    """images: [N, 3, H, W] -> (logits [N, 2], count: int [N])."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, images):
        logits = self.fc(torch.relu(self.conv(images)).mean(dim=(2, 3)))
        return logits, (logits > 0).sum(dim=1).to(torch.int32)


def signature(path):
    return BACKEND.signature(Model.load(path))


def text(specs):
    return [repr(s) for s in specs]


def test_module_with_names_and_flexible_dims(tmp_path):
    x = torch.rand(1, 3, 16, 16)
    path = to_coreml(
        Net(),
        x,
        tmp_path / "net.mlpackage",
        output_names=["logits", "count"],
        dynamic={"images": {2: (8, 64), 3: (8, 64)}},
    )
    assert path == tmp_path / "net.mlpackage" and (path / "Manifest.json").is_file()
    s = signature(path)
    assert text(s.input_specs) == ["TensorSpec('images', [1, 3, ?, ?], float32)"]
    assert s.inputs[0].ranges == ((1, 1), (3, 3), (8, 64), (8, 64))
    assert text(s.output_specs) == [
        "TensorSpec('logits', [1, 2], float32)",
        "TensorSpec('count', [1], int32)",
    ]
    assert s.precision == "fp16" and s.model_type == "mlProgram" and s.min_macos == (13,)


def test_fp32_program_and_numpy_examples(tmp_path):
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    path = to_coreml(
        Net(), {"pixels": x}, tmp_path / "net32.mlpackage", precision="fp32", minimum_macos="14"
    )
    s = signature(path)
    assert text(s.input_specs) == ["TensorSpec('pixels', [2, 3, 8, 8], float32)"]
    assert s.precision == "fp32" and s.min_macos == (14,)


def test_exported_program(tmp_path):
    x = torch.rand(1, 3, 8, 8)
    exported = torch.export.export(Net().eval(), (x,))
    s = signature(to_coreml(exported, (x,), tmp_path / "exported.mlpackage"))
    assert text(s.input_specs) == ["TensorSpec('images', [1, 3, 8, 8], float32)"]
    assert len(s.outputs) == 2
    with pytest.raises(OptionError, match="carries its own input names and dynamic dims"):
        to_coreml(exported, (x,), tmp_path / "e2.mlpackage", dynamic={"images": {0: (1, 4)}})


def test_refusals(tmp_path):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(OptionError, match="coremltools has no ONNX converter"):
        to_coreml("model.onnx", x, tmp_path / "a.mlpackage")
    with pytest.raises(OptionError, match="no ONNX converter"):
        to_coreml(onnx.ModelProto(), x, tmp_path / "a.mlpackage")
    with pytest.raises(OptionError, match=r"must end in \.mlpackage"):
        to_coreml(Net(), x, tmp_path / "a.mlmodel")
    with pytest.raises(OptionError, match="precision 'int8' is not valid"):
        to_coreml(Net(), x, tmp_path / "a.mlpackage", precision="int8")
    with pytest.raises(OptionError, match=r"dynamic\['images'\]\[2\] = \(10, 20\) must contain"):
        to_coreml(Net(), x, tmp_path / "a.mlpackage", dynamic={"images": {2: (10, 20)}})
    with pytest.raises(OptionError, match=r"unknown input\(s\) \['x'\]"):
        to_coreml(Net(), x, tmp_path / "a.mlpackage", dynamic={"x": {2: (1, 20)}})
    with pytest.raises(OptionError, match="1 output names for 2 outputs"):
        to_coreml(Net(), x, tmp_path / "a.mlpackage", output_names=["y"])
    with pytest.raises(CompileError, match=r"torch\.jit\.trace failed on Net"):
        to_coreml(Net(), torch.rand(1, 5, 8, 8), tmp_path / "a.mlpackage")


def test_missing_torch_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees without torch
    with pytest.raises(BackendUnavailable, match=r'pip install "infer\[coreml\]" torch'):
        to_coreml(object(), np.zeros(1), tmp_path / "a.mlpackage")


@pytest.mark.macos
@on_coreml
def test_converted_package_matches_torch(tmp_path):
    net = Net().eval()
    x = torch.rand(1, 3, 16, 16)
    path = to_coreml(net, x, tmp_path / "net.mlpackage", output_names=["logits", "count"])
    with torch.no_grad():
        logits, _ = net(x)
    with Engine.load(path, device="auto") as engine:
        out = engine.run({"images": x.numpy()})
        np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=2e-2, atol=2e-2)
        assert out["count"].dtype == np.int32
