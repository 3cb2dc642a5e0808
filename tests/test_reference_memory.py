"""The reference evaluator cannot bound its memory: a run it estimates past the limit is
refused with an InferError before it starts (a 1x3x48x200000 input to a text recognizer grew
to 24 GB and was killed by the kernel)."""

from __future__ import annotations

import resource
import time
import tracemalloc

import numpy as np
import pytest

import infer
from infer.backends import _ref_memory
from infer.model import Model

from . import models

WIDE = np.zeros((1, 3, 48, 200000), np.float32)  # 115 MB in; the recognizer holds > 100 GiB


def test_a_run_past_the_limit_is_refused_before_it_starts(real_model):
    path = real_model("ocr_rec")
    limit = {"reference": {"max_memory": "8GiB"}}
    with infer.Engine.load(path, "cpu", backend="reference", backend_options=limit) as engine:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        with pytest.raises(infer.InputError, match=r"would hold at least \d+\.\d GiB") as info:
            engine.run({"x": WIDE})
        assert time.perf_counter() - start < 30
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        assert grown < 2 * 2**30  # refused, not run (the peak did not climb toward 100 GiB)
        text = str(info.value)
        assert "x [1, 3, 48, 200000]" in text and "max_memory'] (8.0 GiB)" in text
        assert "backend_options={'reference': {'max_memory': '" in text
        # a run under the limit runs
        out = engine.run({"x": np.zeros((1, 3, 48, 320), np.float32)})
        assert out["softmax_11.tmp_0"].shape[0] == 1


def test_the_default_limit_is_the_memory_available(real_model):
    free = _ref_memory.available()
    model = Model.load(real_model("ocr_rec"))
    need = _ref_memory.estimate(model._skeleton, {"x": WIDE})
    assert need is not None and need > 100 * 2**30
    if free is None or free >= need:
        pytest.skip(f"this machine has {free} bytes available: the run would fit")
    with (
        infer.Engine.load(model, "cpu", backend="reference") as engine,
        pytest.raises(infer.InputError, match="more than the memory available here"),
    ):
        engine.run({"x": WIDE})


def test_the_estimate_is_a_lower_bound_of_what_a_run_holds(real_model):
    # Measured: 197 MiB estimated for a 48x320 line, 260 MiB of peak RSS growth when it ran.
    model = Model.load(real_model("ocr_rec"))
    feeds = {"x": np.zeros((1, 3, 48, 320), np.float32)}
    need = _ref_memory.estimate(model._skeleton, feeds)
    assert 100 * 2**20 < need < 400 * 2**20
    with infer.Engine.load(model, "cpu", backend="reference") as engine:
        tracemalloc.start()  # numpy reports its arrays to tracemalloc
        try:
            engine.run(feeds)
            grown = tracemalloc.get_traced_memory()[1]  # the run's peak
        finally:
            tracemalloc.stop()
    assert 0.5 * grown < need <= grown


def test_max_memory_option():
    with pytest.raises(infer.OptionError, match=r"\['max_memory'\] must be a positive number"):
        infer.Engine.load(
            models.relu(), backend="reference", backend_options={"reference": {"max_memory": "x"}}
        )
    with pytest.raises(infer.OptionError, match=r"unknown option\(s\) \['memory'\]"):
        infer.Engine.load(
            models.relu(), backend="reference", backend_options={"reference": {"memory": 1}}
        )
    tiny = {"reference": {"max_memory": 16}}  # bytes: the 1x3 output alone is 12
    with infer.Engine.load(models.relu(), backend="reference", backend_options=tiny) as engine:
        assert engine.run({"x": np.ones((1, 3), np.float32)})["y"].shape == (1, 3)
        with pytest.raises(infer.InputError, match="would hold at least"):
            engine.run({"x": np.ones((100, 3), np.float32)})
