"""Tensors across the numpy / OpenVINO boundary: an ov.Tensor over a numpy array's memory where
the element type allows it, and numpy copies of output tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import tensors
from ..errors import InputError
from ..tensors import NUMPY_NATIVE, dtype_info

NUMPY_BRIDGE = NUMPY_NATIVE
"""Element types numpy and OpenVINO exchange directly; others cross as raw bytes."""


def to_tensor(ov: Any, arr: np.ndarray) -> Any:
    """An ov.Tensor over `arr`'s memory (no copy) where the element type allows it.

    A read-only array (np.frombuffer, a broadcast view, onnx.numpy_helper's arrays) is copied:
    an ov.Tensor's memory is writable, so OpenVINO refuses to share it.
    """
    if arr.dtype in NUMPY_BRIDGE:
        return ov.Tensor(arr if arr.flags.writeable else arr.copy(), shared_memory=True)
    if arr.dtype.kind == "O":
        return ov.Tensor(arr.astype(str))
    name = dtype_info(arr.dtype).openvino
    if name is None:
        raise InputError(f"OpenVINO has no element type for {dtype_info(arr.dtype).name}")
    return ov.Tensor(tensors.pack(arr), list(arr.shape), getattr(ov.Type, name))


def shared(arr: np.ndarray) -> bool:
    """Whether `to_tensor` shares `arr`'s memory (so a change to `arr` reaches OpenVINO)."""
    return arr.dtype in NUMPY_BRIDGE and arr.flags.writeable


def from_tensor(tensor: Any, dtype: np.dtype) -> np.ndarray:
    """A numpy copy of an output tensor's data (safe from the request's next inference)."""
    if dtype in NUMPY_BRIDGE:
        return tensor.data.copy()
    if dtype.kind == "O":
        return np.array(tensor.str_data, dtype=object).reshape(tuple(tensor.shape))
    raw = np.asarray(tensor.data).reshape(-1).view(np.uint8)
    return tensors.unpack(raw, dtype, tuple(tensor.shape))
