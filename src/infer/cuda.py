"""CUDA device memory, pinned host memory, streams and events through cuda-python.

The GPU backends move data with these few calls (`cuda.bindings.runtime`, the CUDA runtime API
that TensorRT, PyTorch and CuPy share, so pointers and streams pass between them as plain ints).
Nothing here is imported by `import infer`; cuda-python is loaded on first use.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Any

import numpy as np

_ALIGN = 256  # what cudaMalloc guarantees; sizes are rounded up to it so buffers can grow in place


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


@functools.cache
def _runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
        except ImportError as e:
            raise CudaError(
                'cuda-python is not installed (pip install "infer-engine[tensorrt]" or cuda-python)'
            ) from e
    return runtime


def unavailable() -> str | None:
    """Why CUDA cannot be driven from Python here, or None when it can."""
    try:
        rt = _runtime()
    except CudaError as e:
        return str(e)
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0:
        return f"cudaGetDeviceCount returned {_error_name(err)}"
    return None if count else "the CUDA runtime sees no GPU"


def _error_name(err: Any) -> str:
    name = getattr(err, "name", None) or str(err)
    try:
        ok, text = _runtime().cudaGetErrorString(err)
        if int(ok) == 0:
            return f"{name}: {text.decode(errors='replace')}"
    except Exception:  # an unloaded runtime at exit, an unknown code
        pass
    return name


def check(result: tuple, what: str) -> Any:
    """The value(s) a cuda-python call returned after its error code; raises CudaError."""
    err = result[0]
    if int(err) != 0:
        raise CudaError(f"{what} failed: {_error_name(err)}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def set_device(index: int) -> None:
    """Make GPU `index` current for the calling thread (the runtime's current device is per thread)."""
    check(_runtime().cudaSetDevice(index), f"cudaSetDevice({index})")


def _round(nbytes: int) -> int:
    return max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN)


def _free_device(ptr: int) -> None:
    with contextlib.suppress(Exception):  # interpreter shutdown: the process frees it anyway
        _runtime().cudaFree(ptr)


def _free_host(ptr: int) -> None:
    with contextlib.suppress(Exception):
        _runtime().cudaFreeHost(ptr)


class DeviceMemory:
    """A block of device memory on the current GPU (cudaMalloc), freed by `free()` or when collected."""

    __slots__ = ("__weakref__", "_finalizer", "nbytes", "ptr")

    def __init__(self, nbytes: int) -> None:
        size = _round(nbytes)
        self.ptr = int(check(_runtime().cudaMalloc(size), f"cudaMalloc({_size_text(size)})"))
        self.nbytes = size
        self._finalizer = weakref.finalize(self, _free_device, self.ptr)
        self._finalizer.atexit = False

    def free(self) -> None:
        self._finalizer()
        self.ptr, self.nbytes = 0, 0

    def __repr__(self) -> str:
        return f"<DeviceMemory {_size_text(self.nbytes)} at {self.ptr:#x}>"


class HostMemory:
    """Page-locked host memory (cudaHostAlloc): the staging area for fast, asynchronous copies."""

    __slots__ = ("__weakref__", "_finalizer", "nbytes", "ptr")

    def __init__(self, nbytes: int) -> None:
        rt = _runtime()
        size = _round(nbytes)
        self.ptr = int(
            check(
                rt.cudaHostAlloc(size, rt.cudaHostAllocDefault),
                f"cudaHostAlloc({_size_text(size)})",
            )
        )
        self.nbytes = size
        self._finalizer = weakref.finalize(self, _free_host, self.ptr)
        self._finalizer.atexit = False

    def array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of the first bytes of this memory; the view keeps the memory alive."""
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * np.dtype(dtype).itemsize
        if nbytes > self.nbytes:
            raise ValueError(f"{nbytes} bytes asked of a {self.nbytes}-byte host buffer")
        return np.asarray(_Hold(self.ptr, nbytes, self)).view(dtype).reshape(shape)

    def free(self) -> None:
        self._finalizer()
        self.ptr, self.nbytes = 0, 0

    def __repr__(self) -> str:
        return f"<HostMemory {_size_text(self.nbytes)} at {self.ptr:#x}>"


class _Hold:
    """Raw memory shown to numpy (`__array_interface__`); the array's base keeps `owner` alive."""

    def __init__(self, ptr: int, nbytes: int, owner: object) -> None:
        self.__array_interface__ = {
            "data": (ptr, False),
            "shape": (nbytes,),
            "typestr": "|u1",
            "version": 3,
        }
        self.owner = owner


class Growable:
    """A buffer reallocated only when a larger size is asked for (device or pinned host)."""

    __slots__ = ("_kind", "memory")

    def __init__(self, kind: type[DeviceMemory] | type[HostMemory]) -> None:
        self._kind = kind
        self.memory: DeviceMemory | HostMemory | None = None

    def ensure(self, nbytes: int) -> DeviceMemory | HostMemory:
        memory = self.memory
        if memory is None or memory.nbytes < nbytes:
            # The old block is dropped, not freed: arrays handed out may still hold it.
            self.memory = None
            memory = self.memory = self._kind(nbytes)
        return memory

    def free(self) -> None:
        """Let go of the block; it is freed once no array handed out refers to it."""
        self.memory = None


class Stream:
    """A non-blocking CUDA stream (it does not synchronize with the legacy default stream)."""

    __slots__ = ("__weakref__", "_finalizer", "handle")

    def __init__(self) -> None:
        rt = _runtime()
        stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate")
        self.handle = int(stream)
        self._finalizer = weakref.finalize(self, _destroy_stream, self.handle)
        self._finalizer.atexit = False

    def synchronize(self) -> None:
        check(_runtime().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def wait(self, event: Event) -> None:
        """Order this stream's later work after `event` (no host wait)."""
        check(_runtime().cudaStreamWaitEvent(self.handle, event.handle, 0), "cudaStreamWaitEvent")

    def close(self) -> None:
        self._finalizer()
        self.handle = 0


def _destroy_stream(handle: int) -> None:
    with contextlib.suppress(Exception):
        _runtime().cudaStreamDestroy(handle)


class Event:
    """A CUDA event without timing, to order one stream after work queued on another."""

    __slots__ = ("__weakref__", "_finalizer", "handle")

    def __init__(self) -> None:
        rt = _runtime()
        event = check(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreate")
        self.handle = int(event)
        self._finalizer = weakref.finalize(self, _destroy_event, self.handle)
        self._finalizer.atexit = False

    def record(self, stream: int) -> None:
        check(_runtime().cudaEventRecord(self.handle, stream), "cudaEventRecord")

    def close(self) -> None:
        self._finalizer()
        self.handle = 0


def _destroy_event(handle: int) -> None:
    with contextlib.suppress(Exception):
        _runtime().cudaEventDestroy(handle)


@functools.cache
def _kinds() -> tuple[Any, Any, Any]:
    kind = _runtime().cudaMemcpyKind
    return kind.cudaMemcpyHostToDevice, kind.cudaMemcpyDeviceToHost, kind.cudaMemcpyDeviceToDevice


def copy_to_device(dst: int, src: int, nbytes: int, stream: int) -> None:
    """Queue a host -> device copy on `stream` (asynchronous when `src` is page-locked)."""
    if nbytes:
        check(
            _runtime().cudaMemcpyAsync(dst, src, nbytes, _kinds()[0], stream),
            "cudaMemcpyAsync(H2D)",
        )


def copy_to_host(dst: int, src: int, nbytes: int, stream: int) -> None:
    """Queue a device -> host copy on `stream`; the data is there after the stream synchronizes."""
    if nbytes:
        check(
            _runtime().cudaMemcpyAsync(dst, src, nbytes, _kinds()[1], stream),
            "cudaMemcpyAsync(D2H)",
        )


def copy_on_device(dst: int, src: int, nbytes: int, stream: int) -> None:
    """Queue a device -> device copy on `stream`."""
    if nbytes:
        check(
            _runtime().cudaMemcpyAsync(dst, src, nbytes, _kinds()[2], stream),
            "cudaMemcpyAsync(D2D)",
        )


def copy_to_host_now(dst: int, src: int, nbytes: int) -> None:
    """Copy device -> host and wait for it (for one-off reads, not the hot path)."""
    if nbytes:
        check(_runtime().cudaMemcpy(dst, src, nbytes, _kinds()[1]), "cudaMemcpy(D2H)")


def pointer_device(ptr: int) -> int | None:
    """The GPU ordinal that owns device memory at `ptr`; None for host or unregistered memory."""
    rt = _runtime()
    err, attrs = rt.cudaPointerGetAttributes(ptr)
    if int(err) != 0:
        return None
    kind = attrs.type
    if kind in (rt.cudaMemoryType.cudaMemoryTypeDevice, rt.cudaMemoryType.cudaMemoryTypeManaged):
        return int(attrs.device)
    return None


def _size_text(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{nbytes} B"  # pragma: no cover
