"""Backends side by side, and what the measured default picks against the fastest of them.

For each model (generated ones and real ones from pinned PyPI wheels, see tests/conftest.py):

- Steady state: the raw `onnxruntime.InferenceSession.run`, every backend that takes the model
  on the device (named outright), and the default engine (`Engine.load(model, device)`, after
  its background race has settled on the model's feeds) are timed on the same feeds, one
  engine at a time in blocks, round-robin over several rounds with a pause between blocks
  (ONNX Runtime's workers spin after a run). Reported: each one's median per-run time, what
  the default picked, default / fastest (the median over rounds of the two blocks of the same
  round), and the default's largest output difference from raw ONNX Runtime.
- Loads: in a fresh process per mode ("first", "background", "measure"), the first load
  (cold process, empty cache), the warm load (same process, the cache filled: a verdict where
  the mode made one), and, for comparison, the warm load of the winner named outright.

This machine may be shared: compare numbers within a row.

    .venv/bin/python benchmarks/backends.py [--device cpu] [--quick] [--models demo,ocr_cls]
        [--update-readme]

Targets (issue 15): default / fastest <= 1.10 on every model; outputs within 1e-4 of raw
ONNX Runtime; a warm default load <= 1.3x the named winner's + 5 ms; a first load of a small
model <= +0.3 s over table order. Writes benchmarks/results/backends.json, backends.md, .png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
from tests import models, sequence_models  # noqa: E402
from tests.conftest import wheel_model  # noqa: E402

import infer  # noqa: E402
from benchmarks import _readme, _results  # noqa: E402
from infer import demo, selection, sequence  # noqa: E402
from infer.bench import environment  # noqa: E402
from infer.feeds import random_feeds, representative_shapes  # noqa: E402

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
    # Sequence models (tests/data/sequence: optimum exports, random weights, 2 layers, hidden 64),
    # timed where they spend their life: a decoder's decode step after 128 tokens, an encoder
    # at 128 tokens.
    "llama": (
        "Llama decoder (GQA, RoPE), decode step at 128",
        lambda: sequence_models.path("llama"),
        {},
        {},
    ),
    "gpt2": ("GPT-2 decoder, decode step at 128", lambda: sequence_models.path("gpt2"), {}, {}),
    "bert": ("BERT encoder, 128 tokens", lambda: sequence_models.path("bert"), {}, {}),
    "bert_int8w": (
        "BERT, int8 weights dequantized in the graph, 128 tokens",
        lambda: sequence_models.path("bert_int8w"),
        {},
        {},
    ),
    "t5_encoder": ("T5 encoder, 128 tokens", lambda: sequence_models.path("t5_encoder"), {}, {}),
}
MODES = ("first", "background", "measure")
ROUNDS = 9
BLOCK_S = 0.3
PAUSE_S = 0.05
SLOW_S = 0.5  # a backend slower than this per run (the reference evaluator) gets one round


def _source_path(name: str, folder: Path) -> Path:
    src = MODELS[name][1]()
    if isinstance(src, (str, Path)):
        return Path(src)
    path = folder / f"{name}.onnx"
    onnx.save(src, str(path))
    return path


def _block(call: Callable[[], object]) -> float:
    count, start = 0, time.perf_counter()
    while True:
        call()
        count += 1
        now = time.perf_counter()
        if now - start >= BLOCK_S:
            return (now - start) / count


def steady(name: str, path: Path, device: str) -> dict[str, Any]:
    """Median per-run time of raw ONNX Runtime, each backend named, and the settled default."""
    _, _, shapes, given = MODELS[name]
    model = infer.Model.load(path)
    roles = sequence.read(model)
    # A sequence model is timed where it spends its life (a decoder's decode step after a
    # 128-token context, an encoder at 128 tokens), as the default's race decides.
    timed_shapes = shapes or representative_shapes(model.inputs, model=model)[0]
    feeds = random_feeds(model.inputs, timed_shapes, seed=0, given=given, roles=roles)
    raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in raw.get_outputs()], raw.run(None, feeds)))
    labels = [a.backend for a in selection.preflight(infer.Model.load(path), device) if a.eligible]
    engines: dict[str, infer.Engine] = {}
    failed: dict[str, str] = {}
    for label in labels:
        try:
            engines[label] = infer.Engine.load(path, device, backend=label, shapes=shapes)
            engines[label].run(feeds)
        except infer.InferError as e:
            failed[label] = str(e).splitlines()[0]
            engines.pop(label, None)
    with tempfile.TemporaryDirectory() as cache:
        default = infer.Engine.load(path, device, shapes=shapes, cache_dir=cache)
        default.run(feeds)
        default.run(feeds)
        default.settle(timeout=600)
        got = default.run(feeds)
        pick = next(a for a in default.selection if a.verdict == "selected")
        calls: dict[str, Callable[[], object]] = {"raw onnxruntime": lambda: raw.run(None, feeds)}
        calls.update({label: (lambda e=e: e.run(feeds)) for label, e in engines.items()})
        calls["default"] = lambda: default.run(feeds)
        samples: dict[str, list[float]] = {k: [] for k in calls}
        for call in calls.values():
            call()  # warm
        for r in range(ROUNDS):
            for label, call in calls.items():
                if r and samples[label] and samples[label][0] > SLOW_S:
                    continue
                samples[label].append(_block(call))
                time.sleep(PAUSE_S)
        default.close()
    for e in engines.values():
        e.close()
    median_ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    fastest = min((k for k in engines), key=lambda k: median_ms[k], default=None)
    # default / fastest: each round's default block against the fastest's in the same round
    # (neighbours in time share the machine's mood), the median over rounds.
    paired = (
        statistics.median(d / f for d, f in zip(samples["default"], samples[fastest]))
        if fastest
        else None
    )
    worst = 0.0
    for out, ref in want.items():
        if isinstance(ref, np.ndarray) and ref.dtype.kind == "f":
            worst = max(worst, float(np.max(np.abs(np.asarray(got[out], np.float64) - ref))))
    return {
        "median_ms": median_ms,
        "failed": failed,
        "pick": pick.backend,
        "pick_reason": pick.reason,
        "fastest": fastest,
        "default_over_fastest": paired,
        "default_vs_raw_ort_max_abs": worst,
    }


_LOADS = r"""
import json, sys, time
import infer
path, device, mode, shapes = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
shapes = {k: tuple(v) for k, v in shapes.items()}
import numpy as np
from infer.feeds import random_feeds
out = {}
t = time.perf_counter()
e = infer.Engine.load(path, device, choose=mode, shapes=shapes)
out["first_s"] = time.perf_counter() - t
if mode == "background":  # fill the cache with a verdict, as a busy engine does
    feeds = random_feeds(e.inputs, shapes, seed=0)
    e.run(feeds); e.run(feeds); e.settle(600)
e.close()
t = time.perf_counter()
e = infer.Engine.load(path, device, choose=mode, shapes=shapes)
out["warm_s"] = time.perf_counter() - t
out["backend"] = next(a.backend for a in e.selection if a.verdict == "selected")
e.close()
t = time.perf_counter()
e = infer.Engine.load(path, device, backend=out["backend"], shapes=shapes)
out["named_warm_s"] = time.perf_counter() - t
e.close()
print("LOADS " + json.dumps(out))
"""


def loads(name: str, path: Path, device: str) -> dict[str, Any]:
    """First and warm load per mode, each mode in a fresh process with an empty cache."""
    shapes = {k: list(v) for k, v in MODELS[name][2].items()}
    out = {}
    for mode in MODES:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "INFER_CACHE_DIR": cache, "PYTHONPATH": str(ROOT / "src")}
            done = subprocess.run(
                [sys.executable, "-c", _LOADS, str(path), device, mode, json.dumps(shapes)],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
        line = next((x for x in done.stdout.splitlines() if x.startswith("LOADS ")), None)
        if line is None:
            out[mode] = {"error": (done.stderr or done.stdout)[-500:]}
        else:
            out[mode] = json.loads(line[len("LOADS ") :])
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    backends: list[str] = []
    for r in rows.values():
        backends += [b for b in r["steady"]["median_ms"] if b not in ("default", *backends)]
    head = [
        "model",
        *[f"{b} ms" for b in backends],
        "auto picks",
        "auto ms",
        "auto / fastest",
        "first load (first / background / measure)",
        "warm auto load / named",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, r in rows.items():
        s, ld = r["steady"], r["loads"]
        cells = [f"{name} ({MODELS[name][0]})"]
        for b in backends:
            cells.append(
                _ms(s["median_ms"][b])
                if b in s["median_ms"]
                else ("fails" if b in s["failed"] else "–")
            )
        ratio = s["default_over_fastest"]
        cells += [s["pick"], _ms(s["median_ms"]["default"]), f"{ratio:.2f}" if ratio else "–"]
        firsts = [ld.get(m, {}).get("first_s") for m in MODES]
        cells.append(" / ".join(f"{x:.2f} s" if x is not None else "–" for x in firsts))
        bg = ld.get("background", {})
        if "warm_s" in bg:
            cells.append(f"{bg['warm_s'] * 1e3:.0f} / {bg['named_warm_s'] * 1e3:.0f} ms")
        else:
            cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    series: list[str] = []
    for r in rows.values():
        series += [b for b in r["steady"]["median_ms"] if b not in series]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) * max(1, len(series)) + 1.5))
    height = 0.8 / max(1, len(series))
    for j, b in enumerate(series):
        values = [rows[n]["steady"]["median_ms"].get(b, np.nan) for n in names]
        ax.barh(np.arange(len(names)) + j * height, values, height=height, label=b)
    ax.set_yticks(np.arange(len(names)) + height * (len(series) - 1) / 2, names)
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
    parser.add_argument("--quick", action="store_true", help="small models, no load processes")
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--no-loads", action="store_true", help="skip the load measurements")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else list(MODELS)
    if args.quick and not args.models:
        names = ["relu", "demo", "ocr_cls", "silero_vad"]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            print(f"{name}: {MODELS[name][0]} ...", file=sys.stderr, flush=True)
            path = _source_path(name, Path(folder))
            with tempfile.TemporaryDirectory() as cache:
                os.environ["INFER_CACHE_DIR"] = cache  # the named engines' caches
                rows[name] = {"what": MODELS[name][0], "steady": steady(name, path, args.device)}
            skip = args.quick or args.no_loads
            rows[name]["loads"] = {} if skip else loads(name, path, args.device)
    if args.models:  # a part of the models: the others keep their last figures
        previous = RESULTS / "backends.json"
        if previous.is_file():
            kept = json.loads(previous.read_text()).get("models", {})
            rows = {**{k: v for k, v in kept.items() if k in MODELS and k not in rows}, **rows}
            rows = {k: rows[k] for k in MODELS if k in rows}
    markdown = table(rows)
    print(markdown)
    _results.write("backends", {"device": args.device, "models": rows})
    (RESULTS / "backends.md").write_text(markdown + "\n")
    plot(rows, RESULTS / "backends.png")
    if args.update_readme:
        _readme.update("backends-table", markdown, environment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
