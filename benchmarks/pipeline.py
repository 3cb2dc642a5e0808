"""Three models in sequence in one process: PP-OCR detection -> direction -> recognition.

The same pipeline is run on two stacks in one process: raw ONNX Runtime sessions at their
default session options, and infer engines on ONNX Runtime at infer's defaults
(`Engine.load(path, device="cpu", backend="onnxruntime")`, which keeps every engine to the
process's thread budget, see infer.threads): the same runtime, so the difference is the
budget. `--backend auto` loads infer's full default instead, which may move a model to
OpenVINO after its background race (a mixed pipeline).
For each stack it prints the time of one pass through the three models and the sum of the
three models' latencies measured alone with raw ONNX Runtime defaults, and their ratio: near 1
when the models do not get in each other's way. Per model it also prints infer's latency alone
against raw ONNX Runtime's (a single engine must not get slower).

Blocks of `--calls` calls take turns (stack by stack, model by model, with a pause between
blocks, since an ONNX Runtime pool spins for a while after its last run); the ratios are the
median over rounds. This machine may be shared: the load average is printed with the results,
and it moves the raw stack's ratio a lot (spinning pools fight other processes too).

    .venv/bin/python benchmarks/pipeline.py [--rounds 7] [--calls 10] [--quick]
        [--backend onnxruntime|openvino|auto] [--spinning run|always|never]

Target: infer's pipeline / sum of raw isolated latencies <= 1.10.
Writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
from tests.conftest import wheel_model  # noqa: E402

import infer  # noqa: E402
from benchmarks import _results  # noqa: E402

# The stages, in order, with one request's input (the shapes benchmarks/backends.py uses).
STAGES = {
    "ocr_det": (1, 3, 320, 320),
    "ocr_cls": (1, 3, 48, 192),
    "ocr_rec": (1, 3, 48, 320),
}
PAUSE_S = 0.2  # between blocks: longer than an ONNX Runtime pool spins after its last run


def _block(call: Callable[[], object], calls: int) -> float:
    """Seconds per call over one block of back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def stacks(backend: str, spinning: str | None) -> dict[str, dict[str, Callable[[], object]]]:
    """{stack: {stage: one call}} for raw ONNX Runtime defaults and for infer's defaults."""
    rng = np.random.default_rng(0)
    feeds = {k: rng.random(shape, dtype=np.float32) for k, shape in STAGES.items()}
    raw: dict[str, Callable[[], object]] = {}
    engines: dict[str, Callable[[], object]] = {}
    for stage in STAGES:
        path = str(wheel_model(stage))
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        x = feeds[stage]
        raw[stage] = lambda sess=sess, name=name, x=x: sess.run(None, {name: x})
        engine = infer.Engine.load(
            path,
            device="cpu",
            backend=None if backend == "auto" else backend,
            backend_options={"onnxruntime": {"spinning": spinning}} if spinning else None,
        )
        engines[stage] = lambda engine=engine, name=name, x=x: engine.run({name: x})
        for want, got in zip(raw[stage](), engines[stage]().values()):  # type: ignore[union-attr]
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    label = f"infer ({backend}{', spinning ' + spinning if spinning else ''})"
    return {"raw onnxruntime defaults": raw, label: engines}


def measure(rounds: int, calls: int, backend: str, spinning: str | None) -> dict[str, Any]:
    cases = stacks(backend, spinning)
    alone: dict[str, dict[str, list[float]]] = {s: {k: [] for k in STAGES} for s in cases}
    passes: dict[str, list[float]] = {s: [] for s in cases}
    for stack in cases.values():  # warm up
        for call in stack.values():
            _block(call, 3)
    loads = []
    for r in range(rounds):
        order = list(cases) if r % 2 == 0 else list(cases)[::-1]
        for s in order:
            stage_calls = cases[s]
            for k, call in stage_calls.items():
                time.sleep(PAUSE_S)
                alone[s][k].append(_block(call, calls))
            time.sleep(PAUSE_S)

            def one_pass(stage_calls: dict[str, Callable[[], object]] = stage_calls) -> None:
                for call in stage_calls.values():
                    call()

            passes[s].append(_block(one_pass, calls))
        loads.append(os.getloadavg()[0])
    raw = next(iter(cases))
    out: dict[str, Any] = {"stacks": {}, "load_average_during": loads, "calls": calls}
    for s in cases:
        # Round by round: this stack's pass against raw's isolated latencies of that round.
        raw_sum = [sum(alone[raw][k][r] for k in STAGES) for r in range(rounds)]
        own_sum = [sum(alone[s][k][r] for k in STAGES) for r in range(rounds)]
        out["stacks"][s] = {
            "pass_ms": statistics.median(passes[s]) * 1e3,
            "alone_ms": {k: statistics.median(v) * 1e3 for k, v in alone[s].items()},
            "ratio_to_raw_alone": statistics.median(p / a for p, a in zip(passes[s], raw_sum)),
            "ratio_to_own_alone": statistics.median(p / a for p, a in zip(passes[s], own_sum)),
            "alone_vs_raw": {
                k: statistics.median(x / y for x, y in zip(alone[s][k], alone[raw][k]))
                for k in STAGES
            },
        }
    return out


def report(result: dict[str, Any]) -> None:
    stacks_ = result["stacks"]
    raw = next(iter(stacks_.values()))
    raw_sum = sum(raw["alone_ms"].values())
    print(
        f"PP-OCR det {STAGES['ocr_det'][2:]} -> cls {STAGES['ocr_cls'][2:]} -> rec "
        f"{STAGES['ocr_rec'][2:]}, one process; sum of raw ONNX Runtime latencies alone "
        f"{raw_sum:.1f} ms; load average {', '.join(f'{x:.1f}' for x in result['load_average_during'])}"
    )
    print(
        f"{'stack':<26} {'pass ms':>8} {'pass / raw alone':>16} {'pass / own alone':>16}  "
        + "  ".join(f"{k} alone (x raw)" for k in STAGES)
    )
    for s, m in stacks_.items():
        cells = "  ".join(
            f"{m['alone_ms'][k]:>6.1f} ms (x{m['alone_vs_raw'][k]:.2f})" for k in STAGES
        )
        print(
            f"{s:<26} {m['pass_ms']:>8.1f} {m['ratio_to_raw_alone']:>16.2f} "
            f"{m['ratio_to_own_alone']:>16.2f}  {cells}"
        )
    infer_ratio = list(stacks_.values())[-1]["ratio_to_raw_alone"]
    print(f"target: infer pass / raw alone <= 1.10: {'met' if infer_ratio <= 1.10 else 'missed'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per block")
    parser.add_argument(
        "--backend",
        default="onnxruntime",
        help="infer's backend; auto: what device='cpu' picks (it may switch after a race)",
    )
    parser.add_argument(
        "--spinning",
        choices=["run", "always", "never"],
        help="infer's ONNX Runtime spinning policy (default: infer's, see infer.threads)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 5 calls")
    args = parser.parse_args()
    rounds, calls = (3, 5) if args.quick else (args.rounds, args.calls)
    result = measure(rounds, calls, args.backend, args.spinning)
    report(result)
    suffix = "".join(
        f"-{x}" for x in (args.backend, args.spinning) if x not in ("onnxruntime", None)
    )
    _results.write(f"pipeline{suffix}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
