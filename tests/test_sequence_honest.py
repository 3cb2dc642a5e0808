"""Issue 21's parts 3-5 on the committed exports: a weight-compressed BERT (bert_int8w: 12 MatMul
weights int8, DequantizeLinear in the graph) at fp32 answers as its unoptimized graph on every
runtime; precision="int8" on it uses the runtime's on-the-fly int8 within the budget; token ids
past the vocabulary are an InputError; batch 0 answers alike everywhere."""

from __future__ import annotations

import numpy as np
import pytest

import infer
from infer import InputError

from . import sequence_models as sm

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
ov = pytest.importorskip("openvino", reason="openvino is not installed")

BERT_INT8W = str(sm.path("bert_int8w"))
BERT = str(sm.path("bert"))


def _feeds(batch: int = 2, length: int = 16, ids: np.ndarray | None = None) -> dict:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1, sm.VOCAB, (batch, length)) if ids is None else ids,
        "attention_mask": np.ones((batch, length), np.int64),
        "token_type_ids": np.zeros((batch, length), np.int64),
    }


@pytest.fixture(scope="module")
def unoptimized() -> np.ndarray:
    """bert_int8w as its graph says: ONNX Runtime with graph optimizations off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(BERT_INT8W, options, providers=["CPUExecutionProvider"])
    return sess.run(None, _feeds())[0]


def test_both_runtimes_as_they_come_lower_bert_int8w(unoptimized):
    sess = ort.InferenceSession(BERT_INT8W, providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, _feeds())[0] - unoptimized).max() > 1e-2
    compiled = ov.Core().compile_model(BERT_INT8W, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert np.abs(compiled(_feeds())[0] - unoptimized).max() > 1e-2


@pytest.mark.parametrize("backend", [None, "onnxruntime", "openvino"])
def test_bert_int8w_at_fp32_agrees_with_its_graph_within_1e_4(backend, unoptimized):
    with infer.Engine.load(BERT_INT8W, device="cpu", backend=backend, choose="measure") as engine:
        assert engine.precision == "fp32"
        got = engine.run(_feeds())["last_hidden_state"]
    assert np.abs(got - unoptimized).max() < 1e-4


def test_bert_int8w_at_int8_quantizes_activations_within_the_budget(unoptimized):
    with infer.Engine.load(
        BERT_INT8W, device="cpu", backend="openvino", precision="int8"
    ) as engine:
        assert (
            "OpenVINO dynamic activation quantization, group 32, on 12 MatMuls" in engine.precision
        )
        assert "on 8 random feeds" in engine.precision
        report = engine.precision_report
        assert report is not None
        group = engine._session._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")
        assert group == (32 if report.met else 0)
        got = engine.run(_feeds())["last_hidden_state"]
    rel = np.linalg.norm(got - unoptimized) / np.linalg.norm(unoptimized)
    assert rel < 0.01  # the budget's 1%, whichever way it went


@pytest.mark.parametrize("backend", [None, "onnxruntime", "openvino", "reference"])
def test_ids_past_the_vocabulary_are_refused_on_every_backend(backend):
    with infer.Engine.load(BERT, device="cpu", backend=backend, choose="first") as engine:
        assert engine.roles.bounds["input_ids"] == sm.VOCAB
        bad = _feeds(ids=np.full((2, 16), sm.VOCAB, np.int64))
        with pytest.raises(InputError, match=rf"input 'input_ids': value {sm.VOCAB} is outside"):
            engine.run(bad)
        with pytest.raises(InputError, match="input 'input_ids'"):
            engine.submit(bad).result()
        with engine.bind() as b, pytest.raises(InputError, match="input 'input_ids'"):
            b.run(bad)
        types = _feeds()
        types["token_type_ids"] = np.full((2, 16), 2, np.int64)  # BERT has 2 token types
        with pytest.raises(
            InputError, match=r"input 'token_type_ids': value 2 is outside \[-2, 1\]"
        ):
            engine.run(types)


@pytest.mark.parametrize("backend", [None, "onnxruntime", "openvino", "reference"])
def test_batch_0_of_bert_is_empty_everywhere(backend):
    with infer.Engine.load(BERT, device="cpu", backend=backend, choose="first") as engine:
        out = engine.run(_feeds(batch=0, length=8))
        assert out["last_hidden_state"].shape == (0, 8, 64)
