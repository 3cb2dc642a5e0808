"""TensorRT execution contexts and their memory: device buffers with pinned host staging, an
output allocator for data-dependent shapes, and the pool that hands one context to each
concurrent caller (one optimization profile per context where shapes are dynamic, as
TensorRT requires of contexts in concurrent use).

TensorRT objects live in variables named for their class (`engine`, `context`, ...) so the API
conformance test (tests/test_tensorrt_api.py) can check each call against TensorRT's API.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import cuda
from ..device import Device
from ..errors import EngineClosed, RuntimeFailure
from . import _trt_build as build


@dataclass(frozen=True)
class IO:
    """One engine I/O tensor, as the run loop needs it."""

    name: str
    dtype: np.dtype
    bits: int | None  # packed sub-byte element width (int4, fp4), else None

    def nbytes(self, shape: Sequence[int]) -> int:
        count = int(np.prod(shape, dtype=np.int64))
        return -(-count * self.bits // 8) if self.bits else count * self.dtype.itemsize


class Buffers:
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


def output_allocator(trt: Any) -> Any:
    """An `IOutputAllocator` that takes memory for outputs from a `Buffers`."""

    class OutputAllocator(trt.IOutputAllocator):
        """Memory for outputs whose shape only the run itself decides (NonZero, NMS, ...)."""

        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: Buffers | None = None
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


class Slot:
    """One execution context with its stream and buffers; used by one caller at a time."""

    def __init__(self, trt: Any, engine: Any, device: Device, profile: int) -> None:
        self.profile = profile
        self.stream = cuda.Stream()
        trt_log = build.logger(trt)
        mark = trt_log.mark()
        context = engine.create_execution_context()
        if context is None:
            self.stream.close()
            raise RuntimeFailure(
                f"TensorRT could not create an execution context on {device} "
                f"(out of GPU memory?): {trt_log.since(mark)}"
            )
        self.context = context
        if profile:
            if not context.set_optimization_profile_async(profile, self.stream.handle):
                raise RuntimeFailure(f"TensorRT refused optimization profile {profile}")
            self.stream.synchronize()
        self.buffers = Buffers()
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


class Pool:
    """Execution contexts, created on demand and reused; at most one per profile when the
    engine has dynamic shapes (contexts in concurrent use need separate profiles)."""

    def __init__(
        self,
        make: Callable[[int], Slot],
        device: Device,
        profiles: int,
        exclusive: bool,
        limit: int | None,
    ) -> None:
        self._make = make
        self._device = device
        self._exclusive = exclusive
        self._limit = limit
        self._free: dict[int, list[Slot]] = {i: [] for i in range(profiles)}
        self._count: dict[int, int] = dict.fromkeys(range(profiles), 0)
        self._cond = threading.Condition()
        self._closed = False

    def acquire(self, allowed: Sequence[int]) -> Slot:
        with self._cond:
            while True:
                if self._closed:
                    raise EngineClosed(f"tensorrt session on {self._device} is closed")
                for i in allowed:
                    if self._free[i]:
                        return self._free[i].pop()
                total = sum(self._count.values())
                for i in allowed:
                    room = self._count[i] == 0 if self._exclusive else True
                    if room and (self._limit is None or total < self._limit):
                        self._count[i] += 1
                        try:
                            return self._make(i)
                        except BaseException:
                            self._count[i] -= 1
                            raise
                self._cond.wait()

    def release(self, slot: Slot) -> None:
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
