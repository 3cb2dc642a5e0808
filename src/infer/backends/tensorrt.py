"""TensorRT: ONNX models built into engines (plans), or serialized plans loaded as they are.

Precision comes from the graph (TensorRT 11 is strongly typed, and infer's shared precision
transform gives fp16 casts or int8 Q/DQ); TensorRT 10's FP16/INT8 builder flags are an opt-in
(`precision_flags`). Dynamic inputs get optimization profiles (`_trt_profiles`), plans are
cached and rebuilt when they no longer load (`_trt_build`), and sessions run them through the
named-tensor API with device memory, pinned staging and streams from `infer.cuda`
(`_trt_session`, over the context pool in `_trt_contexts`).

TensorRT objects live in variables named for their class (`engine`, `context`, `runtime`, ...)
so the API conformance test can check each call against TensorRT's published API.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import cuda, tensors
from ..cache import Cache
from ..device import Device, probe_hardware
from ..errors import CompileError, InferError
from ..model import Model, ModelFormat
from ..options import Options
from ..tensors import TensorSpec, dtype_info
from . import _trt_build as build
from ._trt_profiles import OpenDimensions, derive
from ._trt_session import TensorRtSession
from .base import GRAPH, NATIVE, Backend, BackendInfo, Session, register

log = logging.getLogger(__name__)

_INSTALL = 'pip install "infer-engine[tensorrt]" on a machine with an NVIDIA GPU and driver'


@register
class TensorRtBackend(Backend):
    name = "tensorrt"
    runtime = "tensorrt"
    formats = frozenset({ModelFormat.ONNX, ModelFormat.TENSORRT})
    install = _INSTALL

    def _probe(self) -> BackendInfo:
        reasons: list[str] = []
        hw = probe_hardware()
        gpus = tuple(d for d in hw.devices if d.kind == "cuda")
        if not gpus:
            notes = "; ".join(n.removeprefix("no NVIDIA GPU: ") for n in hw.notes)
            reasons.append(f"no CUDA driver or NVIDIA GPU ({notes or 'none found'})")
        version = None
        if gpus:
            try:
                import tensorrt as trt

                version = str(trt.__version__)
            except ImportError as e:
                reasons.append(f"tensorrt is not installed ({e})")
            except Exception as e:  # a broken install: libraries that do not load
                reasons.append(f"tensorrt failed to import ({type(e).__name__}: {e})")
        elif not _installed("tensorrt"):  # no GPU: don't load its libraries to say so
            reasons.append("tensorrt is not installed")
        if gpus and not reasons:
            why = cuda.unavailable()
            if why:
                reasons.append(why)
        if reasons:
            return BackendInfo(
                self.name, False, version, reason="; ".join(reasons), install=self.install
            )
        return BackendInfo(
            self.name,
            True,
            version,
            gpus,
            reason="builds plans from ONNX; precision from the graph",
            install=self.install,
        )

    def precisions(self, device: Device, variant: str | None = None) -> Mapping[str, str]:
        caps = device.capabilities.precisions
        out = {"fp32": NATIVE}
        for p in ("fp16", "int8"):
            if not caps or p in caps:
                out[p] = GRAPH
        return out

    def int8_quantizer(self, device: Device, variant: str | None = None) -> str:
        return "onnxruntime-symmetric"  # TensorRT's Q/DQ takes int8 with zero points of 0

    def supports(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        if model.format is ModelFormat.TENSORRT and options.precision != "fp32":
            return (
                "a TensorRT plan's precision was fixed when it was built; load the ONNX model "
                f"to choose precision={options.precision!r}"
            )
        why = super().supports(model, device, options, variant)
        if why is None:
            # The caller's options are checked before the precision transform runs for them.
            own = build.settings(options.for_backend(self.name, build.OPTIONS))
            if own.precision_flags:
                import tensorrt as trt

                build.precision_mode(trt, options.precision, own)
            if model.format is ModelFormat.ONNX:
                # A model whose open dimensions need `shapes=` is passed over (ONNX Runtime
                # takes it as it is); a `shapes=` that is itself wrong stays the caller's error.
                try:
                    derive(
                        model.inputs,
                        options.shapes,
                        max_batch=own.max_batch,
                        hint=options.hint,
                    )
                except OpenDimensions as e:
                    return str(e)
        return why

    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> Session:
        import tensorrt as trt

        own = build.settings(options.for_backend(self.name, build.OPTIONS))
        index = device.index or 0
        try:
            cuda.set_device(index)
            if model.format is ModelFormat.TENSORRT:
                return _load_plan(trt, model, device, options, own)
            return _build_onnx(trt, model, device, options, own)
        except InferError:
            raise
        except OSError as e:
            raise CompileError(f"tensorrt could not read or write {model!r}'s files: {e}") from e
        except Exception as e:  # CUDA errors, TensorRT's own exceptions
            raise CompileError(f"tensorrt failed to compile {model!r} on {device}: {e}") from e


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a half-imported or stubbed module
        return module in sys.modules


# -- compile ----------------------------------------------------------------------------------


def _contexts(options: Options, own: build.Settings) -> int:
    return own.contexts or options.max_in_flight or 1


def _build_onnx(
    trt: Any, model: Model, device: Device, options: Options, own: build.Settings
) -> Session:
    inputs = model.inputs
    ranges = derive(inputs, options.shapes, max_batch=own.max_batch, hint=options.hint)
    dynamic = any(not r.fixed for r in ranges.values()) or any(not s.is_static for s in inputs)
    profiles = [ranges] * (_contexts(options, own) if dynamic else 1)
    version = str(trt.__version__)
    key = build.plan_key(
        model=model.digest,
        tensorrt=version,
        device=device,
        profiles=profiles,
        precision=options.precision,
        settings=own,
    )
    cache = Cache(options.cache_dir)
    timing = (
        build.timing_cache_path(cache, version, device)
        if own.timing_cache and options.cache
        else None
    )

    def make(folder: Path) -> Mapping[str, Any]:
        return build.build_plan(
            trt,
            model,
            device=device,
            precision=options.precision,
            settings=own,
            profiles=profiles,
            timing_cache=timing,
            progress=options.progress,
            out=folder / build.PLAN,
        )

    runtime = _runtime(trt, own)
    deserialize = _deserializer(runtime)
    if options.cache:
        engine, entry, built = build.load_or_build(cache, key, make, deserialize)
        plan_sha = str(entry.meta["files"][build.PLAN]["sha256"])
        made = dict(entry.meta.get("tensorrt", {}))
        where = f"plan {'built' if built else 'from the cache'}: {entry.path}"
    else:
        with tempfile.TemporaryDirectory(prefix="infer-trt-") as tmp:
            made = dict(make(Path(tmp))["tensorrt"])
            plan = (Path(tmp) / build.PLAN).read_bytes()
        engine = deserialize(plan)
        if engine is None:
            raise CompileError(
                f"TensorRT cannot deserialize the plan it has just built for {model!r}"
            )
        plan_sha, built, where = build.sha256(plan), True, "plan built (not cached: cache=False)"
    session = TensorRtSession(
        engine=engine,
        runtime=runtime,
        device=device,
        options=options,
        names={s.name: s for s in (*inputs, *model.outputs)},
        advice=(
            "Load the model with shapes={name: (min, opt, max)} covering it, or with "
            "backend_options={'tensorrt': {'max_batch': N}} for a larger batch"
        ),
        precision=model.precision or options.precision,  # the transform's description
        facts={
            "tensorrt": version,
            "plan": where,
            "plan_sha256": plan_sha,
            "build_seconds": made.get("build_seconds") if built else None,
            "precision_mode": made.get("precision_mode")
            or build.precision_mode(trt, options.precision, own),
            "tf32": own.tf32,
        },
    )
    if options.cache:
        build.write_info(cache, plan_sha, session.plan_info(model=model.digest, settings=own))
    return session


def _load_plan(
    trt: Any, model: Model, device: Device, options: Options, own: build.Settings
) -> Session:
    plan = model.data
    plan_sha = build.sha256(plan)
    info = build.read_info(Cache(options.cache_dir), plan_sha) if options.cache else None
    runtime = _runtime(trt, own)
    trt_log = build.logger(trt)
    mark = trt_log.mark()
    engine = _deserializer(runtime)(plan)
    if engine is None:
        raise CompileError(
            f"TensorRT {trt.__version__} cannot deserialize the plan {model!r} on {device} "
            f"({device.name or 'GPU'}): {trt_log.since(mark)}. A plan runs only on the TensorRT "
            "version and GPU kind that built it (unless built version- or hardware-compatible; "
            "load those with backend_options={'tensorrt': {'version_compatible': True}}): "
            "rebuild it from the ONNX model"
        )
    names: dict[str, TensorSpec] = {}
    if info:
        for item in (*info.get("inputs", ()), *info.get("outputs", ())):
            names[item["name"]] = TensorSpec(
                item["name"], tensors.dims(item["shape"]), dtype_info(item["dtype"]).numpy
            )
    return TensorRtSession(
        engine=engine,
        runtime=runtime,
        device=device,
        options=options,
        names=names,
        advice="A plan's profiles are fixed when it is built: rebuild it with a profile that covers this shape",
        precision=str(info.get("precision", "fp32")) if info else "fp32",
        facts={
            "tensorrt": str(trt.__version__),
            "plan": f"plan file: {model.path or 'bytes'}",
            "plan_sha256": plan_sha,
            "build_seconds": None,
            "precision_mode": info.get("precision_mode", "as built") if info else "as built",
            "sidecar": bool(info),
        },
    )


def _runtime(trt: Any, own: build.Settings) -> Any:
    trt_log = build.logger(trt)
    build.init_plugins(trt)
    runtime = trt.Runtime(trt_log)
    if own.version_compatible and hasattr(runtime, "engine_host_code_allowed"):
        # Version-compatible plans carry a lean runtime (host code); load it only when asked.
        runtime.engine_host_code_allowed = True
    return runtime


def _deserializer(runtime: Any) -> Any:
    def deserialize(plan: bytes) -> Any:
        try:
            return runtime.deserialize_cuda_engine(plan)
        except Exception:  # some versions raise instead of returning None
            log.debug("deserialize_cuda_engine raised", exc_info=True)
            return None

    return deserialize
