"""How much padding a run of requests of different lengths should hold: a simulation, no timing.

`callers` callers each keep one request queued (lengths drawn as in benchmarks/batching.py's
sequence row: log-normal, median 20 tokens, clipped to 5-64); one run at a time takes the
requests that `infer.batching.fit` picks for `Batching.max_padding`, and its callers queue new
ones. A run of n rows padded to L tokens costs `a + n * L / g(n)`: `a` per run, and a per-token
cost that batching divides by g(n), rising linearly from 1 at one row to G at `max_batch` rows.
Each (a, G) is fitted to a ceiling (one run of `max_batch` rows against as many one-row runs
at the median length) like those benchmarks/batching.py measures on this CPU (1.7-1.8x), from
all-overhead (G = 1) to all-efficiency (a = 0). Printed per cost model and max_padding: the
requests per second against one-row runs, the padding waste and rows per run; and the bound
that no policy can pass here: every `max_batch` queued requests split into runs by the best
partition of their sorted lengths under the known cost (a dynamic program).

    .venv/bin/python benchmarks/padding_policy.py [--ceiling 1.8] [--requests 4000]

Writes benchmarks/results/padding_policy.json.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _results  # noqa: E402
from infer.batching import fit  # noqa: E402

PADDINGS = (0.0, 0.1, 0.25, 0.5, 1.0, math.inf)


def draw(rng: np.random.Generator, count: int) -> list[int]:
    """Lengths as benchmarks/batching.py draws them."""
    return [int(n) for n in np.clip(np.rint(rng.lognormal(math.log(20), 0.6, count)), 5, 64)]


def models(ceiling: float, median: int, rows: int) -> list[tuple[float, float]]:
    """(a, G) pairs, per-token cost 1, that give `ceiling` at `median` tokens."""
    out = []
    for share in (1.0, 0.5, 0.0):  # how much of the ceiling comes from the per-run cost
        gain = 1 + (1 - share) * (ceiling - 1)  # G
        # rows * (a + median) / (a + rows * median / G) = ceiling, solved for a
        a = (ceiling * rows * median / gain - rows * median) / (rows - ceiling)
        out.append((max(a, 0.0), gain))
    return out


def simulate(
    a: float, gain: float, padding: float, callers: int, rows: int, count: int
) -> dict[str, float]:
    g = lambda n: 1 + (gain - 1) * (n - 1) / (rows - 1)  # noqa: E731
    rng = np.random.default_rng(0)
    queue = draw(rng, callers)
    time = done = padded = real = runs = 0.0
    while done < count:
        picked = fit(queue, [1] * len(queue), rows, padding)
        lengths = [queue[i] for i in picked]
        top = max(lengths)
        time += a + len(lengths) * top / g(len(lengths))
        done += len(lengths)
        runs += 1
        padded += len(lengths) * top - sum(lengths)
        real += sum(lengths)
        keep = set(picked)
        queue = [n for i, n in enumerate(queue) if i not in keep] + draw(rng, len(picked))
    plain = a + float(np.mean(draw(np.random.default_rng(1), 100_000)))  # one row a run
    return {"ratio": done / time * plain, "waste": padded / real, "rows_per_run": done / runs}


def oracle(a: float, gain: float, rows: int, rounds: int = 2000) -> float:
    """Requests per second against one-row runs when every `rows` requests are split into
    runs by the cheapest partition of their sorted lengths."""
    g = lambda n: 1 + (gain - 1) * (n - 1) / (rows - 1)  # noqa: E731
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(rounds):
        lengths = sorted(draw(rng, rows))
        best = [0.0] + [math.inf] * rows
        for j in range(1, rows + 1):
            for i in range(j):
                best[j] = min(best[j], best[i] + a + (j - i) * lengths[j - 1] / g(j - i))
        total += best[rows]
    plain = a + float(np.mean(draw(np.random.default_rng(1), 100_000)))
    return rows * rounds / total * plain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ceiling", type=float, default=1.8)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    median = int(np.median(draw(np.random.default_rng(0), 64)))
    result: dict[str, Any] = {
        "ceiling": args.ceiling,
        "median_length": median,
        "callers": args.callers,
        "max_batch": args.max_batch,
        "models": [],
    }
    print(
        f"{args.callers} callers, lengths log-normal (median {median}, 5-64), max_batch "
        f"{args.max_batch}, ceiling {args.ceiling:.2f}x: target (60% of its gain) "
        f"{1 + 0.6 * (args.ceiling - 1):.2f}x"
    )
    for a, gain in models(args.ceiling, median, args.max_batch):
        rows = {
            str(p): simulate(a, gain, p, args.callers, args.max_batch, args.requests)
            for p in PADDINGS
        }
        bound = oracle(a, gain, args.max_batch)
        result["models"].append({"per_run": a, "gain": gain, "max_padding": rows, "oracle": bound})
        print(f"per-run cost {a:.1f} tokens, per-token gain at a full batch {gain:.2f}x")
        for p, r in rows.items():
            print(
                f"  max_padding {p:>5}: {r['ratio']:.2f}x, waste {r['waste']:.0%}, "
                f"{r['rows_per_run']:.1f} rows a run"
            )
        print(f"  best partition of every {args.max_batch} queued: {bound:.2f}x")
    _results.write("padding_policy", result, note="a simulation: no timing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
