"""Batching(measure=True): the batcher times merged runs against requests passed straight
through, and keeps the faster way. The decision rules on a clock the test moves; then both
outcomes on the real ONNX Runtime: a model too small for merging to pay, and one whose run
costs the same for one row as for eight."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import Batching, batching_trial
from infer.batching_trial import MERGE, PASS, Trial

from . import models
from .test_batching import _request, affine


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trial(clock: Clock, **kw) -> Trial:
    return Trial(window_requests=10, window_s=0.09, clock=clock, **kw)


def drive(t: Trial, clock: Clock, rates: dict[str, float], requests: int) -> list[str]:
    """`requests` requests one after another, each taking 1/rate of the way it goes; the
    ways they went."""
    ways = []
    for _ in range(requests):
        ticket = t.begin()
        clock.now += 1 / rates[ticket.mode]
        t.end(ticket)
        ways.append(ticket.mode)
    return ways


def test_merging_is_timed_first_then_passing_and_the_faster_is_kept():
    clock = Clock()
    t = trial(clock)
    # 100 req/s merged: a window is 10 requests and 0.1 s; 3 windows, then a 2-window probe
    ways = drive(t, clock, {MERGE: 100.0, PASS: 300.0}, 50)
    assert ways[:30] == [MERGE] * 30 and ways[30:50] == [PASS] * 20
    assert t.chosen == PASS and not t.merging
    assert t.rates == {MERGE: pytest.approx(100.0), PASS: pytest.approx(300.0)}
    assert t.passed == 20


def test_a_slower_probe_keeps_merging_and_the_next_probe_waits_twice_as_long():
    clock = Clock()
    t = trial(clock)
    ways = drive(t, clock, {MERGE: 100.0, PASS: 60.0}, 40 + 60 + 10)
    assert t.merging
    # 3 windows merged; a probe of one window (it did not beat merging: no second one); then
    # 6 windows (the hold doubled) merged and the next probe
    assert ways[30:40] == [PASS] * 10
    assert ways[40:100] == [MERGE] * 60 and ways[100:110] == [PASS] * 10
    assert t.merging


def test_a_probe_far_behind_ends_after_a_quarter_of_a_window():
    clock = Clock()
    t = Trial(window_requests=40, window_s=0.09, clock=clock)
    ways = drive(t, clock, {MERGE: 400.0, PASS: 20.0}, 120 + 10 + 1)
    assert ways[120:130] == [PASS] * 10 and ways[130] == MERGE
    assert t.merging and t.rates[PASS] == pytest.approx(20.0)


def test_passing_must_win_by_the_margin():
    clock = Clock()
    t = trial(clock)
    drive(t, clock, {MERGE: 100.0, PASS: 104.0}, 50)  # within the 5% margin
    assert t.merging


def test_requests_of_the_previous_way_are_answered_before_a_window_starts():
    clock = Clock()
    t = trial(clock, first_hold=1)
    early = t.begin()  # a merged request still in its run when the probe starts
    clock.now += 0.05
    drive(t, clock, {MERGE: 100.0, PASS: 1000.0}, 10)  # ends the merge window: probe next
    assert t.mode == PASS
    # passed requests answered while the merged one is outstanding do not count
    drive(t, clock, {MERGE: 100.0, PASS: 1000.0}, 30)
    assert t.mode == PASS and t.rates.get(PASS) is None
    t.end(early)
    drive(t, clock, {MERGE: 100.0, PASS: 1000.0}, 25)  # a probe's window: 10 and 0.025 s
    assert t.rates[PASS] == pytest.approx(1000.0)


def test_idle_time_counts_against_neither_way():
    clock = Clock()
    t = trial(clock, first_hold=10)
    for _ in range(10):
        drive(t, clock, {MERGE: 100.0}, 1)
        clock.now += 1.0  # nothing outstanding: idle
    assert t.rates[MERGE] == pytest.approx(100.0)


def test_a_changed_traffic_brings_the_next_probe_forward():
    clock = Clock()
    t = trial(clock)
    ways = drive(t, clock, {MERGE: 100.0, PASS: 60.0}, 50)
    assert ways[30:40] == [PASS] * 10  # merging kept; the next probe in 6 windows
    ways = drive(t, clock, {MERGE: 100.0, PASS: 60.0}, 30)
    assert ways == [MERGE] * 30
    drive(t, clock, {MERGE: 300.0, PASS: 60.0}, 30)  # 3x the typical merged window
    assert t.mode == PASS  # probing again at once


def test_answers_outside_the_batcher_are_counted():
    clock = Clock()
    t = trial(clock)
    t.end(t.begin(), failed=False)
    t.end(t.begin(), failed=True)
    assert (t.answered, t.failed) == (2, 1)


def test_measure_must_be_a_bool():
    with pytest.raises(infer.OptionError, match="measure"):
        Batching(measure="yes")  # type: ignore[arg-type]


def fixed_cost(size: int = 192, products: int = 4) -> object:
    """x: float32[N, 4] -> y = x + 0 * sum(W^5): a run costs `products` size^3 matrix products
    whatever its rows (W is made from x so that nothing folds), so merging N requests divides
    their cost by N."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["s0"]),
        helper.make_node("Add", ["w", "s0"], ["m0"]),
    ]
    for k in range(products):
        nodes.append(helper.make_node("MatMul", [f"m{k}", "m0"], [f"m{k + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{products}"], ["t"], keepdims=0),
        helper.make_node("Mul", ["t", "zero"], ["t0"]),
        helper.make_node("Add", ["x", "t0"], ["y"]),
    ]
    w = (rng.standard_normal((size, size)) / size).astype(np.float32)
    return models._model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
        ],
    )


def _traffic(engine: infer.Engine, until, seconds: float) -> list[str]:
    """8 threads of one-row requests until `until(stats)` holds or `seconds` pass; wrong
    answers, if any."""
    stop = time.perf_counter() + seconds
    wrong: list[str] = []
    done = threading.Event()

    def caller(c: int) -> None:
        k = 0
        while time.perf_counter() < stop and not done.is_set():
            if c == 0 and k % 32 == 0 and until(engine.batching_stats):
                done.set()
            x = _request(c, k, 1)
            out = engine.run({"x": x})
            if not np.allclose(out["y"], x if "z" not in out else 2 * x + 1):
                wrong.append(f"caller {c} request {k}")
            k += 1

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wrong


def test_a_model_too_small_to_gain_from_merging_is_passed_through():
    config = Batching(max_batch=8, max_delay_ms=2.0)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        wrong = _traffic(e, lambda s: not s.merging and s.passed > 500, 20.0)
        stats = e.batching_stats
    assert not wrong
    assert not stats.merging, stats
    assert stats.passed_rate > stats.merged_rate > 0
    assert stats.requests > stats.passed > 500
    assert "passing through kept" in str(stats)


def test_a_model_whose_run_costs_the_same_for_any_batch_stays_merged():
    config = Batching(max_batch=8, max_delay_ms=2.0)
    with infer.Engine.load(fixed_cost(), device="cpu", backend="onnxruntime", batching=config) as e:
        wrong = _traffic(
            e,
            lambda s: s.passed_rate > 0 and s.merged_rate > 0 and s.requests > s.passed + 600,
            30.0,
        )
        stats = e.batching_stats
    assert not wrong
    assert stats.merging, stats
    assert stats.merged_rate > stats.passed_rate > 0
    assert stats.mean_batch > 2


def test_the_trial_logs_its_choice(caplog):
    clock = Clock()
    t = trial(clock)
    with caplog.at_level("INFO", logger=batching_trial.__name__):
        drive(t, clock, {MERGE: 100.0, PASS: 300.0}, 50)
    assert "requests pass straight to the session" in caplog.text


def test_a_refused_request_leaves_nothing_outstanding_in_the_trial():
    config = Batching(max_batch=8, max_delay_ms=2.0)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        bad = e.submit({"x": np.zeros((1, 4), np.int64)})  # an integer feed for a float input
        with pytest.raises(infer.InputError):
            bad.result()
        e.run({"x": np.zeros((1, 4), np.float32)})
        trial = e._batcher._trial  # a request counted as outstanding forever would stall it
        assert trial is not None and trial._fresh == 0 and trial._stale == 0


def test_asyncio_callers_are_answered_while_requests_pass_through():
    import asyncio

    config = Batching(max_batch=8, max_delay_ms=2.0)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        batcher = e._batcher
        assert batcher is not None
        assert not _traffic(e, lambda s: not s.merging, 20.0)
        for k in range(10_000):  # a probe of merged runs may be under way: until it ends
            if batcher.passing:
                break
            e.run({"x": _request(9, k, 1)})
        assert batcher.passing
        xs = [_request(c, 0, 1) for c in range(32)]

        async def main() -> list[dict[str, np.ndarray]]:
            return await asyncio.gather(*(e.arun({"x": x}) for x in xs))

        before = e.batching_stats.passed
        outs = asyncio.run(main())
        assert e.batching_stats.passed > before  # at least the first went through arun's gate
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
