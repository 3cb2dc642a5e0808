"""TensorRT: ONNX models built into engines (plans), or serialized plans loaded as they are.

Precision comes from the graph (TensorRT 11 is strongly typed, and infer's shared precision
transform gives fp16 casts or int8 Q/DQ); TensorRT 10's FP16/INT8 builder flags are an opt-in
(`precision_flags`). Dynamic inputs get optimization profiles (`_trt_profiles`), plans are
cached and rebuilt when they no longer load (`_trt_build`), and runs use the named-tensor API
(`set_input_shape`, `set_tensor_address`, `execute_async_v3`) with device memory, pinned
staging and streams from `infer.cuda`.

Each execution context runs on its own CUDA stream with its own buffers; contexts are pooled,
one per concurrent caller (an engine with dynamic shapes gets one optimization profile per
context, as TensorRT requires of contexts in concurrent use). Inputs that are device arrays
(PyTorch, CuPy, ... through `__cuda_array_interface__` or DLPack) are read in place.

TensorRT objects live in variables named for their class (`engine`, `context`, `runtime`, ...)
so the API conformance test can check each call against TensorRT's published API.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import cuda, device_array, tensors
from ..cache import Cache
from ..device import Device, probe_hardware
from ..device_array import DeviceArray, DeviceView
from ..errors import (
    CompileError,
    EngineClosed,
    InferError,
    InputError,
    OptionError,
    RuntimeFailure,
)
from ..model import Model, ModelFormat
from ..options import Options
from ..tensors import FeedValidator, TensorSpec, describe, dtype_info
from . import _trt_build as build
from ._trt_profiles import OpenDimensions, ProfileCheck, Range, derive, summary
from .base import GRAPH, NATIVE, Backend, BackendInfo, Binding, Session, register

log = logging.getLogger(__name__)

_INSTALL = 'pip install "infer[tensorrt]" on a machine with an NVIDIA GPU and driver'


@register
class TensorRtBackend(Backend):
    name = "tensorrt"
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


# -- session ----------------------------------------------------------------------------------

_HOST_COPY, _HOST_BOUND, _DEVICE = "host-copy", "host-bound", "device"


@dataclass(frozen=True)
class _IO:
    """One engine I/O tensor, as the run loop needs it."""

    name: str
    dtype: np.dtype
    bits: int | None  # packed sub-byte element width (int4, fp4), else None


def _nbytes(io: _IO, shape: Sequence[int]) -> int:
    count = int(np.prod(shape, dtype=np.int64))
    return -(-count * io.bits // 8) if io.bits else count * io.dtype.itemsize


class _Buffers:
    """Device buffers and pinned host staging, per tensor name, grown as shapes need."""

    __slots__ = ("device", "host_in", "host_out")

    def __init__(self) -> None:
        self.device: dict[str, cuda.Growable] = {}
        self.host_in: dict[str, cuda.Growable] = {}
        self.host_out: dict[str, cuda.Growable] = {}

    def on_device(self, name: str, nbytes: int) -> cuda.DeviceMemory:
        g = self.device.get(name)
        if g is None:
            g = self.device[name] = cuda.Growable(cuda.DeviceMemory)
        return g.ensure(nbytes)  # type: ignore[return-value]

    def staging(self, table: dict[str, cuda.Growable], name: str, nbytes: int) -> cuda.HostMemory:
        g = table.get(name)
        if g is None:
            g = table[name] = cuda.Growable(cuda.HostMemory)
        return g.ensure(nbytes)  # type: ignore[return-value]

    def free(self) -> None:
        for table in (self.device, self.host_in, self.host_out):
            for g in table.values():
                g.free()
            table.clear()


def _output_allocator(trt: Any) -> Any:
    class OutputAllocator(trt.IOutputAllocator):
        """Memory for outputs whose shape only the run itself decides (NonZero, NMS, ...)."""

        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: _Buffers | None = None
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.memory: dict[str, cuda.DeviceMemory] = {}

        def reallocate_output(
            self, tensor_name: str, memory: int, size: int, alignment: int
        ) -> int:
            assert self.buffers is not None
            block = self.buffers.on_device(tensor_name, max(int(size), 1))
            self.memory[tensor_name] = block
            return block.ptr

        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
        ) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return OutputAllocator()


class _Slot:
    """One execution context with its stream and buffers; used by one caller at a time."""

    def __init__(self, session: TensorRtSession, profile: int) -> None:
        engine = session._engine
        self.profile = profile
        self.stream = cuda.Stream()
        trt_log = build.logger(session._trt)
        mark = trt_log.mark()
        context = engine.create_execution_context()
        if context is None:
            self.stream.close()
            raise RuntimeFailure(
                f"TensorRT could not create an execution context on {session.device} "
                f"(out of GPU memory?): {trt_log.since(mark)}"
            )
        self.context = context
        if profile:
            if not context.set_optimization_profile_async(profile, self.stream.handle):
                raise RuntimeFailure(f"TensorRT refused optimization profile {profile}")
            self.stream.synchronize()
        self.buffers = _Buffers()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.out_shapes: dict[tuple[tuple[int, ...], ...], dict[str, tuple[int, ...]]] = {}
        self.allocator: Any = None
        self.allocated: set[str] = set()
        self.event: cuda.Event | None = None

    def wait_for(self, stream: int) -> None:
        """Order this slot's stream after the work queued so far on a producer's stream."""
        if self.event is None:
            self.event = cuda.Event()
        self.event.record(stream)
        self.stream.wait(self.event)

    def close(self) -> None:
        self.context = None
        self.allocator = None
        self.buffers.free()
        if self.event is not None:
            self.event.close()
        self.stream.close()


class _Pool:
    """Execution contexts, created on demand and reused; at most one per profile when the
    engine has dynamic shapes (contexts in concurrent use need separate profiles)."""

    def __init__(
        self, session: TensorRtSession, profiles: int, exclusive: bool, limit: int | None
    ) -> None:
        self._session = session
        self._exclusive = exclusive
        self._limit = limit
        self._free: dict[int, list[_Slot]] = {i: [] for i in range(profiles)}
        self._count: dict[int, int] = dict.fromkeys(range(profiles), 0)
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self, allowed: Sequence[int]) -> _Slot:
        with self._cond:
            while True:
                if self._closed:
                    raise EngineClosed(f"tensorrt session on {self._session.device} is closed")
                for i in allowed:
                    if self._free[i]:
                        return self._free[i].pop()
                total = sum(self._count.values())
                for i in allowed:
                    room = self._count[i] == 0 if self._exclusive else True
                    if room and (self._limit is None or total < self._limit):
                        self._count[i] += 1
                        try:
                            return _Slot(self._session, i)
                        except BaseException:
                            self._count[i] -= 1
                            raise
                self._cond.wait()

    def release(self, slot: _Slot) -> None:
        with self._cond:
            if self._closed:
                slot.close()
            else:
                self._free[slot.profile].append(slot)
            self._cond.notify()

    @property
    def size(self) -> int:
        return sum(self._count.values())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for slots in self._free.values():
                for slot in slots:
                    slot.close()
                slots.clear()
            self._cond.notify_all()


class TensorRtSession(Session):
    """A deserialized TensorRT engine and a pool of execution contexts."""

    def __init__(
        self,
        *,
        engine: Any,
        runtime: Any,
        device: Device,
        options: Options,
        names: Mapping[str, TensorSpec],
        advice: str,
        precision: str,
        facts: Mapping[str, Any],
    ) -> None:
        import tensorrt as trt

        self._trt = trt
        self._engine = engine
        self._runtime = runtime
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        self._in: list[_IO] = []
        self._out: list[_IO] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            if mode not in (trt.TensorIOMode.INPUT, trt.TensorIOMode.OUTPUT):
                continue
            if mode == trt.TensorIOMode.INPUT and engine.is_shape_inference_io(name):
                raise CompileError(
                    f"input {name!r} is a shape tensor (its values set other tensors' shapes); "
                    "the tensorrt backend feeds data tensors only: use onnxruntime"
                )
            data_type = engine.get_tensor_dtype(name)
            try:
                dtype = dtype_info(data_type.name).numpy
            except KeyError:
                raise CompileError(
                    f"tensor {name!r} has TensorRT type {data_type.name}, which infer cannot hold"
                ) from None
            spec = TensorSpec(
                name, _named_dims(engine.get_tensor_shape(name), names.get(name)), dtype
            )
            io = _IO(name, dtype, tensors.packed_bits(dtype))
            if mode == trt.TensorIOMode.INPUT:
                inputs.append(spec)
                self._in.append(io)
            else:
                outputs.append(spec)
                self._out.append(io)
        order = list(names)
        inputs.sort(key=lambda s: order.index(s.name) if s.name in order else len(order))
        outputs.sort(key=lambda s: order.index(s.name) if s.name in order else len(order))
        self._in.sort(key=lambda io: [s.name for s in inputs].index(io.name))
        self._out.sort(key=lambda io: [s.name for s in outputs].index(io.name))

        self.profiles = [
            _engine_profile(engine, inputs, p)
            for p in range(max(1, engine.num_optimization_profiles))
        ]
        dynamic = any(not s.is_static for s in inputs)
        self._check = ProfileCheck(self.profiles if dynamic else [], advice=advice)
        exclusive = dynamic and engine.num_optimization_profiles > 0
        count = len(self.profiles) if exclusive else 1
        self._dtypes = {io.name: io for io in (*self._in, *self._out)}
        self._feeds = _Feeds(inputs, cast=options.cast, device=device.index or 0)

        ranges = summary(self.profiles[0]) if dynamic else "static shapes"
        contexts = (
            f"{count} context{'s' if count > 1 else ''}" if exclusive else "a context per caller"
        )
        plan_text = str(facts.get("plan", ""))
        seconds = facts.get("build_seconds")
        built = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        details = {
            **facts,
            "profiles": [{n: str(r) for n, r in p.items()} for p in self.profiles]
            if dynamic
            else [],
            "contexts": count if exclusive else None,
            "device_memory": _device_memory(engine),
            "summary": (
                f"TensorRT {facts.get('tensorrt')}, {precision} ({facts.get('precision_mode')}), "
                f"{plan_text.split(':')[0]}{built}; profile: {ranges}; {contexts}"
            ),
        }
        super().__init__(
            backend="tensorrt",
            device=device,
            inputs=inputs,
            outputs=outputs,
            options=options,
            precision=precision,
            details=details,
        )
        limit = options.max_in_flight if not exclusive else None
        self._contexts = _Pool(self, count, exclusive, limit)
        self._exclusive = exclusive

    def plan_info(self, *, model: str, settings: build.Settings) -> dict[str, Any]:
        """The sidecar record of this engine's plan (what the plan file itself cannot say)."""

        def spec_json(s: TensorSpec) -> dict[str, Any]:
            return {"name": s.name, "shape": list(s.shape or ()), "dtype": dtype_info(s.dtype).name}

        return {
            "inputs": [spec_json(s) for s in self.inputs],
            "outputs": [spec_json(s) for s in self.outputs],
            "profiles": [{n: r.to_json() for n, r in p.items()} for p in self.profiles],
            "precision": self.precision,
            "precision_mode": self.details.get("precision_mode"),
            "model": model,
            "tensorrt": self.details.get("tensorrt"),
            "gpu": self.device.name,
            "compute_capability": build.compute_capability(self.device),
            "builder": settings.key_parts(),
        }

    def default_in_flight(self) -> int:
        return len(self.profiles) if self._exclusive else 2

    # -- running ------------------------------------------------------------------------------

    def run(
        self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Validate `feeds` (numpy, or device arrays used in place), run, return numpy outputs."""
        if self._closed:
            raise EngineClosed(f"{self.backend} session on {self.device} is closed")
        if not _has_device_arrays(feeds):
            return super().run(feeds, outputs)
        host, devices = self._feeds.split(feeds)
        names = None if outputs is None else self._check_outputs(outputs)
        try:
            return self._execute(host, devices, names, _HOST_COPY)
        except InferError:
            raise
        except Exception as e:
            raise RuntimeFailure(f"{self.backend} failed to run on {self.device}: {e}") from e

    def _run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        return self._execute(feeds, {}, outputs, _HOST_COPY)

    def _execute(
        self,
        host: Mapping[str, np.ndarray],
        devices: Mapping[str, Any],
        want: Sequence[str] | None,
        mode: str,
        buffers: _Buffers | None = None,
        targets: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        shapes: dict[str, tuple[int, ...]] = {n: a.shape for n, a in host.items()}
        for name, value in devices.items():
            shapes[name] = self._feeds.shape(name, value)
        fits = self._check.fitting(shapes) if self._check.names else (0,)
        index = self.device.index or 0
        cuda.set_device(index)
        slot = self._contexts.acquire(fits)
        views: list[DeviceView] = []
        try:
            for name, value in devices.items():
                try:
                    v = device_array.view(value, slot.stream.handle)
                except Exception as e:  # requires_grad tensors, masked arrays, odd dtypes
                    raise InputError(
                        f"input {name!r}: the {type(value).__name__} cannot be read in place: {e}"
                    ) from e
                views.append(v)
                self._feeds.check(name, v)
                if v.shape != shapes[name]:
                    raise InputError(
                        f"input {name!r}: shape changed from {list(shapes[name])} to {list(v.shape)}"
                    )
            try:
                return self._enqueue(
                    slot,
                    host,
                    {v_name: v for v_name, v in zip(devices, views)},
                    want,
                    mode,
                    buffers or slot.buffers,
                    targets or {},
                )
            except BaseException:
                # Copies may still be queued from staging buffers the next run will refill.
                with contextlib.suppress(Exception):
                    slot.stream.synchronize()
                raise
        finally:
            for v in views:
                v.close()
            self._contexts.release(slot)

    def _enqueue(
        self,
        slot: _Slot,
        host: Mapping[str, np.ndarray],
        views: Mapping[str, DeviceView],
        want: Sequence[str] | None,
        mode: str,
        buffers: _Buffers,
        targets: Mapping[str, Any],
    ) -> dict[str, Any]:
        context = slot.context
        stream = slot.stream.handle
        for io in self._in:
            name = io.name
            v = views.get(name)
            shape = v.shape if v is not None else host[name].shape
            if slot.shapes.get(name) != shape:
                trt_log = build.logger(self._trt)
                mark = trt_log.mark()
                if not context.set_input_shape(name, shape):
                    raise InputError(
                        f"input {name!r}: TensorRT refused shape {list(shape)}: {trt_log.since(mark)}"
                    )
                slot.shapes[name] = shape
            if v is not None:
                if v.stream is not None:
                    slot.wait_for(v.stream)
                address = v.ptr
            else:
                arr = host[name]
                raw = tensors.pack(arr) if io.bits else arr
                nbytes = raw.nbytes
                staged = buffers.staging(buffers.host_in, name, nbytes)
                ctypes.memmove(staged.ptr, raw.ctypes.data, nbytes)
                memory = buffers.on_device(name, nbytes)
                cuda.copy_to_device(memory.ptr, staged.ptr, nbytes, stream)
                address = memory.ptr
            if slot.addresses.get(name) != address:
                if not context.set_tensor_address(name, address):
                    raise RuntimeFailure(f"TensorRT refused the address of input {name!r}")
                slot.addresses[name] = address

        signature = tuple(slot.shapes[io.name] for io in self._in)
        out_shapes = slot.out_shapes.get(signature)
        if out_shapes is None:
            out_shapes = {
                io.name: tuple(int(d) for d in context.get_tensor_shape(io.name))
                for io in self._out
            }
            if len(slot.out_shapes) > 256:
                slot.out_shapes.clear()
            slot.out_shapes[signature] = out_shapes
        allocated: dict[str, Any] = {}
        for io in self._out:
            name = io.name
            shape = out_shapes[name]
            target = targets.get(name)
            if any(d < 0 for d in shape):  # decided by the data: TensorRT asks for memory
                if target is not None:
                    raise InputError(
                        f"output {name!r} has a shape only the run decides ({list(shape)}); it "
                        "cannot be written into a preallocated array: bind it as 'host' or 'device'"
                    )
                if slot.allocator is None:
                    slot.allocator = _output_allocator(self._trt)
                if name not in slot.allocated:
                    if not context.set_output_allocator(name, slot.allocator):
                        raise RuntimeFailure(f"TensorRT refused an output allocator for {name!r}")
                    slot.allocated.add(name)
                slot.addresses.pop(name, None)
                continue
            nbytes = _nbytes(io, shape)
            if isinstance(target, DeviceView):
                _check_target(name, target, shape, io.dtype)
                address = target.ptr
            else:
                memory = buffers.on_device(name, nbytes)
                allocated[name] = memory
                address = memory.ptr
            if slot.addresses.get(name) != address:
                if not context.set_tensor_address(name, address):
                    raise RuntimeFailure(f"TensorRT refused the address of output {name!r}")
                slot.addresses[name] = address

        if slot.allocator is not None:
            slot.allocator.buffers = buffers
            slot.allocator.shapes.clear()
        trt_log = build.logger(self._trt)
        mark = trt_log.mark()
        if not context.execute_async_v3(stream):
            slot.stream.synchronize()
            raise RuntimeFailure(
                f"TensorRT execute_async_v3 failed on {self.device}: {trt_log.since(mark)}"
            )

        results: dict[str, Any] = {}
        for name in want or self._output_names:
            io = self._dtypes[name]
            shape = out_shapes[name]
            if any(d < 0 for d in shape):
                shape = slot.allocator.shapes[name]
                memory = slot.allocator.memory[name]
            else:
                memory = allocated.get(name)
            target = targets.get(name)
            nbytes = _nbytes(io, shape)
            if isinstance(target, DeviceView):
                results[name] = target.source
            elif isinstance(target, np.ndarray):
                _check_target(name, target, shape, io.dtype)
                cuda.copy_to_host(target.ctypes.data, memory.ptr, nbytes, stream)
                results[name] = target
            elif mode == _DEVICE:
                if io.bits:
                    raise InputError(f"output {name!r} is packed {io.dtype}: bind it as 'host'")
                results[name] = DeviceArray(
                    memory.ptr, shape, io.dtype, self.device.index or 0, memory
                )
            else:
                staged = buffers.staging(buffers.host_out, name, nbytes)
                cuda.copy_to_host(staged.ptr, memory.ptr, nbytes, stream)
                results[name] = (staged, shape, io)
        slot.stream.synchronize()
        for name, value in results.items():
            if isinstance(value, tuple):
                staged, shape, io = value
                if io.bits:
                    results[name] = tensors.unpack(
                        staged.array(np.dtype(np.uint8), (_nbytes(io, shape),)), io.dtype, shape
                    )
                else:
                    arr = staged.array(io.dtype, shape)
                    results[name] = arr.copy() if mode == _HOST_COPY else arr
        return results

    # -- binding ------------------------------------------------------------------------------

    def bind(self, outputs: str | Mapping[str, Any] = "host") -> Binding:
        """Buffers held for reuse: outputs "host" (pinned numpy), "device" (DeviceArray, read in
        place by torch/cupy), or {name: array} to write into (numpy, or a device array)."""
        if self._closed:
            raise EngineClosed(f"{self.backend} session on {self.device} is closed")
        return TensorRtBinding(self, outputs)

    # -- lifetime -----------------------------------------------------------------------------

    def _close(self) -> None:
        self._contexts.close()
        self._engine = None
        self._runtime = None


_KNOWN = frozenset(row.numpy for row in tensors.DTYPES)


def _dtype_name(dtype: np.dtype) -> str:
    return dtype_info(dtype).name if dtype in _KNOWN else str(dtype)


class _Feeds:
    """Routes feeds: device arrays (CAI or DLPack) are read in place, so their dtype, shape and
    layout must already match and are checked here; everything else goes through the
    FeedValidator every backend uses (conversion, lossless casts, the same error messages)."""

    def __init__(self, specs: Sequence[TensorSpec], *, cast: bool, device: int) -> None:
        self.specs = {s.name: s for s in specs}
        self.cast = cast
        self.device = device
        self._all = FeedValidator(list(specs), cast=cast)
        self._subsets: dict[frozenset[str], FeedValidator] = {}

    def split(self, feeds: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(validated host arrays, device arrays) from feeds holding at least one device array."""
        if set(feeds) != set(self.specs):
            self._all(feeds)  # raises the missing / unknown input error every backend gives
        devices = {n: v for n, v in feeds.items() if device_array.is_device_array(v)}
        rest = frozenset(feeds.keys() - devices.keys())
        validator = self._subsets.get(rest)
        if validator is None:
            validator = self._subsets[rest] = FeedValidator(
                [self.specs[n] for n in self.specs if n in rest], cast=self.cast
            )
        host = validator({n: feeds[n] for n in rest}) if rest else {}
        return host, devices

    def shape(self, name: str, value: Any) -> tuple[int, ...]:
        """A device input's shape, checked against the model's rank and fixed dimensions."""
        try:
            cai = value.__cuda_array_interface__
        except Exception:
            cai = None
        raw = cai["shape"] if cai is not None else getattr(value, "shape", None)
        try:
            shape = tuple(int(d) for d in raw)  # type: ignore[union-attr]
        except TypeError:
            raise InputError(
                f"input {name!r}: {type(value).__name__} is a DLPack device array without a "
                "shape attribute"
            ) from None
        spec = self.specs[name]
        if spec.shape is not None:
            if len(shape) != len(spec.shape):
                raise InputError(
                    f"input {name!r}: expected rank {len(spec.shape)} "
                    f"({describe(spec.shape, spec.dtype)}), got a device array of shape {list(shape)}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, shape)):
                if isinstance(want, int) and want != got:
                    raise InputError(
                        f"input {name!r}: dimension {axis} must be {want} "
                        f"({describe(spec.shape, spec.dtype)}), got a device array of shape "
                        f"{list(shape)}"
                    )
        return shape

    def check(self, name: str, v: DeviceView) -> None:
        """dtype, layout and device of a device input (its shape was checked by `shape`)."""
        spec = self.specs[name]
        if v.dtype != spec.dtype:
            raise InputError(
                f"input {name!r}: the device array holds {_dtype_name(v.dtype)}, the model takes "
                f"{describe(spec.shape, spec.dtype)}; device arrays are read in place, so cast "
                "it on the device first"
            )
        if not v.contiguous:
            raise InputError(
                f"input {name!r}: the device array is not C-contiguous (strides "
                f"{list(v.strides or ())} bytes for shape {list(v.shape)}); make it contiguous "
                "on the device first"
            )
        where = v.device if v.device is not None else cuda.pointer_device(v.ptr)
        if where is not None and where != self.device:
            raise InputError(
                f"input {name!r} is on cuda:{where}, but this engine runs on cuda:{self.device}"
            )


def _has_device_arrays(feeds: Any) -> bool:
    if not isinstance(feeds, Mapping):
        return False
    for value in feeds.values():
        if type(value) is not np.ndarray and device_array.is_device_array(value):
            return True
    return False


def _check_target(name: str, target: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    got_shape = tuple(target.shape)
    if got_shape != shape or target.dtype != dtype:
        raise InputError(
            f"output {name!r}: the bound array is {_dtype_name(target.dtype)}{list(got_shape)}, "
            f"but this run produces {_dtype_name(dtype)}{list(shape)}"
        )
    if isinstance(target, np.ndarray) and not (
        target.flags.c_contiguous and target.flags.writeable
    ):
        raise InputError(
            f"output {name!r}: the bound numpy array must be C-contiguous and writeable"
        )
    if isinstance(target, DeviceView) and not target.contiguous:
        raise InputError(f"output {name!r}: the bound device array must be C-contiguous")


def _named_dims(shape: Any, spec: TensorSpec | None) -> tuple[Any, ...]:
    dims = [int(d) for d in shape]
    named = (
        spec.shape
        if spec is not None and spec.shape is not None and len(spec.shape) == len(dims)
        else None
    )
    return tuple(
        d if d >= 0 else (named[i] if named is not None and isinstance(named[i], str) else None)
        for i, d in enumerate(dims)
    )


def _engine_profile(engine: Any, inputs: Sequence[TensorSpec], index: int) -> dict[str, Range]:
    out = {}
    for spec in inputs:
        if spec.is_static:
            continue
        lo, opt, hi = engine.get_tensor_profile_shape(spec.name, index)
        out[spec.name] = Range(
            tuple(int(d) for d in lo), tuple(int(d) for d in opt), tuple(int(d) for d in hi)
        )
    return out


def _device_memory(engine: Any) -> int | None:
    """Bytes of scratch memory each execution context takes."""
    try:
        if hasattr(engine, "device_memory_size_v2"):  # TensorRT >= 10.1
            return int(engine.device_memory_size_v2)
        return int(engine.device_memory_size)
    except Exception:
        return None


class TensorRtBinding(Binding):
    """Buffers (device, pinned host, or the caller's arrays) held across runs of one session."""

    def __init__(self, session: TensorRtSession, outputs: str | Mapping[str, Any]) -> None:
        super().__init__(session)
        self._buffers = _Buffers()
        self._targets: dict[str, Any] = {}
        self._views: list[DeviceView] = []
        names = session._output_names
        if isinstance(outputs, str):
            if outputs not in ("host", "device"):
                raise OptionError(
                    f"bind(outputs=...) takes 'host', 'device' or a dict of arrays, got {outputs!r}"
                )
            self._mode = _DEVICE if outputs == "device" else _HOST_BOUND
        elif isinstance(outputs, Mapping):
            self._mode = _HOST_BOUND
            unknown = sorted(set(outputs) - set(names))
            if unknown:
                raise InputError(
                    f"bind(outputs=...) names unknown output(s) {unknown}; the model's outputs are {names}"
                )
            for name, array in outputs.items():
                if isinstance(array, np.ndarray):
                    self._targets[name] = array
                elif device_array.is_device_array(array):
                    try:
                        v = device_array.view(array)
                    except Exception as e:
                        raise InputError(
                            f"bind(outputs=...)[{name!r}]: the {type(array).__name__} cannot be "
                            f"written in place: {e}"
                        ) from e
                    self._views.append(v)
                    self._targets[name] = v
                else:
                    raise InputError(
                        f"bind(outputs=...)[{name!r}] must be a numpy array or a device array, got {type(array).__name__}"
                    )
        else:
            raise OptionError(
                f"bind(outputs=...) takes 'host', 'device' or a dict of arrays, got {type(outputs).__name__}"
            )

    def run(self, feeds: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        session: TensorRtSession = self.session  # type: ignore[assignment]
        if self._closed or session.closed:
            raise EngineClosed(f"binding on {session.backend} is closed")
        if _has_device_arrays(feeds):
            host, devices = session._feeds.split(feeds)
        else:
            host, devices = session._validate(feeds), {}
        try:
            out = session._execute(host, devices, None, self._mode, self._buffers, self._targets)
        except InferError:
            raise
        except Exception as e:
            raise RuntimeFailure(f"{session.backend} failed to run on {session.device}: {e}") from e
        if copy:
            return {k: _copy(v) for k, v in out.items()}
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        session: TensorRtSession = self.session  # type: ignore[assignment]
        return session._execute(feeds, {}, None, self._mode, self._buffers, self._targets)

    def _close(self) -> None:
        for v in self._views:
            v.close()
        self._views.clear()
        self._buffers.free()


def _copy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, DeviceArray):
        memory = cuda.DeviceMemory(value.nbytes)
        stream = cuda.Stream()
        try:
            cuda.copy_on_device(memory.ptr, value.ptr, value.nbytes, stream.handle)
            stream.synchronize()
        finally:
            stream.close()
        return DeviceArray(memory.ptr, value.shape, value.dtype, value.device, memory)
    return value
