"""How much memory a run of the ONNX reference evaluator will hold, told before it runs.

The evaluator keeps every intermediate tensor of a run until the run ends, and nothing bounds
it: a 1x3x48x200000 input to a text recognizer grew to 24 GB and was killed by the kernel. So
the estimate is the sum of the sizes of every tensor the graph computes, from shape inference
with the feeds' concrete shapes (tensors whose shapes stay unknown, and what Loop/Scan bodies
hold, are left out: it is a lower bound).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import onnx

from ..tensors import dtype_info

log = logging.getLogger(__name__)


def estimate(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> int | None:
    """Bytes of every tensor a run on `feeds` computes (its intermediates and outputs), as far as
    shape inference can tell; None when it cannot run."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for v in model.graph.input:
        arr = feeds.get(v.name)
        if not isinstance(arr, np.ndarray) or not v.type.HasField("tensor_type"):
            continue  # sequences, maps, optionals: their shapes are left to shape inference
        shape = v.type.tensor_type.shape
        shape.ClearField("dim")
        for size in arr.shape:
            shape.dim.add().dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # a graph shape inference cannot follow: no estimate
        log.debug("shape inference failed", exc_info=True)
        return None
    graph = inferred.graph
    given = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    total = 0
    seen: set[str] = set()
    for v in (*graph.value_info, *graph.output):
        if v.name in seen or v.name in given:
            continue
        seen.add(v.name)
        total += _bytes(v.type) or 0
    return total


def available() -> int | None:
    """The memory this machine can give a process now (Linux: MemAvailable), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(t: onnx.TypeProto) -> int | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    try:
        info = dtype_info(t.tensor_type.elem_type)
    except KeyError:
        return None
    if info.numpy.kind == "O":
        return None  # strings: no fixed size
    count = int(np.prod([d.dim_value for d in dims], dtype=np.int64)) if dims else 1
    return count * max(1, info.itemsize)
