"""`infer bench` shows what the default really picks and flags rows that answer differently
(issue 25, item 10): the winner of a cached race (what Engine.load compiles), else the race's
rule on the rows bench timed; each row's outputs against the first row's, on the same feeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import infer
from infer import _race, choice
from infer.bench import benchmark
from infer.cache import Cache
from infer.device import Device
from infer.model import Model
from infer.options import Options

from . import models
from .test_precision_choice import topk_model

pytest.importorskip("onnxruntime", reason="the rows under test are ONNX Runtime's and OpenVINO's")
pytest.importorskip("openvino", reason="the rows under test are ONNX Runtime's and OpenVINO's")

FAST = ("--duration", "0.2", "--warmup", "0.05")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A cache of this test's own: a race another test cached for the same model stays out."""
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "cache"))


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, COLUMNS="200"),
    )


def _cache_verdict(model: Path, winner: str) -> None:
    """A race as `infer build` or an earlier load would have cached it for a plain load on the
    CPU, won by `winner` (set here, so that the test does not hang on this machine's timings)."""
    pending = choice.Pending(Model.load(model), Device.parse("cpu"), Options(), None)
    times = {"onnxruntime[cpu]": 2.0, "openvino": 1.5} if winner == "openvino" else {}
    entries = tuple(
        _race.Entry(label, "cpu:0", median_ms=ms, runs=10, difference=0.0, agrees=True)
        for label, ms in (times or {"onnxruntime[cpu]": 1.0, "openvino": 1.5}).items()
    )
    verdict = _race.Verdict(
        winner=winner,
        reference="onnxruntime[cpu]",
        entries=entries,
        shapes={"input": (1, 3, 32, 32)},
        seconds=1.0,
    )
    _race.write(Cache(), pending.key, verdict)


def test_bench_marks_the_backend_the_cached_race_makes_the_default(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(models.cnn(), path)
    _cache_verdict(path, "openvino")
    with infer.Engine.load(path, "cpu") as engine:  # what the user's load runs
        assert engine.backend == "openvino"
    out = tmp_path / "bench.json"
    result = run_cli("bench", path, "-d", "cpu", *FAST, "--json", out)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["auto"] == "openvino"
    assert data["auto_from"].startswith("the race cached for this model")
    assert "openvino *" in result.stdout and "onnxruntime[cpu] *" not in result.stdout
    assert "picks with no backend named: the race cached for this model" in result.stdout


def test_bench_without_a_cached_race_applies_the_race_rule_to_its_rows():
    report = benchmark(
        models.cnn(), device="cpu", backends=["onnxruntime", "openvino"], duration=0.2, warmup=0.05
    )
    rows = {m.backend: m for m in report.results}
    assert rows["onnxruntime[cpu]"].agrees is None  # the baseline
    assert rows["openvino"].baseline == "onnxruntime[cpu]" and rows["openvino"].agrees
    fastest = min(rows.values(), key=lambda m: m.latency.p50)
    assert report.auto == fastest.backend
    assert report.auto_from.startswith("no race cached: the race's rule on the rows timed here")


def test_bench_flags_a_row_whose_outputs_disagree(tmp_path):
    # Relu then TopK with K given at run time: equal values (the zeros) come out of OpenVINO in
    # another order than their index, so the indices disagree (Backend.miscomputes names it).
    path = tmp_path / "topk.onnx"
    onnx.save(topk_model(), path)
    x, k = tmp_path / "x.npy", tmp_path / "k.npy"
    np.save(x, np.array([[0, -1, 2, 0, 0, -3, 1, 0]], np.float32))
    np.save(k, np.array([8], np.int64))
    result = run_cli(
        "bench", path, "-d", "cpu", "-b", "onnxruntime,openvino", *FAST, "-i", f"x={x}",
        "-i", f"k={k}", "--json", tmp_path / "b.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    ov = next(line for line in lines if line.startswith("openvino "))
    ort = next(line for line in lines if line.startswith("onnxruntime[cpu]"))
    assert "disagrees: max abs" in ov and "baseline" in ort, result.stdout
    assert "outputs: each row's against onnxruntime[cpu]'s on the same feeds" in result.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    row = next(r for r in data["results"] if r["backend"] == "openvino")
    assert row["agrees"] is False and row["max_abs"] > 0
    # the default passes OpenVINO over for this model: bench's mark is not on it
    assert data["auto"] == "onnxruntime[cpu]" and "onnxruntime[cpu] *" in result.stdout
    # with no backend named, the row passed over is named with its reason, not "not here"
    every = run_cli("bench", path, "-d", "cpu", *FAST, "-i", f"x={x}", "-i", f"k={k}")
    assert every.returncode == 0, every.stdout + every.stderr
    assert "openvino on cpu:0: answers wrongly" in every.stdout
