"""The `infer` command line: help, errors, logging, plugins, devices, inspect, run, cache."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

import infer
from infer.cache import Cache, Key
from infer.cli import _app
from infer.feeds import random_feeds

from . import models
from .conformance.onnx_suite import PINNED

COMMANDS = [
    [],
    ["devices"],
    ["inspect"],
    ["run"],
    ["bench"],
    ["compare"],
    ["build"],
    ["cache"],
    ["cache", "list"],
    ["cache", "clear"],
    ["cache", "path"],
]


def cli(*args: object, app: typer.Typer | None = None) -> object:
    """Run `infer ARGS` in this process; the result has exit_code, stdout and stderr."""
    runner = CliRunner()
    return runner.invoke(
        app or _app.app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "80"}
    )


@pytest.fixture(autouse=True)
def _restore_logging():
    logger = logging.getLogger("infer")
    level = logger.level
    yield
    logger.setLevel(level)
    if _app._handler in logger.handlers:
        logger.removeHandler(_app._handler)


@pytest.fixture
def cnn_file(tmp_path) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save(models.cnn(), path)
    return path


# -- every command -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "infer")
def test_help_has_an_example_and_fits_80_columns(command):
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "Example" in text and re.search(r"^\s*\$ \S", text, re.MULTILINE), text
    widest = max(len(line.rstrip()) for line in text.splitlines())
    assert widest <= 80, f"{widest} columns"


def test_version_and_no_arguments():
    assert cli("--version").stdout.strip() == f"infer {infer.__version__}"
    result = cli()
    assert "Usage" in result.stdout and "bench" in result.stdout


def test_console_script_and_python_m(tmp_path):
    script = shutil.which("infer", path=str(Path(sys.executable).parent))
    assert script, "the `infer` console script is not installed next to this Python"
    out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"infer {infer.__version__}"
    out = subprocess.run(
        [sys.executable, "-m", "infer", "devices", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["devices"][0]["kind"] == "cpu"
    # a user error in a fresh process: one line on stderr, exit 2, no traceback
    out = subprocess.run(
        [sys.executable, "-m", "infer", "inspect", str(tmp_path / "missing.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: model file {str(tmp_path / 'missing.onnx')!r} does not exist"
    ]


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "missing.onnx"
    result = cli("inspect", missing)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: model file {str(missing)!r} does not exist"
    assert "Traceback" not in result.stderr
    debug = cli("--debug", "inspect", missing)
    assert debug.exit_code == 2 and "Traceback" in debug.stderr and "ModelError" in debug.stderr
    assert cli("run", "demo", "--backend", "nope").stderr.startswith("error: backend 'nope'")
    assert cli("run", "demo", "--shape", "image=1x3").exit_code == 2
    assert cli("bench", "--batch", "0").stderr.startswith("error: --batch '0'")
    usage = cli("run")  # a usage error from the parser: also 2
    assert usage.exit_code == 2 and "Missing argument" in usage.stderr


def test_internal_errors_exit_3_and_plugins_register(monkeypatch):
    plugin = types.ModuleType("infer_test_plugin")

    def register(app: typer.Typer) -> None:
        @app.command("hello", help="Say hello.\n\nExample:\n\n$ infer hello")
        def hello() -> None:
            print("hello from a plugin")

        @app.command("crash")
        def crash() -> None:
            raise ValueError("boom")

    plugin.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "infer_test_plugin", plugin)
    app = _app.make_app(optional=("infer_test_plugin", "infer_no_such_module.commands"))
    assert cli("hello", app=app).stdout.strip() == "hello from a plugin"
    crash = cli("crash", app=app)
    assert crash.exit_code == 3
    assert crash.stderr.startswith("error: internal error: ValueError: boom")
    assert "--debug" in crash.stderr
    assert "Traceback" in cli("--debug", "crash", app=app).stderr
    # the built-in commands are all there, and a missing optional module is skipped
    names = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"devices", "inspect", "run", "bench", "compare", "build", "cache", "hello"} <= names


def test_verbose_logs_go_to_stderr():
    quiet = cli("run", "demo", "--backend", "onnxruntime")
    assert quiet.exit_code == 0 and "INFO" not in quiet.stderr
    loud = cli("-v", "run", "demo", "--backend", "onnxruntime")
    assert loud.exit_code == 0
    assert "INFO infer.engine: loaded" in loud.stderr
    assert "INFO" not in loud.stdout


# -- devices -------------------------------------------------------------------------------------


def test_devices_text_and_json():
    result = cli("devices")
    assert result.exit_code == 0
    text = result.stdout
    cpu = infer.devices()[0]
    assert text.startswith(f"cpu:0  {cpu.name}")
    assert "✓ onnxruntime[cpu]" in text and "✓ reference" in text
    data = json.loads(cli("devices", "--json").stdout)
    assert [d["device"] for d in data["devices"]] == [str(d) for d in infer.devices()]
    first = data["devices"][0]
    assert set(first["isa"]) == set(cpu.capabilities.isa)
    verdicts = {b["backend"]: b for b in first["backends"]}
    assert verdicts["onnxruntime[cpu]"]["ok"] and verdicts["reference"]["ok"]
    # every backend infer knows is listed, with a version or the reason it is missing
    infos = {b.name: b for b in infer.backends()}
    assert [b["name"] for b in data["backends"]] == list(infos)
    for b in data["backends"]:
        assert b["available"] == infos[b["name"]].available
        assert b["version"] if b["available"] else b["reason"]


# -- inspect -------------------------------------------------------------------------------------


def _check_inspect_json(data: dict, proto: onnx.ModelProto) -> None:
    o = data["onnx"]
    assert o["ir_version"] == proto.ir_version
    assert o["opsets"] == {i.domain: i.version for i in proto.opset_import}
    assert o["nodes"] == len(proto.graph.node)
    assert o["op_types"] == dict(Counter(n.op_type for n in proto.graph.node))
    arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    assert o["initializers"]["count"] == len(arrays)
    assert o["initializers"]["bytes"] == sum(a.nbytes for a in arrays)
    assert o["initializers"]["parameters"] == sum(a.size for a in arrays)
    inits = {t.name for t in proto.graph.initializer}
    assert [i["name"] for i in o["inputs"]] == [
        v.name for v in proto.graph.input if v.name not in inits
    ]
    assert [i["name"] for i in o["outputs"]] == [v.name for v in proto.graph.output]
    fixed = [
        [
            d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in v.type.tensor_type.shape.dim
        ]
        for v in proto.graph.output
    ]
    assert [i["shape"] for i in o["outputs"]] == fixed


def test_inspect_json_matches_onnx(cnn_file, real_model):
    for path in (cnn_file, real_model("orientation")):
        result = cli("inspect", path, "--json")
        assert result.exit_code == 0, result.stderr
        data = json.loads(result.stdout)
        _check_inspect_json(data, onnx.load(str(path)))
        assert data["format"] == "onnx" and data["name"] == path.name
        assert {
            "backend": "onnxruntime[cpu]",
            "device": "cpu:0",
            "ok": True,
            "reason": None,
        } in data["backends"]


def test_inspect_text_and_nodes():
    result = cli("inspect", "demo", "--nodes")
    assert result.exit_code == 0
    text = result.stdout
    for expected in (
        "IR version 8; opsets: ai.onnx 17",
        "image: float32[N, 3, 64, 64]",
        "logits: float32[N, 10]",
        "14, 8 op types",
        "20 initializers",
        "✓ onnxruntime[cpu] on cpu:0",
        "[0] Conv  stem/Conv",
        "in:    image ← input, stem.weight ← initializer",
        "in:    stem.conv ← stem/Conv",
    ):
        assert expected in text, expected
    nodes_json = json.loads(cli("inspect", "demo", "--nodes", "--json").stdout)["node_list"]
    assert [n["op"] for n in nodes_json][:3] == ["Conv", "BatchNormalization", "Relu"]


def test_inspect_real_model_with_subgraphs(real_model):
    result = cli("inspect", real_model("silero_vad"))
    assert result.exit_code == 0
    assert "subgraphs  50 (If), nested 4 deep" in result.stdout
    assert "341 Constant nodes" in result.stdout


# -- run -----------------------------------------------------------------------------------------


def test_run_random_inputs_are_seeded_and_saved(cnn_file, tmp_path):
    out, ins = tmp_path / "out.npz", tmp_path / "in.npz"
    result = cli(
        "run", cnn_file, "--seed", "3", "--shape", "N=2", "--save", out, "--save-inputs", ins
    )
    assert result.exit_code == 0, result.stderr
    assert "cnn.onnx: onnxruntime on cpu:0 (fp32)" in result.stdout
    with infer.Engine.load(cnn_file) as engine:
        want_in = random_feeds(engine.inputs, {"N": 2}, seed=3)
        want_out = engine.run(want_in)
    with np.load(ins) as got:
        np.testing.assert_array_equal(got["input"], want_in["input"])
        assert got["input"].shape == (2, 3, 32, 32)
    with np.load(out) as got:
        np.testing.assert_array_equal(got["logits"], want_out["logits"])
    other = cli("run", cnn_file, "--seed", "4", "--save-inputs", tmp_path / "in4.npz")
    assert other.exit_code == 0
    with np.load(tmp_path / "in4.npz") as a:
        assert a["input"].shape == (1, 3, 32, 32)  # "N" not given: 1, with a note
    assert "note: dynamic dimension input[0] ('N') = 1" in other.stderr


def test_run_saves_tensors_named_like_savez_arguments(tmp_path):
    # np.savez(path, **arrays) takes "file" and "allow_pickle" as its own arguments.
    proto = models._model(
        [onnx.helper.make_node("Relu", ["file"], ["allow_pickle"])],
        [onnx.helper.make_tensor_value_info("file", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("allow_pickle", onnx.TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "named.onnx"
    onnx.save(proto, path)
    out, ins = tmp_path / "out.npz", tmp_path / "in.npz"
    result = cli("run", path, "--save", out, "--save-inputs", ins)
    assert result.exit_code == 0, result.stderr
    with np.load(ins) as got_in, np.load(out) as got_out:
        assert list(got_in) == ["file"] and list(got_out) == ["allow_pickle"]
        np.testing.assert_array_equal(got_out["allow_pickle"], np.maximum(got_in["file"], 0))


def test_run_sizes_open_dims_as_a_real_run_would(real_model, tmp_path):
    result = cli("run", real_model("ocr_det"), "--save-inputs", tmp_path / "in.npz")
    assert result.exit_code == 0, result.stderr
    with np.load(tmp_path / "in.npz") as got:
        assert got["x"].shape == (1, 3, 640, 640)
    assert "= 640: a detector's input size" in " ".join(result.stderr.split())


def test_run_real_model_with_input_files_and_values(real_model, tmp_path):
    path = real_model("silero_vad")
    rng = np.random.default_rng(0)
    chunk = (rng.standard_normal((1, 512)) * 0.1).astype(np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    np.save(tmp_path / "chunk.npy", chunk)
    np.savez(tmp_path / "state.npz", state=state)
    result = cli(
        "run",
        path,
        "-i",
        f"input={tmp_path / 'chunk.npy'}",
        "-i",
        tmp_path / "state.npz",
        "-i",
        "sr=16000",
        "--backend",
        "onnxruntime",
        "--save",
        tmp_path / "out.npz",
    )
    assert result.exit_code == 0, result.stderr
    with infer.Engine.load(path) as engine:
        want = engine.run({"input": chunk, "state": state, "sr": np.array(16000, np.int64)})
    with np.load(tmp_path / "out.npz") as got:
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value)


def test_run_user_errors(cnn_file, tmp_path):
    cases = {
        ("-i", f"nope={tmp_path / 'x.npy'}"): "input 'nope'",
        ("-i", "nope=1"): "unknown input(s) ['nope']",
        ("--shape", "input=1x3x8"): "does not fit the input float32[N, 3, 32, 32]",
        ("--shape", "input=axb"): "shape 'axb' is not valid",
        ("--precision", "fp8"): "--precision 'fp8' is not valid",
        ("--device", "tpu"): "device 'tpu' is not valid",
    }
    for args, message in cases.items():
        result = cli("run", cnn_file, *args)
        assert result.exit_code == 2, (args, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and message in lines[-1], (args, lines)


# -- cache ---------------------------------------------------------------------------------------


def test_cache_path_list_clear(_isolated_cache):
    cache = Cache()
    assert cache.root == _isolated_cache
    assert cli("cache", "path").stdout.strip() == str(cache.root)
    cache.clear()
    key = Key.of("test-model", model="ab" * 32, precision="int8")

    def build(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"x" * 2048)

    cache.get_or_build(key, build)
    runtime = cache.folder("runtime-blobs", model="cd" * 32)
    (runtime / "blob").write_bytes(b"y" * 10)
    listing = cli("cache", "list")
    assert listing.exit_code == 0
    text = listing.stdout
    assert "test-model" in text and "model=abababab precision=int8" in text
    assert "runtime-blobs" in text and "(kept by the runtime)" in text
    assert "2 entries" in text
    data = json.loads(cli("cache", "list", "--json").stdout)
    kinds = {e["kind"]: e for e in data["entries"]}
    assert kinds["test-model"]["size_bytes"] == 2048
    assert kinds["test-model"]["key"] == {"model": "ab" * 32, "precision": "int8"}
    assert kinds["runtime-blobs"]["managed_by_runtime"] is True
    cleared = cli("cache", "clear", "--kind", "test-model")
    assert "removed 1 test-model cache entries" in cleared.stdout
    assert [e["kind"] for e in json.loads(cli("cache", "list", "--json").stdout)["entries"]] == [
        "runtime-blobs"
    ]
    cli("cache", "clear")
    assert "(empty)" in cli("cache", "list").stdout


def _infer(*args: object, **env: str) -> subprocess.CompletedProcess:
    """`python -m infer ARGS` in a fresh process (this interpreter, this checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "100", **env},
    )


def test_cache_kinds_are_listed_and_unknown_ones_refused(_isolated_cache):
    from infer.cache import KINDS

    help_text = _infer("cache", "clear", "--help").stdout
    assert all(kind in help_text for kind in KINDS), help_text
    examples = re.findall(r"\$ infer cache clear --kind (\S+)", help_text)
    assert examples and all(kind in KINDS for kind in examples), examples

    def build(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"x")

    Cache().get_or_build(Key.of("onnx-int8-search", model="ab" * 32), build)
    typo = _infer("cache", "clear", "--kind", "onnx-int8x")
    assert typo.returncode == 2, typo.stderr
    [line] = typo.stderr.strip().splitlines()
    assert line.startswith("error: --kind 'onnx-int8x' is not a cache kind; use one of ")
    assert "onnx-int8-search" in line and "backend-choice" in line
    assert _infer("cache", "list", "--kind", "nope").returncode == 2
    assert Cache().entries("onnx-int8-search")  # nothing was removed
    cleared = _infer("cache", "clear", "--kind", "onnx-int8-search")
    assert cleared.returncode == 0, cleared.stderr
    assert "removed 1 onnx-int8-search cache entries" in cleared.stdout
    assert not Cache().entries("onnx-int8-search")


def test_every_cache_kind_infer_writes_is_listed():
    from infer.cache import KINDS

    source = "\n".join(p.read_text() for p in Path(infer.__file__).parent.rglob("*.py"))
    written = set(re.findall(r'(?:Key\.of|\.folder)\(\s*"([a-z0-9._-]+)"', source))
    written |= set(re.findall(r'^KIND = "([a-z0-9._-]+)"', source, re.MULTILINE))
    assert len(written) >= 10 and written <= set(KINDS), sorted(written - set(KINDS))


def test_inspect_says_which_backends_implement_the_ops(real_model, tmp_path):
    # Silero VAD: OpenVINO cannot convert what its If holds (compiling it fails); the check
    # says so without compiling, and --compile confirms it.
    result = cli("inspect", real_model("silero_vad"), "--json")
    verdicts = {b["backend"]: b for b in json.loads(result.stdout)["backends"]}
    assert verdicts["onnxruntime[cpu]"]["ok"] is True and verdicts["reference"]["ok"] is True
    if verdicts.get("openvino", {}).get("device") == "cpu:0":
        assert verdicts["openvino"]["ok"] is False
        reason = verdicts["openvino"]["reason"]
        assert re.search(r"does not implement \w+ \(node '", reason), reason
        if importlib.metadata.version("openvino") == PINNED["openvino"]:
            # The op named first is the plugin's answer: 2025.1 names an Identity in the If.
            assert "does not implement If (node 'If_0')" in reason
        text = cli("inspect", real_model("silero_vad"), "--compile").stdout
        assert "✗ openvino on cpu:0: OpenVINO could not compile" in text
        assert re.search(r"✓ onnxruntime\[cpu\] on cpu:0: compiled in \d+", text)
    onnx.save(models.custom_op(), tmp_path / "custom.onnx")
    text = " ".join(cli("inspect", tmp_path / "custom.onnx").stdout.split())
    assert "✗ reference on cpu:0: reference" in text
    assert "does not implement com.example:Frobnicate (opset 1)" in text


# -- readable output ---------------------------------------------------------------------------


def test_inspect_cuts_long_metadata_unless_full(real_model):
    path = real_model("ocr_rec")  # "character": a 6,623-line vocabulary
    short = cli("inspect", path)
    assert short.exit_code == 0
    text = " ".join(short.stdout.split())
    assert "(13,245 characters, 6,623 lines; --full shows it)" in text
    assert len(short.stdout.splitlines()) < 60
    full = cli("inspect", path, "--full")
    assert len(full.stdout.splitlines()) > 6000
    data = json.loads(cli("inspect", path, "--json").stdout)
    assert len(data["onnx"]["metadata"]["character"]) == 13245  # JSON keeps it whole


def test_tables_use_the_terminal_width(real_model):
    wide = CliRunner().invoke(
        _app.app, ["inspect", str(real_model("ocr_det"))], env={"COLUMNS": "160"}
    )
    narrow = cli("inspect", real_model("ocr_det"))
    assert max(len(line) for line in wide.stdout.splitlines()) > 100
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    ops = lambda out: out[out.index("op types") :].count("\n")  # noqa: E731
    assert ops(wide.stdout) < ops(narrow.stdout)  # more op types per line


def test_no_colour_legend_without_colours():
    result = cli("bench", "-b", "onnxruntime,reference", "--duration", "0.1", "--warmup", "0")
    assert result.exit_code == 0, result.stderr
    assert "green:" not in result.stdout  # CliRunner's output is no terminal: no colours
    assert "lowest median latency at batch 1: onnxruntime[cpu]" in result.stdout


def test_reference_loop_failure_names_the_op_not_its_argument_types(tmp_path):
    # A Loop whose body applies SequenceLength to a tensor: onnx.reference raises a TypeError
    # in the body, and each op it passes through wraps it in "Issues with types [<class
    # 'numpy.ndarray'>, ...]".
    from onnx import TensorProto as T
    from onnx import helper

    carried = [f"v{i}" for i in range(12)]
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("SequenceLength", ["v0_in"], ["n"]),
            helper.make_node("CastLike", ["n", "v1_in"], ["nf"]),
            helper.make_node("Add", ["nf", "v1_in"], ["v0_out"]),
            *[helper.make_node("Identity", [f"{v}_in"], [f"{v}_out"]) for v in carried[1:]],
        ],
        "body",
        [
            helper.make_tensor_value_info("i", T.INT64, []),
            helper.make_tensor_value_info("cond_in", T.BOOL, []),
            *[helper.make_tensor_value_info(f"{v}_in", T.FLOAT, [2]) for v in carried],
        ],
        [
            helper.make_tensor_value_info("cond_out", T.BOOL, []),
            *[helper.make_tensor_value_info(f"{v}_out", T.FLOAT, [2]) for v in carried],
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", *carried], [f"{v}_y" for v in carried], body=body)],
        "g",
        [
            helper.make_tensor_value_info("M", T.INT64, []),
            *[helper.make_tensor_value_info(v, T.FLOAT, [2]) for v in carried],
        ],
        [helper.make_tensor_value_info(f"{v}_y", T.FLOAT, [2]) for v in carried],
        [numpy_helper.from_array(np.array(True), "cond")],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "loop.onnx")
    result = cli("run", tmp_path / "loop.onnx", "-b", "reference", "-i", "M=2")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert "in Loop > SequenceLength: TypeError: input_sequence must be a list" in message
    assert "<class 'numpy.ndarray'>, <class" not in message and len(message) < 200


def test_devices_says_where_the_default_runs_each_backend():
    """The auto entry is OpenVINO's AUTO plugin; "infer does not use onnxruntime on auto
    devices" read as if the default never used ONNX Runtime."""
    result = _infer("devices", "--json")
    assert result.returncode == 0, result.stderr
    auto = next((d for d in json.loads(result.stdout)["devices"] if d["kind"] == "auto"), None)
    if auto is None:
        pytest.skip("no auto device here (it is OpenVINO's AUTO plugin: openvino not installed)")
    ort = next(b for b in auto["backends"] if b["backend"] == "onnxruntime")
    assert ort["reason"] == (
        "device='auto' (the default) runs onnxruntime on the cpu device, listed there"
    )
    text = _infer("devices").stdout
    assert "does not use onnxruntime" not in text
    assert "device='auto' (the default) runs onnxruntime on the cpu device" in " ".join(
        text.split()
    )
