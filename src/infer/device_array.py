"""Arrays in GPU memory, exchanged without copies through the two protocols the field uses.

Reading: a PyTorch CUDA tensor, a CuPy array, a Numba or JAX device array is recognised by
DLPack (`__dlpack__` / `__dlpack_device__`) or `__cuda_array_interface__` (CAI) and described
by a `DeviceView`: pointer, shape, dtype, device and the stream to wait for.

Writing: `DeviceArray` is device memory infer owns (a GPU backend's outputs) exposed through
both protocols, so `torch.as_tensor(a, device="cuda")`, `torch.from_dlpack(a)`,
`cupy.asarray(a)` and `jax.dlpack.from_dlpack(a)` take it without a copy.

Only the protocols are touched here; no array library is imported.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

# DLPack device types (dlpack.h, DLDeviceType)
DL_CPU = 1
DL_CUDA = 2
DL_CUDA_HOST = 3
DL_CUDA_MANAGED = 13
_DL_GPU_MEMORY = frozenset({DL_CUDA, DL_CUDA_MANAGED})

# DLPack dtype codes (DLDataTypeCode)
_DL_INT, _DL_UINT, _DL_FLOAT, _DL_BFLOAT, _DL_BOOL = 0, 1, 2, 4, 6


@dataclass(frozen=True, eq=False)
class DeviceView:
    """A device array described by its protocol: where its memory is and how it is laid out."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device: int | None  # CUDA ordinal when the protocol says (DLPack does, CAI does not)
    strides: tuple[int, ...] | None  # in bytes; None: C-contiguous
    stream: int | None = None  # the producer's stream to wait for before reading (CAI v3)
    source: Any = field(default=None, repr=False)  # the array object itself
    owner: Any = field(default=None, repr=False)  # keeps the memory alive while the view is used
    release: Callable[[], None] | None = field(default=None, repr=False)  # DLPack deleter

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def contiguous(self) -> bool:
        return self.strides is None or _is_c_contiguous(
            self.shape, self.strides, self.dtype.itemsize
        )

    def close(self) -> None:
        """Tell the producer the memory is no longer used (DLPack); idempotent."""
        release = self.release
        if release is not None:
            object.__setattr__(self, "release", None)
            release()


def _is_c_contiguous(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    if any(d == 0 for d in shape):
        return True
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def is_device_array(value: Any) -> bool:
    """Whether `value` lives in GPU memory and says so through CAI or DLPack.

    Cheap enough to call per feed: numpy arrays are answered by their type.
    """
    if type(value) is np.ndarray:
        return False
    try:
        if getattr(value, "__cuda_array_interface__", None) is not None:
            return True
    except Exception:  # e.g. a CPU torch tensor raises on the attribute
        pass
    return _dlpack_device_type(value) in _DL_GPU_MEMORY


def view(value: Any, stream: int | None = None) -> DeviceView:
    """Describe a device array; `stream` is the consumer's stream. Call `close()` on the view
    once the memory is no longer read.

    DLPack is preferred where both protocols are offered: the producer then orders its pending
    work before `stream` itself (PyTorch's CAI is version 2, which carries no stream at all).
    """
    if _dlpack_device_type(value) in _DL_GPU_MEMORY:
        return _from_dlpack(value, stream)
    try:
        cai = value.__cuda_array_interface__
    except Exception:
        cai = None
    if cai is None:
        raise TypeError(f"{type(value).__name__} is not a CUDA device array")
    return _from_cai(value, cai)


def _dlpack_device_type(value: Any) -> int | None:
    dev = getattr(value, "__dlpack_device__", None)
    if dev is None or not hasattr(value, "__dlpack__"):
        return None
    try:
        return int(dev()[0])
    except Exception:
        return None


def _from_cai(value: Any, cai: dict[str, Any]) -> DeviceView:
    kind = type(value).__name__
    if cai.get("mask") is not None:
        raise ValueError(f"{kind} is a masked device array; masks are not supported")
    ptr, _readonly = cai["data"]
    shape = tuple(int(d) for d in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    if dtype.byteorder == ">":
        raise ValueError(f"{kind} holds big-endian {dtype}; device arrays must be little-endian")
    strides = cai.get("strides")
    stream = cai.get("stream") if int(cai.get("version", 0)) >= 3 else None
    if stream == 0:
        raise ValueError(
            f"{kind} reports stream 0 in __cuda_array_interface__, which CAI v3 disallows"
        )
    return DeviceView(
        ptr=int(ptr or 0),
        shape=shape,
        dtype=dtype,
        device=None,
        strides=None if strides is None else tuple(int(s) for s in strides),
        stream=None if stream is None else int(stream),
        source=value,
        owner=value,
    )


# -- DLPack ------------------------------------------------------------------------------------


class _DLDevice(ctypes.Structure):
    _fields_ = (("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32))


class _DLDataType(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16))


class _DLTensor(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    )


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = (("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter))


# The capsule names must outlive every capsule: module constants do.
_NAME = b"dltensor"
_USED = b"used_dltensor"

# Python C API calls through PYFUNCTYPE (they keep the GIL); separate prototypes from
# ctypes.pythonapi's shared function objects so no one else's argtypes are changed.
_api = ctypes.pythonapi
_capsule_get = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _api)
)
_capsule_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", _api)
)
_capsule_rename = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_SetName", _api)
)
_Destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, _Destructor)(
    ("PyCapsule_New", _api)
)
# The destructor gets the dying capsule as a raw pointer: never wrap it in a py_object.
_capsule_valid_raw = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", _api)
)
_capsule_get_raw = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _api)
)

_DTYPES: dict[tuple[int, int], np.dtype] = {
    (_DL_INT, 8): np.dtype(np.int8),
    (_DL_INT, 16): np.dtype(np.int16),
    (_DL_INT, 32): np.dtype(np.int32),
    (_DL_INT, 64): np.dtype(np.int64),
    (_DL_UINT, 8): np.dtype(np.uint8),
    (_DL_UINT, 16): np.dtype(np.uint16),
    (_DL_UINT, 32): np.dtype(np.uint32),
    (_DL_UINT, 64): np.dtype(np.uint64),
    (_DL_FLOAT, 16): np.dtype(np.float16),
    (_DL_FLOAT, 32): np.dtype(np.float32),
    (_DL_FLOAT, 64): np.dtype(np.float64),
    (_DL_BFLOAT, 16): np.dtype(ml_dtypes.bfloat16),
    (_DL_BOOL, 8): np.dtype(np.bool_),
}
_CODES = {dtype: key for key, dtype in _DTYPES.items()}


def _from_dlpack(value: Any, stream: int | None) -> DeviceView:
    kind = type(value).__name__
    dev_type, _ = value.__dlpack_device__()
    # The stream argument is for CUDA producers only (CPU producers must get None).
    capsule = (
        value.__dlpack__(stream=stream) if int(dev_type) in _DL_GPU_MEMORY else value.__dlpack__()
    )
    if not _capsule_valid(capsule, _NAME):
        raise ValueError(f"{kind}.__dlpack__() returned no unused 'dltensor' capsule")
    address = _capsule_get(capsule, _NAME)
    managed = _DLManagedTensor.from_address(address)
    # From here the consumer owns the tensor: rename, so the capsule's destructor leaves it alone.
    _capsule_rename(capsule, _USED)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            if managed.deleter:
                managed.deleter(address)

    try:
        t = managed.dl_tensor
        dtype = _DTYPES.get((t.dtype.code, t.dtype.bits))
        if dtype is None or t.dtype.lanes != 1:
            raise ValueError(
                f"{kind} has DLPack dtype code {t.dtype.code}, {t.dtype.bits} bits x {t.dtype.lanes} "
                "lanes, which has no numpy equivalent here"
            )
        shape = tuple(int(t.shape[i]) for i in range(t.ndim))
        strides = (
            None
            if not t.strides
            else tuple(int(t.strides[i]) * dtype.itemsize for i in range(t.ndim))
        )
        return DeviceView(
            ptr=int(t.data or 0) + int(t.byte_offset),
            shape=shape,
            dtype=dtype,
            device=int(t.device.device_id) if t.device.device_type in _DL_GPU_MEMORY else None,
            strides=strides,
            stream=None,  # the producer ordered its work before `stream` itself
            source=value,
            owner=capsule,
            release=release,
        )
    except BaseException:
        release()
        raise


_exports: dict[int, tuple[Any, ...]] = {}  # address of a DLManagedTensor -> what keeps it alive
_exports_lock = threading.Lock()


@_Deleter
def _export_deleter(address: int) -> None:
    with _exports_lock:
        _exports.pop(address, None)


@_Destructor
def _capsule_destructor(capsule: int) -> None:
    # A capsule nobody consumed still owns its tensor (a consumer renames it to "used_dltensor").
    if _capsule_valid_raw(capsule, _NAME):
        address = _capsule_get_raw(capsule, _NAME)
        if address:
            _export_deleter(address)


def to_dlpack(
    ptr: int, shape: tuple[int, ...], dtype: np.dtype, device: tuple[int, int], owner: Any
) -> Any:
    """A 'dltensor' capsule over memory at `ptr`; `owner` is kept alive until the consumer is done."""
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(f"{np.dtype(dtype)} has no DLPack equivalent")
    ndim = len(shape)
    dims = (ctypes.c_int64 * max(ndim, 1))(*shape)
    managed = _DLManagedTensor()
    t = managed.dl_tensor
    t.data = ptr or None
    t.device = _DLDevice(*device)
    t.ndim = ndim
    t.dtype = _DLDataType(code[0], code[1], 1)
    t.shape = ctypes.cast(dims, ctypes.POINTER(ctypes.c_int64))
    t.strides = None  # C-contiguous
    t.byte_offset = 0
    managed.deleter = _export_deleter
    address = ctypes.addressof(managed)
    with _exports_lock:
        _exports[address] = (managed, dims, owner)
    try:
        return _capsule_new(address, _NAME, _capsule_destructor)
    except BaseException:
        _export_deleter(address)
        raise


class DeviceArray:
    """A C-contiguous array in CUDA device memory that infer owns, shared through CAI and DLPack.

    `numpy()` copies it to the host. Arrays a binding returns are its bound buffers: the next
    run overwrites them (copy them, or run with `copy=True`, to keep them).
    """

    __slots__ = ("__weakref__", "_owner", "device", "dtype", "ptr", "shape")

    def __init__(
        self, ptr: int, shape: tuple[int, ...], dtype: np.dtype, device: int, owner: Any
    ) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.device = int(device)
        self._owner = owner  # the memory (and whatever must outlive it)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
            "stream": None,  # infer synchronizes before it hands an array out
        }

    def __dlpack_device__(self) -> tuple[int, int]:
        return (DL_CUDA, self.device)

    def __dlpack__(
        self,
        *,
        stream: int | None = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any:
        # The data is complete before the array is handed out, so any consumer stream may read it.
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(
                f"DeviceArray lives on cuda:{self.device}, not DLPack device {dl_device}"
            )
        if copy:
            raise BufferError("DeviceArray exports its memory without copying (copy=True asked)")
        return to_dlpack(self.ptr, self.shape, self.dtype, (DL_CUDA, self.device), self)

    def numpy(self) -> np.ndarray:
        """A host copy (synchronous)."""
        from . import cuda

        out = np.empty(self.shape, self.dtype)
        cuda.copy_to_host_now(out.ctypes.data, self.ptr, out.nbytes)
        return out

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={list(self.shape)}, dtype={self.dtype}, device='cuda:{self.device}')"
