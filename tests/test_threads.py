"""The thread budget engines share (infer.threads): pool sizes within the process's cores, and
no pool spinning while idle, on the real ONNX Runtime and OpenVINO."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import infer
from infer import threads

from . import models

ROOT = Path(__file__).resolve().parents[1]


def _idle_cpu_ms(engine: infer.Engine, feeds: dict, windows: int = 5) -> list[float]:
    """CPU time this process burns in the 50 ms after each run, while nothing runs."""
    engine.run(feeds)
    spent = []
    for _ in range(windows):
        engine.run(feeds)
        start = time.process_time()
        time.sleep(0.05)
        spent.append((time.process_time() - start) * 1e3)
    return spent


def test_onnxruntime_pool_does_not_spin_after_a_run_by_default():
    model = models.cnn(channels=32, size=64)
    feeds = {"input": np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)}
    idle = {}
    for policy in (None, "never", "always"):
        own = {"onnxruntime": {"spinning": policy}} if policy else None
        with infer.Engine.load(
            model, device="cpu", backend="onnxruntime", backend_options=own
        ) as engine:
            idle[policy] = _idle_cpu_ms(engine, feeds)
            if policy is None:
                assert engine.details["threads"].endswith("spinning only during runs")
    assert statistics.median(idle[None]) < 3.0, idle
    assert statistics.median(idle["never"]) < 3.0, idle
    # The control: ONNX Runtime's own default spins on, and the measurement sees it.
    assert max(idle["always"]) > max(idle[None]), idle


def test_openvino_pool_is_idle_after_a_run():
    model = models.cnn(channels=32, size=64)
    feeds = {"input": np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)}
    with infer.Engine.load(model, device="cpu", backend="openvino") as engine:
        assert statistics.median(_idle_cpu_ms(engine, feeds)) < 3.0


def test_threads_sizes_one_engine_and_spinning_must_be_a_policy():
    with infer.Engine.load(models.relu(), device="cpu", backend="onnxruntime", threads=1) as e:
        assert e.details["threads"].startswith("1 threads of ")
    with infer.Engine.load(models.relu(), device="cpu", backend="openvino", threads=1) as e:
        assert e.details["threads"] == 1  # INFERENCE_NUM_THREADS as OpenVINO compiled it
    with pytest.raises(infer.OptionError, match=r"\['spinning'\] must be one of 'run'"):
        infer.Engine.load(
            models.relu(),
            device="cpu",
            backend="onnxruntime",
            backend_options={"onnxruntime": {"spinning": "yes"}},
        )


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux CPU affinity and at least two cores to restrict the process to one",
)
def test_pools_keep_to_the_cores_the_process_may_use():
    """A process allowed one core gets one-thread pools, where the runtimes would count the
    machine's cores."""
    script = textwrap.dedent(
        """
        import os, sys
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        sys.path.insert(0, sys.argv[1])
        import infer
        from infer import threads
        from tests import models
        ort = infer.Engine.load(models.relu(), device="cpu", backend="onnxruntime")
        ov = infer.Engine.load(models.relu(), device="cpu", backend="openvino")
        print(threads.cores(), ort.details["threads"], ov.details["threads"], sep="|")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", script, str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    ).stdout.strip()
    cores, ort_threads, ov_threads = out.splitlines()[-1].split("|")
    assert cores == "1"
    assert ort_threads == "1 threads of 1 cores, spinning only during runs"
    assert ov_threads == "1"


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_caps_the_budget(tmp_path, monkeypatch, files, want):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(threads, "_CGROUP", tmp_path)
    threads.cores.cache_clear()
    try:
        assert threads._cgroup_quota() == want
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        if want is not None and allowed is not None:
            assert threads.cores() == min(allowed, math.ceil(want))
    finally:
        threads.cores.cache_clear()
