"""Throughput of `engine.submit` / `engine.map` / `engine.arun` vs raw ONNX Runtime on a thread pool.

The raw baseline is what an application writes by hand: a `ThreadPoolExecutor` with as many
workers as infer keeps in flight, calling `InferenceSession.run` on one shared session,
bounded by a semaphore the same way. (OpenVINO's AsyncInferQueue comparison belongs to the
OpenVINO backend's benchmark.) Each trial pushes `--requests` runs through and waits for all;
the trials alternate between the cases; the throughput ratio to the raw pool is the median,
over rounds, of trials of the same round (target: submit >= 0.98x).

    python benchmarks/binding_submit.py [--requests 200] [--trials 10] [--in-flight 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import models  # noqa: E402

import infer  # noqa: E402
from benchmarks import _results  # noqa: E402


class RawPool:
    """The hand-written baseline: a persistent pool over one session, bounded by a semaphore."""

    def __init__(self, sess, name, out, in_flight) -> None:
        self.sess, self.name, self.out = sess, name, out
        self.slots = threading.BoundedSemaphore(in_flight)
        self.pool = ThreadPoolExecutor(in_flight)

    def __call__(self, x, requests) -> None:
        futures = []
        for _ in range(requests):
            self.slots.acquire()
            f = self.pool.submit(self.sess.run, [self.out], {self.name: x})
            f.add_done_callback(lambda _f: self.slots.release())
            futures.append(f)
        for f in futures:
            f.result()


def with_submit(engine, name, x, requests) -> None:
    futures = [engine.submit({name: x}) for _ in range(requests)]
    for f in futures:
        f.result()


def with_map(engine, name, x, requests) -> None:
    for _ in engine.map({name: x} for _ in range(requests)):
        pass


def with_arun(engine, name, x, requests) -> None:
    async def main():
        await asyncio.gather(*(engine.arun({name: x}) for _ in range(requests)))

    asyncio.run(main())


def serial(engine, name, x, requests) -> None:
    for _ in range(requests):
        engine.run({name: x})


def measure(label, model, x, requests, trials, in_flight) -> dict:
    name, out = model.graph.input[0].name, model.graph.output[0].name
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    engine = infer.Engine.load(model, backend="onnxruntime", max_in_flight=in_flight)
    raw = RawPool(sess, name, out, in_flight)
    cases = {
        "raw ORT thread pool": lambda: raw(x, requests),
        "engine.submit": lambda: with_submit(engine, name, x, requests),
        "engine.map": lambda: with_map(engine, name, x, requests),
        "engine.arun (asyncio)": lambda: with_arun(engine, name, x, requests),
        "engine.run, one thread": lambda: serial(engine, name, x, requests),
    }
    for f in cases.values():
        f()
    seconds: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(trials):
        for k, f in cases.items():
            t0 = time.perf_counter()
            f()
            seconds[k].append(time.perf_counter() - t0)
    result: dict = {"model": label, "input": list(x.shape), "requests": requests}
    base = seconds["raw ORT thread pool"]
    result["best_runs_per_s"] = {k: requests / min(v) for k, v in seconds.items()}
    # Throughput against the raw pool's trial of the same round (shared, noisy machine).
    result["paired_ratio_vs_raw"] = {
        k: statistics.median(b / a for a, b in zip(v, base)) for k, v in seconds.items()
    }
    engine.close()
    raw.pool.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runs = [
        measure(
            "CNN 64x64, batch 1 (tests/models.cnn(size=64))",
            models.cnn(size=64),
            rng.standard_normal((1, 3, 64, 64)).astype(np.float32),
            args.requests,
            args.trials,
            args.in_flight,
        ),
        measure(
            "CNN 224x224, batch 1 (tests/models.cnn(size=224))",
            models.cnn(size=224),
            rng.standard_normal((1, 3, 224, 224)).astype(np.float32),
            max(10, args.requests // 4),
            args.trials,
            args.in_flight,
        ),
    ]
    print(
        f"\nONNX Runtime {ort.__version__}, CPU, {args.in_flight} in flight: runs/s best (median)"
    )
    for r in runs:
        print(f"\n{r['model']}, {r['requests']} requests")
        for k, v in r["best_runs_per_s"].items():
            print(f"  {k:26s} {v:9.1f} runs/s  {r['paired_ratio_vs_raw'][k]:5.2f}x")
    _results.write(
        "binding_submit",
        {
            "in_flight": args.in_flight,
            "trials": args.trials,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
