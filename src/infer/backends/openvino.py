"""OpenVINO: compiled models on the CPU, Intel GPUs and NPUs, and the AUTO plugin.

Precision is honest: OpenVINO's CPU plugin lowers precision on its own by default (bf16 where
the ISA has it; activations quantized to int8 on the fly in MatMuls whose weights are
compressed, DYNAMIC_QUANTIZATION_GROUP_SIZE 32; a u8 KV cache in stateful models), so every
compile sets each of those properties the device lists to what was asked (`_lowering`: f32 and
no dynamic quantization for fp32) and checks that the compiled model kept them; bf16/fp16 are
offered only where the device lists them in OPTIMIZATION_CAPABILITIES. The compiled-model cache (CACHE_DIR) lives in infer's cache folder.

Execution: `run` uses one InferRequest per calling thread, with inputs shared zero-copy and
outputs copied out (a request's output buffers are reused, and freed on a shape change, by its
next inference). `submit` runs on a pool of requests (see `_ov_requests.RequestPool`); `bind` shares bound
output buffers the caller owns.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _onnx, threads
from ..binding import target_mismatch
from ..cache import Cache
from ..device import Capabilities, Device, cpu
from ..errors import CompileError, OptionError
from ..model import Model, ModelFormat, NativeSummary
from ..options import Options
from ..tensors import dtype_info
from ._ov_onnx import deviation as _deviation
from ._ov_onnx import miscomputed as _miscomputed
from ._ov_onnx import specs as _specs
from ._ov_onnx import string_io as _string_io
from ._ov_onnx import version as _version
from ._ov_properties import KV_PRECISION as _KV_PRECISION
from ._ov_properties import LOWERING as _LOWERING
from ._ov_properties import capabilities as _capabilities
from ._ov_properties import check_lowering as _check_lowering
from ._ov_properties import compiled_property as _compiled_property
from ._ov_properties import compiled_values as _compiled_values
from ._ov_properties import lowering as _lowering
from ._ov_properties import read as _property
from ._ov_properties import supported_properties as _supported_properties
from ._ov_properties import type_name as _type_name
from ._ov_requests import RequestPool
from ._ov_state import OpenVinoKVCache, initial_states, reorder_input
from ._ov_tensors import NUMPY_BRIDGE, from_tensor, shared, to_tensor
from .base import (
    GRAPH,
    HINT,
    NATIVE,
    Backend,
    BackendInfo,
    Binding,
    HostKVCache,
    KVCache,
    OutputPlan,
    Session,
    register,
)

if TYPE_CHECKING:
    from ..sequence import Roles

log = logging.getLogger(__name__)

# backend_options["openvino"]: name -> default (None: leave it to OpenVINO).
_OPTIONS: dict[str, Any] = {
    "num_streams": None,  # NUM_STREAMS: a positive int or "AUTO"; overrides what the hint picks
    "num_requests": None,  # PERFORMANCE_HINT_NUM_REQUESTS: caps the streams the hint creates
    "execution_mode": None,  # EXECUTION_MODE_HINT: "PERFORMANCE" or "ACCURACY"
    "cpu_pinning": False,  # ENABLE_CPU_PINNING on the CPU (see _PINNING)
    "hyper_threading": None,  # ENABLE_HYPER_THREADING
    "auto_devices": None,  # device="auto" only: AUTO's candidates in order, e.g. "GPU,CPU"
    "submit_requests": None,  # size of the request pool behind submit(); default: see below
    "properties": {},  # any other OpenVINO property, checked against the device's list
    # precision="int8" on a weight-compressed model (int8/int4 MatMul weights dequantized in
    # the graph): DYNAMIC_QUANTIZATION_GROUP_SIZE, activations quantized per group of this many
    # values on the fly (held to the accuracy budget); 0: activations stay f32
    "dynamic_quantization": 32,
}

# OpenVINO's OPTIMIZATION_CAPABILITIES -> infer's precision, and how OpenVINO runs it.
_CAPABILITY_PRECISION = {"FP32": ("fp32", NATIVE), "BF16": ("bf16", HINT), "FP16": ("fp16", HINT)}
_INT8_CAPABILITY = "INT8"
# infer precision -> INFERENCE_PRECISION_HINT. int8 graphs run the rest of the graph in f32
# (f16 on a device without FP32, such as an NPU).
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
_PRECISION_LABEL = {
    "fp32": "fp32",
    "bf16": "bf16 (OpenVINO hint)",
    "fp16": "fp16 (OpenVINO hint)",
    "int8": "int8 (Q/DQ graph)",
}
# Properties infer sets from its own options; `properties` may not override them.
_OWNED = {
    **{name: "precision=" for name in _LOWERING},
    "PERFORMANCE_HINT": "hint=",
    "INFERENCE_NUM_THREADS": "threads=",
    "CACHE_DIR": "cache= / cache_dir=",
}
_EXECUTION_MODES = ("PERFORMANCE", "ACCURACY")

# OpenVINO pins its CPU threads to cores by default on Linux. On a machine whose cores other
# processes also use (shared hosts, containers under a CPU quota) a pinned thread cannot move off
# a busy core: measured on a shared 2-core EPYC VM (OpenVINO 2026.4, load ~7), pinned vs not:
# ocr_cls 3.8-10.5 ms vs 0.8-0.9 ms, cnn 15-16 vs 9-11 ms, ocr_det 170-201 vs 134-135 ms. So infer
# turns pinning off unless backend_options {"cpu_pinning": True} asks for it.
_PINNING = "ENABLE_CPU_PINNING"


@register
class OpenVinoBackend(Backend):
    name = "openvino"
    runtime = "openvino"
    formats = frozenset({ModelFormat.ONNX, ModelFormat.OPENVINO})
    install = 'pip install "infer-engine[openvino]"'

    def __init__(self) -> None:
        super().__init__()
        self._core_obj: Any = None
        # Filled by the probe: infer device -> OpenVINO device name, and its capabilities.
        self._ov_names: dict[Device, str] = {}
        self._caps: dict[Device, frozenset[str]] = {}

    def _core(self) -> Any:
        if self._core_obj is None:
            with self._lock:
                if self._core_obj is None:
                    import openvino as ov

                    self._core_obj = ov.Core()
        return self._core_obj

    # -- probe --------------------------------------------------------------------------------

    def _probe(self) -> BackendInfo:
        try:
            import openvino as ov
        except ImportError as e:
            return BackendInfo(
                self.name, False, reason=f"openvino is not installed ({e})", install=self.install
            )
        core = ov.Core()
        self._core_obj = core
        devices: list[Device] = []
        skipped: list[str] = []
        for ov_name in core.available_devices:
            device = self._device(core, ov_name)
            if device is None:
                skipped.append(ov_name)
                continue
            devices.append(device)
            self._ov_names[device] = ov_name
        if devices:
            auto = Device(
                "auto",
                None,
                f"OpenVINO AUTO over {', '.join(self._ov_names[d] for d in devices)}",
                Capabilities(source="openvino"),
            )
            self._ov_names[auto] = "AUTO"
            self._caps[auto] = _capabilities(core, "AUTO")
            devices.append(auto)
        listed = ", ".join(f"{self._ov_names[d]} ({d.name})" for d in devices if d.kind != "auto")
        notes = [f"devices: {listed or 'none'}"]
        if skipped:
            notes.append(f"not used: {', '.join(skipped)}")
        return BackendInfo(
            self.name,
            True,
            ov.get_version(),
            tuple(devices),
            reason="; ".join(notes),
            install=self.install,
        )

    def _device(self, core: Any, ov_name: str) -> Device | None:
        """infer's Device for one of OpenVINO's device names ("CPU", "GPU.1", "NPU")."""
        parsed = kind_and_index(ov_name)
        if parsed is None:
            return None
        kind, index = parsed
        caps = _capabilities(core, ov_name)
        if kind == "cpu":
            device = cpu()  # the hardware probe's CPU, so cache keys match other backends'
        else:
            full = _property(core, ov_name, "FULL_DEVICE_NAME") or ov_name
            memory = _property(core, ov_name, "GPU_DEVICE_TOTAL_MEM_SIZE")
            device = Device(
                kind,
                index,
                str(full),
                Capabilities(
                    vendor="Intel" if "intel" in str(full).lower() else "",
                    precisions=frozenset(
                        p for c, (p, _) in _CAPABILITY_PRECISION.items() if c in caps
                    )
                    | ({"int8"} if _INT8_CAPABILITY in caps else set()),
                    memory_bytes=int(memory) if memory else None,
                    source="openvino",
                ),
            )
        self._caps[device] = caps
        return device

    def describe(self, model: Model) -> NativeSummary | None:
        if model.format is not ModelFormat.OPENVINO:
            return None
        from ._ov_ir import summary

        return summary(model)

    def device_for(self, request: Device) -> Device | None:
        devices = self.probe().devices
        if request.kind == "auto":
            return next((d for d in devices if d.kind == "auto"), None)
        return next((d for d in devices if d.kind != "auto" and request.matches(d)), None)

    def ov_device(self, device: Device) -> str:
        """OpenVINO's name for an infer device this backend probed ("CPU", "GPU.0", "AUTO")."""
        self.probe()
        return self._ov_names.get(device, device.kind.upper())

    # -- what it can run ----------------------------------------------------------------------

    def int8_quantizer(self, device: Device, variant: str | None = None) -> str:
        # NNCF's Q/DQ placement is the one OpenVINO's low-precision transformations fuse best
        # (benchmarks/precision_int8.py); without NNCF installed, onnxruntime's is used.
        return "nncf"

    def precisions(self, device: Device, variant: str | None = None) -> Mapping[str, str]:
        self.probe()
        caps = self._caps.get(device)
        if not caps:  # the device did not say: only what every device runs
            return {"fp32": NATIVE}
        out = {p: how for c, (p, how) in _CAPABILITY_PRECISION.items() if c in caps}
        if _INT8_CAPABILITY in caps:
            out["int8"] = GRAPH
        return out

    def supports(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        if model.format not in self.formats:
            return super().supports(model, device, options, variant)
        runs = self.precisions(device, variant)
        if options.precision not in runs:
            listed = ", ".join(sorted(self._caps.get(device, ()))) or "none"
            return (
                f"{self.ov_device(device)} runs {', '.join(runs)}, not {options.precision}: "
                f"its OPTIMIZATION_CAPABILITIES are {listed}"
            )
        if model.format is ModelFormat.ONNX and _string_io(model):
            # Measured with 2026.4: a string Identity runs, then the process aborts at exit
            # ("free(): invalid pointer") even through OpenVINO's own API.
            return f"OpenVINO {_version()} corrupts memory with string tensors: {_string_io(model)}"
        if model.format is ModelFormat.ONNX and (wrong := _miscomputed(model)):
            return wrong
        if model.format is ModelFormat.OPENVINO and runs[options.precision] == GRAPH:
            return (
                f"{options.precision} takes an ONNX model (infer quantizes ONNX graphs); "
                "give the ONNX model, or an IR already quantized (e.g. with NNCF) as fp32"
            )
        return None

    def unsupported_ops(
        self, model: Model, device: Device, variant: str | None = None
    ) -> list[str] | None:
        from ._ov_ops import unsupported

        return unsupported(self._core(), model, self.ov_device(device))

    def runtime_int8(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        group = self._dynamic_group(model, device, options)
        if not group:
            return None
        n = len(_onnx.compressed_matmuls(model.proto.graph))
        return (
            f"OpenVINO dynamic activation quantization, group {group}, on {n} "
            f"MatMul{'s' * (n != 1)} over int8 weights"
        )

    def _dynamic_group(self, model: Model, device: Device, options: Options) -> int:
        """DYNAMIC_QUANTIZATION_GROUP_SIZE for this load: the option at precision="int8" on a
        weight-compressed ONNX model where the device lists the property; else 0."""
        if (
            options.precision != "int8"
            or model.format is not ModelFormat.ONNX
            or model.float_activations
        ):
            return 0
        group = options.for_backend(self.name, _OPTIONS)["dynamic_quantization"]
        if not isinstance(group, int) or isinstance(group, bool) or group < 0:
            raise OptionError(
                "backend_options['openvino']['dynamic_quantization'] must be a group size "
                f"(an int >= 0; 0: off), got {group!r}"
            )
        if not group or not _onnx.compressed_matmuls(model.proto.graph):
            return 0
        target = self.ov_device(device)
        if "DYNAMIC_QUANTIZATION_GROUP_SIZE" not in _supported_properties(self._core(), target):
            return 0
        return group

    def miscomputes(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        # The narrowing is the CPU plugin's (measured); the GPU and NPU plugins have no 64-bit
        # element types either, and AUTO picks among them.
        return _deviation(model) or None

    # -- compile ------------------------------------------------------------------------------

    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> Session:
        import openvino as ov

        own = _check_options(options.for_backend(self.name, _OPTIONS))
        core = self._core()
        target = self.ov_device(device)
        if target == "AUTO" and own["auto_devices"]:
            target = f"AUTO:{own['auto_devices']}"
        config = self._config(core, target, options, own, self._hint(device, options.precision))
        group = self._dynamic_group(model, device, options)
        if group and "DYNAMIC_QUANTIZATION_GROUP_SIZE" in config:
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = group  # int8 asked for: activations too
        cache_dir = None
        if options.cache:
            cache_dir = Cache(options.cache_dir).folder(
                "openvino", model=model.digest, openvino=ov.get_version(), device=device.identity
            )
            config["CACHE_DIR"] = str(cache_dir)
        blobs_before = _blobs(cache_dir)
        start = time.perf_counter()
        source, reshaped = self._source(core, model, options)
        try:
            compiled = core.compile_model(source, target, config)
        except Exception as e:
            raise CompileError(
                f"OpenVINO could not compile {model!r} for {target}: {_message(e)}"
            ) from e
        load_s = time.perf_counter() - start
        effective = _compiled_values(compiled, "INFERENCE_PRECISION_HINT")
        kept = _check_lowering(compiled, config, f"{model!r} for {target}")
        cache = None
        if cache_dir is not None:
            new = sorted(_blobs(cache_dir) - blobs_before)
            hit = _property(compiled, None, "LOADED_FROM_CACHE")
            if hit is None:  # older OpenVINO: judge by the blobs the compile left behind
                hit = not new and bool(blobs_before)
            cache = {"dir": str(cache_dir), "hit": bool(hit), "new_blobs": new}
        inputs, outputs, ports = _specs(compiled, model)
        details = {
            "device": target,
            "execution_devices": list(_property(compiled, None, "EXECUTION_DEVICES") or []),
            "inference_precision": effective,
            "precision_properties": kept,
            "hint": config["PERFORMANCE_HINT"],
            "streams": _compiled_property(compiled, "NUM_STREAMS"),
            "optimal_requests": int(
                _property(compiled, None, "OPTIMAL_NUMBER_OF_INFER_REQUESTS") or 1
            ),
            "threads": _compiled_property(compiled, "INFERENCE_NUM_THREADS"),
            "cpu_pinning": _compiled_property(compiled, _PINNING),
            "static_shapes": reshaped,
            "cache": cache,
            "load_s": load_s,
            "config": {k: v for k, v in config.items() if k != "CACHE_DIR"},
        }
        details["summary"] = _summary(details)
        return OpenVinoSession(
            compiled,
            own,
            ports,
            backend=self.name,
            device=device,
            inputs=inputs,
            outputs=outputs,
            options=options,
            precision=model.precision or _PRECISION_LABEL[options.precision],  # the transform's
            details=details,
            source=(core, model, target, config),
        )

    def _hint(self, device: Device, precision: str) -> str:
        caps = self._caps.get(device, frozenset())
        if precision == "int8" and caps and "FP32" not in caps and "FP16" in caps:
            return "f16"
        return _HINTS[precision]

    def _config(
        self, core: Any, target: str, options: Options, own: dict, hint: str
    ) -> dict[str, Any]:
        supported = _supported_properties(core, target)
        config: dict[str, Any] = {"PERFORMANCE_HINT": options.hint.upper()}
        for name, value in _lowering(hint).items():
            # INFERENCE_PRECISION_HINT always (every plugin takes it); the others where listed
            if name == "INFERENCE_PRECISION_HINT" or name in supported:
                config[name] = value
        # The process's thread budget (infer.threads): threads=, or the cores this process may
        # use where that is fewer than the machine's.
        pool = threads.share(options.threads).threads
        if pool:
            if supported and "INFERENCE_NUM_THREADS" not in supported:
                if options.threads:
                    log.warning("threads=%d ignored: %s has no INFERENCE_NUM_THREADS", pool, target)
            else:
                config["INFERENCE_NUM_THREADS"] = pool
        named = {
            "num_streams": "NUM_STREAMS",
            "num_requests": "PERFORMANCE_HINT_NUM_REQUESTS",
            "execution_mode": "EXECUTION_MODE_HINT",
            "hyper_threading": "ENABLE_HYPER_THREADING",
        }
        user = {prop: own[key] for key, prop in named.items() if own[key] is not None}
        pinning = own["cpu_pinning"]
        if target.startswith("AUTO"):
            if "CPU" in core.available_devices:  # only the CPU plugin takes it
                config["DEVICE_PROPERTIES"] = {"CPU": {_PINNING: pinning}}
        elif _PINNING in supported:
            config[_PINNING] = pinning
        elif pinning is not _OPTIONS["cpu_pinning"]:
            user[_PINNING] = pinning  # asked for on a device without it: refused below
        extra = dict(own["properties"])
        taken = sorted(set(extra) & set(_OWNED))
        if taken:
            raise OptionError(
                f"backend_options['openvino']['properties']: {taken} are set through "
                + ", ".join(_OWNED[k] for k in taken)
                + " of Engine.load, not as raw properties"
            )
        user.update(extra)
        unknown = sorted(k for k in user if supported and k not in supported)
        if unknown:
            raise OptionError(
                f"backend_options['openvino']: {target} does not take the propert"
                f"{'y' if len(unknown) == 1 else 'ies'} {unknown}; it takes "
                f"{sorted(supported)}"
            )
        config.update(user)
        return config

    def _source(self, core: Any, model: Model, options: Options) -> tuple[Any, dict | None]:
        """What to hand compile_model: a file path where possible (OpenVINO then hashes the
        path for its cache and skips reading the model on a hit), else an ov.Model."""
        import openvino as ov

        if not options.shapes and model.path is not None:
            return str(model.path), None
        try:
            if model.path is not None:
                ov_model = core.read_model(str(model.path))
            else:
                ov_model = core.read_model(model.data, ov.Tensor(np.empty(0, np.uint8)))
        except Exception as e:
            raise CompileError(f"OpenVINO could not read {model!r}: {_message(e)}") from e
        if not options.shapes:
            return ov_model, None
        return ov_model, _reshape(ov, ov_model, options.shapes, model)


def kind_and_index(ov_name: str) -> tuple[str, int] | None:
    """("gpu", 1) for OpenVINO's "GPU.1"; "GPU" alone is index 0; None for kinds infer has not."""
    kind_name, _, number = ov_name.partition(".")
    kind = {"CPU": "cpu", "GPU": "gpu", "NPU": "npu"}.get(kind_name)
    if kind is None or (number and not number.isdigit()):
        return None
    return kind, int(number or 0)


def _check_options(own: dict[str, Any]) -> dict[str, Any]:
    streams = own["num_streams"]
    if streams is not None and not (
        (isinstance(streams, int) and not isinstance(streams, bool) and streams > 0)
        or streams == "AUTO"
    ):
        raise OptionError(
            f"backend_options['openvino']['num_streams'] must be a positive int or 'AUTO', got {streams!r}"
        )
    for key in ("num_requests", "submit_requests"):
        value = own[key]
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise OptionError(
                f"backend_options['openvino'][{key!r}] must be a positive int, got {value!r}"
            )
    mode = own["execution_mode"]
    if mode is not None and mode not in _EXECUTION_MODES:
        raise OptionError(
            f"backend_options['openvino']['execution_mode'] must be one of {_EXECUTION_MODES}, got {mode!r}"
        )
    for key in ("cpu_pinning", "hyper_threading"):
        if own[key] is not None and not isinstance(own[key], bool):
            raise OptionError(
                f"backend_options['openvino'][{key!r}] must be True or False, got {own[key]!r}"
            )
    if own["auto_devices"] is not None and not isinstance(own["auto_devices"], str):
        raise OptionError(
            "backend_options['openvino']['auto_devices'] must be a string such as 'GPU,CPU', "
            f"got {own['auto_devices']!r}"
        )
    if not isinstance(own["properties"], Mapping):
        raise OptionError(
            "backend_options['openvino']['properties'] must be a dict of OpenVINO property -> "
            f"value, got {type(own['properties']).__name__}"
        )
    return own


def _reshape(ov: Any, ov_model: Any, shapes: Mapping[str, Any], model: Model) -> dict[str, str]:
    """Apply `shapes` ({input: shape, or (min, opt, max)}): a shape fixes the input statically;
    a (min, opt, max) triple bounds each dimension to [min, max]."""
    ports = {name: port for port in ov_model.inputs for name in port.get_names()}
    unknown = sorted(set(shapes) - set(ports))
    if unknown:
        listed = sorted(p.get_any_name() for p in ov_model.inputs)
        raise OptionError(f"shapes: unknown input(s) {unknown}; {model!r} has inputs {listed}")
    new: dict[Any, Any] = {}
    for name, spec in shapes.items():
        triple = (
            isinstance(spec, (tuple, list))
            and len(spec) == 3
            and all(isinstance(s, (tuple, list)) for s in spec)
        )
        try:
            if triple:
                lo, _, hi = ([int(d) for d in s] for s in spec)
                if not len(lo) == len(hi):
                    raise ValueError("min and max shapes differ in rank")
                dims = [ov.Dimension(a) if a == b else ov.Dimension(a, b) for a, b in zip(lo, hi)]
                new[ports[name]] = ov.PartialShape(dims)
            else:
                new[ports[name]] = ov.PartialShape([int(d) for d in spec])
        except (TypeError, ValueError) as e:
            raise OptionError(
                f"shapes[{name!r}] must be a shape such as (1, 3, 224, 224) or a (min, opt, max) "
                f"triple of shapes, got {spec!r} ({e})"
            ) from e
    for port, shape in new.items():
        declared = port.get_partial_shape()
        if not shape.compatible(declared):
            raise OptionError(
                f"shapes: OpenVINO cannot reshape {model!r} to {dict(shapes)}: input "
                f"{port.get_any_name()!r} is {declared}, which {shape} does not fit"
            )
    try:
        ov_model.reshape(new)
    except Exception as e:
        # Shapes that fit the inputs, but a node of the model cannot take them (a Concat of
        # maps that no longer match): the model, not the option, fails at these shapes.
        raise CompileError(
            f"OpenVINO cannot reshape {model!r} to {dict(shapes)}: {_message(e)}"
        ) from e
    return {p.get_any_name(): str(p.get_partial_shape()) for p in ov_model.inputs}


def _blobs(folder: Path | None) -> set[str]:
    if folder is None or not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.suffix == ".blob"}


_NOISE = re.compile(r"^(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:)\s*$")


def _message(e: BaseException) -> str:
    """OpenVINO's message without its source-location lines."""
    lines = [ln.rstrip() for ln in str(e).splitlines()]
    kept = [ln for ln in lines if ln.strip() and not _NOISE.match(ln.strip())]
    return "\n".join(kept) or str(e)


def _summary(d: Mapping[str, Any]) -> str:
    parts = [
        d["device"]
        + (f" -> {', '.join(d['execution_devices'])}" if d["execution_devices"] else ""),
        "precision "
        + (", ".join(f"{k} {v}" for k, v in d["inference_precision"].items()) or "unreported"),
        f"{d['hint'].lower()} hint, {d['streams'] or '?'} stream(s)",
    ]
    if d["static_shapes"]:
        parts.append(
            "static shapes " + ", ".join(f"{k} {v}" for k, v in d["static_shapes"].items())
        )
    if d["cache"] is not None:
        parts.append(
            "compiled from cache" if d["cache"]["hit"] else "compiled (cached for next load)"
        )
    parts.append(f"load {d['load_s'] * 1000:.0f} ms")
    return "; ".join(parts)


class OpenVinoSession(Session):
    def __init__(
        self,
        compiled: Any,
        own: Mapping[str, Any],
        ports: Sequence[tuple[int, str]],
        *,
        source: tuple[Any, Model, str, Mapping[str, Any]] | None = None,
        **kw: Any,
    ) -> None:
        """source: (Core, model, OpenVINO device, config) it was compiled from, for a stateful
        compile of a decoder (`_kv_cache`)."""
        super().__init__(**kw)
        self._source = source
        # pasts made state -> (compiled model, state name prefix -> past)
        self._stateful: dict[tuple[str, ...], tuple[Any, dict[str, str]]] = {}
        import openvino as ov

        self._ov = ov
        self._compiled = compiled
        self._own = own
        self._local = threading.local()
        # (port index, input name) for the inputs OpenVINO kept; feeds of the others (inputs
        # no output depends on, which OpenVINO drops) are validated and then unused.
        self._ports = list(ports)
        self._out_index = {s.name: i for i, s in enumerate(self.outputs)}
        self._out_dtypes = [s.dtype for s in self.outputs]
        self._async: RequestPool | None = None
        self._async_lock = threading.Lock()
        self.details["submit_requests"] = self.default_in_flight()

    # -- run ----------------------------------------------------------------------------------

    def _request(self) -> Any:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self._compiled.create_infer_request()
        return req

    def _set_inputs(self, req: Any, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        """Set the request's input tensors; returns them, to be kept alive until it is done.

        An ov.Tensor keeps the array it shares alive, but the request does not keep the
        ov.Tensor: an array made here (a copy, packed bytes) lives only as long as the list.
        """
        ov = self._ov
        kept = []
        for i, name in self._ports:
            tensor = to_tensor(ov, feeds[name])
            req.set_input_tensor(i, tensor)
            kept.append(tensor)
        return kept

    def _read(self, req: Any, outputs: list[str] | None) -> dict[str, np.ndarray]:
        names = outputs or self._output_names
        index, dtypes = self._out_index, self._out_dtypes
        return {n: from_tensor(req.get_output_tensor(index[n]), dtypes[index[n]]) for n in names}

    def _run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        req = self._request()
        kept = self._set_inputs(req, feeds)
        req.infer()
        out = self._read(req, outputs)
        del kept  # the inputs' memory may go now
        return out

    # -- submit -------------------------------------------------------------------------------

    def default_in_flight(self) -> int:
        """submit()'s pool: backend_options submit_requests, else max_in_flight, else
        OPTIMAL_NUMBER_OF_INFER_REQUESTS for the hint (at least 2, so that preparing one
        request overlaps the inference of another)."""
        return int(
            self._own.get("submit_requests")
            or self.options.max_in_flight
            or max(2, self.details.get("optimal_requests") or 1)
        )

    def _submit(self, feeds: dict[str, Any], outputs: list[str] | None) -> Future:
        """Start an inference on the request pool and return its Future.

        At most `submit_requests` inferences are in flight: a call blocks while every request
        is busy. submit shares the compiled model that `run` uses, so the hint given to
        Engine.load applies: hint="throughput" makes OpenVINO run several streams in parallel
        (the pool then matches OPTIMAL_NUMBER_OF_INFER_REQUESTS); under the default latency
        hint one stream runs at a time and submit overlaps only the Python work around it.
        """
        pool = self._async
        if pool is None:
            with self._async_lock:
                self._check_open()
                if self._async is None:
                    self._async = RequestPool(self, self.default_in_flight())
                pool = self._async
        return pool.submit(feeds, outputs)

    def _error_text(self, error: BaseException) -> str:
        return _message(error)

    # -- bind ---------------------------------------------------------------------------------

    def _bind(self, plan: OutputPlan) -> Binding:
        """A request of its own whose output tensors are numpy buffers (the binding's, or the
        arrays given in `outputs`) that OpenVINO writes into; inputs are shared zero-copy."""
        for name, arr in plan.given.items():
            if arr.dtype not in NUMPY_BRIDGE:
                raise OptionError(
                    f"bind(outputs={{{name!r}: ...}}): {dtype_info(arr.dtype).name} outputs "
                    "cannot be shared with OpenVINO; bind this output as 'host'"
                )
        return OpenVinoBinding(self, plan)

    # -- decoding -----------------------------------------------------------------------------

    def _kv_cache(self, roles: Roles) -> KVCache:
        """The past kept inside the infer request: the model compiled once more, made stateful
        over its past/present pairs (OpenVINO's make-stateful transformation). Where that fails
        the host loop runs, and says why."""
        try:
            compiled, states = self._stateful_model(roles)
        except CompileError as e:
            log.warning("openvino: decoding with the host loop: %s", e)
            cache = HostKVCache(self, roles)
            cache.where = f"host arrays (no stateful model: {e})"
            return cache
        precision = self.details.get("kv_cache_precision") or {}
        return OpenVinoKVCache(self, roles, compiled, states, precision.get("KV_CACHE_PRECISION"))

    def _stateful_model(self, roles: Roles) -> tuple[Any, dict[str, str]]:
        """The stateful compiled model for these pairs (compiled once per session), and the
        name each state's variable starts with -> the past it holds."""
        key = tuple(p.past for p in roles.kv)
        with self._async_lock:
            if key not in self._stateful:
                self._stateful[key] = self._compile_stateful(roles)
            return self._stateful[key]

    def _compile_stateful(self, roles: Roles) -> tuple[Any, dict[str, str]]:
        from openvino._offline_transformations import apply_make_stateful_transformation

        if self._source is None:
            raise CompileError("the session does not know the model it was compiled from")
        core, model, target, config = self._source
        cache = HostKVCache(self, roles)
        if cache.once:
            raise CompileError(
                f"pasts over the encoder's sequence ({', '.join(sorted(cache.once))}) are "
                "computed once, not grown: OpenVINO's make-stateful transformation grows its states"
            )
        if cache.buffers:
            raise CompileError(
                "a past/present pair shares one fixed-length buffer (GroupQueryAttention): "
                "OpenVINO's make-stateful transformation takes pasts that grow"
            )
        try:
            if model.format is ModelFormat.ONNX and model.path is None:
                ov_model = core.read_model(model.data, self._ov.Tensor(np.empty(0, np.uint8)))
            else:
                ov_model = core.read_model(str(model.path))
            pairs = [
                (ov_model.input(p.past).get_node(), ov_model.output(p.present).get_node())
                for p in roles.kv
            ]
            # the transformation names each state by its Parameter's and Result's node names
            states = {
                param.get_friendly_name() + result.get_friendly_name(): p.past
                for (param, result), p in zip(pairs, roles.kv)
            }
            reorder_input(ov_model, cache)
            apply_make_stateful_transformation(ov_model, pairs)
            initial_states(ov_model, cache, states)
        except Exception as e:
            raise CompileError(f"OpenVINO could not make {model!r} stateful: {_message(e)}") from e
        # The session's own config: at fp32 it already holds an fp32 KV cache (`_lowering`; the
        # CPU plugin's default is u8), checked again on the stateful compile.
        config = {k: v for k, v in config.items() if k != "CACHE_DIR"}
        try:
            compiled = core.compile_model(ov_model, target, config)
        except Exception as e:
            raise CompileError(
                f"OpenVINO could not compile the stateful {model!r} for {target}: {_message(e)}"
            ) from e
        kept = _check_lowering(compiled, config, f"the stateful {model!r} for {target}")
        self.details["kv_cache_precision"] = {
            k: _type_name(v) for k, v in kept.items() if k in _KV_PRECISION
        }
        return compiled, states

    # -- lifetime -----------------------------------------------------------------------------

    def _close(self) -> None:
        if self._async is not None:
            self._async.close()
            self._async = None
        self._local = threading.local()  # drops every thread's request
        self._compiled = None
        self._stateful = {}


class OpenVinoBinding(Binding):
    """An InferRequest of its own with numpy output buffers bound as its output tensors.

    OpenVINO writes each output straight into a buffer the binding (or the caller) owns, so
    the arrays returned never point into memory OpenVINO may free. Inputs are shared
    zero-copy; an input array passed again (same object) is not re-set, unless it could not be
    shared (read-only, or a packed element type) and was copied. When the input shapes
    change, outputs of a shape not known in advance are learned by running once on a second
    request, and the bound buffers are reallocated (logged at debug level).
    """

    def __init__(self, session: OpenVinoSession, plan: OutputPlan) -> None:
        super().__init__(session, plan)
        self.session: OpenVinoSession = session
        self._given: Mapping[str, np.ndarray] = plan.given
        self._request = session._compiled.create_infer_request()
        self._learner: Any = None  # a plain request, to learn output shapes
        self._fed: list[tuple[np.ndarray, Any] | None] = [None] * len(session._ports)
        self._signature: tuple | None = None
        self._outs: list[np.ndarray] = []

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        s = self.session
        req = self._request
        signature = tuple(feeds[n].shape for _, n in s._ports)
        if signature != self._signature:
            return self._rebind(feeds, signature)
        ov = s._ov
        for k, (i, name) in enumerate(s._ports):
            arr = feeds[name]
            fed = self._fed[k]
            if fed is None or fed[0] is not arr or not shared(arr):
                tensor = to_tensor(ov, arr)
                req.set_input_tensor(i, tensor)
                self._fed[k] = (arr, tensor)
        try:
            req.infer()
        except Exception:
            # A data-dependent output outgrew its buffer (or the inputs are bad): the learner
            # request either finds the new shapes or raises the real error.
            return self._rebind(feeds, signature)
        out = {}
        for i, (name, buf) in enumerate(zip(s._output_names, self._outs)):
            tensor = req.get_output_tensor(i)
            if buf.dtype not in NUMPY_BRIDGE:  # packed types are not bound: copied out
                out[name] = from_tensor(tensor, buf.dtype)
                continue
            shape = tuple(tensor.shape)
            if shape != buf.shape:  # a data-dependent output, smaller than last time
                buf = buf.reshape(-1)[: int(np.prod(shape, dtype=np.int64))].reshape(shape)
            out[name] = buf
        return out

    def _rebind(self, feeds: dict[str, np.ndarray], signature: tuple) -> dict[str, Any]:
        """New input shapes: run on the learner request, then bind buffers of the shapes seen."""
        s = self.session
        if self._learner is None:
            self._learner = s._compiled.create_infer_request()
        kept = s._set_inputs(self._learner, feeds)
        self._learner.infer()
        del kept
        outs = []
        for i, name in enumerate(s._output_names):
            tensor = self._learner.get_output_tensor(i)
            produced = from_tensor(tensor, s._out_dtypes[i])
            if name in self._given:
                buf = self._given[name]
                if buf.shape != produced.shape:
                    raise target_mismatch(name, buf, produced.shape)
                np.copyto(buf, produced)
            else:
                buf = produced  # a fresh array the binding owns: it becomes the bound buffer
            outs.append(buf)
        log.debug(
            "openvino binding: input shapes %s -> output buffers %s",
            [list(x) for x in signature],
            [list(b.shape) for b in outs],
        )
        ov = s._ov
        req = self._request
        for k, (i, name) in enumerate(s._ports):
            tensor = to_tensor(ov, feeds[name])
            req.set_input_tensor(i, tensor)
            self._fed[k] = (feeds[name], tensor)  # the tensor keeps what it reads alive
        for i, buf in enumerate(outs):
            if buf.dtype in NUMPY_BRIDGE:
                req.set_output_tensor(i, ov.Tensor(buf, shared_memory=True))
        self._outs = outs
        self._signature = signature
        return dict(zip(s._output_names, outs))

    def _close(self) -> None:
        self._request = self._learner = None
        self._fed = []
        self._outs = []
