"""The decoder on realistic exports (optimum's Llama with GQA and RoPE, GPT-2, T5's merged
seq2seq decoder) and on hand-built layouts exporters vary, against `ort_greedy`, a raw ONNX
Runtime loop: the same ids on every backend that loads the model, batch 1 and batch 4."""

from __future__ import annotations

import numpy as np
import pytest

import infer

from . import sequence_models as sm

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15], [3]]
NEW = 6
CASES = [
    ("onnxruntime", "auto"),
    ("onnxruntime", "host"),
    ("openvino", "auto"),
    ("openvino", "host"),
    ("reference", "auto"),
]


def _engine(model, backend):
    return infer.Engine.load(model, backend=backend, cache=False)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize(("backend", "cache"), CASES, ids=lambda c: c)
def test_causal_lm_exports(name, backend, cache):
    path = sm.path(name)
    with _engine(path, backend) as engine, engine.decoder(cache=cache) as d:
        assert d.generate(PROMPTS[0], NEW) == sm.ort_greedy(str(path), PROMPTS[0], NEW)
        assert d.generate(PROMPTS, NEW) == sm.ort_greedy(str(path), PROMPTS, NEW)


def test_kv_cache_stays_in_the_runtime():
    """ONNX Runtime: the past between steps is OrtValues, never numpy; OpenVINO: the state of
    the infer request, grown by each step, for the batch given."""
    import onnxruntime as ort

    path = sm.path("llama")
    with _engine(path, "onnxruntime") as engine, engine.decoder() as d:
        d.prefill(PROMPTS)
        d.step([1, 2, 3, 4])
        pasts = d._cache._past  # type: ignore[attr-defined]
        assert pasts and all(isinstance(v, ort.OrtValue) for v in pasts.values())
        assert {tuple(v.shape()) for v in pasts.values()} == {(4, 2, 7, 16)}
    with _engine(path, "openvino") as engine, engine.decoder() as d:
        d.prefill(PROMPTS)
        d.step([1, 2, 3, 4])
        states = d._cache._request.query_state()  # type: ignore[attr-defined]
        assert len(states) == 4
        assert {tuple(s.state.shape) for s in states} == {(4, 2, 7, 16)}
        assert engine.details["kv_cache_precision"]["KV_CACHE_PRECISION"] == "f32"


@pytest.mark.parametrize(("backend", "cache"), [c for c in CASES if c[0] != "openvino"])
def test_seq2seq_merged_decoder(backend, cache):
    """T5's merged decoder: the caller runs the encoder and passes its states; the first step
    computes the cross-attention past, later steps keep it (their presents are placeholders)."""
    encoder_ids = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14], [15, 16]]
    want = sm.ort_greedy(
        str(sm.path("t5_decoder")),
        [[sm.T5_START]] * 4,
        NEW,
        encoder=str(sm.path("t5_encoder")),
        encoder_ids=encoder_ids,
    )
    ids, mask = sm._left_pad(encoder_ids, 0)
    states = sm.ort_encode(str(sm.path("t5_encoder")), ids, mask)
    with _engine(sm.path("t5_decoder"), backend) as engine, engine.decoder(cache=cache) as d:
        got = d.generate([[sm.T5_START]] * 4, NEW, encoder_states=states, encoder_mask=mask)
        assert got == want
        one = d.generate([sm.T5_START], NEW, encoder_states=states[:1], encoder_mask=mask[:1])
        assert one == want[0]
        with pytest.raises(infer.InputError, match="encoder_states"):
            d.generate([sm.T5_START], NEW)


@pytest.mark.parametrize("layout", ["no_position_ids", "batch_first_past", "combined_past"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_hand_built_layouts(layout, backend):
    model = getattr(sm, layout)()
    with _engine(model, backend) as engine, engine.decoder() as d:
        assert d.generate(PROMPTS, NEW) == sm.ort_greedy(model, PROMPTS, NEW)


@pytest.mark.parametrize("cache", ["auto", "host"])
def test_group_query_attention_model(cache):
    """onnxruntime-genai's layout (GroupQueryAttention): batch 1 (ONNX Runtime's CPU kernel
    ignores a left-padded mask's zeros, so batches of different lengths differ, see
    ort_greedy)."""
    model = sm.genai_gqa()
    with _engine(model, "onnxruntime") as engine, engine.decoder(cache=cache) as d:
        for prompt in PROMPTS:
            assert d.generate(prompt, NEW) == sm.ort_greedy(model, prompt, NEW)


def test_sampling_reproducible_on_a_real_export():
    path = sm.path("gpt2")
    outs = []
    for backend in ("onnxruntime", "openvino"):
        with _engine(path, backend) as engine, engine.decoder() as d:
            kw = dict(temperature=0.8, top_k=40, top_p=0.95, seed=11)
            a = d.generate(PROMPTS, NEW, **kw)
            assert d.generate(PROMPTS, NEW, **kw) == a
            outs.append(a)
    assert outs[0] == outs[1]
    assert np.array(outs).shape == (2, 4, NEW)
