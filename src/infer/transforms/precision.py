"""Precision as an ONNX -> ONNX transform: fp16 graphs and int8 Q/DQ graphs, built once and cached.

The engine calls `convert(model, options)` for backends whose `precisions()` map the requested
precision to GRAPH. The returned `Model` points at the cached artifact and carries
`Model.precision`, a description of what the graph now computes in ("int8 (QDQ, minmax,
200 samples)"), which the backend reports as its session's precision.

- fp16: onnxruntime.transformers.float16 (it ships inside onnxruntime, so no new dependency; it
  is onnxconverter-common's converter plus fixes for Resize/GroupNorm inputs, opset-aware
  blocking and list-valued keep_io_types). Inputs and outputs stay fp32, the converter's list of
  ops that need fp32 stays in fp32 behind Casts, and the result passes `onnx.checker`.
- int8: static Q/DQ. The default quantizer is onnxruntime.quantization.quantize_static after
  quant_pre_process (BatchNorm folded into Conv), with per-channel int8 weights; the calibrated
  ranges are cached on their own, so changing `exclude` or `per_channel` does not recalibrate.
  NNCF (when installed) is the other quantizer: OpenVINO runs its placement fastest, and on
  MobileNet-like models it is markedly more accurate (bias correction); ONNX Runtime runs it
  slowly (benchmarks/precision_int8.py has the numbers).
- Graphs that already hold Q/DQ (or fp16) pass through unchanged: never quantized twice.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto

from .. import _onnx
from ..cache import Cache, Entry, Key
from ..calibration import Calibration
from ..errors import BackendUnavailable, CompileError, ModelError, OptionError
from ..model import Model, ModelFormat
from ..options import Options
from ..tensors import TensorSpec

log = logging.getLogger(__name__)

TRANSFORM_VERSION = 3
"""Bump when a change here changes the artifacts, so cached ones are rebuilt."""

MODEL_FILE = "model.onnx"
FLOAT_FILE = "float.onnx"
RANGES_FILE = "ranges.json"

# ISA extensions with an int8 dot product (u8 x s8 -> s32 without intermediate saturation).
_INT8_DOT = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

# Nodes that mean a graph is already quantized.
_QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "ConvInteger",
        "MatMulInteger",
        "MatMulNBits",
        "QGemm",
    }
)

Progress = Callable[[str, int, "int | None"], None]


def convert(model: Model, options: Options, *, quantizer: str | None = None) -> Model:
    """The model to compile for `options.precision`, as a graph transform.

    quantizer: for int8 with `Calibration(quantizer="auto")`, the backend's choice
        ("onnxruntime", "onnxruntime-symmetric" or "nncf"); None means "onnxruntime".
    Raises OptionError when the request cannot be met (no calibration data, an fp16 request
    on a quantized model), InputError when calibration feeds do not fit the model.
    """
    if model.format is not ModelFormat.ONNX:
        raise OptionError(
            f"precision={options.precision!r} is applied to ONNX graphs; {model!r} is "
            f"{model.format.value}: give the ONNX model, or a model built at that precision"
        )
    if options.precision == "fp32":
        return model
    current = graph_precision(model.proto)
    if options.precision == "fp16":
        return _fp16(model, options, current)
    if options.precision == "int8":
        return _int8(model, options, current, quantizer or "onnxruntime")
    raise OptionError(
        f"precision={options.precision!r} has no graph transform; a backend must run it "
        "natively or through its runtime's hint"
    )


def quantizer_for(options: Options, backend_choice: str) -> str | None:
    """The quantizer an int8 load uses for a backend that prefers `backend_choice`: the
    Calibration's own unless it says "auto" (None when the load is not int8)."""
    if options.precision != "int8":
        return None
    calib = options.calibration
    if isinstance(calib, Calibration) and calib.quantizer != "auto":
        return calib.quantizer
    return backend_choice


def graph_precision(proto: onnx.ModelProto) -> str:
    """What an ONNX graph computes in: "int8" (it holds quantize/dequantize or integer ops),
    "fp16" (most float weights are fp16) or "fp32"."""
    counts = {TensorProto.FLOAT: 0, TensorProto.FLOAT16: 0}
    for graph in _onnx.graphs(proto.graph):
        if any(n.op_type in _QUANTIZED_OPS for n in graph.node):
            return "int8"
        for t in graph.initializer:
            if t.data_type in counts:
                counts[t.data_type] += int(np.prod(t.dims, dtype=np.int64))
    return "fp16" if counts[TensorProto.FLOAT16] > counts[TensorProto.FLOAT] else "fp32"


# -- fp16 -------------------------------------------------------------------------------------


def _fp16(model: Model, options: Options, current: str) -> Model:
    if current == "int8":
        raise OptionError(
            f"{model!r} is already quantized (it holds Q/DQ or integer nodes): load it with "
            "precision='int8', or convert the fp32 model to fp16"
        )
    if current == "fp16":
        return _as_is(model, "fp16 (from the model)")
    float16 = _import("onnxruntime.transformers.float16", "fp16 conversion")
    import onnxruntime

    blocked = sorted(float16.DEFAULT_OP_BLOCK_LIST)
    key = Key.of(
        "onnx-fp16",
        model=model.digest,
        transform=f"fp16/{TRANSFORM_VERSION}",
        keep_io=True,
        blocked=blocked,
        onnx=onnx.__version__,
        onnxruntime=onnxruntime.__version__,
    )
    report = _reporter(options.progress)

    def build(folder: Path) -> dict[str, Any]:
        report("fp16", 0, 1)
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        try:
            converted = float16.convert_float_to_float16(
                proto, keep_io_types=True, op_block_list=blocked
            )
            _toposort(converted.graph)
            onnx.checker.check_model(converted)
        except Exception as e:
            raise CompileError(f"fp16 conversion of {model!r} failed: {e}") from e
        kept = sum(1 for n in _onnx.nodes(converted.graph) if n.op_type in blocked)
        _onnx.save(converted, folder / MODEL_FILE)
        report("fp16", 1, 1)
        note = f", {kept} op{'s' * (kept != 1)} kept in fp32" if kept else ""
        return {"precision": f"fp16 (graph, fp32 I/O{note})"}

    return _built(model, options, key, build, "fp16")


# -- int8 -------------------------------------------------------------------------------------


def _int8(model: Model, options: Options, current: str, backend_choice: str) -> Model:
    given = int8_source(model, options, current)
    if given is not None:
        return given
    calib = Calibration.of(options.calibration)
    quantizer = int8_quantizer(model, calib, backend_choice)
    data, count = calib.digest(model.inputs, cast=options.cast)
    key = Key.of(
        "onnx-int8",
        model=model.digest,
        transform=f"int8-qdq/{TRANSFORM_VERSION}",
        data=data,
        **int8_params(calib, quantizer),
        **_versions(quantizer),
    )

    def build(folder: Path) -> dict[str, Any]:
        n, text = quantize(model, options, calib, quantizer, folder, data=data, count=count)
        (folder / FLOAT_FILE).unlink()  # only the search edits graphs back to float
        return {"precision": text, "samples": n}

    return _built(model, options, key, build, "int8")


def int8_source(model: Model, options: Options, current: str | None = None) -> Model | None:
    """For precision="int8": the model itself when it already holds Q/DQ (described), None when
    it is to be quantized; raises OptionError when it cannot be (fp16 weights, no calibration)."""
    current = current or graph_precision(model.proto)
    if current == "int8":
        if options.calibration is not None:
            log.info("%r already holds Q/DQ nodes: the calibration data is not used", model)
        return _as_is(model, "int8 (QDQ from the model)")
    if current == "fp16":
        raise OptionError(
            f"{model!r} holds fp16 weights; int8 calibration starts from the fp32 model: "
            "load that one with precision='int8'"
        )
    if options.calibration is None:
        raise OptionError(
            "precision='int8' needs calibration data: pass calibration=infer.Calibration(feeds) "
            "(or a list of feeds: dicts of input name -> array, or arrays for a single-input "
            "model), a few hundred inputs like the ones the model will see (on the command "
            "line: --calibration FOLDER of .npy/.npz files or images); or load a model that "
            "already holds Q/DQ nodes"
        )
    return None


def int8_quantizer(model: Model, calib: Calibration, backend_choice: str) -> str:
    """The quantizer an int8 load uses (the Calibration's, else the backend's, installed),
    after checking the Calibration's settings against it and the model."""
    quantizer = _pick_quantizer(calib, backend_choice)
    if quantizer == "nncf" and calib.method != "minmax":
        raise OptionError(
            f"Calibration(method={calib.method!r}) is one of onnxruntime's calibrators; NNCF "
            "estimates ranges its own way: use method='minmax' with quantizer='nncf'"
        )
    _check_exclude(model.proto, calib.exclude)
    return quantizer


def int8_params(calib: Calibration, quantizer: str) -> dict[str, Any]:
    """The quantization settings that shape an int8 graph, for cache keys."""
    return {
        **cpu_settings(quantizer),
        "quantizer": quantizer,
        "method": calib.method,
        "percentile": calib.percentile if calib.method == "percentile" else None,
        "per_channel": calib.per_channel,
        "exclude": sorted(calib.exclude),
        "limit": calib.limit,
    }


def quantize(
    model: Model,
    options: Options,
    calib: Calibration,
    quantizer: str,
    folder: Path,
    *,
    data: str | None = None,
    count: int | None = None,
) -> tuple[int, str]:
    """Quantize `model` into folder/MODEL_FILE, and write the float graph the Q/DQ nodes were
    placed in (BatchNorm folded for onnxruntime; nodes named) to folder/FLOAT_FILE. Returns
    (samples calibrated on, the graph's description). Calibrated ranges are cached apart."""
    inputs = model.inputs
    report = _reporter(options.progress)
    if quantizer == "nncf":
        n = _quantize_nncf(
            model, calib, inputs, options, folder / MODEL_FILE, report, folder / FLOAT_FILE
        )
    else:
        if data is None:
            data, count = calib.digest(inputs, cast=options.cast)
        n = _quantize_ort(
            model,
            calib,
            inputs,
            options,
            quantizer,
            data,
            count,
            folder / MODEL_FILE,
            report,
            folder / FLOAT_FILE,
        )
    return n, _describe_int8(quantizer, calib, n, model.proto)


def cpu_settings(quantizer: str) -> dict[str, Any]:
    """onnxruntime quantizer settings that fit this CPU (recorded in the cache key and the
    description). On x86 without an int8 dot product (VNNI, AMX) the u8 x s8 multiply-add
    saturates in 16 bits, so weights get 7 bits (reduce_range), as ONNX Runtime's guidance says;
    with VNNI/AMX (and on ARM) full 8-bit ranges. Measured on this AVX512-VNNI/AMX machine
    (benchmarks/precision_int8.py, MobileNetV3): reduce_range 0.61x vs 0.73x fp32 speed at the
    same top-1, int8 activations (S8S8) 0.20x, per-tensor weights 0.45x and less accurate, so
    U8S8 per-channel it is."""
    if quantizer != "onnxruntime":
        return {"reduce_range": False}
    from ..device import cpu

    isa = cpu().capabilities.isa
    return {"reduce_range": "avx2" in isa and not (isa & _INT8_DOT)}


def _pick_quantizer(calib: Calibration, backend_choice: str) -> str:
    wanted = backend_choice if calib.quantizer == "auto" else calib.quantizer
    if wanted == "nncf" and importlib.util.find_spec("nncf") is None:
        if calib.quantizer == "nncf":
            raise OptionError(
                "Calibration(quantizer='nncf') needs NNCF: pip install nncf (or infer-engine[nncf])"
            )
        log.info("this backend quantizes best with NNCF, which is not installed; using onnxruntime")
        return "onnxruntime"
    return wanted


def _describe_int8(quantizer: str, calib: Calibration, samples: int, proto: onnx.ModelProto) -> str:
    parts = ["QDQ"]
    if quantizer == "nncf":
        parts.append("nncf")
    else:
        if quantizer == "onnxruntime-symmetric":
            parts.append("symmetric")
        if cpu_settings(quantizer)["reduce_range"]:
            parts.append("7-bit weights (no VNNI)")
        parts.append(
            calib.method if calib.method != "percentile" else f"percentile {calib.percentile:g}"
        )
    parts.append(f"{samples} sample{'s' * (samples != 1)}")
    kept = len(_excluded_nodes(proto, calib.exclude))
    if kept:
        parts.append(f"{kept} node{'s' * (kept != 1)} kept in float")
    return f"int8 ({', '.join(parts)})"


def _quantize_ort(
    model: Model,
    calib: Calibration,
    inputs: Sequence[TensorSpec],
    options: Options,
    quantizer: str,
    data: str,
    count: int | None,
    out: Path,
    report: Progress,
    float_out: Path | None = None,
) -> int:
    """quantize_static to `out`; `float_out` receives the float graph it quantized (BatchNorm
    folded, every node named), which the int8 search edits nodes back to."""
    q = _import("onnxruntime.quantization", "int8 quantization")
    import onnxruntime

    symmetric = quantizer == "onnxruntime-symmetric"
    method = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[calib.method]
    with tempfile.TemporaryDirectory(prefix="infer-int8-") as tmp:
        src, pre = Path(tmp) / "source.onnx", Path(tmp) / "pre.onnx"
        # Per-channel DequantizeLinear (its axis attribute) needs opset 13; the quantizer only
        # raises opsets below 10 itself.
        _onnx.save(_named(_at_least_opset(model.proto, 13 if calib.per_channel else 11)), src)
        report("quantize", 0, 2)
        _pre_process(q, model, src, pre)
        # Pre-processing inlines functions (HardSwish -> HardSigmoid, Mul) into unnamed nodes;
        # nodes are excluded, and reported, by name.
        loaded = onnx.load(str(pre))
        float_graph = _named(loaded)  # `loaded` itself when every node has a name
        if float_graph is not loaded:
            _onnx.save(float_graph, pre)
        if float_out is not None:
            _onnx.save(float_graph, float_out)
        report("quantize", 1, 2)
        ranges_key = Key.of(
            "calibration",
            model=model.digest,
            transform=f"ort-ranges/{TRANSFORM_VERSION}",
            data=data,
            method=calib.method,
            percentile=calib.percentile if calib.method == "percentile" else None,
            symmetric=symmetric,
            limit=calib.limit,
            onnx=onnx.__version__,
            onnxruntime=onnxruntime.__version__,
        )

        def calibrate(folder: Path) -> dict[str, Any]:
            n = _calibrate_ort(
                q, pre, calib, inputs, options, method, symmetric, count, folder, report
            )
            return {"samples": n}

        if options.cache:
            ranges = _cached(options, ranges_key, calibrate)
        else:
            scratch = Path(tmp) / "ranges"
            scratch.mkdir()
            ranges = Entry(scratch, calibrate(scratch))
        # Relu/Clip stay in the graph (ONNX Runtime fuses them at load all the same, measured):
        # folded into a quantization range, they would vanish from a node kept in float.
        extra: dict[str, Any] = {
            "ActivationSymmetric": symmetric,
            "QDQKeepRemovableActivations": True,
        }
        try:
            q.quantize_static(
                str(pre),
                str(out),
                calibration_data_reader=None,
                calibration_cache_path=str(ranges.file(RANGES_FILE)),
                quant_format=q.QuantFormat.QDQ,
                per_channel=calib.per_channel,
                activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                reduce_range=cpu_settings(quantizer)["reduce_range"],
                calibrate_method=method,
                nodes_to_exclude=_excluded_nodes(onnx.load(str(pre)), calib.exclude),
                use_external_data_format=_onnx.is_large(model.proto),
                extra_options=extra,
            )
        except Exception as e:
            raise CompileError(f"onnxruntime could not quantize {model!r} to int8: {e}") from e
        quantized = onnx.load(str(out))
        if _float_outputs(quantized.graph):
            _onnx.save(quantized, out)
        report("quantize", 2, 2)
        return int(ranges.meta.get("samples", 0))


def _at_least_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    current = _onnx.opset(proto) or 1
    if current >= version:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, version)
    except Exception as e:
        raise CompileError(
            f"int8 quantization needs opset {version}; converting the model from opset "
            f"{current} failed: {e}"
        ) from e


def _pre_process(q: Any, model: Model, src: Path, pre: Path) -> None:
    """quant_pre_process: folds BatchNorm into Conv and fills in shapes, with ONNX's shape
    inference. Its symbolic shape inference is skipped: it needs sympy, gives up on some graphs
    (PP-OCR's detector), and then leaves a sym_shape_infer_temp.onnx in the working directory."""
    try:
        q.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception as e:
        raise CompileError(f"int8 pre-processing of {model!r} failed: {e}") from e


def _float_outputs(graph: onnx.GraphProto) -> int:
    """Drop the Q/DQ pair in front of each graph output, so outputs come straight from the
    float (or QGemm/QLinear-fused) op. Quantizing an output only clips it to the calibrated
    range: a held-out input whose logits leave that range would be flattened (NNCF leaves
    outputs unquantized too). Returns how many pairs were removed."""
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    dropped: list[onnx.NodeProto] = []
    renames: dict[str, str] = {}
    for name in outputs:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or readers.get(q.output[0], 0) != 1:
            continue
        source = q.input[0]
        if source in outputs or source in {i.name for i in graph.input} or source not in producer:
            continue
        dropped += [q, dq]
        renames[source] = name
    if not dropped:
        return 0
    keep = [n for n in graph.node if all(n is not d for d in dropped)]
    for n in keep:
        for i, o in enumerate(n.output):
            if o in renames:
                n.output[i] = renames[o]
        for i, x in enumerate(n.input):
            if x in renames:
                n.input[i] = renames[x]
    del graph.node[:]
    graph.node.extend(keep)
    return len(dropped) // 2


def _calibrate_ort(
    q: Any,
    model_path: Path,
    calib: Calibration,
    inputs: Sequence[TensorSpec],
    options: Options,
    method: Any,
    symmetric: bool,
    total: int | None,
    folder: Path,
    report: Progress,
) -> int:
    """Run ONNX Runtime's calibrator over the feeds, in chunks (bounded memory, progress), and
    save the ranges where quantize_static reads them."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    extra: dict[str, Any] = {"symmetric": symmetric} if method == q.CalibrationMethod.MinMax else {}
    if method == q.CalibrationMethod.Percentile:
        extra["percentile"] = float(calib.percentile)
    with tempfile.TemporaryDirectory(prefix="infer-calib-") as tmp:
        try:
            calibrator = q.create_calibrator(
                str(model_path),
                sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=method,
                extra_options=extra,
            )
        except Exception as e:
            raise CompileError(f"onnxruntime could not prepare calibration: {e}") from e
        done = 0
        report("calibrate", 0, total)
        chunk: list[dict[str, np.ndarray]] = []
        for feed in calib.feeds(inputs, cast=options.cast):
            chunk.append(feed)
            if len(chunk) == 8:
                done += _collect(calibrator, chunk)
                chunk = []
                report("calibrate", done, total)
        if chunk:
            done += _collect(calibrator, chunk)
            report("calibrate", done, total)
        if done == 0:
            raise OptionError(
                "the calibration data is empty: int8 calibration needs at least one feed"
            )
        ranges = calibrator.compute_data()
        q.save_tensors_data(ranges, folder / RANGES_FILE)
        return done


def _collect(calibrator: Any, feeds: list[dict[str, np.ndarray]]) -> int:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    try:
        calibrator.collect_data(Reader())
    except Exception as e:
        raise CompileError(f"onnxruntime failed while calibrating: {e}") from e
    return len(feeds)


def _quantize_nncf(
    model: Model,
    calib: Calibration,
    inputs: Sequence[TensorSpec],
    options: Options,
    out: Path,
    report: Progress,
    float_out: Path | None = None,
) -> int:
    nncf = _import_nncf()
    feeds = list(calib.feeds(inputs, cast=options.cast))
    if not feeds:
        raise OptionError("the calibration data is empty: int8 calibration needs at least one feed")
    report("calibrate", 0, len(feeds))
    proto = onnx.ModelProto()
    # NNCF quantizes weights per channel only from opset 13 (DequantizeLinear's axis); below it
    # falls back to per tensor, which costs PP-OCRv4's recognizer half its per-step argmax.
    proto.CopyFrom(_named(_at_least_opset(model.proto, 13 if calib.per_channel else 10)))
    if float_out is not None:
        _onnx.save(proto, float_out)
    types = {n.op_type for n in _onnx.nodes(proto.graph)}
    ignored = nncf.IgnoredScope(
        names=[e for e in calib.exclude if e not in types],
        types=[e for e in calib.exclude if e in types],
        validate=False,
    )
    advanced = None
    if not calib.per_channel:
        from nncf.quantization.advanced_parameters import QuantizationParameters

        advanced = nncf.AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=False)
        )
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # at INFO it draws progress bars on stdout
    try:
        quantized = nncf.quantize(
            proto,
            nncf.Dataset(feeds),
            subset_size=len(feeds),
            ignored_scope=ignored,
            advanced_parameters=advanced,
        )
        _onnx.save(quantized, out)
    except Exception as e:
        raise CompileError(f"NNCF could not quantize {model!r} to int8: {e}") from e
    finally:
        nncf_log.setLevel(level)
    report("calibrate", len(feeds), len(feeds))
    return len(feeds)


def _import_nncf() -> Any:
    """NNCF, imported with its usage telemetry off (infer sends nothing over the network)."""
    import sys

    if "nncf" not in sys.modules:
        before = os.environ.get("NNCF_CI")
        os.environ["NNCF_CI"] = "1"  # the switch NNCF reads, at import, to stub its telemetry
        try:
            import nncf
        finally:
            if before is None:
                del os.environ["NNCF_CI"]
            else:
                os.environ["NNCF_CI"] = before
    import nncf

    return nncf


# -- shared -----------------------------------------------------------------------------------


def _built(
    model: Model,
    options: Options,
    key: Key,
    build: Callable[[Path], dict[str, Any]],
    what: str,
) -> Model:
    """Build (or reuse) the artifact and return a Model on it, described."""
    if options.cache:
        entry = _cached(options, key, build)
        out = Model.load(entry.file(MODEL_FILE))
        meta = entry.meta
    else:
        with tempfile.TemporaryDirectory(prefix=f"infer-{what}-") as tmp:
            meta = build(Path(tmp))
            out = Model.load((Path(tmp) / MODEL_FILE).read_bytes())
    out.name = f"{model.name}.{what}"
    return _described(out, str(meta.get("precision", what)))


def _cached(options: Options, key: Key, build: Callable[[Path], dict[str, Any]]) -> Entry:
    entry, built = Cache(options.cache_dir).get_or_build(key, build)
    log.debug("%s %s: %s", key.kind, "built" if built else "reused", entry.path)
    return entry


def _described(model: Model, text: str) -> Model:
    model.precision = text
    return model


def _as_is(model: Model, text: str) -> Model:
    """The same graph, described (a new Model: the caller's keeps its own description)."""
    same = Model.load(model.path) if model.path is not None else Model.load(model.proto)
    same.name = model.name
    return _described(same, text)


def _check_exclude(proto: onnx.ModelProto, exclude: Sequence[str]) -> None:
    nodes = {n.name for n in _onnx.nodes(proto.graph)}
    types = {n.op_type for n in _onnx.nodes(proto.graph)}
    unknown = [e for e in exclude if e not in nodes and e not in types]
    if unknown:
        raise OptionError(
            f"Calibration(exclude=...): {unknown} name no node and no op type of the model; "
            f"its op types are {sorted(types)}"
        )


def _excluded_nodes(proto: onnx.ModelProto, exclude: Sequence[str]) -> list[str]:
    wanted = set(exclude)
    return [n.name for n in _onnx.nodes(proto.graph) if n.name in wanted or n.op_type in wanted]


def _named(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have names (the quantizer excludes nodes by name)."""
    if all(n.name for n in _onnx.nodes(proto.graph)):
        return proto
    named = onnx.ModelProto()
    named.CopyFrom(proto)
    taken = {n.name for n in _onnx.nodes(named.graph)}
    for g in _onnx.graphs(named.graph):
        for i, n in enumerate(g.node):
            if not n.name:
                name = f"{n.op_type}_{i}"
                while name in taken:
                    name += "_"
                n.name = name
                taken.add(name)
    return named


def _versions(quantizer: str) -> dict[str, str]:
    out = {"onnx": onnx.__version__}
    for module in ("onnxruntime", "nncf") if quantizer == "nncf" else ("onnxruntime",):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            out[module] = version(module)
    return out


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailable(
            f"{what} uses {module}, which needs onnxruntime: pip install 'infer-engine[cpu]' ({e})"
        ) from e


def _reporter(progress: Progress | None) -> Progress:
    if progress is None:
        return lambda stage, done, total: None

    def report(stage: str, done: int, total: int | None) -> None:
        try:
            progress(stage, done, total)
        except Exception:  # a broken progress bar must not break the load
            log.debug("progress callback failed", exc_info=True)

    return report


def _toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after what it reads (the fp16 converter appends its Casts)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    needs = [set(n.input) | _outer_names(n) for n in pending]
    ordered: list[onnx.NodeProto] = []
    produced = {o for n in pending for o in n.output}
    while pending:
        progressed = False
        rest, rest_needs = [], []
        for node, want in zip(pending, needs):
            if all(w in available or w not in produced for w in want):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
                rest_needs.append(want)
        if not progressed:
            raise ModelError("the converted graph has a cycle; it cannot be ordered")
        pending, needs = rest, rest_needs
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope."""
    names: set[str] = set()
    for _, sub in _onnx.subgraphs(node):
        for inner in _onnx.graphs(sub):
            local = {i.name for i in inner.input} | {t.name for t in inner.initializer}
            local |= {o for n in inner.node for o in n.output}
            names |= {i for n in inner.node for i in n.input if i not in local}
    return names
