"""Dynamic batching of sequence encoders' requests of different lengths (infer.Batching pads
them into one run and cuts each caller's rows back): exact against runs alone on every backend
here, padding bounded, a too-long request fails alone, close() finishes what is queued."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import infer
from infer import Batching, InputError, OptionError, batching, sequence
from infer.batching import Padding, fit, pad_limit

from . import models, sequence_models
from .encoder_models import encoder

BACKENDS = ["onnxruntime", "openvino", "reference"]
LENGTHS = [5, 7, 8, 12, 30, 31, 33, 60, 3, 9, 16, 17, 40, 44, 6, 64]

# name: encoder options (every one has a mask unless said)
ENCODERS = {
    "mean-pooled": {},
    "cls-with-token-types": {"token_types": True, "pooling": "cls"},
    "position-ids": {"positions": True, "token_types": True},
}


def request(
    model_inputs: set[str], length: int, rows: int = 1, *, seed: int, vocab: int = 100
) -> dict[str, np.ndarray]:
    """A request of `rows` rows of `length` tokens (ids never the pad id 0)."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(1, vocab, (rows, length))}
    if "attention_mask" in model_inputs:
        feeds["attention_mask"] = np.ones((rows, length), np.int64)
    if "token_type_ids" in model_inputs:
        feeds["token_type_ids"] = (
            (np.arange(length) >= length // 2).astype(np.int64)[None].repeat(rows, 0)
        )
    if "position_ids" in model_inputs:
        feeds["position_ids"] = np.arange(length, dtype=np.int64)[None].repeat(rows, 0)
    return feeds


def alone(model, backend: str, requests: list[dict]) -> list[dict[str, np.ndarray]]:
    with infer.Engine.load(model, device="cpu", backend=backend) as plain:
        return [plain.run(r) for r in requests]


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


# -- which requests share a run -----------------------------------------------------------------


def test_fit_keeps_the_oldest_and_bounds_the_padding_of_the_run_and_of_each_request():
    lengths = [30, 5, 31, 33, 60, 28, 7, 32]
    rows = [1] * len(lengths)
    chosen = fit(lengths, rows, 16, 0.25)
    assert chosen[0] == 0 and chosen == sorted(chosen)
    picked = [lengths[i] for i in chosen]
    assert sorted(picked) == [28, 30, 31, 32, 33]  # the 5, 7 and 60 would waste too much
    longest = max(picked)
    assert len(picked) * longest - sum(picked) <= 0.25 * sum(picked)
    # rows count, and so does max_rows
    assert fit([10, 10, 10], [3, 3, 3], 7, 0.25) == [0, 1]
    # no request padded past twice its length (8 tokens for short ones), whatever max_padding
    assert pad_limit(3) == 8 and pad_limit(20) == 40
    assert fit([20, 41, 40], [1, 1, 1], 16, 100.0) == [0, 2]
    assert fit([41, 20], [1, 1], 16, 100.0) == [0]
    # 0: only equal lengths
    assert fit([12, 13, 12, 11], [1, 1, 1, 1], 16, 0.0) == [0, 2]
    # among equal rows, the least padding: 10 and 11 rather than 10 and 12
    assert fit([10, 12, 11], [1, 1, 1], 2, 1.0) == [0, 2]


def test_padding_plans_only_masked_encoders_whose_outputs_follow_the_length_by_name():
    def plan(model):
        specs = infer.model.Model.load(model)
        return Padding.of(sequence.read(model), specs.inputs, specs.outputs)

    padding = plan(encoder(token_types=True, positions=True))
    assert padding is not None
    assert padding.axes == {
        "input_ids": 1,
        "attention_mask": 1,
        "token_type_ids": 1,
        "position_ids": 1,
    }
    assert padding.trims == {"last_hidden_state": (1,), "pooled": ()}
    assert padding.longest == ("the position table 'position_ids' indexes", 64)
    inside = plan(encoder(max_positions=40))  # positions made in the graph: Range -> Gather
    assert inside is not None and inside.longest == ("the position table it indexes itself", 40)
    assert sequence.read(encoder(max_positions=40)).max_positions == 40
    assert sequence.read(encoder(positions=True)).max_positions is None  # an input: bounds
    assert sequence.read(models.tiny_decoder()).max_positions is None
    assert plan(encoder(mask=False)) is None  # nothing hides the padding
    assert plan(models.tiny_decoder()) is None  # a KV cache: the decoder pads on its own
    unnamed = encoder()
    unnamed.graph.output[0].type.tensor_type.shape.dim[1].ClearField("dim_param")
    assert plan(unnamed) is None  # an output size nothing names might follow the length
    fixed = encoder()
    for value in fixed.graph.input:
        value.type.tensor_type.shape.dim[1].dim_value = 16
    assert plan(fixed) is None


def test_max_padding_is_checked():
    assert Batching().max_padding == 0.25
    for bad in (-0.1, float("nan"), "0.2", True):
        with pytest.raises(OptionError, match="max_padding must be"):
            Batching(max_padding=bad)  # type: ignore[arg-type]


# -- exact on every backend ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(ENCODERS))
def test_requests_of_mixed_lengths_share_runs_and_each_gets_its_run_alone(backend, kind):
    model = encoder(**ENCODERS[kind])
    names = {i.name for i in model.graph.input}
    requests = [request(names, n, 1 + i % 2, seed=i) for i, n in enumerate(LENGTHS)]
    want = alone(model, backend, requests)
    config = Batching(max_batch=64, max_delay_ms=100.0, measure=False)
    with infer.Engine.load(model, device="cpu", backend=backend, batching=config) as engine:
        futures = [engine.submit(r) for r in requests]
        got = [f.result(timeout=60) for f in futures]
        stats = engine.batching_stats
    for g, w in zip(got, want):
        assert_same(g, w)
    assert stats.requests == len(requests) and stats.failed == 0
    assert stats.batches < len(set(LENGTHS))  # lengths did share runs
    assert stats.padded_tokens > 0
    assert stats.tokens == sum(r["input_ids"].size for r in requests)
    assert stats.padding_waste == stats.padded_tokens / stats.tokens <= 0.25
    assert "padding" in str(stats)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_without_a_mask_merges_only_requests_of_one_length(backend):
    model = encoder(mask=False)
    requests = [request({"input_ids"}, n, seed=i) for i, n in enumerate([6, 9, 6, 9, 6, 14])]
    want = alone(model, backend, requests)
    config = Batching(max_batch=64, max_delay_ms=100.0, measure=False)
    with infer.Engine.load(model, device="cpu", backend=backend, batching=config) as engine:
        assert engine._batcher.padding is None
        got = [f.result(timeout=60) for f in [engine.submit(r) for r in requests]]
        stats = engine.batching_stats
    for g, w in zip(got, want):
        assert_same(g, w)
    assert stats.batches == 3 and stats.padded_tokens == 0 and stats.tokens == 0


def test_max_padding_zero_merges_only_equal_lengths():
    model = encoder()
    names = {"input_ids", "attention_mask"}
    requests = [request(names, n, seed=i) for i, n in enumerate([10, 11, 10, 12, 11, 10])]
    want = alone(model, "onnxruntime", requests)
    config = Batching(max_batch=64, max_delay_ms=100.0, max_padding=0.0, measure=False)
    with infer.Engine.load(model, device="cpu", backend="onnxruntime", batching=config) as e:
        got = [f.result(timeout=60) for f in [e.submit(r) for r in requests]]
        stats = e.batching_stats
    for g, w in zip(got, want):
        assert_same(g, w)
    assert (
        stats.batches == 3
        and stats.padded_tokens == 0
        and stats.tokens == sum(r["input_ids"].size for r in requests)
    )


# -- many callers, failures, close --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_mixed_lengths_from_eight_threads_each_get_their_own_rows(backend):
    model = encoder(token_types=True)
    names = {i.name for i in model.graph.input}
    rng = np.random.default_rng(1)
    plan = {
        (c, k): (int(rng.integers(3, 48)), 1 + int(rng.integers(0, 2)))
        for c in range(8)
        for k in range(25)
    }
    requests = {
        key: request(names, n, rows, seed=hash(key) % 10_000) for key, (n, rows) in plan.items()
    }
    keys = list(requests)
    want = dict(zip(keys, alone(model, backend, [requests[k] for k in keys])))
    wrong: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    config = Batching(max_batch=8, max_delay_ms=5.0, measure=False)
    with infer.Engine.load(model, device="cpu", backend=backend, batching=config) as engine:

        def caller(c: int) -> None:
            try:
                for k in range(25):
                    feeds = requests[(c, k)]
                    out = engine.submit(feeds).result() if k % 2 else engine.run(feeds)
                    w = want[(c, k)]
                    if any(
                        out[n].shape != w[n].shape or not np.allclose(out[n], w[n], atol=1e-5)
                        for n in w
                    ):
                        wrong.append((c, k))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=caller, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = engine.batching_stats
    assert not errors and not wrong
    assert stats.requests == 200 and stats.failed == 0
    assert stats.batches < 200 and stats.padded_tokens > 0  # lengths did share runs
    assert stats.padding_waste <= 0.25


def test_a_request_longer_than_the_position_table_fails_alone_with_input_error():
    model = encoder(positions=True, max_positions=32)
    names = {i.name for i in model.graph.input}
    config = Batching(max_batch=16, max_delay_ms=50.0, measure=False)
    with infer.Engine.load(model, device="cpu", backend="onnxruntime", batching=config) as e:
        good = [request(names, n, seed=n) for n in (5, 20, 32, 7)]
        futures = [e.submit(r) for r in good[:2]]
        too_long = e.submit(request(names, 33, seed=0))
        futures += [e.submit(r) for r in good[2:]]
        assert too_long.done()  # refused at once, never queued
        with pytest.raises(InputError, match=r"'position_ids': value 32 is outside \[-32, 31\]"):
            too_long.result(timeout=0)
        # positions within the table (restarting), still more tokens than it has rows
        restarting = request(names, 33, seed=0)
        restarting["position_ids"] = np.arange(33)[None] % 32
        with pytest.raises(InputError, match=r"'input_ids' holds 33 tokens; .* at most 32"):
            e.submit(restarting).result(timeout=0)
        want = alone(model, "onnxruntime", good)
        for f, w in zip(futures, want):
            assert_same(f.result(timeout=30), w)
        assert e.batching_stats.failed == 0 and e.batching_stats.requests == 4


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_request_longer_than_the_position_table_inside_the_graph_fails_alone(backend):
    model = encoder(max_positions=24, token_types=True)
    names = {i.name for i in model.graph.input}
    good = [request(names, n, seed=n) for n in (5, 24, 13)]
    want = alone(model, backend, good)
    config = Batching(max_batch=16, max_delay_ms=50.0, measure=False)
    with infer.Engine.load(model, device="cpu", backend=backend, batching=config) as e:
        futures = [e.submit(r) for r in good]
        with pytest.raises(InputError, match=r"25 tokens; .* at most 24 \(the position table"):
            e.run(request(names, 25, seed=0))
        for f, w in zip(futures, want):
            assert_same(f.result(timeout=30), w)
        assert e.batching_stats.failed == 0


def test_a_request_longer_than_a_fixed_length_fails_alone_with_input_error():
    model = encoder()
    for value in (*model.graph.input, model.graph.output[0]):
        value.type.tensor_type.shape.dim[1].dim_value = 16
    names = {"input_ids", "attention_mask"}
    config = Batching(max_batch=16, max_delay_ms=50.0, measure=False)
    with infer.Engine.load(model, device="cpu", backend="onnxruntime", batching=config) as e:
        futures = [e.submit(request(names, 16, seed=i)) for i in range(3)]
        with pytest.raises(InputError, match="input_ids"):
            e.submit(request(names, 20, seed=9)).result(timeout=0)
        for f in futures:
            assert f.result(timeout=30)["pooled"].shape == (1, 16)
        assert e.batching_stats.failed == 0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_close_with_ragged_requests_queued_finishes_each(backend):
    model = encoder(token_types=True, pooling="cls")
    names = {i.name for i in model.graph.input}
    requests = [request(names, n, 1 + i % 3, seed=i) for i, n in enumerate(LENGTHS)]
    want = alone(model, backend, requests)
    # nothing would go on its own
    config = Batching(max_batch=1000, max_delay_ms=60_000.0, measure=False)
    engine = infer.Engine.load(model, device="cpu", backend=backend, batching=config)
    futures = [engine.submit(r) for r in requests]
    time.sleep(0.05)
    assert not any(f.done() for f in futures)
    engine.close()
    for f, w in zip(futures, want):
        assert_same(f.result(timeout=0), w)
    stats = engine.batching_stats
    assert stats.requests == len(requests) and 1 < stats.batches < len(requests)


def test_stats_since_counts_the_tokens_and_padding_in_between():
    model = encoder()
    names = {"input_ids", "attention_mask"}
    config = Batching(max_batch=16, max_delay_ms=200.0, measure=False)
    with infer.Engine.load(model, device="cpu", backend="onnxruntime", batching=config) as e:
        e.run(request(names, 10, seed=0))
        before = e.batching_stats
        for f in [e.submit(request(names, n, seed=n)) for n in (20, 22, 24)]:
            f.result(timeout=30)
        window = e.batching_stats.since(before)
    assert window.tokens == 66 and window.padded_tokens == 6
    assert window.padding_waste == pytest.approx(6 / 66)
    assert before.tokens == 10 and before.padded_tokens == 0
    assert batching.BatchingStats.padding_waste.__doc__


# -- the committed optimum export of BERT -------------------------------------------------------

BERT = sequence_models.path("bert")


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimums_bert_export_pads_exactly_and_refuses_more_than_its_positions(backend):
    names = {"input_ids", "attention_mask", "token_type_ids"}
    requests = [
        request(names, n, 1 + i % 2, seed=i, vocab=sequence_models.VOCAB)
        for i, n in enumerate(LENGTHS)
    ]
    want = alone(BERT, backend, requests)
    config = Batching(max_batch=64, max_delay_ms=100.0, measure=False)
    with infer.Engine.load(BERT, device="cpu", backend=backend, batching=config) as engine:
        assert engine._batcher.padding.longest[1] == 256  # max_position_embeddings
        futures = [engine.submit(r) for r in requests]
        with pytest.raises(InputError, match=r"257 tokens; .* at most 256"):
            engine.run(request(names, 257, seed=0, vocab=sequence_models.VOCAB))
        got = [f.result(timeout=120) for f in futures]
        stats = engine.batching_stats
    for g, w in zip(got, want):
        assert_same(g, w)
    assert stats.failed == 0 and stats.batches < len(set(LENGTHS)) and stats.padded_tokens > 0
