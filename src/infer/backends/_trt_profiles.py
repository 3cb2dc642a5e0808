"""Optimization profiles for the TensorRT backend: chosen before a build, checked before each run.

A TensorRT engine runs the shapes its optimization profile covers: for every input with a
dynamic dimension, a (min, opt, max) range. They come from `shapes={"x": (min, opt, max)}`
given to `Engine.load`, or are derived: a dynamic first dimension is the batch, 1..max_batch;
a named dimension takes the range the same name has elsewhere; any other unknown dimension
is the caller's to give, and the error says so. Pure logic: no TensorRT needed.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, OptionError
from ..tensors import TensorSpec, describe, describe_specs

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """The shapes one input may take under a profile: min <= shape <= max per dimension."""

    min: Shape
    opt: Shape
    max: Shape

    def holds(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max)
        )

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def to_json(self) -> list[list[int]]:
        return [list(self.min), list(self.opt), list(self.max)]

    @classmethod
    def from_json(cls, value: Sequence[Sequence[int]]) -> Range:
        lo, opt, hi = (tuple(int(d) for d in s) for s in value)
        return cls(lo, opt, hi)

    def __str__(self) -> str:
        if self.fixed:
            return _x(self.min)
        return f"min {_x(self.min)}, opt {_x(self.opt)}, max {_x(self.max)}"


def _x(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _listing(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def parse_shape(name: str, value: Any) -> Range:
    """One `shapes=` entry: a shape (fixed) or a (min, opt, max) triple of shapes."""

    def as_shape(v: Any) -> Shape:
        if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
            raise TypeError
        dims = tuple(v)
        if any(isinstance(d, bool) for d in dims):
            raise TypeError
        return tuple(operator.index(d) for d in dims)  # ints and numpy integers, not floats

    try:
        items = list(value)
        if len(items) == 3 and all(
            not isinstance(s, (str, bytes)) and hasattr(s, "__iter__") for s in items
        ):
            lo, opt, hi = (as_shape(s) for s in items)
        else:
            lo = opt = hi = as_shape(items)
    except TypeError:
        raise OptionError(
            f"shapes[{name!r}] must be a shape such as (1, 3, 224, 224) or a (min, opt, max) "
            f"triple of shapes, got {value!r}"
        ) from None
    if not len(lo) == len(opt) == len(hi):
        raise OptionError(
            f"shapes[{name!r}]: min, opt and max must have the same rank, got "
            f"{list(lo)}, {list(opt)}, {list(hi)}"
        )
    for axis, (a, b, c) in enumerate(zip(lo, opt, hi)):
        if not 0 <= a <= b <= c:
            raise OptionError(
                f"shapes[{name!r}]: dimension {axis} must satisfy 0 <= min <= opt <= max, got "
                f"min {a}, opt {b}, max {c}"
            )
    return Range(lo, opt, hi)


class OpenDimensions(OptionError):
    """The model leaves dimensions that no profile can be derived for: `shapes=` must settle them."""


def derive(
    specs: Sequence[TensorSpec],
    shapes: Mapping[str, Any],
    *,
    max_batch: int,
    hint: str = "latency",
) -> dict[str, Range]:
    """The profile for `specs`: every input with a dynamic dimension (or named in `shapes`) gets a range.

    `hint` picks the batch TensorRT tunes for: 1 for "latency", `max_batch` for "throughput".
    Raises OptionError naming the inputs and dimensions it cannot settle.
    """
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(shapes) - set(by_name))
    if unknown:
        inputs = describe_specs(specs)
        raise OptionError(
            f"shapes names unknown input(s) {unknown}; the model's inputs are {inputs}"
        )
    ranges: dict[str, Range] = {}
    symbols: dict[
        str, tuple[int, int, int, str]
    ] = {}  # name -> (min, opt, max, where it came from)

    def bind(symbol: str, lo: int, opt: int, hi: int, where: str) -> None:
        seen = symbols.get(symbol)
        if seen is None:
            symbols[symbol] = (lo, opt, hi, where)
        elif (seen[0], seen[2]) != (lo, hi):
            raise OptionError(
                f"shapes: dimension {symbol!r} is {seen[0]}..{seen[2]} for {seen[3]} but {lo}..{hi} "
                f"for {where}; inputs sharing a dimension name must share its range"
            )

    for name, value in shapes.items():
        spec = by_name[name]
        r = parse_shape(name, value)
        if spec.shape is not None:
            if len(spec.shape) != len(r.min):
                raise OptionError(
                    f"shapes[{name!r}] has rank {len(r.min)}, but input {name!r} is "
                    f"{describe(spec.shape, spec.dtype)} (rank {len(spec.shape)})"
                )
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, int) and not (r.min[axis] == r.max[axis] == dim):
                    raise OptionError(
                        f"shapes[{name!r}]: dimension {axis} of input {name!r} is fixed at {dim} "
                        f"({describe(spec.shape, spec.dtype)}), but the range given is "
                        f"{r.min[axis]}..{r.max[axis]}"
                    )
                if isinstance(dim, str):
                    bind(dim, r.min[axis], r.opt[axis], r.max[axis], repr(name))
        ranges[name] = r

    batch_opt = max_batch if hint == "throughput" else 1
    batch = (1, batch_opt, max_batch)
    # A dynamic first dimension is the batch; its name (if any) then means the batch everywhere.
    for spec in specs:
        first = spec.shape[0] if spec.name not in ranges and spec.shape else None
        if isinstance(first, str) and first not in symbols:
            bind(first, *batch, f"the batch of {spec.name!r}")

    missing: list[tuple[TensorSpec, list[int]]] = []
    for spec in specs:
        if spec.name in ranges or spec.is_static:
            continue
        if spec.shape is None:
            missing.append((spec, []))
            continue
        dims: list[tuple[int, int, int]] = []
        open_axes = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                dims.append((dim, dim, dim))
            elif isinstance(dim, str) and dim in symbols:
                dims.append(symbols[dim][:3])
            elif axis == 0:
                dims.append(batch)
            else:
                open_axes.append(axis)
        if open_axes:
            missing.append((spec, open_axes))
        else:
            ranges[spec.name] = Range(*(tuple(d[i] for d in dims) for i in range(3)))
    if missing:
        raise OpenDimensions(_missing_message(missing))
    return {s.name: ranges[s.name] for s in specs if s.name in ranges}


def _missing_message(missing: list[tuple[TensorSpec, list[int]]]) -> str:
    parts = []
    for spec, axes in missing:
        if spec.shape is None:
            parts.append(f"input {spec.name!r} has no known rank")
            continue
        names = ", ".join(
            f"{a} ({spec.shape[a]!r})" if isinstance(spec.shape[a], str) else str(a) for a in axes
        )
        parts.append(
            f"input {spec.name!r} ({describe(spec.shape, spec.dtype)}) leaves dimension(s) {names} open"
        )
    example = missing[0][0]
    template = (
        "("
        + ", ".join(
            "N" if i == 0 else (str(d) if isinstance(d, int) else "?")
            for i, d in enumerate(example.shape)
        )
        + ")"
        if example.shape is not None
        else "(...)"
    )
    return (
        "tensorrt builds an engine for a range of shapes, and "
        + "; ".join(parts)
        + f". Give the range with shapes={{{example.name!r}: (min_shape, opt_shape, max_shape)}}, "
        f"each a full shape like {template}, when loading the model"
    )


def summary(ranges: Mapping[str, Range]) -> str:
    """'x: min 1x3, opt 1x3, max 8x3; y: ...' for engine.selection and details."""
    return "; ".join(f"{name}: {r}" for name, r in ranges.items()) or "static shapes"


class ProfileCheck:
    """Checks feed shapes against the engine's profiles before anything is queued on the GPU.

    A shape signature seen before costs one dict lookup. `fitting` returns the indices of the
    profiles that hold the shapes (an execution context must use one of them).
    """

    def __init__(
        self,
        profiles: Sequence[Mapping[str, Range]],
        *,
        advice: str = "",
    ) -> None:
        self.profiles = [dict(p) for p in profiles]
        self.names = tuple(sorted({n for p in self.profiles for n in p}))
        self.advice = advice
        self._seen: dict[tuple[Shape, ...], tuple[int, ...]] = {}
        self._all = tuple(range(max(1, len(self.profiles))))

    def fitting(self, shapes: Mapping[str, Shape]) -> tuple[int, ...]:
        if not self.names:
            return self._all
        key = tuple(shapes[n] for n in self.names)
        hit = self._seen.get(key)
        if hit is not None:
            return hit
        fits = tuple(
            i for i, p in enumerate(self.profiles) if all(r.holds(shapes[n]) for n, r in p.items())
        )
        if not fits:
            raise InputError(self._explain(shapes))
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[key] = fits
        return fits

    def _explain(self, shapes: Mapping[str, Shape]) -> str:
        profile = self.profiles[0]
        for name, r in profile.items():
            shape = shapes[name]
            if r.holds(shape):
                continue
            if len(shape) != len(r.min):
                why = f"its rank is {len(shape)}, the profile's {len(r.min)}"
            else:
                axis = next(
                    a for a, (lo, d, hi) in enumerate(zip(r.min, shape, r.max)) if not lo <= d <= hi
                )
                d, lo, hi = shape[axis], r.min[axis], r.max[axis]
                why = f"dimension {axis} is {d}, {'below' if d < lo else 'above'} {lo if d < lo else hi}"
            others = (
                f" (none of the engine's {len(self.profiles)} profiles covers it)"
                if len({tuple(sorted(p.items())) for p in self.profiles}) > 1
                else ""
            )
            return (
                f"input {name!r} has shape {_listing(shape)}, outside the TensorRT optimization "
                f"profile the engine was built with ({r}): {why}{others}"
                + (f". {self.advice}" if self.advice else "")
            )
        return "the feed shapes fit no optimization profile of the engine"  # pragma: no cover
