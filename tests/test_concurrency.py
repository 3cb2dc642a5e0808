"""Concurrency: run from many threads, submit with backpressure, map in order, arun on asyncio."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

import infer
from infer import EngineClosed, InputError, OptionError, Preprocess

from . import models


def _inputs(n, shape=(2, 3, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def engine():
    with infer.Engine.load(models.cnn(), backend="onnxruntime") as e:
        yield e


@pytest.fixture(scope="module")
def slow_engine():
    """Runs of a few tens of milliseconds: long enough to watch runs overlap."""
    with infer.Engine.load(models.cnn(size=128, channels=32), backend="onnxruntime") as e:
        yield e


def test_eight_threads_by_two_hundred_runs_equal_serial(engine):
    xs = _inputs(16)
    serial = [engine.run({"input": x})["logits"] for x in xs]
    mismatches: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t):
        try:
            start.wait()
            for i in range(200):
                k = (t * 7 + i) % len(xs)
                if not np.array_equal(engine.run({"input": xs[k]})["logits"], serial[k]):
                    mismatches.append((t, i))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches


def test_threads_on_a_preprocessed_engine():
    e = infer.Engine.load(models.cnn(size=48), backend="onnxruntime", preprocess=Preprocess.image())
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (1, h, 2 * h, 3), dtype=np.uint8) for h in (40, 90, 120, 33)]
    serial = [e(f) for f in frames]
    results: dict[tuple[int, int], np.ndarray] = {}

    def work(t):
        for i in range(25):
            results[(t, i)] = e(frames[(t + i) % 4])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200
    for (t, i), got in results.items():
        np.testing.assert_array_equal(got, serial[(t + i) % 4])


def test_submit_equals_run(engine):
    xs = _inputs(12, seed=3)
    futures = [engine.submit({"input": x}) for x in xs]
    assert all(isinstance(f, Future) for f in futures)
    for f, x in zip(futures, xs):
        np.testing.assert_array_equal(
            f.result(timeout=60)["logits"], engine.run({"input": x})["logits"]
        )
    only = engine.submit({"input": xs[0]}, outputs=["logits"]).result(timeout=60)
    assert list(only) == ["logits"]


def test_submit_errors_arrive_through_the_future(engine):
    fut = engine.submit({"input": np.zeros((1, 3, 32, 32), np.float64)})
    with pytest.raises(InputError, match="float64"):
        fut.result(timeout=60)


def test_submit_blocks_at_max_in_flight():
    with infer.Engine.load(
        models.cnn(size=128, channels=32), backend="onnxruntime", max_in_flight=2
    ) as e:
        assert e.max_in_flight == 2
        x = _inputs(1, (4, 3, 128, 128))[0]
        futures: list[Future] = []
        for _ in range(8):
            futures.append(e.submit({"input": x}))
            # Returning means a slot was free: never more than 2 unfinished, counting this one.
            assert sum(not f.done() for f in futures) <= 2
        for f in futures:
            f.result(timeout=120)


def test_default_max_in_flight(engine):
    assert engine.max_in_flight == engine._session.default_in_flight() >= 1


def test_map_yields_in_order(engine):
    xs = _inputs(20, seed=5)
    got = list(engine.map({"input": x} for x in xs))
    assert len(got) == 20
    for out, x in zip(got, xs):
        np.testing.assert_array_equal(out["logits"], engine.run({"input": x})["logits"])
    bare = list(engine.map(xs[:3], outputs=["logits"], max_in_flight=1))
    for out, x in zip(bare, xs):
        np.testing.assert_array_equal(out["logits"], engine.run({"input": x})["logits"])


def test_map_is_lazy_and_bounded(engine):
    pulled = 0

    def endless():
        nonlocal pulled
        x = _inputs(1)[0]
        while True:
            pulled += 1
            yield x

    got = list(itertools.islice(engine.map(endless(), max_in_flight=3), 5))
    assert len(got) == 5
    assert pulled <= 5 + 3


def test_map_raises_at_the_bad_item_and_cancels_the_rest(engine):
    xs = _inputs(6)
    items = [{"input": x} for x in xs]
    items[3] = {"input": np.zeros((1, 3, 32, 32), np.float64)}
    seen = []
    with pytest.raises(InputError, match="float64"):
        for out in engine.map(items, max_in_flight=2):
            seen.append(out)
    assert len(seen) == 3


def test_map_arguments(engine):
    with pytest.raises(OptionError, match="max_in_flight"):
        engine.map([], max_in_flight=0)
    two_inputs = infer.Engine.load(models.multi_io(), backend="onnxruntime")
    with pytest.raises(InputError, match="takes 3 inputs"):
        list(two_inputs.map([np.zeros((1, 4), np.float32)]))


def test_arun_equals_run(engine):
    xs = _inputs(10, seed=9)

    async def main():
        return await asyncio.gather(*(engine.arun({"input": x}) for x in xs))

    for out, x in zip(asyncio.run(main()), xs):
        np.testing.assert_array_equal(out["logits"], engine.run({"input": x})["logits"])


def test_arun_does_not_block_the_event_loop(slow_engine):
    x = _inputs(1, (4, 3, 128, 128))[0]
    slow_engine.run({"input": x})  # warm

    async def main():
        done = asyncio.Event()
        ticks: list[float] = []
        runs: list[tuple[float, float]] = []

        async def ticker():
            while not done.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.001)

        async def work():
            for _ in range(4):
                t0 = time.perf_counter()
                await slow_engine.arun({"input": x})
                runs.append((t0, time.perf_counter()))
            done.set()

        await asyncio.gather(ticker(), work())
        return ticks, runs

    # A blocking run holds the loop from its start to its end, so no tick could fall inside
    # one. Counted inside runs, not in total: on a busy 2-core machine the runtime's threads
    # take the cores and the ticker gets few turns either way.
    ticks, runs = asyncio.run(main())
    inside = [t for t in ticks if any(a < t < b for a, b in runs)]
    assert len(inside) >= 2, (len(ticks), runs)


def test_arun_in_more_loops_than_one(engine):
    x = _inputs(1)[0]
    want = engine.run({"input": x})["logits"]
    for _ in range(3):  # a semaphore per loop: each asyncio.run has its own
        np.testing.assert_array_equal(asyncio.run(engine.arun({"input": x}))["logits"], want)


def test_closed_engine_refuses_new_work():
    e = infer.Engine.load(models.cnn(), backend="onnxruntime")
    x = _inputs(1)[0]
    pending = [e.submit({"input": x}) for _ in range(4)]
    e.close()  # waits for what was in flight
    assert all(f.done() and f.exception() is None for f in pending)
    with pytest.raises(EngineClosed):
        e.submit({"input": x})
    with pytest.raises(EngineClosed):
        list(e.map([x]))
    with pytest.raises(EngineClosed):
        asyncio.run(e.arun({"input": x}))
