"""Which of a model's ops ONNX Runtime has no kernel for, read from its kernel registry (the
ops, their versions and their type constraints, per execution provider) without a session."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from .._ops import OpUse, op_uses, type_name, value_types
from ..model import Model

_OPEN = 2**31 - 1  # the last version of a kernel registered for every later one
_AT_LOAD = {("", "Constant")}  # folded into initializers when the session loads: no kernel

# ONNX Runtime runs float16 nodes that have no float16 kernel in float32, with Casts around
# them (its InsertCastTransformer), so a float16 type is also taken by a float kernel.
_CAST_UP = {"tensor(float16)": "tensor(float)"}


def unsupported(model: Model, providers: Iterable[str]) -> list[str]:
    """The model's ops no kernel of `providers` implements at the model's opsets and types,
    as "Op" or "Op (T=tensor(bfloat16))"; [] when every node has one."""
    kernels, schemas = _registry()
    proto = model._skeleton
    types: dict[str, Any] | None = None
    wanted = set(providers)
    missing: dict[str, None] = {}
    for use in op_uses(proto):
        key = (use.domain, use.op)
        if key in _AT_LOAD:
            continue
        since = _since(schemas.get(key, {}), use.version)
        label = f"{use.label} (opset {use.version})" if use.version else use.label
        if since is None:
            if not _has_function(use):
                missing[label] = None
            continue
        ranges = [k for k in kernels.get(key, ()) if _covers(k, since) and k[2] in wanted]
        if not ranges:
            if not _has_function(use):
                missing[label] = None
            continue
        if types is None:
            types = value_types(proto)
        why = _type_mismatch(use, schemas[key][since], ranges, types)
        if why and not _has_function(use):  # without a kernel for the types, it inlines those
            missing[f"{label[:-1]}, {why})" if use.version else f"{label} ({why})"] = None
    return list(missing)


@functools.cache
def _registry() -> tuple[
    dict[tuple[str, str], list[tuple[int, int, str, dict[str, list[str]]]]],
    dict[tuple[str, str], dict[int, tuple[list[str], list[str]]]],
]:
    """({(domain, op): [(first, last version, provider, type constraints)]}, {(domain, op):
    {since version: (input type params, output type params)}}) from ONNX Runtime itself."""
    from onnxruntime.capi import _pybind_state as C

    kernels: dict[tuple[str, str], list[tuple[int, int, str, dict[str, list[str]]]]] = defaultdict(
        list
    )
    for k in C.get_all_opkernel_def():
        lo, hi = k.version_range
        kernels[(_domain(k.domain), k.op_name)].append(
            (lo, hi, k.provider, dict(k.type_constraints))
        )
    schemas: dict[tuple[str, str], dict[int, tuple[list[str], list[str]]]] = defaultdict(dict)
    for s in C.get_all_operator_schema():
        schemas[(_domain(s.domain), s.name)][s.since_version] = (
            [p.typeStr for p in s.inputs],
            [p.typeStr for p in s.outputs],
        )
    return dict(kernels), dict(schemas)


def _covers(kernel: tuple[int, int, str, Any], since: int) -> bool:
    """Whether a kernel registered for versions [first, last] runs a node of schema version
    `since`: as ONNX Runtime matches them, an open-ended kernel only its own first version."""
    first, last = kernel[0], kernel[1]
    return first == since or (first < since <= last and last != _OPEN)


def _domain(name: str) -> str:
    return "" if name in ("", "ai.onnx") else name


def _since(versions: dict[int, Any], opset: int | None) -> int | None:
    """The schema version a node of this opset resolves to (None: the op is not known)."""
    if opset is None:
        return None
    return max((v for v in versions if v <= opset), default=None)


def _has_function(use: OpUse) -> bool:
    """Whether ONNX defines the op as a function of other ops (ONNX Runtime inlines those)."""
    from onnx import defs

    if use.version is None:
        return False
    try:
        schema = defs.get_schema(use.op, use.version, use.domain)
    except Exception:  # no such op in onnx's schemas at this opset
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _type_mismatch(
    use: OpUse,
    params: tuple[list[str], list[str]],
    ranges: Sequence[tuple[int, int, str, dict[str, list[str]]]],
    types: dict[str, Any],
) -> str:
    """'' when some kernel takes the node's known types, else the first type none takes."""
    actual: dict[str, set[str]] = defaultdict(set)
    for names, formal in ((use.node.input, params[0]), (use.node.output, params[1])):
        for i, name in enumerate(names):
            if not name or not formal:
                continue
            param = formal[min(i, len(formal) - 1)]  # the last one may be variadic
            t = types.get(name)
            spelled = type_name(t) if t is not None else None
            if spelled:
                actual[param].add(spelled)
    if not actual:
        return ""
    refused = ""
    for *_, constraints in ranges:
        bad = next(
            (
                f"{param}={t}"
                for param, allowed in constraints.items()
                for t in sorted(actual.get(param, ()))
                if t not in allowed and _CAST_UP.get(t) not in allowed
            ),
            "",
        )
        if not bad:
            return ""
        refused = refused or bad
    return refused
