"""I/O binding: output buffers allocated once per shape and reused, and device arrays.

`Session.bind()` returns a `Binding` (the contract lives in backends/base.py). This module
holds what every binding shares:

- `HostBinding`, the default for backends without a binding of their own: the backend runs
  as usual and each output is copied into a buffer the binding owns (allocated again only
  when the output's shape changes), or into the array the caller gave for it.
- `parse_outputs`, the one reading of `bind(outputs=...)`.
- `device_array` / `DeviceArray`: inputs and outputs in device memory, recognised through
  `__cuda_array_interface__` or DLPack (`__dlpack__` / `__dlpack_device__`) without importing
  any framework, so a backend that can read device memory binds the pointer as it is.
- `FeedCheck`: `Session.run`'s feed validation, letting device arrays through to the backend.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .device import Device
from .errors import InputError, OptionError
from .tensors import FeedValidator, TensorSpec, describe, dtype_info

if TYPE_CHECKING:
    from .backends.base import Session

from .backends.base import Binding

log = logging.getLogger(__name__)

# DLPack's DLDeviceType values (dlpack.h).
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_ROCM, _DL_ROCM_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 10, 11, 13
_DL_HOST = frozenset({_DL_CPU, _DL_CUDA_HOST, _DL_ROCM_HOST})
_DL_KINDS = {_DL_CUDA: "cuda", _DL_CUDA_MANAGED: "cuda", _DL_ROCM: "rocm", 4: "opencl", 7: "vulkan",
             8: "metal", 9: "vpi", 12: "ext_dev", 14: "oneapi", 15: "webgpu", 16: "hexagon"}  # fmt: skip
# DLPack's DLDataTypeCode values -> numpy kind letter.
_DL_CODES = {0: "i", 1: "u", 2: "f", 4: "bfloat", 5: "c", 6: "b"}


@dataclass(frozen=True, eq=False)
class DeviceArray:
    """A C-contiguous tensor in device memory: where it is, its shape and element type.

    It keeps `owner` (the object it came from, or the runtime buffer) alive. CUDA arrays
    expose `__cuda_array_interface__`, so CuPy, PyTorch, Numba and JAX can take them
    without a copy; `numpy()` copies to the host where the runtime that owns it can.
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device: Device
    owner: Any = field(default=None, repr=False)
    to_host: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        if self.device.kind != "cuda":
            raise AttributeError(f"a {self.device.kind} array has no __cuda_array_interface__")
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
        }

    def numpy(self) -> np.ndarray:
        """A host copy."""
        if self.to_host is None:
            raise InputError(
                f"this {self.device} array has no host copy here; copy it with the framework that owns it"
            )
        return self.to_host()

    def __repr__(self) -> str:
        return (
            f"DeviceArray({describe(self.shape, self.dtype)} on {self.device}, ptr=0x{self.ptr:x})"
        )


def device_array(obj: Any) -> DeviceArray | None:
    """`obj` as a DeviceArray if it lives in device (not host) memory, else None.

    Reads `__cuda_array_interface__` (CuPy, Numba, PyTorch CUDA tensors) or DLPack's
    `__dlpack_device__` / `__dlpack__` (PyTorch, JAX, CuPy, TensorFlow); imports nothing.
    """
    if isinstance(obj, DeviceArray):
        return obj
    if isinstance(obj, np.ndarray):
        return None
    try:
        cai = obj.__cuda_array_interface__
    except AttributeError:
        cai = None
    except Exception as e:  # e.g. a framework refusing to export a tensor with grad
        raise InputError(f"{type(obj).__name__}.__cuda_array_interface__ failed: {e}") from e
    if cai is not None:
        return from_cuda_array_interface(cai, obj)
    where = getattr(obj, "__dlpack_device__", None)
    if where is None:
        return None
    if int(where()[0]) in _DL_HOST:
        return None
    try:
        capsule = obj.__dlpack__()
    except Exception as e:
        raise InputError(f"{type(obj).__name__}.__dlpack__() failed: {e}") from e
    array = from_dlpack_capsule(capsule)
    return DeviceArray(array.ptr, array.shape, array.dtype, array.device, owner=(obj, capsule))


def host_array(obj: Any) -> np.ndarray | None:
    """A zero-copy numpy view of a host-memory DLPack object (None if it is not one)."""
    where = getattr(obj, "__dlpack_device__", None)
    if where is None or isinstance(obj, np.ndarray) or int(where()[0]) not in _DL_HOST:
        return None
    try:
        return np.from_dlpack(obj)
    except Exception:  # e.g. a dtype numpy cannot hold: let numpy's own conversion try later
        return None


def from_cuda_array_interface(cai: Mapping[str, Any], owner: Any = None) -> DeviceArray:
    """A DeviceArray from a `__cuda_array_interface__` dict (C-contiguous arrays only).

    The interface does not say which GPU holds the memory; the array is taken to be on the
    device the session runs on (index None). Its optional "stream" is not waited on: the
    producer's work on the array must be finished (synchronized) before it is bound.
    """
    try:
        shape = tuple(int(d) for d in cai["shape"])
        dtype = np.dtype(cai["typestr"])
        ptr = int(cai["data"][0])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed __cuda_array_interface__ {dict(cai)!r}: {e}") from e
    strides = cai.get("strides")
    if strides is not None and tuple(strides) != _contiguous(shape, dtype.itemsize):
        raise InputError(
            f"device array of shape {list(shape)} has strides {list(strides)}; bind a C-contiguous "
            "array (e.g. .contiguous() / cupy.ascontiguousarray)"
        )
    return DeviceArray(ptr, shape, dtype, Device("cuda"), owner=owner)


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


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)


def from_dlpack_capsule(capsule: Any) -> DeviceArray:
    """Read a (legacy, unversioned) DLPack capsule without consuming it.

    The capsule stays the owner: the memory is valid while the returned array (which holds
    the capsule) lives, and the producer's deleter runs when the capsule is collected.
    """
    try:
        address = _capsule_pointer(capsule, b"dltensor")
    except (ValueError, TypeError) as e:
        raise InputError(f"not a DLPack capsule (or one already consumed): {e}") from e
    t = _DLTensor.from_address(address)  # DLManagedTensor starts with its DLTensor
    code, bits, lanes = t.dtype.code, t.dtype.bits, t.dtype.lanes
    kind = _DL_CODES.get(code)
    if kind is None or lanes != 1:
        raise InputError(f"DLPack dtype (code {code}, {bits} bits, {lanes} lanes) is not supported")
    dtype = dtype_info("bfloat16").numpy if kind == "bfloat" else np.dtype(f"{kind}{bits // 8}")
    if kind == "b":
        dtype = np.dtype(np.bool_)
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.strides:
        strides = tuple(int(t.strides[i]) * dtype.itemsize for i in range(t.ndim))
        if any(d > 1 for d in shape) and strides != _contiguous(shape, dtype.itemsize):
            raise InputError(
                f"DLPack tensor of shape {list(shape)} is not C-contiguous; bind a contiguous copy"
            )
    dev_type = int(t.device.device_type)
    device = (
        Device("cpu")
        if dev_type in _DL_HOST
        else Device(_DL_KINDS.get(dev_type, f"dlpack{dev_type}"), int(t.device.device_id))
    )
    return DeviceArray(int(t.data or 0) + int(t.byte_offset), shape, dtype, device, owner=capsule)


def _contiguous(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


# -- feeds ----------------------------------------------------------------------------------


class FeedCheck:
    """Session feed validation that passes device arrays through as `DeviceArray`s.

    Host feeds go through the session's `FeedValidator`; device arrays are checked for name,
    dtype (no casting on a device) and fixed dims. Whether the backend can read that device's
    memory is the binding's to say. Feeding the very arrays of the previous call (the usual
    loop over a bound input refilled in place) skips validation: they passed it already.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._validate = session._validate
        self._specs = {s.name: s for s in session.inputs}
        self._count = len(self._specs)
        self._partial: dict[frozenset[str], FeedValidator] = {}
        self._last: dict[str, tuple[Any, tuple[int, ...]]] = {}  # name -> (array, its shape)

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if type(feeds) is dict and len(feeds) == self._count:
            last = self._last
            for name, value in feeds.items():
                seen = last.get(name)
                if seen is None or seen[0] is not value or seen[1] != value.shape:
                    break
            else:
                return feeds  # type: ignore[return-value]
        out = self._check(feeds)
        # Remember the arrays that passed unchanged (not cast or copied).
        last = {}
        for n, v in out.items():
            if v is feeds.get(n) and (type(v) is np.ndarray or isinstance(v, DeviceArray)):
                last[n] = (v, v.shape)
        self._last = last
        return out

    def _check(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if type(feeds) is dict:
            for value in feeds.values():
                if type(value) is not np.ndarray:
                    break
            else:
                return self._validate(feeds)
        if not isinstance(feeds, Mapping) or feeds.keys() != self._specs.keys():
            return self._validate(feeds)  # raises the usual message (or takes host feeds)
        device: dict[str, DeviceArray] = {}
        host: dict[str, Any] = {}
        for name, value in feeds.items():
            arr = device_array(value)
            if arr is not None:
                device[name] = self._check_device(name, arr)
            else:
                view = host_array(value)
                host[name] = view if view is not None else value
        if not device:
            return self._validate(host)
        rest = frozenset(host)
        validator = self._partial.get(rest)
        if validator is None:
            validator = FeedValidator(
                [self._specs[n] for n in host], cast=self.session.options.cast
            )
            self._partial[rest] = validator
        out: dict[str, Any] = dict(validator(host)) if host else {}
        out.update(device)
        return out

    def _check_device(self, name: str, arr: DeviceArray) -> DeviceArray:
        spec = self._specs[name]
        if arr.dtype != spec.dtype:
            raise InputError(
                f"input {name!r}: expected dtype {dtype_info(spec.dtype).name} "
                f"({describe(spec.shape, spec.dtype)}), got a {arr.device} array of "
                f"{_dtype_name(arr.dtype)}; device arrays are not cast, convert it first"
            )
        if not _fits(spec, arr.shape):
            raise InputError(
                f"input {name!r}: expected {describe(spec.shape, spec.dtype)}, got a "
                f"{arr.device} array of shape {list(arr.shape)}"
            )
        return arr


def refuse_device_inputs(session: Session, feeds: Mapping[str, Any]) -> None:
    """Raise InputError for any feed in device memory: for bindings that read host memory only."""
    for name, value in feeds.items():
        if isinstance(value, DeviceArray):
            raise InputError(
                f"input {name!r} is in {value.device} memory, but {session.backend} reads this "
                f"model's inputs from host memory on {session.device}: pass a numpy array "
                f"(copy it to the host), or load the engine on {value.device.kind}"
            )


# -- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputPlan:
    """What `bind(outputs=...)` asked for: device outputs or not, and the caller's arrays."""

    device: bool
    given: Mapping[str, Any]


def parse_outputs(session: Session, outputs: Any, *, device_outputs: bool = False) -> OutputPlan:
    """Check `bind(outputs=...)`: "host", "device", or {output name: preallocated array}.

    device_outputs: whether the binding can leave outputs in device memory. "device" on a
    session whose device is the host means host buffers: the same code runs on every machine.
    """
    if isinstance(outputs, str):
        if outputs == "host":
            return OutputPlan(False, {})
        if outputs == "device":
            if session.device.kind == "cpu":
                return OutputPlan(False, {})
            if not device_outputs:
                raise OptionError(
                    f"bind(outputs='device'): the {session.backend} binding on {session.device} "
                    "returns host arrays only; use outputs='host'"
                )
            return OutputPlan(True, {})
        raise OptionError(
            f"bind(outputs={outputs!r}) is not valid; use 'host', 'device' or "
            "{output name: preallocated array}"
        )
    if not isinstance(outputs, Mapping):
        raise OptionError(
            "bind(outputs=...) must be 'host', 'device' or a dict of output name -> array, "
            f"got {type(outputs).__name__}"
        )
    specs = {s.name: s for s in session.outputs}
    unknown = sorted(set(outputs) - set(specs))
    if unknown:
        raise OptionError(
            f"bind(outputs=...): unknown output(s) {unknown}; the model's outputs are {list(specs)}"
        )
    given: dict[str, Any] = {}
    for name, value in outputs.items():
        spec = specs[name]
        arr = device_array(value)
        if arr is not None:
            if not device_outputs:
                raise OptionError(
                    f"bind(outputs={{{name!r}: ...}}): a {arr.device} array, but the "
                    f"{session.backend} binding on {session.device} writes host memory only"
                )
            _check_target(name, spec, arr.dtype, arr.shape)
            given[name] = arr
            continue
        if not isinstance(value, np.ndarray):
            raise OptionError(
                f"bind(outputs={{{name!r}: ...}}) must be a numpy or device array, got {type(value).__name__}"
            )
        if not value.flags.c_contiguous or not value.flags.writeable:
            raise OptionError(
                f"bind(outputs={{{name!r}: ...}}): the array must be C-contiguous and writeable"
            )
        _check_target(name, spec, value.dtype, value.shape)
        given[name] = value
    return OutputPlan(False, given)


def _check_target(name: str, spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if dtype != spec.dtype:
        raise OptionError(
            f"bind(outputs={{{name!r}: ...}}): output {name!r} is {describe(spec.shape, spec.dtype)}, "
            f"the array given is {_dtype_name(dtype)}"
        )
    if not _fits(spec, shape):
        raise OptionError(
            f"bind(outputs={{{name!r}: ...}}): output {name!r} is {describe(spec.shape, spec.dtype)}, "
            f"the array given has shape {list(shape)}"
        )


def _fits(spec: TensorSpec, shape: tuple[int, ...]) -> bool:
    """Whether `shape` has the spec's rank and its fixed dims."""
    return spec.shape is None or (
        len(shape) == len(spec.shape)
        and all(not isinstance(w, int) or w == g for w, g in zip(spec.shape, shape))
    )


def _dtype_name(dtype: np.dtype) -> str:
    try:
        return dtype_info(dtype).name
    except KeyError:
        return str(dtype)


def target_mismatch(name: str, target: Any, shape: tuple[int, ...]) -> InputError:
    """The error for a run whose output does not fit the array the caller bound for it."""
    return InputError(
        f"output {name!r} has shape {list(shape)} for these inputs, but the array bound for it "
        f"has shape {list(target.shape)}; bind an array of that shape (or let the binding allocate)"
    )


class HostBinding(Binding):
    """The default binding: runs the session as usual, then copies each output into a
    buffer allocated once per shape (or into the array the caller bound for it).

    It keeps the arrays it returns stable across runs; the backend still allocates its own
    results inside each run. Backends with a binding of their own (ONNX Runtime's IOBinding)
    write straight into the buffers instead.
    """

    def __init__(self, session: Session, outputs: Any = "host") -> None:
        super().__init__(session)
        self._plan = parse_outputs(session, outputs)
        self._buffers: dict[str, np.ndarray] = dict(self._plan.given)

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        refuse_device_inputs(self.session, feeds)
        results = self.session._run(feeds, None)
        return {name: self._store(name, value) for name, value in results.items()}

    def _store(self, name: str, value: Any) -> Any:
        if not isinstance(value, np.ndarray):
            return value  # sequences and maps are handed through as the backend returns them
        buf = self._buffers.get(name)
        if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
            if name in self._plan.given:
                raise target_mismatch(name, buf, value.shape)
            log.debug(
                "binding on %s: output %r buffer allocated for %s (was %s)",
                self.session.backend,
                name,
                describe(value.shape, value.dtype),
                "none" if buf is None else describe(buf.shape, buf.dtype),
            )
            buf = self._buffers[name] = np.empty(value.shape, value.dtype)
        np.copyto(buf, value)
        return buf
