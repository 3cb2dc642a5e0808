"""The I/O edge is one for every backend: the same mistake raises the same error class with the
same words whichever backend runs the model (backends/base.py owns run/submit/bind)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

import infer
from infer import EngineClosed, InputError, OptionError

from . import models

BACKENDS = ["onnxruntime", "openvino", "reference"]  # every backend that runs here


class CudaArray:
    """Describes GPU memory through the CUDA array interface (nothing reads it here)."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (0x7F0000000000, False),
            "version": 3,
            "strides": None,
        }


def _x(n=2, dtype=np.float32):
    return np.arange(n * 3, dtype=dtype).reshape(n, 3) - 2


def _bound_misfit(e):
    with e.bind(outputs={"y": np.empty((2, 3), np.float32)}) as b:
        b.run({"x": _x(4)})


def _closed_binding(e):
    b = e.bind()
    b.close()
    b.run({"x": _x()})


def _closed_engine(call):
    def mistake(e):
        e.close()
        call(e)

    return mistake


MISTAKES = {
    "unknown input": lambda e: e.run({"x": _x(), "nope": _x()}),
    "missing input": lambda e: e.run({}),
    "not a dict": lambda e: e.run([_x()]),
    "lossy dtype": lambda e: e.run({"x": _x(dtype=np.float64)}),
    "wrong rank": lambda e: e.run({"x": np.zeros(3, np.float32)}),
    "wrong fixed dim": lambda e: e.run({"x": np.zeros((2, 4), np.float32)}),
    "ragged input": lambda e: e.run({"x": [[1.0, 2.0, 3.0], [1.0]]}),
    "unknown output": lambda e: e.run({"x": _x()}, outputs=["nope"]),
    "device input to run": lambda e: e.run({"x": CudaArray((2, 3))}),
    "device input to a binding": lambda e: e.bind().run({"x": CudaArray((2, 3))}),
    "bad feed to a binding": lambda e: e.bind().run({"x": _x(dtype=np.float64)}),
    "unknown bound output": lambda e: e.bind(outputs={"nope": np.empty((2, 3), np.float32)}),
    "bound output of another dtype": lambda e: e.bind(outputs={"y": np.empty((2, 3))}),
    "bound output of another rank": lambda e: e.bind(outputs={"y": np.empty(6, np.float32)}),
    "bound output not contiguous": lambda e: e.bind(outputs={"y": np.empty((3, 2), np.float32).T}),
    "bound output not an array": lambda e: e.bind(outputs={"y": [[0.0] * 3] * 2}),
    "bound device output on the host": lambda e: e.bind(outputs={"y": CudaArray((2, 3))}),
    "bind argument": lambda e: e.bind(outputs="hosted"),
    "bound output that the run outgrows": _bound_misfit,
    "run on a closed engine": _closed_engine(lambda e: e.run({"x": _x()})),
    "submit on a closed engine": _closed_engine(lambda e: e.submit({"x": _x()})),
    "bind on a closed engine": _closed_engine(lambda e: e.bind()),
    "run on a closed binding": _closed_binding,
}


def _error(backend, mistake):
    engine = infer.Engine.load(models.relu(), device="cpu", backend=backend)
    try:
        MISTAKES[mistake](engine)
    except infer.InferError as e:
        # The backend's name, and the words in which it says its device, may differ.
        return type(e), str(e).replace(backend, "BACKEND")
    finally:
        engine.close()
    pytest.fail(f"{backend}: {mistake} raised nothing")


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_same_mistake_reads_the_same_on_every_backend(mistake):
    seen = {b: _error(b, mistake) for b in BACKENDS}
    first = seen[BACKENDS[0]]
    assert issubclass(first[0], (InputError, OptionError, EngineClosed)), first
    for backend, got in seen.items():
        assert got == first, f"{backend} says {got}, {BACKENDS[0]} says {first}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_submit_puts_a_bad_feed_in_its_future_on_every_backend(backend):
    with infer.Engine.load(models.relu(), device="cpu", backend=backend) as e:
        fut = e.submit({"x": _x(dtype=np.float64)})
        assert isinstance(fut, Future) and fut.done()  # found before anything was queued
        with pytest.raises(InputError, match="expected dtype float32") as err:
            fut.result(timeout=0)
        with pytest.raises(InputError) as direct:
            e.run({"x": _x(dtype=np.float64)})
        assert str(err.value) == str(direct.value)
        assert np.array_equal(e.submit({"x": _x()}).result(timeout=60)["y"], np.maximum(_x(), 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_yields_every_good_result_before_the_bad_one_on_every_backend(backend):
    items = [_x() + i for i in range(6)]
    items[3] = _x(dtype=np.float64)
    seen = []
    with infer.Engine.load(models.relu(), device="cpu", backend=backend) as e:
        with pytest.raises(InputError, match="expected dtype float32"):
            for out in e.map(items, max_in_flight=2):
                seen.append(out["y"])
        assert len(seen) == 3
        for got, x in zip(seen, items):
            np.testing.assert_array_equal(got, np.maximum(x, 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_while_other_threads_run_lets_their_runs_finish(backend):
    """A run in progress when close() is called finishes on the session; later runs raise
    EngineClosed; none fails half-way through freed runtime resources."""

    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    engine = infer.Engine.load(models.cnn(), device="cpu", backend=backend)
    want = engine.run({"input": x})["logits"]
    outcomes: list[object] = []
    started = threading.Barrier(5)

    def loop() -> None:
        started.wait()
        while True:
            try:
                got = engine.run({"input": x})["logits"]
            except EngineClosed:
                outcomes.append("closed")
                return
            except Exception as e:  # anything else is the bug this test is for
                outcomes.append(e)
                return
            outcomes.append(bool(np.array_equal(got, want)))

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.05)
    engine.close()
    for t in threads:
        t.join(timeout=60)
    assert outcomes.count("closed") == 4
    assert all(o is True or o == "closed" for o in outcomes), [
        o for o in outcomes if not (o is True or o == "closed")
    ]
