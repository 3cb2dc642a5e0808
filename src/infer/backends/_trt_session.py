"""TensorRT sessions: a deserialized engine run through the named-tensor API
(`set_input_shape`, `set_tensor_address`, `execute_async_v3`), and its binding.

Each execution context runs on its own CUDA stream with its own buffers (`_trt_contexts`).
Inputs that are device arrays (PyTorch, CuPy, ... through `__cuda_array_interface__` or DLPack)
are read in place; host inputs go through pinned staging. Outputs come back as numpy arrays,
into bound buffers, or as `DeviceArray`s left on the GPU.

TensorRT objects live in variables named for their class (`engine`, `context`, ...) so the API
conformance test (tests/test_tensorrt_api.py) can check each call against TensorRT's API.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import cuda, tensors
from ..binding import device_shape, device_view, dtype_name
from ..device import Device
from ..device_array import DeviceArray, DeviceView
from ..errors import CompileError, InputError, RuntimeFailure
from ..options import Options
from ..tensors import TensorSpec, dtype_info
from . import _trt_build as build
from ._trt_contexts import IO, Buffers, Pool, Slot, output_allocator
from ._trt_profiles import ProfileCheck, Range, summary
from .base import Binding, KVCache, OutputPlan, Session

if TYPE_CHECKING:
    from ..sequence import Roles

# How a run hands its outputs back: copies (Session.run), the binding's pinned buffers, or
# device arrays left on the GPU.
HOST_COPY, HOST_BOUND, DEVICE = "host-copy", "host-bound", "device"


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
        self._in: list[IO] = []
        self._out: list[IO] = []
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
            io = IO(name, dtype, tensors.packed_bits(dtype))
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
            device_inputs=True,
        )
        self._specs = {s.name: s for s in inputs}
        limit = options.max_in_flight if not exclusive else None
        self._contexts = Pool(
            lambda profile: Slot(trt, engine, device, profile), device, count, exclusive, limit
        )
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

    def _run(self, feeds: dict[str, Any], outputs: list[str] | None) -> dict[str, np.ndarray]:
        return self._execute(feeds, outputs, HOST_COPY)

    def _execute(
        self,
        feeds: Mapping[str, Any],
        want: Sequence[str] | None,
        mode: str,
        buffers: Buffers | None = None,
        targets: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One run of checked feeds (numpy arrays, or device arrays read in place)."""
        shapes: dict[str, tuple[int, ...]] = {}
        devices: dict[str, Any] = {}
        for name, value in feeds.items():
            if type(value) is np.ndarray:
                shapes[name] = value.shape
            else:
                devices[name] = value
                shapes[name] = device_shape(self._specs[name], value)
        fits = self._check.fitting(shapes) if self._check.names else (0,)
        index = self.device.index or 0
        cuda.set_device(index)
        slot = self._contexts.acquire(fits)
        views: dict[str, DeviceView] = {}
        try:
            for name, value in devices.items():
                views[name] = device_view(self._specs[name], value, slot.stream.handle, index)
            try:
                buffers = buffers or slot.buffers
                self._set_inputs(slot, feeds, views, buffers)
                out_shapes, allocated = self._set_outputs(slot, buffers, targets or {})
                self._enqueue(slot)
                return self._collect(
                    slot, want, mode, buffers, targets or {}, out_shapes, allocated
                )
            except BaseException:
                # Copies may still be queued from staging buffers the next run will refill.
                with contextlib.suppress(Exception):
                    slot.stream.synchronize()
                raise
        finally:
            for v in views.values():
                v.close()
            self._contexts.release(slot)

    def _set_inputs(
        self,
        slot: Slot,
        feeds: Mapping[str, Any],
        views: Mapping[str, DeviceView],
        buffers: Buffers,
    ) -> None:
        """Shapes and addresses of the inputs: device views in place, host arrays staged."""
        context = slot.context
        stream = slot.stream.handle
        for io in self._in:
            name = io.name
            v = views.get(name)
            shape = v.shape if v is not None else feeds[name].shape
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
                arr = feeds[name]
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

    def _set_outputs(
        self, slot: Slot, buffers: Buffers, targets: Mapping[str, Any]
    ) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
        """Addresses of the outputs: bound device arrays, the buffers', or (for shapes only
        the run decides) an output allocator. Returns (output shapes, memory allocated)."""
        context = slot.context
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
                    slot.allocator = output_allocator(self._trt)
                if name not in slot.allocated:
                    if not context.set_output_allocator(name, slot.allocator):
                        raise RuntimeFailure(f"TensorRT refused an output allocator for {name!r}")
                    slot.allocated.add(name)
                slot.addresses.pop(name, None)
                continue
            if isinstance(target, DeviceView):
                _check_target(name, target, shape, io.dtype)
                address = target.ptr
            else:
                memory = buffers.on_device(name, io.nbytes(shape))
                allocated[name] = memory
                address = memory.ptr
            if slot.addresses.get(name) != address:
                if not context.set_tensor_address(name, address):
                    raise RuntimeFailure(f"TensorRT refused the address of output {name!r}")
                slot.addresses[name] = address
        if slot.allocator is not None:
            slot.allocator.buffers = buffers
            slot.allocator.shapes.clear()
        return out_shapes, allocated

    def _enqueue(self, slot: Slot) -> None:
        trt_log = build.logger(self._trt)
        mark = trt_log.mark()
        if not slot.context.execute_async_v3(slot.stream.handle):
            slot.stream.synchronize()
            raise RuntimeFailure(
                f"TensorRT execute_async_v3 failed on {self.device}: {trt_log.since(mark)}"
            )

    def _collect(
        self,
        slot: Slot,
        want: Sequence[str] | None,
        mode: str,
        buffers: Buffers,
        targets: Mapping[str, Any],
        out_shapes: Mapping[str, tuple[int, ...]],
        allocated: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The outputs, once the stream has finished: copied to the host, or left on the GPU."""
        stream = slot.stream.handle
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
            nbytes = io.nbytes(shape)
            if isinstance(target, DeviceView):
                results[name] = target.source
            elif isinstance(target, np.ndarray):
                _check_target(name, target, shape, io.dtype)
                cuda.copy_to_host(target.ctypes.data, memory.ptr, nbytes, stream)
                results[name] = target
            elif mode == DEVICE:
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
                        staged.array(np.dtype(np.uint8), (io.nbytes(shape),)), io.dtype, shape
                    )
                else:
                    arr = staged.array(io.dtype, shape)
                    results[name] = arr.copy() if mode == HOST_COPY else arr
        return results

    # -- binding ------------------------------------------------------------------------------

    def _bind(self, plan: OutputPlan) -> Binding:
        """Buffers held for reuse: outputs "host" (pinned numpy), "device" (DeviceArray, read in
        place by torch/cupy), or {name: array} to write into (numpy, or a device array)."""
        return TensorRtBinding(self, plan)

    def _binds_device_outputs(self) -> bool:
        return True

    # -- decoding -----------------------------------------------------------------------------

    def _kv_cache(self, roles: Roles) -> KVCache:
        """The past in device buffers of this session: only the logits cross to the host."""
        return TensorRtKVCache(self, roles)

    # -- lifetime -----------------------------------------------------------------------------

    def _close(self) -> None:
        self._contexts.close()
        self._engine = None
        self._runtime = None


def _check_target(name: str, target: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """A bound output array against what this run produces (shapes can change per run)."""
    got_shape = tuple(target.shape)
    if got_shape != shape or target.dtype != dtype:
        raise InputError(
            f"output {name!r}: the bound array is {dtype_name(target.dtype)}{list(got_shape)}, "
            f"but this run produces {dtype_name(dtype)}{list(shape)}"
        )


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

    def __init__(self, session: TensorRtSession, plan: OutputPlan) -> None:
        super().__init__(session, plan, device_inputs=True)
        self._buffers = Buffers()
        self._mode = DEVICE if plan.device else HOST_BOUND

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        session: TensorRtSession = self.session  # type: ignore[assignment]
        return session._execute(feeds, None, self._mode, self._buffers, self.plan.given)

    def _copy(self, value: Any) -> Any:
        if isinstance(value, DeviceArray):
            memory = cuda.DeviceMemory(value.nbytes)
            stream = cuda.Stream()
            try:
                cuda.copy_on_device(memory.ptr, value.ptr, value.nbytes, stream.handle)
                stream.synchronize()
            finally:
                stream.close()
            return DeviceArray(memory.ptr, value.shape, value.dtype, value.device, memory)
        return super()._copy(value)

    def _close(self) -> None:
        self._buffers.free()


class TensorRtKVCache(KVCache):
    """The past in device memory: each step's presents are written into device buffers and
    read in place as the next step's pasts; only the logits are copied to the host.

    Two sets of buffers take turns, so a step never writes the memory it reads its past from.
    The first step's empty pasts are staged from the host (nothing to copy). Written against
    the TensorRT 10 API like the rest of this module; untested here (no GPU on the test
    machines).
    """

    where = "TensorRT device buffers"

    def __init__(self, session: TensorRtSession, roles: Roles) -> None:
        super().__init__(session, roles)
        self._session = session
        self._buffers = (Buffers(), Buffers())
        self._turn = 0
        assert roles.logits is not None
        self._logits = roles.logits
        self._all = [roles.logits, *(p.present for p in roles.kv if p.present is not None)]
        self._later = [
            roles.logits,
            *(p.present for p in roles.kv if p.present is not None and p.past not in self.once),
        ]
        self._want = self._all
        self._past: dict[str, Any] = {}
        self._batch = 0

    def start(self, batch: int) -> None:
        self._batch = batch
        self._past = {}
        self._want = self._all

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self._session._check_open()
        if not self._past:
            self._past = dict(self.empty_pasts(self._batch, feeds))
        buffers = self._buffers[self._turn]
        self._turn ^= 1
        out = self._session._execute({**feeds, **self._past}, self._want, DEVICE, buffers)
        for p in self.roles.kv:
            if p.present in out:
                self._past[p.past] = out[p.present]
        self._want = self._later
        logits = out[self._logits]
        return logits.numpy() if isinstance(logits, DeviceArray) else np.asarray(logits)

    def close(self) -> None:
        self._past = {}
        for b in self._buffers:
            b.free()
