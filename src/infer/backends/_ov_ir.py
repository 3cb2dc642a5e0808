"""OpenVINO IR read from its XML, without OpenVINO: what `infer inspect` shows of an IR."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np

from ..model import Model, NativeSummary
from ..tensors import Dim, TensorSpec, dtype_info


def summary(m: Model) -> NativeSummary:
    """Inputs, outputs and layer types from an IR's XML (no OpenVINO needed)."""
    try:
        root = ET.parse(os.fspath(m.path)).getroot()  # type: ignore[arg-type]
    except (ET.ParseError, OSError) as e:
        return NativeSummary(notes=(f"the IR XML cannot be parsed: {e}",))
    layers = root.findall("./layers/layer")
    ops = Counter(layer.get("type", "?") for layer in layers)
    inputs, outputs = [], []
    for layer in layers:
        kind = layer.get("type")
        if kind == "Parameter":
            data = layer.find("data")
            shape = (data.get("shape", "") if data is not None else "") or ""
            etype = data.get("element_type", "f32") if data is not None else "f32"
            inputs.append(TensorSpec(layer.get("name", "?"), _ir_shape(shape), _ir_dtype(etype)))
        elif kind == "Result":
            port = layer.find("./input/port")
            dims = [d.text or "" for d in port.findall("dim")] if port is not None else []
            outputs.append(
                TensorSpec(
                    layer.get("name", "?"),
                    _ir_shape(",".join(dims)),
                    _ir_dtype(port.get("precision", "f32").lower() if port is not None else "f32"),
                )
            )
    return NativeSummary(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        nodes=len(layers),
        op_types=tuple(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        notes=(f"IR version {root.get('version', '?')}, network {root.get('name', '?')!r}",),
    )


def _ir_shape(text: str) -> tuple[Dim, ...] | None:
    if text.strip() == "":
        return ()
    out: list[Dim] = []
    for part in text.split(","):
        part = part.strip()
        out.append(int(part) if part.isdigit() else None)
    return tuple(out)


def _ir_dtype(name: str) -> np.dtype:
    aliases = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "i64": "i64", "i32": "i32"}
    try:
        return dtype_info(aliases.get(name, name)).numpy
    except KeyError:
        return np.dtype(np.float32)
