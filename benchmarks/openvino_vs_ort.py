"""Latency per model on the CPU: raw ONNX Runtime, raw OpenVINO, and infer on each (plus what
infer picks on its own), batch 1, median over runs taken in alternating blocks.

    python benchmarks/openvino_vs_ort.py [--runs 30] [--models cnn,ocr_det]

Writes benchmarks/results/openvino_vs_ort.json. The ratios (infer over the raw call of the same
runtime, OpenVINO over ONNX Runtime) are what to read: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import onnxruntime as ort
import openvino as ov

import infer
from _openvino_common import MODELS, feeds, interleaved, median_ms, onnx_arg, source, write


def bench(name: str, runs: int, cache_dir: str) -> dict[str, object]:
    src = source(name)
    x = feeds(name)
    arg = onnx_arg(src)
    sess = ort.InferenceSession(arg, providers=["CPUExecutionProvider"])
    engines = {
        "infer_ort": infer.Engine.load(
            src, device="cpu", backend="onnxruntime", cache_dir=cache_dir
        ),
        "infer_ov": infer.Engine.load(src, device="cpu", backend="openvino", cache_dir=cache_dir),
        "infer_auto": infer.Engine.load(src, cache_dir=cache_dir),
    }
    core = ov.Core()
    model = (
        core.read_model(arg, ov.Tensor(np.empty(0, np.uint8))) if isinstance(arg, bytes) else arg
    )
    # Raw OpenVINO twice: with the properties infer sets (its overhead is the difference), and
    # with OpenVINO's defaults but for the f32 hint (CPU pinning on).
    same = core.compile_model(model, "CPU", dict(engines["infer_ov"].details["config"]))
    default = core.compile_model(
        model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    )
    same_request, default_request = same.create_infer_request(), default.create_infer_request()
    runners = {
        "raw_ort": lambda: sess.run(None, x),
        "raw_ov": lambda: same_request.infer(x),
        "raw_ov_pinned": lambda: default_request.infer(x),
        **{k: (lambda e=e: e.run(x)) for k, e in engines.items()},
    }
    times = interleaved(runners, runs)
    row: dict[str, object] = {k: round(median_ms(v), 3) for k, v in times.items()}
    row["runs"] = len(times["raw_ort"])
    row["auto_backend"] = engines["infer_auto"].backend
    row["ov_over_ort"] = round(row["raw_ov"] / row["raw_ort"], 3)
    row["infer_ov_over_raw_ov"] = round(row["infer_ov"] / row["raw_ov"], 3)
    row["infer_ort_over_raw_ort"] = round(row["infer_ort"] / row["raw_ort"], 3)
    for e in engines.values():
        e.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for name in args.models.split(","):
            rows[name] = bench(name, args.runs, cache_dir)
    cols = ["raw_ort", "raw_ov", "raw_ov_pinned", "infer_ort", "infer_ov", "infer_auto"]
    print(f"{'model':12} " + " ".join(f"{c:>13}" for c in cols) + "   OV/ORT  auto picks")
    for name, r in rows.items():
        print(
            f"{name:12} "
            + " ".join(f"{r[c]:>11.2f}ms" for c in cols)
            + f"   {r['ov_over_ort']:>6.2f}  {r['auto_backend']}"
        )
    write("openvino_vs_ort", {"batch": 1, "unit": "ms (median)", "models": rows})


if __name__ == "__main__":
    main()
