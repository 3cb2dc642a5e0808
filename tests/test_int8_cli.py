"""`infer build --precision int8` and `infer compare ...@int8` with calibration and budget options."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from .precision_data import image_feeds
from .test_cli import _restore_logging, cli  # noqa: F401 - the fixture applies here too
from .test_int8_search import outlier_cnn


def _flat(text: str) -> str:
    """The text with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_cnn(), str(model))
    folders = {}
    for name, seed in (("calib", 0), ("val", 1)):
        folder = tmp_path / name
        folder.mkdir()
        for i, x in enumerate(image_feeds(40, 16, seed)):
            np.save(folder / f"{i:03d}.npy", x[0])
        folders[name] = folder
    return model, folders["calib"], folders["val"]


def test_build_int8_meets_its_budget_and_names_the_nodes_kept_in_float(files):
    model, calib, val = files
    result = cli(
        "build", model, "-d", "cpu", "-b", "onnxruntime", "-p", "int8",
        "--calibration", calib, "--validation", val,
        "--max-drop", "0.05", "--min-speedup", "0",  # speed measured, not required (shared CPU)
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    err, out = _flat(result.stderr), _flat(result.stdout)
    assert "calibration: 40 samples" in err and f"measured on {val}" in err
    assert "budget met" in out
    assert "kept in float: conv3 (Conv)" in out


def test_build_int8_that_misses_its_budget_fails_with_the_figures(files):
    model, calib, _ = files
    args = ["build", model, "-d", "cpu", "-b", "onnxruntime", "-p", "int8", "--calibration", calib]
    result = cli(*args, "--min-speedup", "1e6")
    assert result.exit_code == 2
    err = _flat(result.stderr)
    assert "does not meet its budget" in err and "x the speed of fp32" in err
    kept = cli(*args, "--min-speedup", "1e6", "--accept-best")  # the cached search, taken
    assert kept.exit_code == 0, kept.stderr
    assert "budget NOT met" in _flat(kept.stdout)


def test_compare_takes_calibration_and_budget_options(files):
    model, calib, val = files
    result = cli(
        "compare", model, "-d", "cpu", "-b", "onnxruntime,onnxruntime@int8",
        "--calibration", calib, "--validation", val, "--max-drop", "0.05", "--min-speedup", "0",
        "--min-top1", "0.9", "--rtol", "1", "--atol", "1",
    )  # fmt: skip
    assert "budget met" in _flat(result.stdout), result.stdout + result.stderr
    assert result.exit_code == 0, result.stdout
    assert cli("compare", model, "-b", "onnxruntime", "--calibration", calib).exit_code == 2


def test_run_takes_calibration_as_build_does(files, tmp_path):
    """`infer run -p int8` advised calibration= and had no --calibration: it has build's."""
    import os
    import subprocess
    import sys

    model, calib, val = files

    def infer(*args):
        return subprocess.run(
            [sys.executable, "-m", "infer", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "INFER_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "120"},
        )

    bare = infer("run", model, "-d", "cpu", "-b", "onnxruntime", "-p", "int8")
    assert bare.returncode == 2, bare.stderr
    assert "needs calibration data" in bare.stderr and "--calibration FOLDER" in bare.stderr
    result = infer(
        "run", model, "-d", "cpu", "-b", "onnxruntime", "-p", "int8", "--calibration", calib,
        "--validation", val, "--max-drop", "0.05", "--min-speedup", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "calibration: 40 samples" in _flat(result.stderr)
    assert "(int8 (QDQ" in _flat(result.stdout) and "budget met" in _flat(result.stdout)
    wrong = infer("run", model, "-p", "fp16", "--calibration", calib)
    assert wrong.returncode == 2 and "--calibration is for --precision int8" in wrong.stderr
