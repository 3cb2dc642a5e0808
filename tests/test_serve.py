"""`infer.serve.triton`: a real Triton Inference Server (pytriton's binary) on 127.0.0.1.

Each server costs a few seconds to start and stop, so the generated model's server is shared by
the tests of this module; requests loops are bounded and every socket is on loopback.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

import infer
from infer.serve import PortInUse

from . import models
from .net import free_ports
from .skips import PYTRITON_MISSING

pytestmark = pytest.mark.triton
pytest.importorskip("pytriton", reason=PYTRITON_MISSING)
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")

# `infer.serve.triton` is the function; its module is reached through importlib.
triton_module = importlib.import_module("infer.serve.triton")

TRITON_TYPES = {np.float32: "FP32", np.int64: "INT64", np.bool_: "BOOL"}


def port_kwargs() -> dict[str, int]:
    http, grpc, metrics = free_ports()
    return {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}


def multi_io_feeds(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.standard_normal((rows, 4)).astype(np.float32),
        "b": rng.integers(-50, 50, (rows, 4)).astype(np.int64),
        "mask": rng.random((rows, 4)) > 0.5,
    }


def http_infer(address: str, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with httpclient.InferenceServerClient(address) as client:
        inputs = []
        for name, arr in feeds.items():
            inp = httpclient.InferInput(name, list(arr.shape), _triton_type(arr))
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        result = client.infer(model, inputs)
        outputs = result.get_response()["outputs"]
        return {o["name"]: result.as_numpy(o["name"]) for o in outputs}


def grpc_infer(address: str, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(address) as client:
        inputs = []
        for name, arr in feeds.items():
            inp = grpcclient.InferInput(name, list(arr.shape), _triton_type(arr))
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        result = client.infer(model, inputs)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def _triton_type(arr: np.ndarray) -> str:
    return TRITON_TYPES[arr.dtype.type]


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.fixture(scope="module")
def mio_server():
    """multi_io served with a long queue delay, so concurrent requests are seen batched."""
    with infer.serve.triton(
        models.multi_io(), device="cpu", name="mio", max_queue_delay_us=50_000, **port_kwargs()
    ) as server:
        yield server


@pytest.mark.slow
def test_http_results_equal_engine_run(mio_server):
    for rows, seed in ((1, 0), (5, 1)):
        feeds = multi_io_feeds(rows, seed)
        assert_same(http_infer(mio_server.http_address, "mio", feeds), mio_server.engine.run(feeds))


@pytest.mark.slow
def test_grpc_results_equal_engine_run(mio_server):
    feeds = multi_io_feeds(3, 2)
    assert_same(grpc_infer(mio_server.grpc_address, "mio", feeds), mio_server.engine.run(feeds))


@pytest.mark.slow
def test_model_config_declares_the_engines_io(mio_server):
    with httpclient.InferenceServerClient(mio_server.http_address) as client:
        config = client.get_model_config("mio")
        assert client.is_server_live() and client.is_model_ready("mio")
    assert config["max_batch_size"] == 16 == mio_server.max_batch_size
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 50_000
    declared = {t["name"]: (t["data_type"], t["dims"]) for t in config["input"] + config["output"]}
    assert declared == {
        "a": ("TYPE_FP32", [4]),
        "b": ("TYPE_INT64", [4]),
        "mask": ("TYPE_BOOL", [4]),
        "sum": ("TYPE_FP32", [4]),
        "masked": ("TYPE_FP32", [4]),
        "count": ("TYPE_INT64", [4]),
    }


@pytest.mark.slow
def test_concurrent_clients_are_batched_and_answered_correctly(mio_server):
    before = _batch_counts(mio_server)
    feeds = [multi_io_feeds(1, 100 + i) for i in range(48)]
    with ThreadPoolExecutor(16) as pool:  # 16 clients, 3 batch-1 requests each
        answers = list(pool.map(lambda f: http_infer(mio_server.http_address, "mio", f), feeds))
    for f, got in zip(feeds, answers):  # each answer is its own request's rows, not a neighbour's
        assert_same(got, mio_server.engine.run(f))
    after = _batch_counts(mio_server)
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in new.items()) == 48
    assert max(size for size, n in new.items() if n) > 1, f"no batch merged requests: {new}"


def _batch_counts(server) -> dict[int, int]:
    stats = server.statistics()["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}


@pytest.mark.slow
def test_statistics_need_the_access_token(mio_server):
    with (
        httpclient.InferenceServerClient(mio_server.http_address) as client,
        pytest.raises(Exception, match=r"(?i)forbidden|access|403|unauthorized"),
    ):
        client.get_inference_statistics("mio")
    assert mio_server.access_token


@pytest.mark.slow
def test_wrong_shape_is_refused_by_triton_with_the_tensor_named(mio_server):
    feeds = multi_io_feeds(2, 3)
    feeds["a"] = feeds["a"][:, :3]
    with pytest.raises(Exception, match=r"'a'|\ba\b"):
        http_infer(mio_server.http_address, "mio", feeds)


@pytest.mark.slow
def test_real_wheel_model_over_http_and_grpc(real_model):
    """PP-OCR's direction classifier: dynamic H and W, an output name with '/' in it."""
    engine = infer.Engine.load(real_model("ocr_cls"), "cpu")
    rng = np.random.default_rng(0)
    narrow = rng.random((2, 3, 48, 160), np.float32)
    wide = rng.random((1, 3, 48, 192), np.float32)
    with infer.serve.triton(engine, **port_kwargs()) as server:
        assert server.name == "ch_ppocr_mobile_v2.0_cls_infer"
        assert server.max_batch_size == 16
        with ThreadPoolExecutor(2) as pool:  # two widths at once: separate engine runs
            got_http = pool.submit(http_infer, server.http_address, server.name, {"x": narrow})
            got_grpc = pool.submit(grpc_infer, server.grpc_address, server.name, {"x": wide})
            for fut, feeds in ((got_http, narrow), (got_grpc, wide)):
                got, want = fut.result(), engine.run({"x": feeds})
                assert set(got) == set(want) == {"save_infer_model/scale_0.tmp_1"}
                np.testing.assert_array_equal(
                    got["save_infer_model/scale_0.tmp_1"], want["save_infer_model/scale_0.tmp_1"]
                )
    assert not engine.closed, "an engine handed in belongs to the caller"
    engine.close()


@pytest.mark.slow
def test_rank1_batched_tensors_travel_as_batch_by_one():
    with infer.serve.triton(models.double(), device="cpu", name="scale", **port_kwargs()) as s:
        x = np.array([[1.5], [-2.0], [3.0]], np.float32)
        got = grpc_infer(s.grpc_address, "scale", {"x": x})
    np.testing.assert_array_equal(got["y"], 2 * x)


def test_port_in_use_is_one_clear_error_before_triton_starts():
    ports = port_kwargs()
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports["grpc_port"]))
        held.listen()
        server = infer.serve.triton(models.relu(), device="cpu", **ports)
        with pytest.raises(PortInUse, match=f"gRPC port {ports['grpc_port']} on 127.0.0.1"):
            server.start()
    assert isinstance(PortInUse("x"), infer.InferError)
    assert not server.running


@pytest.mark.slow
def test_port_taken_after_the_check_fails_fast(monkeypatch):
    """The port is grabbed between our check and Triton's bind: Triton exits, we say why."""
    monkeypatch.setattr(triton_module, "_check_port", lambda *a: None)
    ports = port_kwargs()
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports["grpc_port"]))
        held.listen()
        server = infer.serve.triton(models.relu(), device="cpu", startup_timeout_s=30, **ports)
        with pytest.raises(PortInUse, match=str(ports["grpc_port"])):
            server.start()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batch": -1}, "max_batch must be an integer >= 0"),
        ({"instances": 0}, "instances must be an integer >= 1"),
        ({"http_port": 9000, "grpc_port": 9000}, "ports must differ"),
        ({"http_port": 70000}, "at most 65535"),
        ({"name": "a b"}, "not valid for Triton"),
    ],
)
def test_bad_options_are_option_errors(kwargs, match):
    with pytest.raises(infer.OptionError, match=match):
        infer.serve.triton(models.relu(), **kwargs)


def test_load_options_with_an_engine_are_refused():
    with (
        infer.Engine.load(models.relu(), "cpu") as engine,
        pytest.raises(infer.OptionError, match="precision"),
    ):
        infer.serve.triton(engine, precision="fp16")


def test_bfloat16_tensors_are_refused_with_the_tensor_named():
    server = infer.serve.triton(models.bf16_cast(), device="cpu", **port_kwargs())
    with pytest.raises(infer.OptionError, match="'y' is bfloat16"):
        server.start()
    assert not server.running


def test_server_environment_puts_this_pythons_libdir_first(monkeypatch, caplog):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere/else")
    monkeypatch.setattr(triton_module, "_stub_library_dir", lambda: "/my/python/lib")
    with caplog.at_level("INFO", logger="infer.serve.triton"), triton_module._server_environment():
        assert os.environ["LD_LIBRARY_PATH"] == "/my/python/lib:/somewhere/else"
    assert os.environ["LD_LIBRARY_PATH"] == "/somewhere/else"
    assert "/my/python/lib" in caplog.text and "LD_LIBRARY_PATH" in caplog.text


def test_stub_library_dir_is_this_interpreters_libdir():
    import sysconfig

    found = triton_module._stub_library_dir()
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        assert found == sysconfig.get_config_var("LIBDIR")
    else:
        assert found is None or os.path.isdir(found)


def test_model_load_failures_are_read_from_tritons_log():
    # A line as Triton 2.51 writes it when the Python backend stub cannot start.
    line = (
        "E1126 19:04:34.269665 11819 model_lifecycle.cc:642] \"failed to load 'relu' version 1: "
        "Internal: TritonModelException: Model initialize error: Traceback (most recent call "
        'last):\\n  File \\"/tmp/x/1/model.py\\", line 419, in initialize\\n    self.start()\\n'
        "AttributeError: '_thread.RLock' object has no attribute '_recursion_count'\\n\"\n"
    )
    reason = triton_module._load_failure(line, "relu")
    assert reason == "AttributeError: '_thread.RLock' object has no attribute '_recursion_count'"
    assert triton_module._load_failure(line, "other") is None
    fatal = "E1126 19:05:56.566643 12518 main.cc:245] \"failed to start GRPC service: Unavailable - Socket '127.0.0.1:1' already in use \"\n"
    assert triton_module._fatal_lines(fatal) == [
        "failed to start GRPC service: Unavailable - Socket '127.0.0.1:1' already in use"
    ]


def test_import_infer_stays_light():
    code = (
        "import sys, infer, infer.serve, infer.ray, infer.serve.export;"
        "heavy = [m for m in ('pytriton', 'tritonclient', 'ray', 'typer') if m in sys.modules];"
        "assert not heavy, heavy;"
        "assert infer.ray.Predictor is infer.serve.ray.Predictor"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
def test_without_the_libdir_fix_a_stub_failure_is_one_clear_error(monkeypatch):
    """Where the system's libpython differs from this interpreter's (pyenv here), the stub fails
    as the issue describes unless LIBDIR leads LD_LIBRARY_PATH; start() then says so."""
    monkeypatch.setattr(triton_module, "_stub_library_dir", lambda: None)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    server = infer.serve.triton(models.relu(), device="cpu", name="nofix", **port_kwargs())
    try:
        server.start()
    except infer.serve.ServeError as e:
        message = str(e)
    else:
        server.stop()
        pytest.skip("the system's libpython is this interpreter's: the stub starts without help")
    assert message.startswith("Triton could not load model 'nofix': ")
    assert "_recursion_count" in message and "--enable-shared" in message
    assert not server.running


LEAVE_WITH = """
import sys
import numpy as np
import tritonclient.http as httpclient
import infer

path, http, grpc, metrics = sys.argv[1], *map(int, sys.argv[2:])
with infer.serve.triton(
    path, device="cpu", http_port=http, grpc_port=grpc, metrics_port=metrics
) as server:
    client = httpclient.InferenceServerClient(server.http_address)  # left open, as scripts do
    x = np.ones((1, 3, 32, 32), np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer(server.name, [inp])
print("left the with block")
"""


@pytest.mark.slow
def test_leaving_the_with_block_stops_triton_cleanly(tmp_path):
    """A client's connection still open when the block ends used to hold Triton past its exit
    timeout with the model live: it exited with failure and killed its Python stubs."""
    model = tmp_path / "cnn.onnx"
    onnx.save(models.cnn(size=32), model)
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_WITH)
    ports = port_kwargs()
    ports = [ports["http_port"], ports["grpc_port"], ports["metrics_port"]]
    out = subprocess.run(
        [sys.executable, str(script), str(model), *map(str, ports)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("left the with block")
    for words in ("exited with failure", "Non-graceful termination", "leaked shared_memory"):
        assert words not in out.stderr, out.stderr
