"""`infer bench --plot`: a benchmark report drawn with matplotlib (the CLI's concern, so
infer.bench stays free of plotting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bench import BenchReport
from ..errors import OptionError


def plot(report: BenchReport, path: str | Path, title: str | None = None) -> Path:
    """Write a PNG: latency distribution per backend and batch (left), throughput (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise OptionError(
            '--plot needs matplotlib: pip install "infer-engine[cli]" (or pip install matplotlib)'
        ) from e
    ok = [m for m in report.results if m.ok and m.samples_ms]
    if not ok:
        raise OptionError("--plot: nothing to plot, no backend produced timings")
    labels = [m.backend if len(report.batches) == 1 else f"{m.backend}\nb={m.batch}" for m in ok]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.6 * len(ok) + 2.8), squeeze=True)
    try:
        data = [np.asarray(m.samples_ms) for m in ok]
        ypos = np.arange(len(ok))
        horizontal = (
            {"orientation": "horizontal"}
            if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
            else {"vert": False}
        )
        left.boxplot(
            data,
            positions=ypos,
            **horizontal,
            widths=0.6,
            showfliers=True,
            flierprops={"markersize": 2, "alpha": 0.4},
        )
        for y, m in zip(ypos, ok):
            left.plot([m.latency.p99], [y], marker="|", color="tab:red", markersize=14)  # type: ignore[union-attr]
        left.set_yticks(ypos, labels)
        left.invert_yaxis()
        spread = max(d.max() for d in data) / max(min(d.min() for d in data), 1e-9)
        if spread > 30:
            left.set_xscale("log")
        left.set_xlabel("latency per run (ms); box: p25-p75, line: p50, red: p99")
        left.set_title("latency")
        left.grid(axis="x", alpha=0.3)

        values = [m.throughput or 0.0 for m in ok]
        bars = right.barh(ypos, values, color="tab:blue", alpha=0.8)
        right.set_yticks(ypos, labels)
        right.invert_yaxis()
        right.set_xlabel(f"samples per second (concurrency {report.concurrency})")
        right.set_title("throughput")
        right.grid(axis="x", alpha=0.3)
        for bar, v in zip(bars, values):
            right.text(v, bar.get_y() + bar.get_height() / 2, f" {v:,.0f}", va="center", fontsize=8)
        right.set_xlim(0, max(values) * 1.2 if max(values) > 0 else 1)
        fig.suptitle(title or f"{Path(report.model).name} on {report.device} ({report.precision})")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png", dpi=110)
    except OSError as e:
        raise OptionError(f"--plot {str(path)!r} cannot be written: {e}") from e
    finally:
        plt.close(fig)
    return out
