"""The decoder (infer.decoder): one generate loop over every backend that loads the model, each
keeping the KV cache its own way, against greedy decoding written out by hand on ONNX Runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import infer
from infer.errors import InputError, ModelError, OptionError

from . import models
from . import sequence_models as sm

VOCAB = 48

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11], [3]]
NEW = 8

# (backend, cache): each backend's own cache, and the host loop where that differs
CASES = [
    ("onnxruntime", "auto"),
    ("onnxruntime", "host"),
    ("openvino", "auto"),
    ("openvino", "host"),
    ("reference", "auto"),
]
WHERE = {
    ("onnxruntime", "auto"): "OrtValues",
    ("openvino", "auto"): "OpenVINO state, KV f32",
}


@pytest.fixture(scope="module")
def model():
    return models.tiny_decoder(vocab=VOCAB, positions=64)


@pytest.fixture(scope="module")
def expected(model):
    return sm.ort_greedy(model, PROMPTS, NEW)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def decoder(request, model):
    backend, cache = request.param
    with (
        infer.Engine.load(model, backend=backend, cache=False) as engine,
        engine.decoder(cache=cache) as d,
    ):
        assert WHERE.get(request.param, "host arrays") in d.cache
        yield d


def test_greedy_batch_of_one_matches_raw_loop(decoder, expected):
    for prompt, want in zip(PROMPTS, expected):
        assert decoder.generate(prompt, NEW) == want


def test_greedy_batch_of_four_left_padded_matches_raw_loop(decoder, expected):
    assert decoder.generate(PROMPTS, NEW) == expected


def test_array_and_mask_give_the_same_as_lists(decoder, expected):
    width = max(map(len, PROMPTS))
    ids = np.zeros((len(PROMPTS), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(PROMPTS):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    assert decoder.generate(ids, NEW, mask=mask) == expected


def test_stream_yields_what_generate_returns(decoder, expected):
    assert list(decoder.stream(PROMPTS[0], NEW)) == expected[0]
    steps = list(decoder.stream(PROMPTS, NEW))
    assert [list(r) for r in zip(*steps)] == expected


def test_prefill_and_step_by_hand(decoder, expected):
    logits = decoder.prefill(PROMPTS)
    assert logits.shape == (len(PROMPTS), VOCAB)
    got = []
    for _ in range(3):
        token = logits.argmax(-1)
        got.append(token.tolist())
        logits = decoder.step(token)
    assert [list(r) for r in zip(*got)] == [e[:3] for e in expected]
    assert decoder.length == max(map(len, PROMPTS)) + 3
    decoder.reset()
    assert decoder.length == 0
    with pytest.raises(InputError, match="before prefill"):
        decoder.step([1, 2, 3, 4])


def test_eos_ends_each_row(decoder, expected):
    eos = expected[1][2]
    out = decoder.generate(PROMPTS, NEW, eos=eos)
    for row, full in zip(out, expected):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert row == full[:cut]
    assert out[1][-1] == eos


def test_sampling_reproducible_from_seed(decoder):
    kw = dict(temperature=0.9, top_k=10, top_p=0.9)
    a = decoder.generate(PROMPTS, NEW, seed=7, **kw)
    assert decoder.generate(PROMPTS, NEW, seed=7, **kw) == a
    assert list(decoder.stream(PROMPTS, NEW, seed=7, **kw)) == [list(r) for r in zip(*a)]
    others = [decoder.generate(PROMPTS, NEW, seed=s, **kw) for s in (8, 9)]
    assert any(o != a for o in others)
    assert all(0 <= t < VOCAB for row in a for t in row)


def test_sampling_same_on_every_cache(model):
    """The same seed samples the same tokens whichever backend keeps the cache."""
    outs = []
    for backend, cache in CASES:
        with infer.Engine.load(model, backend=backend, cache=False) as engine:
            outs.append(engine.decoder(cache=cache).generate(PROMPTS, NEW, temperature=0.7, seed=3))
    assert all(o == outs[0] for o in outs)


# -- sampling rules ---------------------------------------------------------------------------


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = np.random.default_rng(0).standard_normal((5, 30))
    greedy = logits.argmax(-1)
    assert (infer.decoder.Picker(1.0, top_k=1, seed=0)(logits) == greedy).all()
    assert (infer.decoder.Picker(1.0, top_p=1e-9, seed=0)(logits) == greedy).all()


def test_top_k_keeps_the_k_likeliest():
    logits = np.tile(np.arange(20.0), (4000, 1))
    picked = infer.decoder.Picker(5.0, top_k=3, seed=1)(logits)
    assert set(picked.tolist()) == {17, 18, 19}


# -- errors -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ort_engine(model):
    with infer.Engine.load(model, backend="onnxruntime", cache=False) as engine:
        yield engine


def test_model_without_past_is_refused():
    with (
        infer.Engine.load(models.relu(), backend="onnxruntime", cache=False) as engine,
        pytest.raises(ModelError, match="no past/present pairs"),
    ):
        engine.decoder()


def test_ids_past_the_vocabulary(ort_engine):
    d = ort_engine.decoder()
    with pytest.raises(InputError, match=f"outside the vocabulary.*0 to {VOCAB - 1}"):
        d.generate([1, VOCAB], 2)
    d.prefill([1, 2])
    with pytest.raises(InputError, match="outside the vocabulary"):
        d.step([-1])


def test_max_length_from_the_position_table(ort_engine):
    d = ort_engine.decoder()
    assert d.max_length == 64  # the position embedding's rows
    with pytest.raises(InputError, match="exceed the decoder's maximum length of 64"):
        d.generate(list(range(1, 41)), 30)
    short = ort_engine.decoder(max_length=10)
    with pytest.raises(InputError, match="maximum length of 10"):
        short.generate([1, 2, 3], 8)
    assert len(short.generate([1, 2, 3], 7)) == 7
    with pytest.raises(OptionError, match="at most 64"):
        ort_engine.decoder(max_length=100)


def test_bad_arguments(ort_engine):
    d = ort_engine.decoder()
    with pytest.raises(OptionError, match="cache"):
        ort_engine.decoder(cache="gpu")
    with pytest.raises(OptionError, match="temperature"):
        d.generate([1], 2, temperature=-1)
    with pytest.raises(OptionError, match="top_p"):
        d.generate([1], 2, temperature=1, top_p=1.5)
    with pytest.raises(OptionError, match="top_k"):
        d.generate([1], 2, temperature=1, top_k=0)
    with pytest.raises(InputError, match="at least one id"):
        d.generate([[1], []], 2)
    with pytest.raises(InputError, match="left padding only"):
        d.generate(np.array([[1, 2, 3]]), 2, mask=np.array([[1, 0, 1]]))
    with pytest.raises(InputError, match="no encoder output"):
        d.prefill([1, 2], encoder_states=np.zeros((1, 3, 4), np.float32))
    d.prefill([[1, 2], [3, 4]])
    with pytest.raises(InputError, match="one per row"):
        d.step([1, 2, 3])
    assert d.generate([1, 2], 0) == []


def test_closed_engine(model):
    engine = infer.Engine.load(model, backend="onnxruntime", cache=False)
    d = engine.decoder()
    d.prefill([1, 2])
    engine.close()
    with pytest.raises(infer.EngineClosed):
        d.step([3])


def test_bench_times_generate(ort_engine):
    from infer.bench import decoding

    d = decoding(ort_engine, batch=2, context=8, new_tokens=4, duration=0.05)
    assert (d.batch, d.context, d.new_tokens) == (2, 8, 4)
    assert d.runs >= 2 and d.ttft_ms > 0 and d.step_ms > 0
    assert d.tokens_per_s == pytest.approx(2 / (d.step_ms / 1e3))
    assert "OrtValues" in d.cache
    with pytest.raises(OptionError, match="exceed the model's 64"):
        decoding(ort_engine, context=60, new_tokens=8)


def test_infer_bench_reports_generate(tmp_path):
    path = tmp_path / "decoder.onnx"
    onnx.save(models.tiny_decoder(vocab=VOCAB, positions=64), path)
    env = {**os.environ, "COLUMNS": "200", "INFER_CACHE_DIR": str(tmp_path / "cache")}
    args = ["bench", path, "--duration", "0.1", "--warmup", "0", "-b", "onnxruntime,openvino"]
    args += ["--context", "8", "--new-tokens", "4", "--json", tmp_path / "bench.json"]
    r = subprocess.run(
        [sys.executable, "-m", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "first token" in r.stdout and "tokens/s" in r.stdout
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    caches = {row["backend"].split("[")[0]: row["decode"]["cache"] for row in rows}
    assert "OrtValues" in caches["onnxruntime"] and "OpenVINO state" in caches["openvino"]
    assert all(row["decode"]["context"] == 8 and row["decode"]["tokens_per_s"] > 0 for row in rows)


def test_openvino_ir_with_unnamed_dims(model, expected, tmp_path):
    """An OpenVINO IR of the decoder (dims "?", nodes named apart from their tensors): the
    batch is the past's one unnamed dim beside its growing axis; states found by node name."""
    import openvino as ov

    xml = tmp_path / "decoder.xml"
    ov.save_model(ov.Core().read_model(model.SerializeToString(), ov.Tensor(np.empty(0, np.uint8))),
                  xml, compress_to_fp16=False)  # fmt: skip
    with (
        infer.Engine.load(xml, backend="openvino", cache=False) as engine,
        engine.decoder() as d,
    ):
        assert "OpenVINO state" in d.cache
        assert d.generate(PROMPTS, NEW) == expected


def test_dims_the_graph_leaves_open(model, expected):
    """A past whose head size is a name (onnxruntime-genai's kv_cache_dim): refused in words,
    decoded once `dims=` sizes it."""
    open_model = onnx.ModelProto()
    open_model.CopyFrom(model)
    for value in (*open_model.graph.input, *open_model.graph.output):
        if value.name.startswith(("past_key_values", "present")):
            value.type.tensor_type.shape.dim[3].dim_param = "kv_cache_dim"
    with infer.Engine.load(open_model, backend="onnxruntime", cache=False) as engine:
        with pytest.raises(ModelError, match=r"dims=\{'kv_cache_dim'"):
            engine.decoder()
        with pytest.raises(OptionError, match="positive int"):
            engine.decoder(dims={"kv_cache_dim": 0})
        assert engine.decoder(dims={"kv_cache_dim": 4}).generate(PROMPTS, NEW) == expected


def _sdpa_decoder(path, vocab=VOCAB, hidden=16, heads=2, seed=0):
    """An OpenVINO IR decoder with an attention op (ScaledDotProductAttention over
    concat(past, new), an additive causal and padding mask), as optimum-intel exports them."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(seed)
    size = hidden // heads

    def w(*shape):
        return ops.constant((rng.standard_normal(shape) * 0.5).astype(np.float32))

    def i64(*values):
        return ops.constant(np.array(values, np.int64))

    ids = ops.parameter([-1, -1], ov.Type.i64, name="input_ids")
    mask = ops.parameter([-1, -1], ov.Type.i64, name="attention_mask")
    pk = ops.parameter([-1, heads, -1, size], ov.Type.f32, name="past_key_values.0.key")
    pv = ops.parameter([-1, heads, -1, size], ov.Type.f32, name="past_key_values.0.value")
    for p in (ids, mask, pk, pv):
        p.output(0).get_tensor().set_names({p.get_friendly_name()})
    x = ops.gather(w(vocab, hidden), ids, ops.constant(0))

    def split(t):
        flat = ops.matmul(t, w(hidden, hidden), False, False)
        return ops.transpose(ops.reshape(flat, i64(0, 0, heads, size), True), i64(0, 2, 1, 3))

    q, k, v = split(x), split(x), split(x)
    keys, values = ops.concat([pk, k], 2), ops.concat([pv, v], 2)
    total = ops.gather(ops.shape_of(mask), ops.constant(1), ops.constant(0))
    new = ops.gather(ops.shape_of(ids), ops.constant(1), ops.constant(0))
    one = ops.constant(np.int64(1))
    q_pos = ops.unsqueeze(ops.range(ops.subtract(total, new), total, one, "i64"), i64(1))
    causal = ops.less_equal(ops.range(ops.constant(np.int64(0)), total, one, "i64"), q_pos)
    padding = ops.unsqueeze(ops.convert(mask, "boolean"), i64(1, 2))
    allowed = ops.logical_and(padding, ops.unsqueeze(causal, i64(0, 1)))
    bias = ops.select(allowed, ops.constant(np.float32(0)), ops.constant(np.float32(-1e9)))
    attended = ops.scaled_dot_product_attention(q, keys, values, bias, causal=False)
    merged = ops.reshape(ops.transpose(attended, i64(0, 2, 1, 3)), i64(0, 0, hidden), True)
    h = ops.add(x, ops.matmul(merged, w(hidden, hidden), False, False))
    logits = ops.matmul(h, w(hidden, vocab), False, False)
    results = []
    for node, name in ((logits, "logits"), (keys, "present.0.key"), (values, "present.0.value")):
        node.output(0).get_tensor().set_names({name})
        results.append(ops.result(node))
    ov.save_model(ov.Model(results, [ids, mask, pk, pv]), path, compress_to_fp16=False)


def test_openvino_fuses_the_stateful_cache_into_attention(tmp_path):
    """The stateful compile has the pattern OpenVINO's CPU plugin fuses (beam_idx Gather,
    initial states): its runtime model holds the attention over the state (measured with
    2026.4), and greedy and sampled ids equal the host loop's on the same IR."""
    import collections

    xml = tmp_path / "sdpa.xml"
    _sdpa_decoder(xml)
    with infer.Engine.load(xml, backend="openvino", cache=False) as engine:
        fused, host = engine.decoder(), engine.decoder(cache="host")
        assert "OpenVINO state" in fused.cache and "host" in host.cache
        compiled, _ = engine._session._stateful[tuple(p.past for p in engine.roles.kv)]
        layers = collections.Counter(
            op.get_rt_info()["layerType"].astype(str)
            for op in compiled.get_runtime_model().get_ops()
        )
        assert layers["ScaledDotProductAttention"] == 1 and layers["MemoryInput"] == 2
        assert fused.generate(PROMPTS, NEW) == host.generate(PROMPTS, NEW)
        for prompt in PROMPTS:
            assert fused.generate(prompt, NEW) == host.generate(prompt, NEW)
        kw = dict(temperature=0.8, seed=5)
        assert fused.generate(PROMPTS, NEW, **kw) == host.generate(PROMPTS, NEW, **kw)
