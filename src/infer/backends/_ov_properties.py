"""OpenVINO properties: reading them from a device or a compiled model (AUTO reports them per
device), and the precision-lowering ones infer sets on every compile and reads back, so that a
precision is what it says."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CompileError

# The plugins' precision-lowering defaults (2026.4's CPU plugin: bf16 inference on AMX/AVX512-bf16
# CPUs; DYNAMIC_QUANTIZATION_GROUP_SIZE 32, int8 activations for MatMuls over int8/int4 weights,
# measured 0.5-1% off on a weight-compressed encoder; a u8 KV cache; denormals as the calling
# thread has them): set on every compile where the device lists the property, and read back from
# the compiled model. `lowering` gives the values for a precision.
LOWERING = (
    "INFERENCE_PRECISION_HINT",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE",
    "KV_CACHE_PRECISION",
    "KEY_CACHE_PRECISION",
    "VALUE_CACHE_PRECISION",
    "CPU_DENORMALS_OPTIMIZATION",
)
# The KV-cache precision properties of a stateful model (the CPU plugin's default is u8).
KV_PRECISION = ("KV_CACHE_PRECISION", "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION")


def capabilities(core: Any, ov_name: str) -> frozenset[str]:
    caps = read(core, ov_name, "OPTIMIZATION_CAPABILITIES") or ()
    return frozenset(str(c) for c in caps)


def read(obj: Any, device: str | None, name: str) -> Any:
    """A property of a Core device (device given) or a compiled model; None if it has none."""
    try:
        return obj.get_property(device, name) if device is not None else obj.get_property(name)
    except Exception:
        return None


def compiled_property(compiled: Any, name: str) -> Any:
    """A compiled model's property, or (AUTO) the first of its devices' values."""
    value = read(compiled, None, name)
    if value is None:
        nested = read(compiled, None, "DEVICE_PROPERTIES") or {}
        value = next(
            (p[name] for p in nested.values() if isinstance(p, Mapping) and name in p), None
        )
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)  # OpenVINO's enum-like ints (e.g. streams) as plain ints
    return value


def supported_properties(core: Any, target: str) -> set[str]:
    names = [target.split(":", 1)[0]]
    if names[0] == "AUTO":  # AUTO hands the properties it does not know to its devices
        names += [d for d in core.available_devices]
    supported: set[str] = set()
    for name in names:
        supported |= set(read(core, name, "SUPPORTED_PROPERTIES") or {})
    return supported


def lowering(hint: str) -> dict[str, Any]:
    """The precision-lowering properties at INFERENCE_PRECISION_HINT `hint`: nothing computed
    below it (no dynamic activation quantization, the KV cache in `hint`, denormals kept)."""
    return {
        "INFERENCE_PRECISION_HINT": hint,
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
        "KV_CACHE_PRECISION": hint,
        "KEY_CACHE_PRECISION": hint,
        "VALUE_CACHE_PRECISION": hint,
        "CPU_DENORMALS_OPTIMIZATION": False,
    }


def check_lowering(compiled: Any, config: Mapping[str, Any], what: str) -> dict[str, Any]:
    """{property: value} of the precision-lowering properties set in `config`, read back from
    the compiled model; raises CompileError where a device compiled another value."""
    kept: dict[str, Any] = {}
    for name in LOWERING:
        if name not in config:
            continue
        want = config[name]
        seen = compiled_values(compiled, name)
        wrong = {d: v for d, v in seen.items() if str(v) != str(want)}
        if wrong:
            raise CompileError(
                f"OpenVINO compiled {what} with {name} {wrong} although {want} was set; "
                "refusing to run a precision not asked for"
            )
        kept[name] = want
    return kept


def compiled_values(compiled: Any, name: str) -> dict[str, Any]:
    """{device: value} of a compiled model's property (AUTO reports it per device); element
    types by name ("f32")."""
    direct = read(compiled, None, name)
    if direct is not None:
        devices = read(compiled, None, "EXECUTION_DEVICES") or ["?"]
        return {str(devices[0]): type_name(direct)}
    nested = read(compiled, None, "DEVICE_PROPERTIES") or {}
    out = {}
    for device, props in nested.items():
        if isinstance(props, Mapping) and name in props:
            out[str(device)] = type_name(props[name])
    return out


def type_name(value: Any) -> str:
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
