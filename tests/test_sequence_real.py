"""Issue 21 on realistic exports (tests/data/sequence: optimum's Llama, GPT-2, BERT, T5) and on
hand-built decoders for what exporters vary: the measured default races each, agrees with raw
ONNX Runtime, and names the phases it timed."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import infer
from infer import sequence
from infer.feeds import random_feeds, representative_shapes

from . import sequence_models as sm

DECODERS = ["llama", "gpt2", "t5_decoder_with_past"]
ENCODERS = ["bert", "t5_encoder"]
BUILT = ["genai_gqa", "no_position_ids", "batch_first_past", "combined_past"]


def _source(name: str):
    return sm.path(name) if name in sm.FILES else getattr(sm, name)()


def _raw(source) -> ort.InferenceSession:
    data = str(source) if not hasattr(source, "SerializeToString") else source.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", DECODERS + ENCODERS + BUILT)
def test_the_default_races_and_agrees_with_raw_onnxruntime(name, tmp_path):
    source = _source(name)
    with infer.Engine.load(source, device="cpu", choose="measure", cache_dir=tmp_path) as engine:
        text = "\n".join(a.reason for a in engine.selection)
        assert "could not run" not in text
        roles = engine.roles
        raced = "race at" in text  # else one candidate compiled or took the model
        if roles.is_decoder and raced:
            assert "decode: 1 token after" in text and "prefill: a " in text
        elif raced:
            assert "encode: 128 tokens" in text
        raw = _raw(source)
        for phase in sequence.phases(roles):
            shapes, _ = representative_shapes(
                engine.inputs, model=engine.model, roles=roles, phase=phase
            )
            feeds = random_feeds(engine.inputs, shapes, seed=5, roles=roles, phase=phase)
            want = dict(zip([o.name for o in raw.get_outputs()], raw.run(None, feeds)))
            got = engine.run(feeds)
            for out, ref in want.items():
                scale = max(float(np.abs(ref).max()), 1e-2)
                assert np.abs(got[out] - ref).max() / scale < 1e-4, (name, phase, out)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_greedy_tokens_through_the_chosen_backend_match_raw_onnxruntime(name, tmp_path):
    source = sm.path(name)
    prompt = [5, 17, 42, 7, 99, 3]
    want = sm.ort_greedy(source, prompt, 32)
    with infer.Engine.load(source, device="cpu", choose="measure", cache_dir=tmp_path) as engine:
        roles = engine.roles
        got = _greedy_through(engine, roles, prompt, 32)
        with engine.decoder() as decoder:
            generated = decoder.generate(prompt, max_new_tokens=32)
    assert got == list(want)
    assert list(np.asarray(generated).reshape(-1)) == list(want)


def _greedy_through(engine, roles, prompt, n):
    """A plain greedy loop over engine.run, the past fed back as it came out."""
    specs = {s.name: s for s in engine.inputs}
    ids = np.array([prompt], dtype=specs[roles.ids].dtype)
    pasts = {}
    for pair in roles.kv:
        shape = [0 if i == pair.axis else d for i, d in enumerate(specs[pair.past].shape)]
        shape = [1 if isinstance(d, str) else d for d in shape]
        pasts[pair.past] = np.zeros(shape, dtype=specs[pair.past].dtype)
    length, out = 0, []
    for _ in range(n):
        feeds = {roles.ids: ids, **pasts}
        total = length + ids.shape[1]
        if roles.mask:
            feeds[roles.mask] = np.ones((1, total), dtype=specs[roles.mask].dtype)
        if roles.positions:
            feeds[roles.positions] = np.arange(length, total, dtype=np.int64)[None]
        result = engine.run(feeds)
        token = int(np.argmax(result[roles.logits][0, -1]))
        out.append(token)
        pasts = {pair.past: result[pair.present] for pair in roles.kv}
        length, ids = total, np.array([[token]], dtype=ids.dtype)
    return out
