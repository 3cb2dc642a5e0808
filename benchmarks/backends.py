"""Backends side by side on a set of models, and how the automatic choice compares with the best.

For each model (generated ones and real ones from pinned PyPI wheels, see tests/conftest.py),
every backend that can take it on the device is benchmarked with `infer.bench.benchmark`
(median latency at batch 1, one request at a time), and the backend `device="auto"` picks is
set against the fastest one. This machine may be shared: compare backends within a row.

    .venv/bin/python benchmarks/backends.py [--device cpu] [--duration 2] [--quick]
        [--models demo,ocr_cls] [--update-readme]

Writes benchmarks/results/backends.json, backends.md (the table) and backends.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import models  # noqa: E402
from tests.conftest import wheel_model  # noqa: E402

from benchmarks import _readme  # noqa: E402
from infer import demo  # noqa: E402
from infer.bench import BenchReport, benchmark, environment  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# name: (what it is, model source (callable: fetched lazily), shapes, given inputs)
MODELS: dict[str, tuple[str, Callable[[], Any], dict, dict]] = {
    "relu": ("1 node, float32[1, 16]", lambda: models.relu(batch=1, width=16), {}, {}),
    "demo": ("the built-in demo CNN, 64x64", demo.model, {}, {}),
    "cnn": (
        "generated CNN, 64 ch, 128x128",
        lambda: models.cnn(channels=64, size=128, depth=4),
        {},
        {},
    ),
    "ocr_cls": (
        "PP-OCR text direction, 48x192",
        lambda: wheel_model("ocr_cls"),
        {"x": (1, 3, 48, 192)},
        {},
    ),
    "orientation": ("MobileNetV3, 224x224", lambda: wheel_model("orientation"), {}, {}),
    "ocr_det": (
        "PP-OCRv4 detection, 320x320",
        lambda: wheel_model("ocr_det"),
        {"x": (1, 3, 320, 320)},
        {},
    ),
    "ocr_rec": (
        "PP-OCRv4 recognition, 48x320",
        lambda: wheel_model("ocr_rec"),
        {"x": (1, 3, 48, 320)},
        {},
    ),
    "silero_vad": (
        "Silero VAD (nested If, LSTM), 512 samples",
        lambda: wheel_model("silero_vad"),
        {},
        {
            "input": (np.random.default_rng(0).standard_normal((1, 512)) * 0.1).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        },
    ),
}


def run(names: list[str], device: str, duration: float, warmup: float) -> dict[str, BenchReport]:
    reports = {}
    for name in names:
        what, source, shapes, given = MODELS[name]
        print(f"{name}: {what} ...", file=sys.stderr, flush=True)
        reports[name] = benchmark(
            source(),
            device=device,
            backends="all",
            duration=duration,
            warmup=warmup,
            shapes=shapes,
            inputs=given,
            name=name,
        )
    return reports


def table(reports: dict[str, BenchReport]) -> str:
    """A Markdown table: median latency per backend, the automatic choice, and the best."""
    backends: list[str] = []
    for r in reports.values():
        backends += [m.backend for m in r.results if m.backend not in backends]
    head = ["model", *[f"{b} p50 ms" for b in backends], "auto picks", "fastest", "auto / fastest"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, r in reports.items():
        by = {m.backend: m for m in r.results}
        cells = [f"{name} ({MODELS[name][0]})"]
        for b in backends:
            m = by.get(b)
            if m is None and any(s.backend == b and s.verdict == "unsupported" for s in r.skipped):
                cells.append("fails")  # its op check says it cannot take the model
            elif m is None:
                cells.append("–")
            elif not m.ok:
                cells.append("fails")
            else:
                cells.append(_ms(m.latency.p50))  # type: ignore[union-attr]
        best = r.best(r.batches[0])
        auto = by.get(r.auto or "")
        ratio = (
            f"{auto.latency.p50 / best.latency.p50:.2f}"  # type: ignore[union-attr]
            if best and auto and auto.ok
            else "–"
        )
        cells += [r.auto or "–", best.backend if best else "–", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def plot(reports: dict[str, BenchReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(reports)
    backends: list[str] = []
    for r in reports.values():
        backends += [m.backend for m in r.results if m.backend not in backends]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) * max(1, len(backends)) + 1.5))
    height = 0.8 / max(1, len(backends))
    for j, b in enumerate(backends):
        values = []
        for n in names:
            m = next((m for m in reports[n].results if m.backend == b and m.ok), None)
            values.append(m.latency.p50 if m and m.latency else np.nan)
        ax.barh(np.arange(len(names)) + j * height, values, height=height, label=b)
    ax.set_yticks(np.arange(len(names)) + height * (len(backends) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median latency, batch 1 (ms, log scale)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per backend")
    parser.add_argument("--quick", action="store_true", help="0.5 s per backend, small models")
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else list(MODELS)
    if args.quick and not args.models:
        names = ["relu", "demo", "ocr_cls", "silero_vad"]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    duration = 0.5 if args.quick else args.duration
    reports = run(names, args.device, duration, warmup=min(0.5, duration / 2))
    markdown = table(reports)
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = environment()
    data = {
        "device": args.device,
        "duration_s": duration,
        "models": {n: {"what": MODELS[n][0], **r.to_dict()} for n, r in reports.items()},
        "environment": env,
    }
    (RESULTS / "backends.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / "backends.md").write_text(markdown + "\n")
    plot(reports, RESULTS / "backends.png")
    if args.update_readme:
        _readme.update("backends-table", markdown, env)
    print(f"wrote {RESULTS}/backends.json, backends.md, backends.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
