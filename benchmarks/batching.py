"""Dynamic batching inside the engine: many callers sending batch-1 requests to one engine.

8 threads (each calling `engine.run`) and 8 asyncio tasks (each awaiting `engine.arun`) send
batch-1 requests of a CNN for a fixed time, to an engine loaded without batching and to one
loaded with `infer.Batching(max_batch=8, max_delay_ms=2.0)`: max_batch is the number of
callers, so a batch fills and goes at once. (With max_batch=16 and 8 callers every batch waits
the whole max_delay for callers that do not exist: that is Triton's rule, and what
`--max-batch 16` shows.) Printed: requests per second with and without batching and their
ratio, p50/p99 request latency, the batcher's counters (runs, mean batch, queue delay), the run
time of one full batch, and the largest difference between batched outputs and unbatched runs
of the same inputs. The two engines take turns, block by block (a pause between blocks), and
the ratio is the median over rounds of paired blocks: this machine may be shared.

    .venv/bin/python benchmarks/batching.py [--backend onnxruntime] [--model vgg]
        [--callers 8] [--seconds 2] [--rounds 3] [--max-batch 8] [--max-delay-ms 2]
        [--max-in-flight N] [--quick]

Models: vgg (default; batches well on a CPU), cnn and cnn64 (small convolutional nets, whose
cost on a CPU grows with the batch), ocr_cls (PP-OCR's direction classifier).
Targets: throughput >= 1.5x without batching, p99 <= max_delay + 2x a full batch's run time,
outputs within 1e-5 of unbatched runs. Writes benchmarks/results/batching-MODEL-BACKEND-N.json.

The sequence row (--model encoder, or bert: tests/data/sequence/bert.onnx where it is there):
requests of one row of token ids and an attention mask whose lengths are drawn like real texts
(log-normal, median 20 tokens, clipped to 5-64), so the batcher pads them into shared runs
(`Batching.max_padding`). Also printed: the padding waste (padded / real tokens), and the
ceiling: one run of a batch of `--max-batch` rows against that many runs of one row, at the
median length, timed in every round beside the blocks. "passed": the share of requests the
batcher ran unmerged because its trial (`Batching.measure`, on by default) timed or kept passing
them through. Also printed, per mode: the served ceiling, batched/unbatched requests per second
when every request has the median length (nothing to pad; a fresh batched engine, the same
callers): what batching gains here against unbatched runs that themselves run concurrently.
Targets: >= 60% of the ceiling's gain,
never below 0.9x without batching, outputs within 1e-5 of unbatched runs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import encoder_models, models  # noqa: E402
from tests.conftest import wheel_model  # noqa: E402

import infer  # noqa: E402
from benchmarks import _results  # noqa: E402


def vgg(channels: int = 64, size: int = 32, hidden: int = 2048, seed: int = 0) -> Any:
    """A VGG-shaped classifier: two strided 3x3 convs, then a fully connected head
    (flatten -> hidden -> hidden -> 10) holding ~48 MB of weights. At batch 1 the head reads all
    of them for one row; a batch of 8 reads them once for 8 rows: a CNN that batches well on a
    CPU (measured here: 8 rows in 1.7x the time of one with ONNX Runtime, 1.2x with OpenVINO)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "input", 3
    for i in range(2):
        w = rng.standard_normal((channels, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"conv{i}.w"),
            numpy_helper.from_array(np.zeros(channels, np.float32), f"conv{i}.b"),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [prev, f"conv{i}.w", f"conv{i}.b"],
                [f"c{i}"],
                pads=[1, 1, 1, 1],
                strides=[2, 2],
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("Flatten", [prev], ["flat"]))
    prev, width = "flat", channels * (size // 4) ** 2
    for j, out in enumerate((hidden, hidden, 10)):
        w = rng.standard_normal((out, width)) * np.sqrt(2.0 / width)
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"fc{j}.w"),
            numpy_helper.from_array(np.zeros(out, np.float32), f"fc{j}.b"),
        ]
        nodes.append(helper.make_node("Gemm", [prev, f"fc{j}.w", f"fc{j}.b"], [f"fc{j}"], transB=1))
        prev, width = f"fc{j}", out
        if out != 10:
            nodes.append(helper.make_node("Relu", [prev], [f"fc{j}.relu"]))
            prev = f"fc{j}.relu"
    return models._model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", 10])],
        inits,
    )


# name: (what it is, model source, one request's shape)
MODELS: dict[str, tuple[str, Callable[[], Any], tuple[int, ...]]] = {
    "vgg": ("VGG-shaped CNN, 32x32, 48 MB fully connected head", vgg, (1, 3, 32, 32)),
    "cnn": (
        "generated CNN, 16 ch, 32x32",
        lambda: models.cnn(channels=16, size=32, depth=3),
        (1, 3, 32, 32),
    ),
    "cnn64": (
        "generated CNN, 32 ch, 64x64",
        lambda: models.cnn(channels=32, size=64, depth=4),
        (1, 3, 64, 64),
    ),
    "ocr_cls": ("PP-OCR text direction, 48x192", lambda: wheel_model("ocr_cls"), (1, 3, 48, 192)),
}


BERT = ROOT / "tests" / "data" / "sequence" / "bert.onnx"

# name: (what it is, model source); requests of token ids of LENGTHS
SEQUENCE_MODELS: dict[str, tuple[str, Callable[[], Any]]] = {
    "encoder": (
        "BERT-shaped encoder built with onnx.helper: 4 layers, hidden 256, 4 heads, FFN 1024, "
        "vocabulary 8000, mean-pooled and last_hidden_state",
        lambda: encoder_models.encoder(
            vocab=8000, hidden=256, heads=4, layers=4, ffn=1024, max_positions=128
        ),
    ),
    "bert": (
        "optimum's export of a tiny random BERT (tests/data/sequence/bert.onnx)",
        lambda: BERT,
    ),
}
LENGTHS = "log-normal, median 20 tokens, sigma 0.6, clipped to 5-64"

Feeds = dict[str, np.ndarray]


def _requests(shape: tuple[int, ...], name: str, count: int = 64) -> list[Feeds]:
    rng = np.random.default_rng(0)
    return [{name: rng.random(shape, dtype=np.float32)} for _ in range(count)]


def lengths(count: int, seed: int = 0) -> list[int]:
    """Token counts drawn like real texts' (LENGTHS)."""
    rng = np.random.default_rng(seed)
    drawn = rng.lognormal(math.log(20), 0.6, count)
    return [int(n) for n in np.clip(np.rint(drawn), 5, 64)]


def _sequence_requests(engine: infer.Engine, sizes: list[int], rows: int = 1) -> list[Feeds]:
    """One request per length: ids within the vocabulary (never the pad id), a mask of ones,
    token types 0 where the model takes them."""
    roles = engine.roles
    rng = np.random.default_rng(1)
    out = []
    for n in sizes:
        shapes = {s.name: (rows, n) for s in engine.inputs}
        out.append(infer.sequence.feeds(roles, engine.inputs, shapes, rng))
    return out


def threads_block(
    engine: infer.Engine, requests: list[Feeds], callers: int, seconds: float
) -> tuple[int, list[float], list[tuple[int, Feeds]]]:
    """`callers` threads calling engine.run for `seconds`: requests done, latencies, a sample of
    (request index, outputs) pairs."""
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(callers)]
    samples: list[tuple[int, Feeds]] = []

    def caller(c: int) -> None:
        k = c
        while time.perf_counter() < stop:
            i = k % len(requests)
            t0 = time.perf_counter()
            out = engine.run(requests[i])
            latencies[c].append(time.perf_counter() - t0)
            if k < len(requests):
                samples.append((i, out))
            k += callers

    workers = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    flat = [t for per in latencies for t in per]
    return len(flat), flat, samples


def asyncio_block(
    engine: infer.Engine, requests: list[Feeds], callers: int, seconds: float
) -> tuple[int, list[float], list[tuple[int, Feeds]]]:
    """`callers` asyncio tasks awaiting engine.arun for `seconds`."""
    latencies: list[float] = []
    samples: list[tuple[int, Feeds]] = []

    async def caller(c: int, stop: float) -> None:
        k = c
        while time.perf_counter() < stop:
            i = k % len(requests)
            t0 = time.perf_counter()
            out = await engine.arun(requests[i])
            latencies.append(time.perf_counter() - t0)
            if k < len(requests):
                samples.append((i, out))
            k += callers

    async def main() -> None:
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(caller(c, stop) for c in range(callers)))

    asyncio.run(main())
    return len(latencies), latencies, samples


def full_batch_s(engine: infer.Engine, feeds: Feeds, runs: int = 5) -> list[float]:
    """Run times of a full batch `feeds` (no batcher in the way), one after the other."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        engine.run(feeds)
        times.append(time.perf_counter() - t0)
    return times


def ceiling_s(engine: infer.Engine, one: Feeds, full: Feeds, rows: int) -> tuple[float, float]:
    """The time of `rows` runs of `one` row, then of one run of `full` (`rows` rows)."""
    t0 = time.perf_counter()
    for _ in range(rows):
        engine.run(one)
    t1 = time.perf_counter()
    engine.run(full)
    return t1 - t0, time.perf_counter() - t1


def served_ceiling(
    plain: infer.Engine,
    batched: infer.Engine,
    same: list[Feeds],
    block: Callable[..., tuple[int, list[float], list[tuple[int, Feeds]]]],
    args: argparse.Namespace,
) -> float:
    """Requests per second batched / unbatched with every request at the median length, from
    the same callers: what batching gains here with nothing to pad (`batched` is closed)."""
    block(plain, same, args.callers, 0.3)
    block(batched, same, args.callers, 0.5)
    ratios = []
    for _ in range(args.rounds):
        p, _, _ = block(plain, same, args.callers, args.seconds / 2)
        time.sleep(0.2)
        b, _, _ = block(batched, same, args.callers, args.seconds / 2)
        time.sleep(0.2)
        ratios.append(b / p)
    batched.close()
    return statistics.median(ratios)


def _diff(got: Feeds, want: Feeds) -> float:
    return max(float(np.max(np.abs(got[n] - want[n]))) if want[n].size else 0.0 for n in want)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = infer.Batching(
        max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_padding=args.max_padding
    )
    if args.model in SEQUENCE_MODELS:
        what, source = SEQUENCE_MODELS[args.model]
    else:
        what, source, shape = MODELS[args.model]
    model = source()
    plain = infer.Engine.load(model, device="cpu", backend=args.backend)

    def load_batched() -> infer.Engine:
        # one per mode: the batcher's trial (Batching.measure) starts afresh with each traffic
        return infer.Engine.load(
            model,
            device="cpu",
            backend=args.backend,
            batching=config,
            max_in_flight=args.max_in_flight,
        )

    batched = load_batched()
    rows = batched.batching_stats.max_batch  # type: ignore[union-attr]
    sequence = args.model in SEQUENCE_MODELS
    result: dict[str, Any] = {
        "model": f"{args.model} ({what})",
        "backend": plain.backend,
        "batching": {
            "max_batch": args.max_batch,
            "max_delay_ms": args.max_delay_ms,
            "max_padding": config.max_padding,
        },
        "callers": args.callers,
        "modes": {},
    }
    if sequence:
        sizes = lengths(64)
        requests = _sequence_requests(plain, sizes)
        median = int(statistics.median(sizes))
        (one,) = _sequence_requests(plain, [median])
        (full,) = _sequence_requests(plain, [median], rows)
        same = _sequence_requests(plain, [median] * 64)
        result["lengths"] = {
            "drawn": LENGTHS,
            "median": median,
            "mean": statistics.mean(sizes),
            "min": min(sizes),
            "max": max(sizes),
        }
    else:
        name = plain.inputs[0].name
        requests = _requests(shape, name)
        full = {name: np.random.default_rng(1).random((rows, *shape[1:]), dtype=np.float32)}
    want = [plain.run(r) for r in requests]
    full_batch_s(plain, full, 3)  # warm the full batch's shape
    full_times: list[float] = []  # timed in every round, beside the blocks
    ceilings: list[float] = []
    for mode, block in (("threads", threads_block), ("asyncio", asyncio_block)):
        batched.close()
        batched = load_batched()
        block(plain, requests, args.callers, 0.3)  # warm both
        block(batched, requests, args.callers, 0.5)
        rounds: dict[str, list[float]] = {"plain": [], "batched": []}
        lat: dict[str, list[float]] = {"plain": [], "batched": []}
        worst = 0.0
        before = batched.batching_stats
        for r in range(args.rounds):
            order = (("plain", plain), ("batched", batched))
            for label, engine in order if r % 2 == 0 else order[::-1]:
                done, latencies, samples = block(engine, requests, args.callers, args.seconds)
                rounds[label].append(done / args.seconds)
                lat[label] += latencies
                for i, out in samples:
                    worst = max(worst, _diff(out, want[i]))
                time.sleep(0.2)
            full_times += full_batch_s(plain, full, 30)
            if sequence:
                for _ in range(10):
                    ones, whole = ceiling_s(plain, one, full, rows)
                    ceilings.append(ones / whole)
            time.sleep(0.2)
        after = batched.batching_stats
        assert before is not None and after is not None
        phase = after.since(before)
        batches = phase.batches
        requests_total = phase.requests
        ratio = statistics.median(b / p for b, p in zip(rounds["batched"], rounds["plain"]))
        p99 = float(np.percentile(lat["batched"], 99) * 1e3)
        served = None
        if sequence:
            served = served_ceiling(plain, load_batched(), same, block, args)
        result["modes"][mode] = {
            "plain_rps": statistics.median(rounds["plain"]),
            "batched_rps": statistics.median(rounds["batched"]),
            "throughput_ratio": ratio,
            "plain_p50_ms": float(np.percentile(lat["plain"], 50) * 1e3),
            "plain_p99_ms": float(np.percentile(lat["plain"], 99) * 1e3),
            "batched_p50_ms": float(np.percentile(lat["batched"], 50) * 1e3),
            "batched_p99_ms": p99,
            "runs": batches,
            "requests_total": requests_total,
            "mean_batch": phase.mean_batch,
            "full_batches": phase.full,
            "queue_delay_p50_ms": phase.delay_p50_ms,
            "queue_delay_p99_ms": phase.delay_p99_ms,
            "padding_waste": phase.padding_waste,
            "passed": phase.passed,  # requests run unmerged (Batching.measure's trial)
            "merging": after.merging,  # the way kept at the end of the mode
            "merged_rate": after.merged_rate,
            "passed_rate": after.passed_rate,
            "max_abs_diff": worst,
            "served_ceiling": served,
        }
    full_ms = statistics.median(full_times) * 1e3
    result["full_batch_ms"] = full_ms
    # The runtime's own tail, with no batcher and no callers: the part of a batched request's
    # p99 that batching cannot remove.
    result["full_batch_p99_ms"] = float(np.percentile(full_times, 99) * 1e3)
    result["p99_bound_ms"] = args.max_delay_ms + 2 * full_ms
    if sequence:
        # One run of a full batch against as many runs of one row, at the median length:
        # the most batching can gain here (with no padding and no waiting).
        ceiling = statistics.median(ceilings)
        result["ceiling"] = ceiling
        result["target_ratio"] = max(0.9, 1 + 0.6 * (ceiling - 1))
    for m in result["modes"].values():
        if sequence:
            gain = result["ceiling"] - 1
            m["share_of_ceiling_gain"] = (m["throughput_ratio"] - 1) / gain if gain > 0 else None
            m["ok"] = m["throughput_ratio"] >= result["target_ratio"] and m["max_abs_diff"] <= 1e-5
            m["floor_ok"] = m["throughput_ratio"] >= 0.9 and m["max_abs_diff"] <= 1e-5
        else:
            m["ok"] = (
                m["throughput_ratio"] >= 1.5
                and m["batched_p99_ms"] <= result["p99_bound_ms"]
                and m["max_abs_diff"] <= 1e-5
            )
    plain.close()
    batched.close()
    return result


def report(result: dict[str, Any]) -> None:
    b = result["batching"]
    print(
        f"{result['model']} on {result['backend']}, {result['callers']} callers of batch 1, "
        f"Batching(max_batch={b['max_batch']}, max_delay_ms={b['max_delay_ms']}, "
        f"max_padding={b['max_padding']}); one full batch runs in {result['full_batch_ms']:.2f} "
        f"ms, so the p99 bound is {result['p99_bound_ms']:.2f} ms (alone, a full batch's own "
        f"p99 is {result['full_batch_p99_ms']:.2f} ms)"
    )
    if "ceiling" in result:
        n = result["lengths"]
        print(
            f"lengths {n['drawn']} (mean {n['mean']:.1f}, {n['min']}-{n['max']}); ceiling at "
            f"{n['median']} tokens: {result['ceiling']:.2f}x, target "
            f"{result['target_ratio']:.2f}x"
        )
    head = (
        f"{'mode':<8} {'plain req/s':>11} {'batched':>9} {'ratio':>6} {'plain p50/p99 ms':>17} "
        f"{'batched p50/p99':>16} {'runs':>6} {'mean batch':>10} {'queued p99':>10} "
        f"{'padding':>7} {'passed':>7} {'max diff':>9}"
    )
    print(head)
    for mode, m in result["modes"].items():
        print(
            f"{mode:<8} {m['plain_rps']:>11.0f} {m['batched_rps']:>9.0f} "
            f"{m['throughput_ratio']:>5.2f}x {m['plain_p50_ms']:>8.2f}/{m['plain_p99_ms']:<8.2f} "
            f"{m['batched_p50_ms']:>7.2f}/{m['batched_p99_ms']:<8.2f} {m['runs']:>6} "
            f"{m['mean_batch']:>10.1f} {m['queue_delay_p99_ms']:>8.2f}ms "
            f"{m['padding_waste']:>7.1%} {m['passed'] / m['requests_total']:>7.0%} "
            f"{m['max_abs_diff']:>9.1e}"
            f"{'' if m['ok'] else '  (missed a target)'}"
        )
    for mode, m in result["modes"].items():
        if m.get("served_ceiling") is not None:
            print(
                f"{mode}: every request at the median length (nothing to pad), same callers: "
                f"batched/unbatched {m['served_ceiling']:.2f}x"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--model", default="vgg", choices=[*MODELS, *SEQUENCE_MODELS])
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="per block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument(
        "--max-padding", type=float, default=0.25, help="sequence models: Batching.max_padding"
    )
    parser.add_argument(
        "--max-in-flight", type=int, help="merged runs at once (default: the engine's)"
    )
    parser.add_argument("--quick", action="store_true", help="0.5 s blocks, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.5, 2
    result = measure(args)
    report(result)
    _results.write(f"batching-{args.model}-{args.backend}-{args.max_batch}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
