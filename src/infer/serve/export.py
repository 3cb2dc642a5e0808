"""`infer export triton`: a Triton model repository entry for a full Triton deployment.

    infer.serve.export_triton("model.onnx", "repo", backend="onnxruntime", precision="fp16")

writes repo/NAME/config.pbtxt and repo/NAME/1/model.onnx (model.plan for TensorRT, model.xml and
model.bin for OpenVINO) holding the graph after infer's transforms (fused preprocessing,
precision), with the platform/backend fields, the inputs and outputs, dynamic batching,
instance groups, and for ONNX Runtime on GPUs the TensorRT execution accelerator.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from .. import _onnx, batching
from ..cache import Cache
from ..errors import CompileError, OptionError
from ..model import Model, ModelFormat, ModelSource
from ..options import Options
from ..tensors import TensorSpec, graph_inputs, graph_outputs
from . import _specs

log = logging.getLogger(__name__)

_PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}  # Triton's ORT-TRT settings
_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class _Request:
    """Everything export_triton was asked, validated."""

    name: str
    kind: str  # "auto" | "cpu" | "gpu"
    options: Options
    max_batch: int
    max_queue_delay_us: int
    instances: int
    tensorrt_accelerator: bool


@dataclass(frozen=True)
class _Target:
    """One Triton backend: its config fields and how to write the model file(s) for it."""

    backend: str
    platform: str | None
    kinds: tuple[str, ...]  # device kinds it runs on; the first is the default
    write: Callable[[Model, Path, _Request], tuple[list[TensorSpec], list[TensorSpec]]]
    accelerator: bool = False  # takes ONNX Runtime's TensorRT execution accelerator


def export_triton(
    model: ModelSource,
    repo: str | os.PathLike[str],
    *,
    name: str | None = None,
    backend: str = "onnxruntime",
    device: str | None = None,
    precision: str = "fp32",
    calibration: Any = None,
    preprocess: Any = None,
    shapes: Mapping[str, Any] | None = None,
    max_batch: int = 16,
    max_queue_delay_us: int = 500,
    instances: int = 1,
    tensorrt_accelerator: bool = True,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a Triton model repository entry for `model` into `repo`; returns repo/NAME.

    backend: Triton's backend: "onnxruntime", "tensorrt" (builds the plan with infer's TensorRT
        backend, so it needs an NVIDIA GPU and TensorRT here) or "openvino".
    device: the instance kind: "gpu", "cpu", or "auto" (GPU where the server has one). Default:
        "auto" for onnxruntime, "gpu" for tensorrt, "cpu" for openvino.
    precision, calibration, preprocess, shapes: as for Engine.load; the written graph holds them.
    max_batch: Triton's max_batch_size when every input and output has a dynamic leading
        (batch) dimension; 0 (or a model without one) turns batching off.
    tensorrt_accelerator: for onnxruntime on GPUs, let ONNX Runtime hand subgraphs to TensorRT.
    overwrite: replace repo/NAME if it exists (otherwise that is an error).
    """
    target = TARGETS.get(backend)
    if target is None:
        raise OptionError(
            f"Triton backend {backend!r} is not one infer exports to; use one of {', '.join(TARGETS)}"
        )
    source = Model.load(model)
    kind = device if device is not None else target.kinds[0]
    if kind not in target.kinds:
        raise OptionError(
            f"device {kind!r}: Triton's {backend} backend runs on {' or '.join(target.kinds)}"
        )
    options = Options(
        precision=precision,
        calibration=calibration,
        preprocess=preprocess,
        shapes=dict(shapes or {}),
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
    )
    request = _Request(
        name=_specs.check_model_name(name) if name is not None else _specs.model_name(source.name),
        kind=kind,
        options=options,
        max_batch=_specs.check_count("max_batch", max_batch, 0),
        max_queue_delay_us=_specs.check_count("max_queue_delay_us", max_queue_delay_us, 0),
        instances=_specs.check_count("instances", instances, 1),
        tensorrt_accelerator=bool(tensorrt_accelerator),
    )
    root = Path(repo)
    final = root / request.name
    if final.exists() and not overwrite:
        raise OptionError(
            f"{str(final)!r} already exists; choose another name or pass overwrite=True (--overwrite)"
        )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{request.name}-", dir=root))
    try:
        version = staging / "1"
        version.mkdir()
        inputs, outputs = target.write(source, version, request)
        (staging / "config.pbtxt").write_text(config_text(target, request, inputs, outputs))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote Triton model %s (%s, %s) to %s", request.name, backend, kind, final)
    return final


# -- config.pbtxt -------------------------------------------------------------------------------


class _Symbol(str):
    """An enum value: written without quotes."""


def config_text(
    target: _Target,
    request: _Request,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> str:
    """The model's config.pbtxt (Triton's ModelConfig in protobuf text format)."""
    batched = request.max_batch > 0 and batching.has_batch_axis(inputs, outputs)
    if request.max_batch > 0 and not batched:
        log.info(
            "%s: not every input and output has a dynamic leading dimension: exported with "
            "max_batch_size 0 (no batching)",
            request.name,
        )
    config: dict[str, Any] = {"name": request.name}
    if target.platform:
        config["platform"] = target.platform
    config["backend"] = target.backend
    config["max_batch_size"] = request.max_batch if batched else 0
    config["input"] = [_tensor(s, batched) for s in inputs]
    config["output"] = [_tensor(s, batched) for s in outputs]
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": request.max_queue_delay_us}
    config["instance_group"] = [{"count": request.instances, "kind": _Symbol(_KINDS[request.kind])}]
    if target.accelerator and request.tensorrt_accelerator and request.kind != "cpu":
        params = {
            "max_workspace_size_bytes": str(1 << 30),
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": f"/tmp/triton-trt-cache/{request.name}",
        }
        mode = _PRECISION_MODES.get(request.options.precision)
        if mode:
            params = {"precision_mode": mode, **params}
        config["optimization"] = {
            "execution_accelerators": {
                "gpu_execution_accelerator": [
                    {
                        "name": "tensorrt",
                        "parameters": [{"key": k, "value": v} for k, v in params.items()],
                    }
                ]
            }
        }
    return _pbtxt(config)


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": spec.name,
        "data_type": _Symbol(_specs.triton_type(spec)),
        "dims": _specs.triton_dims(spec, batched),
    }
    if batched and len(spec.shape or ()) == 1:
        entry["reshape"] = {"shape": []}  # clients send [batch, 1]; the model takes [batch]
    return entry


def _pbtxt(fields: Mapping[str, Any], indent: int = 0) -> str:
    pad = "  " * indent
    lines = []
    for key, value in fields.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{\n{_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            items = ",\n".join(f"{pad}  {{\n{_pbtxt(v, indent + 2)}{pad}  }}" for v in value)
            lines.append(f"{pad}{key} [\n{items}\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _scalar(value: Any) -> str:
    if isinstance(value, _Symbol):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


# -- the model files ----------------------------------------------------------------------------


def _graph(source: Model, request: _Request, *, precision: bool = True) -> Model:
    """The ONNX graph the server runs: preprocessing fused, then the precision transform."""
    if source.format is not ModelFormat.ONNX:
        raise OptionError(f"{source!r} is {source.format.value}; this export takes an ONNX model")
    options = request.options
    model = source
    if options.preprocess is not None:
        try:
            from ..transforms import preprocess as pre
        except ImportError as e:
            raise OptionError(
                f"preprocess= needs infer.transforms.preprocess, which this build lacks ({e})"
            ) from e
        model = pre.fuse(model, options.preprocess, Cache(options.cache_dir))
    if precision and options.precision != "fp32":
        try:
            from ..transforms import precision as prec
        except ImportError as e:
            raise OptionError(
                f"precision={options.precision!r} needs infer.transforms.precision, which this "
                f"build lacks ({e})"
            ) from e
        model = prec.convert(model, options)
    return model


def _io(proto: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return graph_inputs(proto.graph), graph_outputs(proto.graph)


def _write_onnx(source: Model, version: Path, request: _Request) -> tuple[list, list]:
    model = _graph(source, request)
    proto = model.proto
    target = version / "model.onnx"
    if model.external_data or _onnx.is_large(proto):
        _onnx.save(proto, target, external=True)
    elif model.path is not None and model is source:
        shutil.copyfile(model.path, target)
    else:
        target.write_bytes(model.data)
    return _io(proto)


def _write_openvino(source: Model, version: Path, request: _Request) -> tuple[list, list]:
    try:
        import openvino as ov
    except ImportError as e:
        raise OptionError(
            f'exporting for Triton\'s OpenVINO backend needs openvino: pip install "infer-engine[openvino]" ({e})'
        ) from e
    model = _graph(source, request)
    with tempfile.TemporaryDirectory(prefix="infer-export-") as tmp:
        path = model.path
        if path is None or model is not source:
            path = Path(tmp) / "model.onnx"
            onnx.save_model(model.proto, str(path))
        try:
            converted = ov.convert_model(str(path))
        except Exception as e:
            raise CompileError(f"OpenVINO could not convert {source!r}: {e}") from e
    # save_model compresses weights to fp16 unless told not to: the precision is the graph's.
    ov.save_model(converted, str(version / "model.xml"), compress_to_fp16=False)
    return _io(model.proto)


def _write_tensorrt(source: Model, version: Path, request: _Request) -> tuple[list, list]:
    from ..engine import Engine

    options = request.options
    if source.format is ModelFormat.ONNX:
        graph = _graph(source, request, precision=False)  # the TensorRT backend applies it
        shapes = dict(options.shapes) or _batch_profiles(graph, request.max_batch)
    elif source.format is ModelFormat.TENSORRT:
        graph, shapes = source, dict(options.shapes)
    else:
        raise OptionError(
            f"{source!r} is {source.format.value}; export takes ONNX or a TensorRT plan"
        )
    engine = Engine.load(
        graph,
        "cuda",
        backend="tensorrt",
        precision=options.precision,
        calibration=options.calibration,
        shapes=shapes,
        cache_dir=options.cache_dir,
    )
    try:
        plan = source.data if source.format is ModelFormat.TENSORRT else engine.details.get("plan")
        if isinstance(plan, (str, os.PathLike)):
            plan = Path(plan).read_bytes()
        if not isinstance(plan, (bytes, bytearray)):
            raise CompileError(
                "infer's TensorRT backend did not report the plan it built (details['plan'], "
                "a path or bytes): cannot write model.plan"
            )
        (version / "model.plan").write_bytes(plan)
        return list(engine.inputs), list(engine.outputs)
    finally:
        engine.close()


def _batch_profiles(model: Model, max_batch: int) -> dict[str, tuple]:
    """TensorRT optimisation profiles covering batch 1..max_batch for batched inputs."""
    inputs, outputs = _io(model.proto)
    if max_batch <= 0 or not batching.has_batch_axis(inputs, outputs):
        return {}
    profiles: dict[str, tuple] = {}
    for spec in inputs:
        rest = tuple(spec.shape[1:])  # type: ignore[index]
        if not all(isinstance(d, int) for d in rest):
            return {}  # other dynamic dims: the caller must give shapes=
        opt = max(1, max_batch // 2)
        profiles[spec.name] = ((1, *rest), (opt, *rest), (max_batch, *rest))
    return profiles


TARGETS: dict[str, _Target] = {
    "onnxruntime": _Target(
        "onnxruntime", "onnxruntime_onnx", ("auto", "gpu", "cpu"), _write_onnx, accelerator=True
    ),
    "tensorrt": _Target("tensorrt", "tensorrt_plan", ("gpu",), _write_tensorrt),
    "openvino": _Target("openvino", None, ("cpu",), _write_openvino),
}
"""Triton backend -> how infer exports for it."""
