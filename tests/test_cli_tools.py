"""`infer bench | compare | build` on generated and real models, with real runtimes."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
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
    assert labels == {t.backend for t in found} and {"onnxruntime[cpu]", "reference"} <= labels


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


def test_bench_times_the_shapes_a_real_run_takes(real_model):
    # A detector with open height and width: timed at a detector's size, not 1x1, and the table
    # says which shapes it timed.
    result = cli("bench", real_model("ocr_det"), "-b", "onnxruntime", *FAST)
    assert result.exit_code == 0, result.stderr
    assert " 1x3x640x640 " in result.stdout
    assert "note: x[2] ('p2o.DynamicDimension.1') = 640: a detector's input size" in result.stdout
    data = json.loads(
        cli("bench", real_model("ocr_det"), "-b", "onnxruntime", *FAST, "--json", "-").stdout
    )
    assert data["results"][0]["shapes"] == {"x": [1, 3, 640, 640]}


def test_bench_exits_1_when_a_row_did_not_run(real_model):
    # Silero VAD refuses random one-sample audio at run time: every backend's row fails, none
    # is dropped, and the exit status says the benchmark did not run.
    result = cli("bench", real_model("silero_vad"), "--device", "cpu", *FAST)
    assert result.exit_code == 1, result.stdout
    assert "✗ onnxruntime[cpu] (batch 1):" in result.stdout
    assert "benchmark row(s) did not run" in result.stderr
    named = cli("bench", real_model("silero_vad"), "-b", "onnxruntime", *FAST, "--json", "-")
    assert named.exit_code == 1
    assert json.loads(named.stdout)["results"][0]["error"]


def test_shape_by_dimension_name_on_every_backend(tmp_path):
    # OpenVINO compiled with static shapes reports no dimension names: names are resolved
    # against the ONNX model's declared inputs, whatever the backend reports.
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "seq.onnx"
    onnx.save(proto, path)
    for backend in ("onnxruntime", "openvino"):
        ran = cli("run", path, "--shape", "sequence=48", "-b", backend, "--save", tmp_path / "y")
        assert ran.exit_code == 0, (backend, ran.stderr)
        with np.load(tmp_path / "y.npz") as got:
            assert got["y"].shape == (1, 48), backend
    result = cli(
        "bench", path, "-b", "onnxruntime,openvino", "--shape", "sequence=48", *FAST, "--json", "-"
    )
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["results"]
    assert [r["backend"] for r in rows] == ["onnxruntime[cpu]", "openvino"]
    assert all(r["error"] is None and r["shapes"] == {"x": [1, 48]} for r in rows), rows
    compared = cli("compare", path, "-b", "openvino,onnxruntime", "--shape", "sequence=48")
    assert compared.exit_code == 0, compared.stderr
    assert "x: float32[1, 48]" in compared.stdout


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


def test_compare_leaves_out_backends_that_cannot_load(tmp_path):
    # CastLike from float4: ONNX Runtime 1.32 passes it through its check (the op has a
    # function body) but finds no Cast kernel when it loads; OpenVINO and the reference
    # evaluator run it. With no -b, compare leaves ONNX Runtime out, says why, compares the rest.
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("CastLike", ["x", "like"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT4E2M1, ["N"]),
            helper.make_tensor_value_info("like", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    proto.ir_version = 11
    path = tmp_path / "castlike.onnx"
    onnx.save(proto, path)
    result = cli("compare", path, "--device", "cpu", "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.stderr
    assert "left out onnxruntime[cpu] on cpu:0: onnxruntime could not load" in result.stdout
    data = json.loads((tmp_path / "c.json").read_text())
    assert [r["label"] for r in data["runners"]] == ["openvino", "reference"]
    (left,) = data["skipped"]
    assert (left["backend"], left["verdict"]) == ("onnxruntime[cpu]", "failed")
    assert "Could not find an implementation for Cast" in left["reason"]
    # named, the same backend's failure is the error
    named = cli("compare", path, "-b", "onnxruntime,reference")
    assert named.exit_code == 2 and "onnxruntime could not load" in named.stderr


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
    # No backend named: build races them and keeps the verdict (the winner is this machine's).
    built = re.search(r"cnn\.onnx: built for (\w+) on cpu:0 \(fp32\)", result.stdout)
    assert built and built.group(1) in ("onnxruntime", "openvino"), result.stdout
    assert "fastest that agrees with onnxruntime[cpu]" in result.stdout
    assert "checked: one run on random inputs" in result.stdout
    assert "cached in" in result.stdout and "backend-choice/" in result.stdout


def test_build_records_the_verdict_a_later_load_uses(cnn_file):
    assert cli("build", cnn_file, "--device", "cpu").exit_code == 0
    listing = cli("cache", "list", "--kind", "backend-choice")
    assert listing.exit_code == 0, listing.stderr
    assert "winner" in listing.stdout  # the table folds the line to the terminal's width
    entry = json.loads(cli("cache", "list", "--json").stdout)["entries"]
    choice = next(e for e in entry if e["kind"] == "backend-choice")
    pattern = r"winner \S+ \(onnxruntime\[cpu\] [\d.]+ ms, openvino [\d.]+ ms at input "
    assert re.match(pattern, choice["note"]), choice["note"]
    with infer.Engine.load(cnn_file, "cpu") as engine:
        chosen = next(a for a in engine.selection if a.verdict == "selected")
        assert "(a cached race at " in chosen.reason  # compiled alone, nothing raced
        assert not engine.choosing
        assert choice["note"].startswith(f"winner {chosen.backend} ")


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


def _infer(*args: object) -> subprocess.CompletedProcess:
    """`python -m infer ARGS` in a fresh process (this interpreter, this checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
    )


def _scan8() -> onnx.ModelProto:
    """Scan-8 (a sequence_lens input left out): ONNX Runtime and OpenVINO run it, and onnx's
    reference evaluator, which implements only Scan-9's semantics, fails at run time."""
    v = onnx.helper.make_tensor_value_info
    f = onnx.TensorProto.FLOAT
    body = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Add", ["sum_in", "next"], ["sum_out"]),
            onnx.helper.make_node("Identity", ["sum_out"], ["scan_out"]),
        ],
        "body",
        [v("sum_in", f, [2]), v("next", f, [2])],
        [v("sum_out", f, [2]), v("scan_out", f, [2])],
    )
    scan = onnx.helper.make_node(
        "Scan", ["", "initial", "x"], ["y", "z"], num_scan_inputs=1, body=body
    )
    graph = onnx.helper.make_graph(
        [scan], "g", [v("initial", f, [1, 2]), v("x", f, [1, 3, 2])],
        [v("y", f, [1, 2]), v("z", f, [1, 3, 2])],
    )  # fmt: skip
    return models._model(graph.node, list(graph.input), list(graph.output), opset=8)


def test_bench_with_no_backend_named_reports_a_failed_row_and_exits_0(tmp_path):
    path = tmp_path / "scan8.onnx"
    onnx.save(_scan8(), path)
    plain = _infer("bench", path, *FAST)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "✗ reference (batch 1): reference failed to run" in plain.stdout
    assert "onnxruntime[cpu]" in plain.stdout and "p50 ms" in plain.stdout
    assert "note: 1 of " in plain.stderr and "name backends with --backend" in plain.stderr
    for named in ("onnxruntime,reference", "all"):  # asked for: a row that fails fails bench
        result = _infer("bench", path, "-b", named, *FAST)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "benchmark row(s) did not run" in result.stderr


def test_bench_shows_each_input_of_a_multi_input_model_on_its_own_line(tmp_path):
    path = tmp_path / "mio.onnx"
    onnx.save(models.multi_io(), path)
    result = _infer("bench", path, "-b", "onnxruntime", *FAST)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("onnxruntime[cpu]"))
    assert re.search(r" 1 a 1x4 +[0-9.]+ ", lines[row]), lines[row]
    assert lines[row + 1].split() == ["b", "1x4"], lines[row : row + 3]
    assert lines[row + 2].split() == ["mask", "1x4"], lines[row : row + 3]
