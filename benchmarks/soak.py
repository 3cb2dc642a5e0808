"""Soak test: memory and file descriptors over many runs and many engine lifetimes.

Phases, each in a fresh process so one cannot hide or cause another's growth:
  runs      one engine, 20,000 runs: RSS after warm-up vs at the end (target: <= 5% growth)
  raw       the same runs straight through the runtime (ONNX Runtime only), for comparison
  lifecycle Engine.load + run + close 500 times: RSS, open file descriptors and threads after
            a warm-up vs at the end (target: no growth beyond allocator noise)

    python benchmarks/soak.py                       # onnxruntime, the full counts
    python benchmarks/soak.py --backend reference --runs 2000 --cycles 100

Prints a table and writes benchmarks/results/soak-<backend>.json. "growth" is RSS from after the
warm-up to the end; "drift" from the first tenth of the phase to the end (a leak keeps drifting,
allocator warm-up does not).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "tests"))

RSS_TARGET_PCT = 5.0


def _process():
    import psutil

    return psutil.Process()


def _sample() -> dict:
    p = _process()
    gc.collect()
    return {
        "rss_mb": p.memory_info().rss / 2**20,
        "fds": p.num_fds() if hasattr(p, "num_fds") else p.num_handles(),
        "threads": p.num_threads(),
    }


def _model_file(folder: Path) -> Path:
    from models import cnn

    path = folder / "soak_cnn.onnx"
    path.write_bytes(cnn(channels=8, size=16, depth=2, batch=1).SerializeToString())
    return path


def _feed() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).standard_normal((1, 3, 16, 16), np.float32)}


def phase_runs(backend: str, runs: int, model: Path) -> dict:
    import infer

    engine = infer.Engine.load(model, "cpu", backend=backend, cache=False)
    feed = _feed()
    warmup = max(runs // 20, 10)
    for _ in range(warmup):
        engine.run(feed)
    start = _sample()
    trace = []
    t0 = time.perf_counter()
    for i in range(runs):
        engine.run(feed)
        if (i + 1) % max(runs // 10, 1) == 0:
            trace.append(round(_sample()["rss_mb"], 2))
    seconds = time.perf_counter() - t0
    end = _sample()
    engine.close()
    return {"start": start, "end": end, "trace_rss_mb": trace, "seconds": seconds, "count": runs}


def phase_raw(runs: int, model: Path) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = _feed()
    warmup = max(runs // 20, 10)
    for _ in range(warmup):
        sess.run(None, feed)
    start = _sample()
    trace = []
    t0 = time.perf_counter()
    for i in range(runs):
        sess.run(None, feed)
        if (i + 1) % max(runs // 10, 1) == 0:
            trace.append(round(_sample()["rss_mb"], 2))
    seconds = time.perf_counter() - t0
    end = _sample()
    return {"start": start, "end": end, "trace_rss_mb": trace, "seconds": seconds, "count": runs}


def phase_lifecycle(backend: str, cycles: int, model: Path) -> dict:
    import infer

    feed = _feed()

    def cycle() -> None:
        with infer.Engine.load(model, "cpu", backend=backend, cache=False) as engine:
            engine.run(feed)

    for _ in range(max(cycles // 25, 5)):
        cycle()
    start = _sample()
    trace = []
    t0 = time.perf_counter()
    for i in range(cycles):
        cycle()
        if (i + 1) % max(cycles // 10, 1) == 0:
            trace.append(round(_sample()["rss_mb"], 2))
    seconds = time.perf_counter() - t0
    end = _sample()
    return {"start": start, "end": end, "trace_rss_mb": trace, "seconds": seconds, "count": cycles}


def _child(args: argparse.Namespace) -> None:
    model = Path(args.model)
    if args.phase == "runs":
        out = phase_runs(args.backend, args.runs, model)
    elif args.phase == "raw":
        out = phase_raw(args.runs, model)
    else:
        out = phase_lifecycle(args.backend, args.cycles, model)
    print(json.dumps(out))


def _run_phase(phase: str, args: argparse.Namespace, model: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--backend",
        args.backend,
        "--runs",
        str(args.runs),
        "--cycles",
        str(args.cycles),
        "--model",
        str(model),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    s, e = result["start"], result["end"]
    result["phase"] = phase
    result["rss_growth_mb"] = e["rss_mb"] - s["rss_mb"]
    result["rss_growth_pct"] = 100 * (e["rss_mb"] - s["rss_mb"]) / s["rss_mb"]
    # After the first tenth: growth that keeps going (a leak) rather than allocator warm-up.
    first = result["trace_rss_mb"][0] if result["trace_rss_mb"] else s["rss_mb"]
    result["rss_drift_pct"] = 100 * (e["rss_mb"] - first) / first
    result["fd_growth"] = e["fds"] - s["fds"]
    result["thread_growth"] = e["threads"] - s["threads"]
    result["per_item_us"] = 1e6 * result["seconds"] / result["count"]
    ok = result["rss_growth_pct"] <= RSS_TARGET_PCT
    if phase == "lifecycle":
        ok = ok and result["fd_growth"] <= 0 and result["thread_growth"] <= 0
    result["ok"] = ok
    return result


def _table(rows: list[dict]) -> str:
    head = (
        f"{'phase':<10} {'count':>7} {'RSS start':>10} {'RSS end':>9} {'growth':>8} {'drift':>8} "
        f"{'fds':>9} {'threads':>9} {'us/item':>9}  verdict"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s, e = r["start"], r["end"]
        lines.append(
            f"{r['phase']:<10} {r['count']:>7} {s['rss_mb']:>8.1f}MB {e['rss_mb']:>7.1f}MB "
            f"{r['rss_growth_pct']:>+7.2f}% {r['rss_drift_pct']:>+7.2f}% {s['fds']:>4}->{e['fds']:<4} "
            f"{s['threads']:>4}->{e['threads']:<4} {r['per_item_us']:>9.1f}  "
            f"{'ok' if r['ok'] else 'GROWTH'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--phase", choices=["runs", "raw", "lifecycle"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        _child(args)
        return

    import infer

    with tempfile.TemporaryDirectory() as tmp:
        model = _model_file(Path(tmp))
        phases = ["runs", "lifecycle"]
        if args.backend == "onnxruntime":
            phases.insert(1, "raw")
        rows = [_run_phase(p, args, model) for p in phases]
    print(
        f"soak: backend {args.backend}, model cnn(8 channels, 16x16, depth 2), "
        f"{args.runs} runs, {args.cycles} engine lifetimes (each phase in a fresh process)"
    )
    print(_table(rows))
    report = {
        "benchmark": "soak",
        "backend": args.backend,
        "infer": infer.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rss_target_pct": RSS_TARGET_PCT,
        "phases": rows,
        "ok": all(r["ok"] for r in rows),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = args.out or RESULTS / f"soak-{args.backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    if not report["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
