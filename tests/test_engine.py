"""Engine.load on the CPU: ONNX Runtime for real, the reference fallback, explained selection."""

from __future__ import annotations

import logging
import re
import threading

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import BackendUnavailable, CompileError, EngineClosed, InputError, OptionError

from . import models


def _raw_ort(model) -> ort.InferenceSession:
    source = str(model) if not isinstance(model, onnx.ModelProto) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _assert_same(ours: dict, names: list[str], theirs: list) -> None:
    assert list(ours) == names
    for name, want in zip(names, theirs, strict=True):
        got = ours[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.array_equal(got, want), name  # bit-exact: same runtime, same kernels


def test_load_from_path_bytes_and_proto(tmp_path):
    proto = models.relu()
    path = tmp_path / "relu.onnx"
    onnx.save(proto, path)
    x = np.array([[-1, 0, 2]], np.float32)
    for source in (path, str(path), path.read_bytes(), proto):
        with infer.Engine.load(source) as engine:
            assert engine.backend == "onnxruntime"
            assert engine.device.kind == "cpu" and engine.device.name
            assert engine.run({"x": x})["y"].tolist() == [[0, 0, 2]]


def test_specs_keep_symbolic_dims():
    with infer.Engine.load(models.multi_io(), device="cpu") as engine:
        assert [(s.name, s.shape, s.dtype.name) for s in engine.inputs] == [
            ("a", ("N", 4), "float32"),
            ("b", ("N", 4), "int64"),
            ("mask", ("N", 4), "bool"),
        ]
        assert [s.name for s in engine.outputs] == ["sum", "masked", "count"]


def test_selection_explains_every_candidate():
    with infer.Engine.load(models.relu()) as engine:
        chosen = engine.selection[-1]
        assert (chosen.backend, chosen.verdict) == ("onnxruntime[cpu]", "selected")
        assert "nodes: CPU 1/1" in chosen.reason
        for attempt in engine.selection[:-1]:
            assert attempt.verdict in ("unavailable", "unsupported", "failed") and attempt.reason
        assert str(chosen).startswith("onnxruntime[cpu] on cpu:0: selected")


def test_multi_io_matches_raw_onnxruntime_exactly():
    proto = models.multi_io()
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.standard_normal((5, 4)).astype(np.float32),
        "b": rng.integers(-9, 9, (5, 4)).astype(np.int64),
        "mask": rng.random((5, 4)) > 0.5,
    }
    names = ["sum", "masked", "count"]
    with infer.Engine.load(proto, device="cpu", backend="onnxruntime") as engine:
        _assert_same(engine.run(feeds), names, _raw_ort(proto).run(names, feeds))
        assert list(engine.run(feeds, outputs=["count"])) == ["count"]
        with pytest.raises(InputError, match=r"unknown output\(s\) \['nope'\]"):
            engine.run(feeds, outputs=["nope"])


def _real_feeds(key: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if key == "silero_vad":
        return {
            "input": rng.standard_normal((1, 512)).astype(np.float32) * 0.1,
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
    size = {
        "ocr_det": (1, 3, 96, 128),
        "ocr_rec": (1, 3, 48, 160),
        "ocr_cls": (2, 3, 48, 192),
        "orientation": (1, 3, 224, 224),
    }[key]
    return {"x": rng.random(size, dtype=np.float32)}


@pytest.mark.parametrize("key", ["ocr_det", "ocr_rec", "ocr_cls", "silero_vad", "orientation"])
def test_real_models_match_raw_onnxruntime_exactly(real_model, key):
    path = real_model(key)
    feeds = _real_feeds(key, np.random.default_rng(1))
    raw = _raw_ort(path)
    names = [o.name for o in raw.get_outputs()]
    with infer.Engine.load(path, device="cpu") as engine:
        assert engine.backend == "onnxruntime"
        _assert_same(engine.run(feeds), names, raw.run(names, feeds))


@pytest.mark.parametrize("key", ["ocr_cls", "silero_vad"])
def test_reference_agrees_with_onnxruntime_on_real_models(real_model, key):
    if key == "silero_vad" and _onnx_older_than(1, 23):
        # onnx 1.19-1.22's evaluator loses an output of the LSTM that Silero's If inlines
        # ("Unable to find input .../rnn/LSTM_output_2"): a RuntimeFailure, not a wrong answer.
        pytest.skip(f"onnx {onnx.__version__}'s evaluator cannot run Silero VAD (1.23 can)")
    path = real_model(key)
    feeds = _real_feeds(key, np.random.default_rng(2))
    with (
        infer.Engine.load(path, backend="reference") as ref,
        infer.Engine.load(path, backend="onnxruntime") as fast,
    ):
        want, got = fast.run(feeds), ref.run(feeds)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_reference_agrees_on_generated_models():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    with (
        infer.Engine.load(models.cnn(), backend="reference") as ref,
        infer.Engine.load(models.cnn()) as fast,
    ):
        assert (ref.backend, fast.backend) == ("reference", "onnxruntime")
        np.testing.assert_allclose(ref(x), fast(x), rtol=1e-4, atol=1e-5)


def test_shorthand_call():
    with infer.Engine.load(models.relu()) as engine:
        x = np.array([[-1, 2, -3]], np.float32)
        assert engine(x).tolist() == [[0, 2, 0]]
        assert engine(x=x).tolist() == [[0, 2, 0]]
        assert engine({"x": x}).tolist() == [[0, 2, 0]]
        with pytest.raises(InputError, match="2 positional inputs given, the model takes 1"):
            engine(x, x)
        with pytest.raises(InputError, match="given both by position and by name"):
            engine(x, x=x)
    with infer.Engine.load(models.multi_io()) as engine:
        feeds = (np.ones((1, 4), np.float32), np.ones((1, 4), np.int64), np.ones((1, 4), bool))
        out = engine(*feeds)
        # Several outputs: a tuple in the model's output order (unpacking a dict would give
        # the names), the same arrays `run` gives by name.
        assert isinstance(out, tuple) and len(out) == 3
        by_name = engine.run(dict(zip([s.name for s in engine.inputs], feeds)))
        assert [s.name for s in engine.outputs] == ["sum", "masked", "count"]
        for got, name in zip(out, ["sum", "masked", "count"]):
            np.testing.assert_array_equal(got, by_name[name])


def test_close_and_context_manager():
    engine = infer.Engine.load(models.relu())
    x = np.ones((1, 3), np.float32)
    with engine:
        engine.run({"x": x})
    assert engine.closed and "(closed)" in repr(engine)
    with pytest.raises(EngineClosed, match="closed"):
        engine.run({"x": x})
    with pytest.raises(EngineClosed):
        engine.submit({"x": x})
    engine.close()  # idempotent


def test_fallback_to_reference_when_onnxruntime_has_no_kernel(caplog):
    x = np.array([1.5, -2.25], ml_dtypes.bfloat16)
    y = np.array([0.5, 4.0], ml_dtypes.bfloat16)
    with (
        caplog.at_level(logging.WARNING, logger="infer"),
        # OpenVINO runs bf16 Add: leave it out to test the fall back to the reference.
        infer.Engine.load(models.bf16_add(), backend=["onnxruntime", "reference"]) as engine,
    ):
        assert engine.backend == "reference"
        failed = [a for a in engine.selection if a.verdict == "failed"]
        assert failed and failed[0].backend == "onnxruntime[cpu]"
        assert "Add" in failed[0].reason  # ONNX Runtime's own words: no bfloat16 Add kernel
        out = engine.run({"x": x, "y": y})["z"]
        assert out.dtype == ml_dtypes.bfloat16 and out.astype(np.float32).tolist() == [2.0, 1.75]
    assert any("onnxruntime[cpu] on cpu:0: failed" in r.message for r in caplog.records)
    assert any("reference evaluator, which is slow" in r.message for r in caplog.records)


def test_forced_backend_failure_is_an_error_not_a_fallback():
    with pytest.raises(CompileError, match="onnxruntime could not load") as info:
        infer.Engine.load(models.bf16_add(), backend="onnxruntime")
    assert isinstance(info.value.__cause__, Exception)  # ONNX Runtime's exception is chained


def test_no_backend_can_run_it():
    with pytest.raises(BackendUnavailable, match="no backend can run") as info:
        infer.Engine.load(models.custom_op(), device="cpu")
    text = str(info.value)
    assert "onnxruntime[cpu] on cpu:0: failed" in text and "reference on cpu:0: failed" in text


def test_bfloat16_io_through_onnxruntime():
    x = np.array([1.0, 3.14159, -2.5e-3], np.float32)
    with infer.Engine.load(models.bf16_cast(), backend="onnxruntime") as engine:
        out = engine.run({"x": x})
    assert out["y"].dtype == ml_dtypes.bfloat16
    assert np.array_equal(out["y"], x.astype(ml_dtypes.bfloat16))
    assert np.array_equal(out["z"], x.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_int4_input_through_onnxruntime():
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT4, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with infer.Engine.load(proto, backend="onnxruntime") as engine:
        assert engine.inputs[0].dtype == ml_dtypes.int4
        out = engine.run({"x": np.array([1, -3, 7], ml_dtypes.int4)})["y"]
    assert out.tolist() == [1.0, -3.0, 7.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu"}, "device 'tpu' is not valid"),
        ({"backend": "nope"}, "backend 'nope' is not known"),
        (
            {"backend": "reference", "device": "cuda"},
            "backend 'reference' does not run on 'cuda' devices",
        ),
        ({"precision": "fp8"}, "precision 'fp8' is not valid"),
        ({"hint": "fast"}, "hint 'fast' is not valid"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"calibration": [{}]}, "only used with precision='int8'"),
        (
            {"backend_options": {"onnxruntime": {"nope": 1}}},
            r"backend_options\['onnxruntime'\]: unknown option",
        ),
        ({"backend_options": {"onnxruntime": 3}}, "backend_options must map a backend name"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(OptionError, match=match):
        infer.Engine.load(models.relu(), **kwargs)


def test_backend_options_reach_onnxruntime():
    opts = {
        "onnxruntime": {"free_dimension_overrides": {"N": 2}, "graph_optimization_level": "basic"}
    }
    with infer.Engine.load(models.relu(), backend="onnxruntime", backend_options=opts) as engine:
        assert engine.run({"x": np.ones((2, 3), np.float32)})["y"].shape == (2, 3)


def test_list_of_backends_is_an_ordered_preference():
    with infer.Engine.load(models.relu(), backend=["reference", "onnxruntime"]) as engine:
        assert engine.backend == "reference"
    with infer.Engine.load(models.bf16_add(), backend=["onnxruntime", "reference"]) as engine:
        assert engine.backend == "reference"


def test_submit_resolves_with_the_same_results():
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(16)]
    with infer.Engine.load(models.cnn(), max_in_flight=3) as engine:
        assert engine.backend == "onnxruntime"
        futures = [engine.submit({"input": x}) for x in xs]
        for x, fut in zip(xs, futures, strict=True):
            assert np.array_equal(
                fut.result(timeout=30)["logits"], engine.run({"input": x})["logits"]
            )


def test_run_from_many_threads_equals_serial():
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    with infer.Engine.load(models.cnn()) as engine:
        serial = [engine(x) for x in xs]
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(25):
                    assert np.array_equal(engine(xs[i]), serial[i])
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_onnxruntime_log_goes_to_python_logging(caplog):
    if not hasattr(ort, "set_default_logger_callback"):
        pytest.skip(f"onnxruntime {ort.__version__} has no log callback: its log stays on stderr")
    proto = models.relu()
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    with caplog.at_level(logging.DEBUG, logger="infer.backends.onnxruntime"):
        infer.Engine.load(proto, backend="onnxruntime").close()
    assert any(
        "unused" in r.getMessage() for r in caplog.records if r.name == "infer.backends.onnxruntime"
    )


def test_repr():
    with infer.Engine.load(models.relu()) as engine:
        assert repr(engine).startswith("<Engine onnxruntime on cpu:0")
        assert "(x: float32[N, 3]) -> (y: float32[N, 3])" in repr(engine)


def test_selection_prints_compactly_and_keeps_the_data():
    with infer.Engine.load(models.relu(), device="auto") as engine:
        sel = engine.selection
        assert isinstance(sel, tuple) and all(isinstance(a, infer.Attempt) for a in sel)
        assert sel.chosen is sel[-1] and sel.chosen.verdict == "selected"
        text = str(sel)
        assert text.startswith("✓ onnxruntime[cpu] on cpu:0: selected in ")
        assert re.search(r"selected in \d+ ms", text)  # rounded, not 0.01234567 s
        absent = [a.backend for a in sel if a.verdict == "unavailable"]
        if absent:
            assert f"- not here: {', '.join(absent)}" in text
        assert len(text) < 400 and "\n" not in repr(sel) and repr(sel).startswith("Selection(")
        assert sel[-1].seconds is not None  # the data as it was


def test_selection_prints_each_reason_whole():
    """A reason cut at 160 characters with "…" hid the part that said why."""
    long = "x" * 150 + " the end of a long reason " + "y" * 100
    sel = infer.selection.Selection(
        [
            infer.Attempt("openvino", "cpu:0", "failed", long + "\nsecond line"),
            infer.Attempt("onnxruntime[cpu]", "cpu:0", "selected", "", 0.01),
        ]
    )
    lines = str(sel).splitlines()
    assert lines[0] == f"✗ openvino on cpu:0: failed: {long} second line"
    assert "…" not in str(sel) and len(lines) == 2


def test_a_compile_error_says_the_runtimes_text_once():
    with pytest.raises(CompileError) as info:
        infer.Engine.load(models.bf16_add(), device="cpu", backend="onnxruntime")
    assert str(info.value).count("Could not find an implementation for Add") == 1


def _onnx_older_than(major: int, minor: int) -> bool:
    return tuple(int(p) for p in onnx.__version__.split(".")[:2]) < (major, minor)
