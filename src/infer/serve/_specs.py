"""How a model's inputs and outputs look to a serving engine: the batch axis, dims, Triton types."""

from __future__ import annotations

import re

import numpy as np
from onnx import TensorProto

from ..errors import OptionError
from ..tensors import Dim, TensorSpec, describe, dtype_info

# Triton's DataType names (model_config.proto) that differ from ONNX's; the rest are the same.
_TRITON_RENAMES = {"FLOAT": "FP32", "FLOAT16": "FP16", "DOUBLE": "FP64", "BFLOAT16": "BF16"}
_TRITON_TYPES = frozenset(
    [
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "STRING",
        "BF16",
    ]
)


def triton_dims(spec: TensorSpec, batched: bool) -> list[int]:
    """Triton's dims for a tensor: -1 for dynamic dimensions, the batch axis left out if batched.

    A batched rank-1 tensor has no dims left; Triton needs at least one, so it is declared [1]
    (callers send [batch, 1]).
    """
    if spec.shape is None:
        raise OptionError(
            f"tensor {spec.name!r} has unknown rank; Triton needs every input and output to "
            "declare its dims: give the model a shape for it (onnx.shape_inference or re-export)"
        )
    dims = [_dim(d) for d in (spec.shape[1:] if batched else spec.shape)]
    return dims or [1]


def _dim(d: Dim) -> int:
    return d if isinstance(d, int) else -1


def triton_type(spec: TensorSpec) -> str:
    """Triton's data_type name for a tensor ("TYPE_FP32", ...); OptionError where it has none."""
    onnx_name = TensorProto.DataType.Name(dtype_info(spec.dtype).onnx)
    name = _TRITON_RENAMES.get(onnx_name, onnx_name)
    if name not in _TRITON_TYPES:
        raise OptionError(
            f"tensor {spec.name!r} is {describe(spec.shape, spec.dtype)}; Triton has no "
            f"{dtype_info(spec.dtype).name} type (it takes {', '.join(sorted(_TRITON_TYPES))})"
        )
    return f"TYPE_{name}"


def model_name(text: str) -> str:
    """A Triton model name from any text: letters, digits, '.', '_' and '-' only."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return name or "model"


def check_model_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name or ""):
        raise OptionError(
            f"model name {name!r} is not valid for Triton: use letters, digits, '.', '_' and '-'"
        )
    return name


def check_count(option: str, value: object, minimum: int) -> int:
    """An integer option that must be at least `minimum`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise OptionError(f"{option} must be an integer >= {minimum}, got {value!r}")
    return int(value)
