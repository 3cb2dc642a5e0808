"""`infer bench | compare | build` on generated and real models, with real runtimes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import onnx
import pytest
from rich.console import Console

import infer
from infer.cli import _build
from infer.feeds import random_feeds

from . import models
from .test_cli import _restore_logging, cli  # noqa: F401 - the fixture applies here too
from .test_compare import perturbed

PNG = b"\x89PNG\r\n\x1a\n"
FAST = ("--duration", "0.2", "--warmup", "0.05")


@pytest.fixture
def cnn_file(tmp_path) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save(models.cnn(), path)
    return path


# -- bench ---------------------------------------------------------------------------------------


def test_bench_demo_json_and_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = cli(
        "bench",
        "--backend",
        "onnxruntime,reference",
        "--batch",
        "1,2",
        *FAST,
        "--json",
        out,
        "--plot",
        png,
    )
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "built-in demo CNN" in text
    assert "p50 ms" in text and "samples/s" in text and "load cold" in text
    assert "onnxruntime[cpu] *" in text  # what auto picks
    data = json.loads(out.read_text())
    assert data["model"] == "demo" and data["batches"] == [1, 2]
    assert data["auto"] == "onnxruntime[cpu]"
    rows = [(r["backend"], r["batch"]) for r in data["results"]]
    assert rows == [
        ("onnxruntime[cpu]", 1),
        ("onnxruntime[cpu]", 2),
        ("reference", 1),
        ("reference", 2),
    ]
    for r in data["results"]:
        assert r["error"] is None and r["runs"] >= 3
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["mean"] > 0
        assert r["throughput"] > 0 and r["load_s"]["cold"] > 0 and r["load_s"]["warm"] > 0
    assert png.read_bytes()[:8] == PNG
    assert matplotlib.image.imread(png).ndim == 3


def test_bench_all_is_every_backend_that_can(tmp_path):
    result = cli("bench", "--device", "cpu", *FAST, "--json", "-")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # with --json -, stdout is only the JSON
    labels = {r["backend"] for r in data["results"]}
    found, _ = infer.bench.targets(infer.Model.load(infer.demo.model()), "cpu")
    assert labels == {t.label for t in found} and {"onnxruntime[cpu]", "reference"} <= labels


def test_bench_real_model(real_model):
    result = cli(
        "bench",
        real_model("ocr_cls"),
        "--backend",
        "onnxruntime",
        "--shape",
        "x=1x3x48x192",
        "--batch",
        "1,2",
        *FAST,
        "--json",
        "-",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["batch"] for r in data["results"]] == [1, 2]  # --batch overrides the first dim
    assert all(r["error"] is None for r in data["results"])


def test_bench_concurrency_and_failures(cnn_file):
    result = cli("bench", cnn_file, "-b", "onnxruntime", "-c", "2", *FAST, "--json", "-")
    assert json.loads(result.stdout)["results"][0]["concurrency"] == 2
    fixed = cnn_file.with_name("fixed.onnx")
    onnx.save(models.cnn(batch=1), fixed)
    result = cli("bench", fixed, "-b", "onnxruntime", "--batch", "1,4", *FAST)
    assert result.exit_code == 0
    assert "✗ onnxruntime[cpu] (batch 4): batch 4 cannot be run" in result.stdout
    named = cli("bench", cnn_file, "-b", "onnxruntime,nope", *FAST)
    assert named.exit_code == 2 and "'nope' is not known" in named.stderr


# -- compare -------------------------------------------------------------------------------------


def test_compare_passes_on_agreeing_backends(real_model, tmp_path):
    result = cli("compare", "demo", "--backends", "onnxruntime,reference")
    assert result.exit_code == 0, result.stdout
    assert "PASS against onnxruntime" in result.stdout and "pass" in result.stdout
    report = tmp_path / "c.json"
    result = cli(
        "compare",
        real_model("ocr_cls"),
        "-b",
        "onnxruntime,reference",
        "--shape",
        "x=2x3x48x192",
        "--json",
        report,
    )
    assert result.exit_code == 0, result.stdout
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["feeds"][0]["shape"] == [2, 3, 48, 192]
    assert data["outputs"][0]["top1"] == 1.0


def test_compare_fails_with_exit_1_when_a_weight_is_perturbed(cnn_file, tmp_path):
    # Golden outputs from the original model, then the same seeded inputs through a model
    # with one weight changed: every backend runs the wrong model, so all must fail.
    want = tmp_path / "want.npz"
    assert cli("run", cnn_file, "--seed", "7", "--save", want).exit_code == 0
    bad = tmp_path / "bad.onnx"
    onnx.save(perturbed(models.cnn(), "conv1.w", 0.5), bad)
    result = cli(
        "compare",
        bad,
        "-b",
        "onnxruntime,reference",
        "--seed",
        "7",
        "--expected",
        want,
        "--json",
        tmp_path / "r.json",
    )
    assert result.exit_code == 1, result.stdout
    assert "FAIL against expected" in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False
    assert [(o["runner"], o["passed"]) for o in data["outputs"]] == [
        ("onnxruntime", False),
        ("reference", False),
    ]
    # the unperturbed model against the same golden outputs passes
    ok = cli("compare", cnn_file, "-b", "onnxruntime,reference", "--seed", "7", "--expected", want)
    assert ok.exit_code == 0, ok.stdout


def test_compare_input_files_and_tight_tolerances(cnn_file, tmp_path):
    spec = infer.TensorSpec("input", ("N", 3, 32, 32), np.dtype(np.float32))
    np.save(tmp_path / "x.npy", random_feeds([spec], {"N": 3}, seed=0)["input"])
    given = cli(
        "compare",
        cnn_file,
        "-b",
        "onnxruntime,reference",
        "-i",
        f"input={tmp_path / 'x.npy'}",
        "--json",
        "-",
    )
    assert given.exit_code == 0
    assert json.loads(given.stdout)["feeds"] == [
        {"name": "input", "shape": [3, 3, 32, 32], "dtype": "float32"}
    ]
    tight = cli("compare", cnn_file, "-b", "onnxruntime,reference", "--rtol", "0", "--atol", "0")
    # ONNX Runtime and the reference evaluator sum in different orders: not bit-identical
    assert tight.exit_code == 1 and "elements outside tolerance" in tight.stdout


@pytest.mark.skipif(
    not hasattr(infer, "Calibration"),
    reason="int8 needs infer.Calibration and infer.transforms.precision (issue 6)",
)
def test_compare_int8_against_fp32(real_model):
    result = cli(
        "compare",
        real_model("orientation"),
        "-b",
        "onnxruntime,onnxruntime@int8",
        "--min-top1",
        "0.9",
    )
    # int8 needs calibration data (--calibration, tests/test_int8_cli.py): without it the load
    # refuses in words, a usage error, never a run at another precision.
    assert result.exit_code == 2
    assert "precision='int8' needs calibration data" in result.stderr


# -- build ---------------------------------------------------------------------------------------


def test_build_fp32(cnn_file):
    result = cli("build", cnn_file, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "cnn.onnx: built for onnxruntime on cpu:0 (fp32)" in result.stdout
    assert "checked: one run on random inputs" in result.stdout
    assert "nothing new in the cache" in result.stdout or "cached in" in result.stdout


def test_build_argument_errors(cnn_file, tmp_path):
    result = cli("build", cnn_file, "--calibration", tmp_path)
    assert result.exit_code == 2
    assert "--calibration is for --precision int8, not fp32" in result.stderr
    result = cli("build", cnn_file, "--shape", "input=1x3x32x32:2x3x32x32")
    assert result.exit_code == 2 and "give one shape or three" in result.stderr


def test_build_shows_a_bar_per_progress_stage():
    stages = _build._Stages(Console(file=io.StringIO(), width=80))
    with stages:
        stages.update("calibrate", 3, 10)
        stages.update("calibrate", 10, 10)
        stages.update("build engine", 1, None)
    tasks = {t.description.strip(): t for t in stages.progress.tasks}
    assert tasks["calibrate"].completed == 10 and tasks["calibrate"].total == 10
    assert tasks["build engine"].total is None  # no total: an indeterminate bar


@pytest.mark.skipif(
    not hasattr(infer, "Calibration"),
    reason="int8 needs infer.Calibration and infer.transforms.precision (issue 6)",
)
def test_build_int8_with_a_calibration_folder(cnn_file, tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        np.save(samples / f"{i}.npy", rng.random((3, 32, 32), dtype=np.float32))
    result = cli(
        "build",
        cnn_file,
        "--device",
        "cpu",
        "--precision",
        "int8",
        "--calibration",
        samples,
        "--no-budget",  # random samples: the budget options are tested in tests/test_int8_cli.py
    )
    assert result.exit_code == 0, result.stderr
    assert "calibration: 8 samples" in result.stderr
    assert "int8" in result.stdout
    listing = json.loads(cli("cache", "list", "--json").stdout)
    assert listing["entries"], "the int8 model should be in the cache"
