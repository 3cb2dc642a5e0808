"""`infer serve` and `infer export triton` through a Typer app that calls `register(app)`, as
the infer CLI does."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import onnx
import pytest

from . import models
from .net import free_ports
from .skips import PYTRITON_MISSING

typer = pytest.importorskip("typer", reason="needs typer (the [cli] extra)")
pytestmark = pytest.mark.triton
pytest.importorskip("pytriton", reason=PYTRITON_MISSING)
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")

from typer.testing import CliRunner  # noqa: E402

from infer.serve.commands import register  # noqa: E402

APP = """
import typer
from infer.serve.commands import register

app = typer.Typer()
register(app)
app()
"""


@pytest.fixture
def app():
    app = typer.Typer()
    register(app)
    return app


def test_register_adds_serve_and_export_triton(app):
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "serve" in result.output and "export" in result.output
    result = CliRunner().invoke(app, ["export", "triton", "--help"])
    assert result.exit_code == 0 and "--repo" in result.output


def test_register_reuses_an_existing_export_group():
    app = typer.Typer()
    export = typer.Typer()

    @export.command("onnx")
    def _onnx() -> None:
        """Another exporter the CLI has."""

    app.add_typer(export, name="export")
    register(app)
    result = CliRunner().invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    assert "onnx" in result.output and "triton" in result.output


def test_export_triton_command_writes_a_repository(app, tmp_path):
    model = tmp_path / "relu.onnx"
    onnx.save(models.relu(), model)
    args = ["export", "triton", str(model), "--repo", str(tmp_path / "repo"), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "config.pbtxt" in result.output and "1/model.onnx" in result.output
    assert (tmp_path / "repo" / "relu" / "config.pbtxt").is_file()
    again = CliRunner().invoke(app, args)  # the folder exists now
    assert again.exit_code == 2
    lines = again.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--overwrite" in lines[0]
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_serve_port_in_use_prints_one_line_and_exits_2(app, tmp_path):
    model = tmp_path / "relu.onnx"
    onnx.save(models.relu(), model)
    http, grpc, metrics = free_ports()
    with socket.socket() as held:
        held.bind(("127.0.0.1", http))
        held.listen()
        result = CliRunner().invoke(
            app,
            [
                *("serve", str(model), "--device", "cpu", "--http-port", str(http)),
                *("--grpc-port", str(grpc), "--metrics-port", str(metrics)),
            ],
        )
    assert result.exit_code == 2
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: HTTP port {http} on 127.0.0.1 is already in use; stop what holds it or "
        "choose another port (--http-port)"
    ]


@pytest.mark.slow
def test_serve_runs_until_sigterm_then_stops_cleanly(tmp_path):
    """A fixed-batch model (served unbatched) in a real `serve` process; SIGTERM ends it with
    exit status 0 and frees its ports."""
    model = tmp_path / "relu2.onnx"
    onnx.save(models.relu(batch=2), model)
    script = tmp_path / "cli.py"
    script.write_text(textwrap.dedent(APP))
    http, grpc, metrics = free_ports()
    proc = subprocess.Popen(
        [
            *(sys.executable, str(script), "serve", str(model), "--device", "cpu"),
            *("--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        address = f"127.0.0.1:{http}"
        deadline = time.monotonic() + 90
        ready = False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                with httpclient.InferenceServerClient(address, network_timeout=2) as client:
                    ready = client.is_model_ready("relu2")
            except Exception:
                time.sleep(0.2)
        assert ready, proc.stdout.read() if proc.poll() is not None else "not ready in 90 s"
        x = np.array([[-1, 0, 2], [3, -4, 5]], np.float32)
        with httpclient.InferenceServerClient(address) as client:
            assert client.get_model_config("relu2")["max_batch_size"] == 0
            inp = httpclient.InferInput("x", [2, 3], "FP32")
            inp.set_data_from_numpy(x)
            y = client.infer("relu2", [inp]).as_numpy("y")
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "first on the server's LD_LIBRARY_PATH" in out or "no shared libpython" in out
    assert "serving relu2: onnxruntime on cpu" in out and "no batching" in out
    assert f"HTTP     http://127.0.0.1:{http}/v2/models/relu2/infer" in out
    assert out.rstrip().endswith("stopped")
    for port in (http, grpc, metrics):  # Triton is gone: its ports bind again
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_serve_takes_a_preprocess_spec(tmp_path):
    """`serve --preprocess image:...` fuses the spec: clients send uint8 frames of any size."""
    model = tmp_path / "det.onnx"
    onnx.save(models.cnn(size=32), model)
    script = tmp_path / "cli.py"
    script.write_text(textwrap.dedent(APP))
    http, grpc, metrics = free_ports()
    text = "image:letterbox,size=32,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"
    proc = subprocess.Popen(
        [
            *(sys.executable, str(script), "serve", str(model), "--device", "cpu"),
            *("--backend", "onnxruntime", "--preprocess", text),
            *("--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        address = f"127.0.0.1:{http}"
        deadline = time.monotonic() + 90
        ready = False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                with httpclient.InferenceServerClient(address, network_timeout=2) as client:
                    ready = client.is_model_ready("det")
            except Exception:
                time.sleep(0.2)
        assert ready, proc.stdout.read() if proc.poll() is not None else "not ready in 90 s"
        frames = np.random.default_rng(0).integers(0, 256, (1, 40, 50, 3), np.uint8)
        with httpclient.InferenceServerClient(address) as client:
            config = client.get_model_config("det")
            assert [(i["name"], i["data_type"]) for i in config["input"]] == [
                ("input", "TYPE_UINT8")
            ]
            inp = httpclient.InferInput("input", list(frames.shape), "UINT8")
            inp.set_data_from_numpy(frames)
            output = config["output"][0]["name"]
            got = client.infer("det", [inp]).as_numpy(output)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    import infer

    with infer.Engine.load(models.cnn(size=32), "cpu", backend="onnxruntime") as engine:
        want = engine.run({"input": infer.Preprocess.parse(text).apply(frames)})[output]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_serve_refuses_a_bad_preprocess_spec_in_words(tmp_path):
    model = tmp_path / "det.onnx"
    onnx.save(models.cnn(size=32), model)
    script = tmp_path / "cli.py"
    script.write_text(textwrap.dedent(APP))
    out = subprocess.run(
        [sys.executable, str(script), "serve", str(model), "--preprocess", "image:size=big"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "error: --preprocess 'image:size=big': size='big' is not a size" in out.stderr
