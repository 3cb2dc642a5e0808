"""Block timing shared by the benchmarks: cases timed in turn, block by block, on one machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def blocks(
    cases: dict[str, Callable[[], object]], number: int, repeat: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each case, one entry per block of `number` calls; the cases take
    turns block by block (timeit's scheme), so a slow spell of a shared machine hits them alike
    and the best block is the least disturbed."""
    for f in cases.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeat):
        for k, f in cases.items():
            t0 = time.perf_counter()
            for _ in range(number):
                f()
            times[k].append((time.perf_counter() - t0) / number)
    return times


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a's block against b's block of the same round."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))
