"""One engine, many threads: 8 threads x 500 runs per backend give exactly the serial outputs.

The model has three inputs sharing a dynamic dimension and three outputs of different dtypes, and
every thread uses its own batch size, so shape-dependent state (feed checks, runtime buffers) is
exercised from several threads at once.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import infer
from infer import selection
from infer.backends import base
from infer.model import ModelFormat

from .models import multi_io

THREADS = 8
RUNS = 500


def _backends() -> list[str]:
    """The backends of the selection table's CPU row that take ONNX (OpenVINO too, once there)."""
    names = dict.fromkeys(row.backend for row in selection.TABLE["cpu"])
    return [n for n in names if ModelFormat.ONNX in base.get(n).formats]


@pytest.fixture(scope="module", params=_backends())
def engine(request):
    info = base.get(request.param).probe()
    if not info.available:
        pytest.skip(f"{request.param}: {info.reason}")
    with infer.Engine.load(multi_io(), "cpu", backend=request.param, cache=False) as e:
        yield e


def _feed(thread: int, i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(thread * 100_003 + i)
    n = 1 + thread  # each thread its own batch size
    return {
        "a": rng.standard_normal((n, 4), dtype=np.float32),
        "b": rng.integers(-1000, 1000, (n, 4), dtype=np.int64),
        "mask": rng.random((n, 4)) < 0.5,
    }


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    return got.keys() == want.keys() and all(
        got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want
    )


def _serial(engine) -> list[list[dict[str, np.ndarray]]]:
    return [[engine.run(_feed(t, i)) for i in range(RUNS)] for t in range(THREADS)]


def test_threads_running_one_engine_get_the_serial_outputs(engine):
    expected = _serial(engine)
    start = threading.Barrier(THREADS)
    mismatches: list[tuple[int, int]] = []

    def worker(t: int) -> int:
        start.wait()
        done = 0
        for i in range(RUNS):
            if not _same(engine.run(_feed(t, i)), expected[t][i]):
                mismatches.append((t, i))
            done += 1
        return done

    with ThreadPoolExecutor(THREADS) as pool:
        counts = list(pool.map(worker, range(THREADS)))
    assert counts == [RUNS] * THREADS
    assert not mismatches, f"{len(mismatches)} runs differ from serial, first: {mismatches[:5]}"


def test_submitted_runs_get_the_serial_outputs(engine):
    expected = _serial(engine)
    futures = [(t, i, engine.submit(_feed(t, i))) for i in range(RUNS // 5) for t in range(THREADS)]
    bad = [(t, i) for t, i, f in futures if not _same(f.result(timeout=60), expected[t][i])]
    assert not bad, f"{len(bad)} submitted runs differ from serial, first: {bad[:5]}"


def test_requesting_outputs_from_many_threads(engine):
    feed = _feed(3, 0)
    want = engine.run(feed)
    picks = [["sum"], ["count", "masked"], ["masked"], None]

    def worker(k: int) -> bool:
        names = picks[k % len(picks)]
        got = engine.run(feed, names)
        return _same(got, {n: want[n] for n in (names or want)})

    with ThreadPoolExecutor(THREADS) as pool:
        assert all(pool.map(worker, range(400)))
