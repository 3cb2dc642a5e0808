"""Device-array plumbing shared by the I/O edge and the bindings that read GPU memory in place.

The binding contract itself (`Binding`, `HostBinding`, the output plan) lives beside
`Session` in backends/base.py; this module holds what it and the backends need to tell where
an array lives and to read a device array in place, checked against a model input:

- `host_array`: a zero-copy numpy view of a host-memory DLPack object.
- `device_shape`: a device array's shape, read without taking its memory (for the feed check).
- `device_view`: a device input read in place, with its dtype, shape, layout and GPU checked.
- `where_is`, `fits`, `dtype_name`: the words and tests the edge's messages share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import device_array
from .device_array import DeviceView
from .errors import InputError
from .tensors import DTYPES, TensorSpec, describe, dtype_info

_KNOWN = frozenset(row.numpy for row in DTYPES)


def host_array(obj: Any) -> np.ndarray | None:
    """A zero-copy numpy view of a host-memory DLPack object (None if it is not one)."""
    where = getattr(obj, "__dlpack_device__", None)
    if where is None or isinstance(obj, np.ndarray):
        return None
    try:
        if int(where()[0]) not in (device_array.DL_CPU, device_array.DL_CUDA_HOST):
            return None
        return np.from_dlpack(obj)
    except Exception:  # e.g. a dtype numpy cannot hold: numpy's own conversion tries later
        return None


def where_is(value: Any) -> str:
    """'cuda:N' (or 'cuda' when the array's protocol does not say which GPU) for messages."""
    try:
        kind, index = value.__dlpack_device__()
        if int(kind) in (device_array.DL_CUDA, device_array.DL_CUDA_MANAGED):
            return f"cuda:{int(index)}"
    except Exception:
        pass
    return "cuda"


def device_shape(spec: TensorSpec, value: Any) -> tuple[int, ...]:
    """A device input's shape, read from its protocol without taking its memory, checked
    against the input's rank and fixed dimensions."""
    try:
        cai = value.__cuda_array_interface__
    except Exception:
        cai = None
    raw = cai["shape"] if cai is not None else getattr(value, "shape", None)
    try:
        shape = tuple(int(d) for d in raw)  # type: ignore[union-attr]
    except TypeError:
        raise InputError(
            f"input {spec.name!r}: {type(value).__name__} is a DLPack device array without a "
            "shape attribute"
        ) from None
    if spec.shape is None:
        return shape
    # Worded as the host feed check words the same mistakes (tensors.FeedValidator).
    if len(shape) != len(spec.shape):
        raise InputError(
            f"input {spec.name!r}: expected rank {len(spec.shape)} "
            f"({describe(spec.shape, spec.dtype)}), got a device array of shape {list(shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if isinstance(want, int) and want != got:
            raise InputError(
                f"input {spec.name!r}: dimension {axis} must be {want} "
                f"({describe(spec.shape, spec.dtype)}), got a device array of shape {list(shape)}"
            )
    return shape


def device_view(
    spec: TensorSpec, value: Any, stream: int | None = None, device: int | None = None
) -> DeviceView:
    """A device input read in place: its view, checked against the model input `spec`.

    stream: the consumer's CUDA stream (DLPack producers order their work before it);
    device: the GPU the engine runs on, refused when the array is on another. The caller owns
    the view and must `close()` it once the memory is no longer read.
    """
    name = spec.name
    try:
        view = device_array.view(value, stream)
    except Exception as e:  # masked arrays, odd dtypes, tensors that refuse to export
        raise InputError(
            f"input {name!r}: the {type(value).__name__} cannot be read in place: {e}"
        ) from e
    problem = None
    if view.dtype != spec.dtype:
        problem = (
            f"holds {dtype_name(view.dtype)}; device arrays are read in place, so cast it on "
            "the device first"
        )
    elif not fits(spec, view.shape):
        problem = f"has shape {list(view.shape)}"
    elif not view.contiguous:
        problem = (
            f"is not C-contiguous (strides {list(view.strides or ())} bytes for shape "
            f"{list(view.shape)}); make it contiguous on the device first"
        )
    if problem:
        view.close()
        raise InputError(
            f"input {name!r}: expected {describe(spec.shape, spec.dtype)}, the device array "
            f"{problem}"
        )
    if device is not None:
        where = view.device if view.device is not None else _pointer_device(view.ptr)
        if where is not None and where != device:
            view.close()
            raise InputError(
                f"input {name!r} is on cuda:{where}, but this engine runs on cuda:{device}"
            )
    return view


def _pointer_device(ptr: int) -> int | None:
    """The GPU that owns `ptr` (CUDA array interface views do not say), None if unknown."""
    from . import cuda

    try:
        return cuda.pointer_device(ptr)
    except Exception:  # no driver to ask: the runtime reports a foreign pointer itself
        return None


def fits(spec: TensorSpec, shape: tuple[int, ...]) -> bool:
    """Whether `shape` has the spec's rank and its fixed dims."""
    return spec.shape is None or (
        len(shape) == len(spec.shape)
        and all(not isinstance(w, int) or w == g for w, g in zip(spec.shape, shape))
    )


def dtype_name(dtype: np.dtype) -> str:
    """infer's name for a dtype ('float32', 'bfloat16'), numpy's for one it does not know."""
    return dtype_info(dtype).name if dtype in _KNOWN else str(dtype)


def target_mismatch(name: str, target: Any, shape: tuple[int, ...]) -> InputError:
    """The error for a run whose output does not fit the array the caller bound for it."""
    return InputError(
        f"output {name!r} has shape {list(shape)} for these inputs, but the array bound for it "
        f"has shape {list(target.shape)}; bind an array of that shape (or let the binding allocate)"
    )
