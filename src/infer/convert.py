"""Helpers around the runtimes' own converters.

`to_coreml` turns a PyTorch model into a Core ML `.mlpackage` (an ML program) with coremltools,
which is the practical route to Core ML today. There is no ONNX -> Core ML path: coremltools
dropped its ONNX converter in 6.0 and `coremltools.convert` takes only PyTorch, TensorFlow and
MIL programs. An ONNX model runs on Apple hardware through ONNX Runtime's CoreML execution
provider instead (`Engine.load("model.onnx", device="ane")`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailable, CompileError, OptionError

_INSTALL = 'pip install "infer-engine[coreml]" torch'
_PRECISIONS = ("fp16", "fp32")
_MACOS = ("12", "13", "14", "15", "26")


def to_coreml(
    model: Any,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic: Mapping[str, Mapping[int, tuple[int, int]]] | None = None,
    precision: str = "fp16",
    minimum_macos: str = "13",
    **convert_options: Any,
) -> Path:
    """Convert a PyTorch model to a Core ML ML program saved at `path` (a `.mlpackage`).

    model: a `torch.nn.Module` (traced with `example_inputs`), a `torch.jit.ScriptModule`, or a
        `torch.export.ExportedProgram`.
    example_inputs: one tensor or array, a tuple of them, or {input name: tensor or array}.
    input_names / output_names: the names the package gives its inputs and outputs (inputs
        default to the forward() parameter names, outputs to coremltools' own names).
    dynamic: flexible dims, {input name: {axis: (min, max)}}; the example's size is the default.
        An ExportedProgram carries its own dynamic shapes (torch.export's `dynamic_shapes`).
    precision: what the program computes in, "fp16" (coremltools' default, what the Neural
        Engine runs) or "fp32". Inputs and outputs keep the example's and the model's types.
    minimum_macos: the oldest macOS the package must load on ("12", "13", "14", "15", "26").
    convert_options: passed on to `coremltools.convert`.

    Returns the package's path. Raises BackendUnavailable when torch or coremltools is missing,
    OptionError for arguments it cannot use, CompileError when coremltools cannot convert.
    """
    _refuse_onnx(model)
    target = Path(path)
    if target.suffix != ".mlpackage":
        raise OptionError(
            f"path {str(target)!r} must end in .mlpackage: an ML program is saved as a package folder"
        )
    if precision not in _PRECISIONS:
        raise OptionError(
            f"precision {precision!r} is not valid; use one of {', '.join(_PRECISIONS)}"
        )
    if str(minimum_macos) not in _MACOS:
        raise OptionError(
            f"minimum_macos {minimum_macos!r} is not valid; use one of {', '.join(_MACOS)}"
        )
    try:
        import torch

        from .backends.coreml import import_coremltools

        ct = import_coremltools()
    except ImportError as e:
        raise BackendUnavailable(f"to_coreml needs torch and coremltools ({e}): {_INSTALL}") from e

    exported = isinstance(model, torch.export.ExportedProgram)
    if not exported and not isinstance(model, torch.nn.Module):
        raise OptionError(
            "model must be a torch.nn.Module, a torch.jit.ScriptModule or a "
            f"torch.export.ExportedProgram; got {type(model).__name__}"
        )
    names, tensors = _examples(torch, model, example_inputs, input_names)
    outputs = _output_types(ct, torch, model, tensors, output_names, exported)
    options: dict[str, Any] = {
        "convert_to": "mlprogram",
        "compute_precision": ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        "minimum_deployment_target": getattr(ct.target, f"macOS{minimum_macos}"),
    }
    if outputs is not None:
        options["outputs"] = outputs
    if exported:
        if dynamic or input_names is not None or isinstance(example_inputs, Mapping):
            raise OptionError(
                "an ExportedProgram carries its own input names and dynamic dims (set them in "
                "torch.export.export(..., dynamic_shapes=...)); give example_inputs as a tuple "
                "and no input_names or dynamic"
            )
        source = model.run_decompositions({})  # coremltools takes the ATEN dialect
    else:
        source = model
        if not isinstance(model, torch.jit.ScriptModule):
            try:
                with torch.no_grad():
                    source = torch.jit.trace(model.eval(), tuple(tensors))
            except Exception as e:
                raise CompileError(f"torch.jit.trace failed on {type(model).__name__}: {e}") from e
        options["inputs"] = _input_types(ct, names, tensors, dynamic or {})
    options.update(convert_options)
    try:
        converted = ct.convert(source, **options)
    except Exception as e:
        raise CompileError(f"coremltools could not convert {type(model).__name__}: {e}") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    converted.save(str(target))
    return target


def _refuse_onnx(model: Any) -> None:
    suffix = Path(model).suffix.lower() if isinstance(model, (str, os.PathLike)) else ""
    kind = type(model).__name__
    if (
        suffix == ".onnx"
        or kind == "ModelProto"
        or (kind == "Model" and getattr(getattr(model, "format", None), "value", "") == "onnx")
    ):
        raise OptionError(
            "coremltools has no ONNX converter (removed in coremltools 6; coremltools.convert "
            "takes PyTorch, TensorFlow and MIL programs): convert from the PyTorch model, or run "
            "the ONNX model on Apple hardware with Engine.load(model, device='ane'), which uses "
            "ONNX Runtime's CoreML execution provider"
        )


def _examples(
    torch: Any, model: Any, example_inputs: Any, input_names: Sequence[str] | None
) -> tuple[list[str], list[Any]]:
    """(input names, example tensors) from what the caller gave."""
    if isinstance(example_inputs, Mapping):
        if input_names is not None:
            raise OptionError("give input names either as example_inputs keys or input_names")
        names, values = list(example_inputs), list(example_inputs.values())
    else:
        values = (
            list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
        )
        names = list(input_names) if input_names is not None else _parameter_names(model, values)
    if len(names) != len(values):
        raise OptionError(f"{len(names)} input names for {len(values)} example inputs")
    tensors = []
    for name, v in zip(names, values):
        try:
            tensors.append(v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)))
        except Exception as e:
            raise OptionError(
                f"example input {name!r}: expected a tensor or array, got {type(v).__name__}"
            ) from e
    return names, tensors


def _parameter_names(model: Any, values: Sequence[Any]) -> list[str]:
    """forward()'s positional parameter names, else input_0, input_1, ..."""
    try:
        params = [
            p.name
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (AttributeError, TypeError, ValueError):
        params = []
    if len(params) >= len(values):
        return params[: len(values)]
    return [f"input_{i}" for i in range(len(values))]


def _coreml_dtype(torch: Any, dtype: Any, what: str) -> type:
    if dtype.is_floating_point:
        return np.float16 if dtype == torch.float16 else np.float32
    if dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        return np.int32  # Core ML arrays hold int32, not int64
    raise OptionError(f"{what} is {dtype}; Core ML arrays hold float32, float16 or int32")


def _input_types(
    ct: Any, names: list[str], tensors: list[Any], dynamic: Mapping[str, Mapping[int, Any]]
) -> list[Any]:
    unknown = sorted(set(dynamic) - set(names))
    if unknown:
        raise OptionError(f"dynamic names unknown input(s) {unknown}; the inputs are {names}")
    import torch

    out = []
    for name, t in zip(names, tensors):
        shape: list[Any] = list(t.shape)
        for axis, bounds in dynamic.get(name, {}).items():
            if not -len(shape) <= axis < len(shape):
                raise OptionError(f"dynamic[{name!r}]: axis {axis} is outside rank {len(shape)}")
            lo, hi = (int(b) for b in bounds)
            size = int(t.shape[axis])
            if not lo <= size <= hi:
                raise OptionError(
                    f"dynamic[{name!r}][{axis}] = ({lo}, {hi}) must contain the example's size {size}"
                )
            shape[axis] = ct.RangeDim(lower_bound=lo, upper_bound=hi, default=size)
        out.append(
            ct.TensorType(
                name=name, shape=shape, dtype=_coreml_dtype(torch, t.dtype, f"input {name!r}")
            )
        )
    return out


def _output_types(
    ct: Any,
    torch: Any,
    model: Any,
    tensors: list[Any],
    output_names: Sequence[str] | None,
    exported: bool,
) -> list[Any] | None:
    """Named outputs typed like the model's own (run once on the examples), or None."""
    if output_names is None:
        return None
    run = model.module() if exported else model
    try:
        with torch.no_grad():
            result = run(*tensors)
    except Exception as e:
        raise CompileError(f"the model failed on the example inputs: {e}") from e
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(results) != len(output_names):
        raise OptionError(
            f"{len(output_names)} output names for {len(results)} outputs of the model"
        )
    return [
        ct.TensorType(name=n, dtype=_coreml_dtype(torch, r.dtype, f"output {n!r}"))
        for n, r in zip(output_names, results)
    ]
