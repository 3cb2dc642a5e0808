"""Which of a model's ops OpenVINO cannot take on a device, without compiling: what its ONNX
frontend leaves unconverted (`convert_partially`), then what the device's plugin does not
support (`Core.query_model`)."""

from __future__ import annotations

import io
import logging
import re
from typing import Any

from .._ops import op_uses
from ..model import Model, ModelFormat

log = logging.getLogger(__name__)

_FAILED = re.compile(r"Conversion is failed for:\s*(.+)")
_PLUMBING = frozenset({"Parameter", "Result", "Constant"})


def unsupported(core: Any, model: Model, ov_device: str) -> list[str] | None:
    """Ops OpenVINO cannot take ("Loop (node 'loop_0')"); [] when it takes them all; None when
    it cannot tell (the query itself failed)."""
    try:
        ov_model = _convert(model)
    except Exception as e:  # the frontend refused the model as a whole
        found = _FAILED.search(str(e))
        failed = found.group(1).strip().split(", ") if found else []
        return [f"{op} (conversion failed)" for op in failed] or [
            f"conversion failed: {_first_line(e)}"
        ]
    if ov_model is None:
        return None
    names = _onnx_names(model)
    ops = list(ov_model.get_ordered_ops())
    # (Never read such a node's attributes: get_attributes() on ONNXFrameworkNode segfaults.)
    unconverted = [op for op in ops if "FrameworkNode" in op.get_type_name()]
    unconverted += [op for op in ops if op.get_type_name().startswith("NotSupported")]
    if unconverted:
        return [_label(op, names) for op in unconverted]
    try:
        taken = set(core.query_model(ov_model, ov_device))
    except Exception:
        log.debug("query_model(%s) failed", ov_device, exc_info=True)
        return None
    refused = [
        op
        for op in ops
        if op.get_friendly_name() not in taken and op.get_type_name() not in _PLUMBING
    ]
    return list(dict.fromkeys(_label(op, names) for op in refused))


def _convert(model: Model) -> Any:
    from openvino.frontend import FrontEndManager

    if model.format is ModelFormat.OPENVINO:
        import openvino as ov

        return ov.Core().read_model(str(model.path))
    if model.format is not ModelFormat.ONNX:
        return None
    fe = FrontEndManager().load_by_framework("onnx")
    source = str(model.path) if model.path is not None else io.BytesIO(model.data)
    return fe.convert_partially(fe.load(source))


def _onnx_names(model: Model) -> dict[str, str]:
    """{node name or output name: op label} over every ONNX graph, to name OpenVINO's nodes
    (it names a node after the ONNX node, or its first output)."""
    if model.format is not ModelFormat.ONNX:
        return {}
    out: dict[str, str] = {}
    for use in op_uses(model._skeleton):
        for name in (use.node.name, *use.node.output):
            if name:
                out.setdefault(name, use.label)
    return out


def _label(op: Any, names: dict[str, str]) -> str:
    name = op.get_friendly_name()
    base = name.split("/sink_port")[0]
    kind = names.get(base) or op.get_type_name()
    return f"{kind} (node {base!r})"


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (kept or lines or [type(e).__name__])[0]
