"""Shared bits of the OpenVINO benchmarks: the models, feeds, timing and the results file."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.models / tests.conftest: the same models the tests use

from tests import models  # noqa: E402
from tests.conftest import wheel_model  # noqa: E402

# name -> (model source factory, input name, input shape)
MODELS: dict[str, tuple[Callable[[], object], str, tuple[int, ...]]] = {
    "relu": (models.relu, "x", (1, 3)),  # one node: per-call overhead only
    "cnn": (lambda: models.cnn(channels=32, size=224, depth=4), "input", (1, 3, 224, 224)),
    "ocr_det": (lambda: wheel_model("ocr_det"), "x", (1, 3, 480, 480)),
    "ocr_rec": (lambda: wheel_model("ocr_rec"), "x", (1, 3, 48, 320)),
    "ocr_cls": (lambda: wheel_model("ocr_cls"), "x", (1, 3, 48, 192)),
    "orientation": (lambda: wheel_model("orientation"), "x", (1, 3, 224, 224)),
}


def feeds(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    _, input_name, shape = MODELS[name]
    return {input_name: np.random.default_rng(seed).random(shape, dtype=np.float32)}


def source(name: str) -> object:
    return MODELS[name][0]()


def onnx_arg(src: object) -> str | bytes:
    """What ONNX Runtime / OpenVINO take: a path string, or serialized bytes."""
    return src.SerializeToString() if hasattr(src, "SerializeToString") else str(src)


def interleaved(
    runners: dict[str, Callable[[], object]],
    runs: int,
    rounds: int = 3,
    budget_s: float = 60.0,
) -> dict[str, list[float]]:
    """Time each runner `runs` times in all, in `rounds` blocks taken in turn, so slow drifts
    of a shared machine hit every runner alike.

    Runners are not interleaved call by call: ONNX Runtime's worker threads spin for a while
    after each run and would steal the cores from whichever runtime ran next. Each block starts
    after a short pause and one untimed run.
    """
    times: dict[str, list[float]] = {k: [] for k in runners}
    per_block = max(1, runs // rounds)
    deadline = time.perf_counter() + budget_s
    for _ in range(rounds):
        for k, fn in runners.items():
            time.sleep(0.05)
            fn()
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return times


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def write(name: str, data: dict[str, object]) -> Path:
    from benchmarks import _results

    return _results.write(name, data)
