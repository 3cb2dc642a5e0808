"""Cold vs warm Engine.load on OpenVINO: the second load compiles from OpenVINO's model cache
(CACHE_DIR inside infer's cache folder). Each load runs in a fresh process, timed around
Engine.load only (imports and the backend probe excluded), next to raw OpenVINO's
compile_model with the same CACHE_DIR.

    python benchmarks/openvino_load.py [--trials 3] [--models ocr_det,ocr_rec,orientation,cnn]

Target: warm <= 0.2x cold. Writes benchmarks/results/openvino_load.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

from _openvino_common import ROOT, write

_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from _openvino_common import source, onnx_arg
import numpy as np
import openvino as ov
import infer
from infer.backends import base

name, kind, cache_dir = sys.argv[1:4]
src = source(name)
base.get("openvino").probe()
if kind == "infer":
    start = time.perf_counter()
    engine = infer.Engine.load(src, device="cpu", backend="openvino", cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    hit = engine.details["cache"]["hit"]
else:
    core = ov.Core()
    arg = onnx_arg(src)
    start = time.perf_counter()
    model = core.read_model(arg, ov.Tensor(np.empty(0, np.uint8))) if isinstance(arg, bytes) else arg
    compiled = core.compile_model(
        model, "CPU", {{"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
         "ENABLE_CPU_PINNING": False, "CACHE_DIR": cache_dir}}
    )
    seconds = time.perf_counter() - start
    hit = compiled.get_property("LOADED_FROM_CACHE")
print(json.dumps({{"seconds": seconds, "hit": bool(hit)}}))
"""


def child(name: str, kind: str, cache_dir: str) -> dict:
    code = _CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"))
    out = subprocess.run(
        [sys.executable, "-c", code, name, kind, cache_dir],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(name: str, trials: int) -> dict[str, object]:
    row: dict[str, object] = {}
    for kind in ("infer", "raw"):
        cold, warm = [], []
        for _ in range(trials):
            with tempfile.TemporaryDirectory() as cache_dir:
                first = child(name, kind, cache_dir)
                second = child(name, kind, cache_dir)
            assert not first["hit"] and second["hit"], (name, kind, first, second)
            cold.append(first["seconds"])
            warm.append(second["seconds"])
        c, w = statistics.median(cold), statistics.median(warm)
        row[kind] = {
            "cold_ms": round(c * 1e3, 1),
            "warm_ms": round(w * 1e3, 1),
            "warm_over_cold": round(w / c, 3),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--models", default="ocr_det,ocr_rec,orientation,cnn")
    args = parser.parse_args()
    rows = {name: bench(name, args.trials) for name in args.models.split(",")}
    print(
        f"{'model':12} {'infer cold':>11} {'warm':>8} {'ratio':>6}   {'raw cold':>9} {'warm':>8} {'ratio':>6}"
    )
    for name, r in rows.items():
        i, w = r["infer"], r["raw"]
        print(
            f"{name:12} {i['cold_ms']:>9.1f}ms {i['warm_ms']:>6.1f}ms {i['warm_over_cold']:>6.3f}"
            f"   {w['cold_ms']:>7.1f}ms {w['warm_ms']:>6.1f}ms {w['warm_over_cold']:>6.3f}"
        )
    write("openvino_load", {"target_warm_over_cold": 0.2, "models": rows})


if __name__ == "__main__":
    main()
