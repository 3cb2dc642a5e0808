"""Dynamic batching inside the engine (infer.Batching) on the real ONNX Runtime and OpenVINO:
each caller gets its own rows, bad feeds fail alone, close() and GC leave nothing hanging, the
asyncio path never blocks the loop."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import Batching, EngineClosed, InputError, OptionError, RuntimeFailure, batcher
from infer.backends._trt_profiles import Range

from . import models

BACKENDS = ["onnxruntime", "openvino"]


def affine() -> object:
    """x: float32[N, W] -> y = 2x + 1, z = sum of each row: exact, so a row that comes back to
    the wrong caller shows."""
    return models._model(
        [
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Add", ["x2", "one"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["z"], keepdims=0),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "W"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W"]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N"]),
        ],
        [
            numpy_helper.from_array(np.array(2, np.float32), "two"),
            numpy_helper.from_array(np.array(1, np.float32), "one"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )


def gather(computed: bool = True) -> object:
    """i: int64[N] -> rows of a 4x2 table. `computed`: the index is i + 0, which the feed check
    cannot bound, so an index past the table fails at run time; else the feed check refuses it."""
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    index = [helper.make_node("Add", ["i", "zero"], ["j"])] if computed else []
    return models._model(
        [*index, helper.make_node("Gather", ["table", "j" if computed else "i"], ["rows"], axis=0)],
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(0), "zero")],
    )


def _request(caller: int, k: int, rows: int, width: int = 4) -> np.ndarray:
    """A request whose every value says who sent it."""
    base = caller * 1000 + k
    return (base + np.arange(rows * width, dtype=np.float32).reshape(rows, width) / 100).astype(
        np.float32
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_threads_by_two_hundred_mixed_requests_each_get_their_own_rows(backend):
    config = Batching(max_batch=16, max_delay_ms=2.0, measure=False)
    with infer.Engine.load(affine(), device="cpu", backend=backend, batching=config) as engine:
        wrong: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def caller(c: int) -> None:
            try:
                for k in range(200):
                    x = _request(c, k, rows=1 + (c + k) % 4)
                    out = engine.submit({"x": x}).result() if k % 2 else engine.run({"x": x})
                    if not (
                        np.array_equal(out["y"], 2 * x + 1)
                        and np.allclose(out["z"], x.sum(axis=1), rtol=1e-6)
                    ):
                        wrong.append((c, k))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=caller, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and not wrong
        stats = engine.batching_stats
        assert stats.requests == 1600 and stats.failed == 0
        assert stats.rows == sum(1 + (c + k) % 4 for c in range(8) for k in range(200))
        assert stats.batches < 1600 and stats.mean_batch > 1.5  # requests did share runs
        assert stats.delay_p50_ms <= stats.delay_p99_ms <= stats.delay_max_ms


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_outputs_equal_unbatched_runs_of_a_cnn(backend):
    model = models.cnn(channels=16, size=32)
    rng = np.random.default_rng(0)
    xs = [rng.random((1 + i % 3, 3, 32, 32), dtype=np.float32) for i in range(48)]
    with infer.Engine.load(model, device="cpu", backend=backend) as plain:
        want = [plain.run({"input": x})["logits"] for x in xs]
    with infer.Engine.load(model, device="cpu", backend=backend, batching=Batching()) as engine:
        got = [f.result()["logits"] for f in [engine.submit({"input": x}) for x in xs]]
        assert engine.batching_stats.mean_batch > 1
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_requests_of_different_trailing_shapes_batch_separately():
    config = Batching(max_batch=64, max_delay_ms=20.0, measure=False)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        xs = [_request(i, 0, rows=2, width=3 + i % 3) for i in range(30)]
        futures = [e.submit({"x": x}) for x in xs]
        for x, f in zip(xs, futures):
            assert np.array_equal(f.result()["y"], 2 * x + 1)
        assert e.batching_stats.batches >= 3  # one run per width at least


def test_a_bad_feed_among_good_ones_fails_alone_and_at_once():
    """As Engine.submit promises on every backend: a mistake in the feeds is set on the Future
    at once (it never joins a batch); run raises it."""
    config = Batching(max_batch=16, max_delay_ms=20.0, measure=False)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        good = [e.submit({"x": _request(i, 0, rows=1)}) for i in range(6)]
        wrong_rank = e.submit({"x": np.zeros((1, 4, 1), np.float32)})
        unknown = e.submit({"x": _request(9, 0, rows=1)}, outputs=["nope"])
        for bad, match in ((wrong_rank, "'x'"), (unknown, "unknown output")):
            assert bad.done()  # failed at once, not after max_delay
            with pytest.raises(InputError, match=match):
                bad.result(timeout=0)
        with pytest.raises(InputError):
            e.run({"wrong_name": _request(9, 0, rows=1)})
        more = [e.submit({"x": _request(i, 1, rows=1)}) for i in range(6)]
        for f in good + more:
            assert f.result()["y"].shape == (1, 4)
        only_z = e.submit({"x": _request(3, 3, rows=2)}, outputs=["z"]).result()
        assert set(only_z) == {"z"}
        assert e.batching_stats.failed == 0


def test_a_runtime_failure_of_a_merged_run_fails_only_the_request_that_causes_it():
    config = Batching(max_batch=16, max_delay_ms=50.0, measure=False)
    with infer.Engine.load(gather(), device="cpu", backend="onnxruntime", batching=config) as e:
        feeds = [np.array([i % 4], np.int64) for i in range(7)]
        feeds.insert(3, np.array([99], np.int64))  # past the table: ONNX Runtime refuses it
        futures = [e.submit({"i": i}) for i in feeds]
        for i, f in zip(feeds, futures):
            if i[0] == 99:
                with pytest.raises(RuntimeFailure, match="onnxruntime"):
                    f.result()
            else:
                np.testing.assert_array_equal(f.result()["rows"], [[2 * i[0], 2 * i[0] + 1]])
        stats = e.batching_stats
        assert stats.failed == 1 and stats.requests == 8


def test_an_index_past_the_table_fails_only_its_request_in_words():
    config = Batching(max_batch=16, max_delay_ms=50.0, measure=False)
    with infer.Engine.load(
        gather(computed=False), device="cpu", backend="onnxruntime", batching=config
    ) as e:
        feeds = [np.array([i % 4], np.int64) for i in range(7)]
        feeds.insert(3, np.array([99], np.int64))
        futures = [e.submit({"i": i}) for i in feeds]
        for i, f in zip(feeds, futures):
            if i[0] == 99:
                with pytest.raises(InputError, match=r"input 'i': value 99 is outside \[-4, 3\]"):
                    f.result()
            else:
                np.testing.assert_array_equal(f.result()["rows"], [[2 * i[0], 2 * i[0] + 1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_with_requests_queued_finishes_each_and_refuses_new_ones(backend):
    # nothing would go on its own
    config = Batching(max_batch=1000, max_delay_ms=60_000.0, measure=False)
    engine = infer.Engine.load(affine(), device="cpu", backend=backend, batching=config)
    xs = [_request(i, 0, rows=1 + i % 2, width=2 + i % 3) for i in range(20)]
    futures = [engine.submit({"x": x}) for x in xs]
    time.sleep(0.05)
    assert not any(f.done() for f in futures)
    start = time.perf_counter()
    engine.close()
    assert time.perf_counter() - start < 10
    for x, f in zip(xs, futures):
        assert np.array_equal(f.result(timeout=0)["y"], 2 * x + 1)
    with pytest.raises(EngineClosed):
        engine.submit({"x": xs[0]})
    with pytest.raises(EngineClosed):
        engine.run({"x": xs[0]})
    engine.close()  # idempotent


def test_close_from_many_threads_while_they_submit_never_hangs():
    config = Batching(max_batch=8, max_delay_ms=5.0, measure=False)
    engine = infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config)
    outcomes: list[str] = []

    def caller(c: int) -> None:
        for k in range(500):
            try:
                engine.run({"x": _request(c, k, rows=1)})
            except EngineClosed:
                outcomes.append("closed")
                return
        outcomes.append("done")

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    engine.close()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 8


def test_garbage_collection_runs_the_queued_requests():
    config = Batching(max_batch=1000, max_delay_ms=60_000.0, measure=False)
    engine = infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config)
    futures = [engine.submit({"x": _request(i, 0, rows=1)}) for i in range(5)]
    del engine
    gc.collect()
    for f in futures:
        assert f.result(timeout=10)["y"].shape == (1, 4)


def test_a_full_batch_goes_at_once_and_a_partial_one_after_max_delay():
    config = Batching(max_batch=4, max_delay_ms=5_000.0, measure=False)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        start = time.perf_counter()
        futures = [e.submit({"x": _request(i, 0, rows=1)}) for i in range(4)]
        for f in futures:
            f.result(timeout=10)
        assert time.perf_counter() - start < 2.5  # well before max_delay
        assert e.batching_stats.full >= 1
    config = Batching(max_batch=4, max_delay_ms=150.0, measure=False)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        start = time.perf_counter()
        e.run({"x": _request(0, 0, rows=1)})
        assert time.perf_counter() - start >= 0.14  # waited for company that never came
        big = _request(1, 0, rows=9)  # more rows than max_batch: runs alone
        assert np.array_equal(e.run({"x": big})["y"], 2 * big + 1)


def test_map_and_call_go_through_the_batcher_in_order():
    with infer.Engine.load(
        affine(), device="cpu", backend="onnxruntime", batching=Batching(max_batch=8)
    ) as e:
        xs = [_request(i, 0, rows=1) for i in range(40)]
        for x, out in zip(xs, e.map(xs)):
            assert np.array_equal(out["y"], 2 * x + 1)
        assert e.batching_stats.mean_batch > 1  # map kept enough ahead to merge
        y, z = e(xs[0])  # several outputs: a tuple in the model's order
        assert np.array_equal(y, 2 * xs[0] + 1) and z.shape == (1,)


def test_asyncio_callers_batch_without_blocking_the_loop():
    config = Batching(max_batch=4, max_delay_ms=300.0, measure=False)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        # Fill the queue to its bound with requests that each wait max_delay (one per width):
        # a blocking submit would now hold the event loop until the dispatcher takes one.
        held = [e.submit({"x": _request(i, 0, rows=1, width=5 + i)}) for i in range(8)]

        async def main() -> tuple[float, list]:
            gaps: list[float] = []
            stop = asyncio.Event()

            async def heartbeat() -> None:
                last = time.perf_counter()
                while not stop.is_set():
                    await asyncio.sleep(0.002)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            beat = asyncio.create_task(heartbeat())
            xs = [_request(i, 1, rows=1) for i in range(24)]
            outs = await asyncio.gather(*(e.arun({"x": x}) for x in xs))
            stop.set()
            await beat
            return max(gaps), list(zip(xs, outs))

        worst, pairs = asyncio.run(main())
        assert worst < 0.15, f"the event loop stalled for {worst * 1e3:.0f} ms"
        for x, out in pairs:
            assert np.array_equal(out["y"], 2 * x + 1)
        for f in held:
            f.result(timeout=10)


def test_models_without_a_batch_axis_are_refused_with_the_reason():
    with pytest.raises(OptionError, match=r"batching= needs .* x: float32\[1, 3\]"):
        infer.Engine.load(models.relu(batch=1), device="cpu", batching=Batching())
    with pytest.raises(OptionError, match="max_batch must be an integer >= 1"):
        Batching(max_batch=0)
    with pytest.raises(OptionError, match="max_delay_ms must be"):
        Batching(max_delay_ms=-1)
    with pytest.raises(OptionError, match=r"batching must be an infer.Batching"):
        infer.Engine.load(models.relu(), device="cpu", batching=16)  # type: ignore[arg-type]


def test_batches_stay_within_the_widest_tensorrt_profile():
    """A TensorRT session lists its optimization profiles ({input: Range}); merged runs keep to
    the widest batch one of them takes."""

    def session(*maxima: int) -> SimpleNamespace:
        return SimpleNamespace(
            profiles=[{"x": Range((1, 3), (1, 3), (m, 3))} for m in maxima],
        )

    assert batcher._profile_limit(session(8), 16) == 8  # type: ignore[arg-type]
    assert batcher._profile_limit(session(4, 32), 16) == 16  # type: ignore[arg-type]
    assert batcher._profile_limit(SimpleNamespace(), 16) == 16  # type: ignore[arg-type]


def test_the_ray_serve_deployment_batches_with_the_engines_batcher_where_it_can():
    from infer.serve import ray as infer_ray

    config = Batching(max_batch=4, max_delay_ms=1.0, measure=False)
    with infer_ray._batched_engine(affine(), "cpu", config, {"backend": "onnxruntime"}) as e:
        assert e.batching_stats is not None and e.batching_stats.max_batch == 4
    with infer_ray._batched_engine(models.relu(batch=1), "cpu", config, {}) as e:
        assert e.batching_stats is None  # no batch axis: each call runs alone
    shapes = {"x": (2, 4)}  # OpenVINO compiles the fixed shape: the batch axis is gone
    with infer_ray._batched_engine(
        affine(), "cpu", config, {"backend": "openvino", "shapes": shapes}
    ) as e:
        assert e.batching_stats is None


def test_bench_with_batching_reports_the_batchers_counters(tmp_path):
    from typer.testing import CliRunner

    from infer.bench import benchmark
    from infer.cli import _app

    report = benchmark(
        affine(),
        device="cpu",
        backends=["onnxruntime", "openvino"],
        concurrency=8,
        batching=Batching(max_batch=8, max_delay_ms=2.0, measure=False),
        shapes={"x": (1, 4)},
        duration=0.3,
        warmup=0.1,
    )
    assert [m.backend for m in report.results] == ["onnxruntime[cpu]", "openvino"]
    for m in report.results:
        assert m.ok, m.error
        assert m.batching is not None and m.batching.requests == m.runs
        assert m.batching.mean_batch > 1
    data = report.to_dict()
    assert data["batching"] == {
        "max_batch": 8,
        "max_delay_ms": 2.0,
        "max_padding": 0.25,
        "measure": False,
    }
    assert "recent_delays_ms" not in data["results"][0]["batching"]

    path = tmp_path / "m.onnx"
    path.write_bytes(affine().SerializeToString())
    args = ["bench", str(path), "-b", "onnxruntime", "-c", "4", "--batching", "4,1", "--shape"]
    result = CliRunner().invoke(
        _app.app, [*args, "x=1x4", "--duration", "0.2", "--warmup", "0.1"], env={"COLUMNS": "100"}
    )
    assert result.exit_code == 0, result.output
    assert "batching up to 4 rows, 1 ms" in result.output and "mean batch" in result.output
    assert "queued p50 ms" in result.output  # the batcher's queue delays, with their unit
    assert "passed" in result.output  # requests the batcher's trial ran unmerged
    bad = CliRunner().invoke(_app.app, ["bench", str(path), "--batching", "4,x"])
    assert bad.exit_code == 2 and "--batching takes MAX_BATCH" in bad.output


def test_stats_since_an_earlier_snapshot_count_only_what_happened_between():
    config = Batching(max_batch=2, max_delay_ms=1.0, measure=False)
    with infer.Engine.load(affine(), device="cpu", backend="onnxruntime", batching=config) as e:
        for i in range(3):
            e.run({"x": _request(i, 0, rows=1)})  # alone: each waits max_delay
        before = e.batching_stats
        futures = [e.submit({"x": _request(i, 1, rows=1)}) for i in range(6)]
        for f in futures:
            f.result()
        window = e.batching_stats.since(before)
    assert window.requests == 6 and window.rows == 6
    assert window.delays_recorded == 6 and len(window.recent_delays_ms) == 6
    assert window.batches <= 6


def test_batching_follows_a_background_switch_of_backend():
    """The default load (choose="background") may switch backends after a race: queued and
    later requests run on whichever session is current, none on a closed one."""
    model = models.cnn(channels=8, size=16)
    xs = [np.random.default_rng(i).random((1, 3, 16, 16), dtype=np.float32) for i in range(64)]
    with infer.Engine.load(model, device="cpu", backend="onnxruntime") as plain:
        want = [plain.run({"input": x})["logits"] for x in xs]
    config = Batching(max_batch=8, max_delay_ms=2.0, measure=False)
    with infer.Engine.load(model, device="cpu", batching=config, cache=False) as e:
        futures = [e.submit({"input": x}) for x in xs[:32]]
        assert e.settle(timeout=120)
        futures += [e.submit({"input": x}) for x in xs[32:]]
        for w, f in zip(want, futures):
            np.testing.assert_allclose(f.result(timeout=30)["logits"], w, rtol=1e-4, atol=1e-5)
        assert e.batching_stats.failed == 0  # (here it switched from onnxruntime to openvino)
