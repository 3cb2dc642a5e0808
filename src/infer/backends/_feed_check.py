"""The edge's one feed check (`FeedCheck`): names, ranks, fixed dims and dtypes of host feeds
(`infer.tensors.FeedValidator`'s fast path), device arrays read in place or refused in words,
batch 0 answered alike on every backend (`EmptyBatch`), and integer inputs kept within the
tables they index (`BoundedFeedCheck`). `Session` (backends/base.py) holds one per session,
built from the specs fixed at compile time and the graph's facts (`GraphFacts`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np

from .. import device_array
from ..binding import device_shape as _device_shape
from ..binding import host_array, where_is
from ..errors import InputError
from ..model import Model
from ..tensors import FeedValidator, TensorSpec, describe


@dataclass(frozen=True)
class GraphFacts:
    """What the feed check knows from the graph a session was compiled from (`Session.know`).

    bounds: integer input -> n, where its values index a table of n rows (an embedding Gather):
        valid values are [-n, n-1], as the spec's Gather takes them.
    shapes: the outputs' shapes at given input shapes (`_onnx.output_shapes`), for the outputs
        of batch 0 that the specs' dimension names do not size; None: not known.
    """

    bounds: Mapping[str, int] = dataclass_field(default_factory=dict)
    shapes: (
        Callable[[Mapping[str, tuple[int, ...]]], Mapping[str, tuple[int, ...] | None]] | None
    ) = None


class EmptyBatch(dict):
    """Checked feeds of batch 0 with their answer, `outputs`: arrays with no rows, of the shapes
    the graph gives, the same on every backend (no runtime runs: runtimes differ on batch 0).
    Where the graph cannot give every output at batch 0 (a count, a sum, a data-dependent
    shape), `outputs` is None: the runtime runs the feeds, and if it fails, every backend
    raises the same `refusal` (chained to the runtime's own error)."""

    def __init__(
        self, feeds: Mapping[str, Any], outputs: dict[str, np.ndarray] | None, refusal: str
    ) -> None:
        super().__init__(feeds)
        self.outputs = outputs
        self.refusal = refusal

    def answer(self, names: Sequence[str] | None) -> dict[str, np.ndarray]:
        assert self.outputs is not None
        out = self.outputs
        return {n: out[n].copy() for n in (names if names is not None else out)}

    def run(self, run: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """The runtime's answer through `run`, or the one refusal where it fails."""
        try:
            return run(dict(self))
        except Exception as e:
            raise InputError(self.refusal) from e


class FeedCheck(FeedValidator):
    """The edge's one feed check, for `Session.run`/`submit` and every `Binding.run`.

    Host feeds go through `FeedValidator` (names, rank, fixed dims, dtype; its cached fast
    path keeps the usual call cheap). Device arrays (`__cuda_array_interface__` or DLPack in
    GPU memory) are passed through as given, their shape checked here, for a reader that takes
    them in place (`infer.binding.device_view` checks dtype, layout and GPU as it reads), or
    refused in words where the reader takes host memory only. Host DLPack objects become numpy
    views of their memory.

    With the graph's facts (`GraphFacts`), feeds of batch 0 (0 rows on a first axis the specs
    leave open) come back as an `EmptyBatch`; `BoundedFeedCheck` adds the integer inputs' ranges.
    """

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        *,
        cast: bool,
        reader: str | None,
        outputs: Sequence[TensorSpec] = (),
        facts: GraphFacts | None = None,
    ) -> None:
        """reader: None when device arrays are read in place; else what reads host memory
        ("onnxruntime ... on cpu:0"), for the refusal. outputs: the session's output specs."""
        super().__init__(specs, cast=cast)
        self._reader = reader
        self._outputs = list(outputs)
        self._facts = facts or GraphFacts()
        self._bounds = [(n, int(b)) for n, b in self._facts.bounds.items() if n in self.specs]
        self._batched = frozenset(
            s.name
            for s in specs
            if s.kind == "tensor" and s.shape and not isinstance(s.shape[0], int)
        )
        self._empty_shapes: dict[tuple, Mapping[str, tuple[int, ...] | None]] = {}

    def check_values(self, feeds: Mapping[str, Any]) -> None:
        """The graph's bounds alone, on feeds not checked yet (arrays or lists of integers), for
        a queue that merges requests: one bad request must not fail the others' run."""
        if self._bounds and isinstance(feeds, Mapping):
            arrays = {n: np.asarray(feeds[n]) for n, _ in self._bounds if n in feeds}
            _within(self._bounds, arrays)

    def _check_one(self, name: str, value: Any) -> np.ndarray:
        arr = super()._check_one(name, value)
        if name in self._batched and arr.ndim and arr.shape[0] == 0:
            # never on the fast path: every batch-0 call is answered by `_full`
            self._accepted[name].discard((arr.dtype, arr.shape))
        return arr

    def _full(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        out = self._checked(feeds)
        for name in self._batched:
            value = out.get(name)
            if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == 0:
                return EmptyBatch(out, *self._empty(out, name))
        return out

    def _empty(
        self, feeds: Mapping[str, Any], first: str
    ) -> tuple[dict[str, np.ndarray] | None, str]:
        """The outputs of batch 0: no rows, each dimension sized by the name it shares with an
        input, else by the graph's shape inference (`_extrapolated`); None where an output
        cannot be so given, with the words every backend raises if the runtime fails on it."""
        sizes: dict[str, int] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for name, value in feeds.items():
            spec = self.specs[name]
            if spec.kind != "tensor" or spec.shape is None or not hasattr(value, "shape"):
                continue
            shapes[name] = tuple(int(n) for n in value.shape)
            for d, n in zip(spec.shape, value.shape):
                if isinstance(d, str):
                    sizes.setdefault(d, int(n))
        inferred: Mapping[str, tuple[int, ...] | None] | None = None
        out: dict[str, np.ndarray] = {}
        for spec in self._outputs:
            shape: tuple[int, ...] | None = None
            if spec.kind == "tensor" and spec.shape is not None:
                dims = [
                    d if isinstance(d, int) else sizes.get(d) if d else None for d in spec.shape
                ]
                if all(d is not None for d in dims):
                    shape = tuple(dims)  # type: ignore[arg-type]
            if shape is None and self._facts.shapes is not None:
                if inferred is None:
                    key = tuple(sorted(shapes.items()))
                    if key not in self._empty_shapes:
                        self._empty_shapes[key] = self._extrapolated(shapes)
                    inferred = self._empty_shapes[key]
                shape = inferred.get(spec.name)
            if shape is None or 0 not in shape:
                seen = list(feeds[first].shape)
                why = (
                    "its shape is not known from the graph at these input shapes"
                    if shape is None
                    else f"it has {list(shape)} at batch 0: its values need a run"
                )
                return None, (
                    f"input {first!r} has batch 0 (shape {seen}): output {spec.name!r} "
                    f"({describe(spec.shape, spec.dtype)}) cannot be given without a run "
                    f"({why}), and the run failed; pass at least one row"
                )
            out[spec.name] = np.empty(shape, spec.dtype)
        return out, ""

    def _extrapolated(
        self, shapes: Mapping[str, tuple[int, ...]]
    ) -> Mapping[str, tuple[int, ...] | None]:
        """Output shapes at batch 0 from the graph's shape inference at batch 1 and 2 (at 0 it
        cannot size a Reshape's -1): each dimension taken as linear in the batch."""
        assert self._facts.shapes is not None
        at = []
        for rows in (1, 2):
            probe = {
                n: (rows, *s[1:]) if n in self._batched and s and s[0] == 0 else s
                for n, s in shapes.items()
            }
            at.append(self._facts.shapes(probe))
        out: dict[str, tuple[int, ...] | None] = {}
        for name, one in at[0].items():
            two = at[1].get(name)
            dims = None
            if one is not None and two is not None and len(one) == len(two):
                dims = tuple(2 * a - b for a, b in zip(one, two))
            out[name] = dims if dims is not None and min(dims, default=0) >= 0 else None
        return out

    def _checked(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(feeds, Mapping) or all(type(v) is np.ndarray for v in feeds.values()):
            return super()._full(feeds)
        device: dict[str, Any] = {}
        host: dict[str, Any] = {}
        for name, value in feeds.items():
            if type(value) is not np.ndarray and device_array.is_device_array(value):
                device[name] = value
            else:
                view = host_array(value)
                host[name] = value if view is None else view
        if not device:
            return super()._full(host)
        if feeds.keys() != self.names:
            self._check_names(feeds)
        if self._reader is not None:
            name, value = next(iter(device.items()))
            raise InputError(
                f"input {name!r} is in {where_is(value)} memory, but {self._reader}: pass a "
                "numpy array (copy it to the host), or load the engine on the GPU"
            )
        out: dict[str, Any] = {name: self._check_one(name, value) for name, value in host.items()}
        for name, value in device.items():
            _device_shape(self.specs[name], value)
            out[name] = value
        return out


class BoundedFeedCheck(FeedCheck):
    """A feed check that also refuses integer values outside the graph's bounds with InputError:
    one min and one max over each bounded host array per call (device arrays, read in place on
    their GPU, are not looked at). A subclass, so that models without bounds keep
    `FeedValidator`'s fast path as it is."""

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        out = super().__call__(feeds)
        _within(self._bounds, out)
        return out


def _within(bounds: Sequence[tuple[str, int]], feeds: Mapping[str, Any]) -> None:
    """Raise InputError where a bounded input's host array holds a value outside [-n, n-1]."""
    for name, n in bounds:
        ids = feeds.get(name)
        if type(ids) is np.ndarray and ids.size and ids.dtype.kind in "iu":
            lo, hi = ids.min(), ids.max()
            if lo < -n or hi >= n:
                raise InputError(
                    f"input {name!r}: value {int(hi) if hi >= n else int(lo)} is outside "
                    f"[{-n}, {n - 1}], the rows of the table it indexes ({n}); a tokenizer "
                    "that does not match the model gives such ids"
                )


def graph_bounds(model: Model) -> dict[str, int]:
    """{integer input: rows of the table it indexes} from the graph (none for other formats)."""
    from .. import sequence

    return dict(sequence.read(model).bounds)


def output_shapes(
    model: Model, inputs: Mapping[str, tuple[int, ...]]
) -> Mapping[str, tuple[int, ...] | None]:
    from .. import _onnx

    return _onnx.output_shapes(model.proto, inputs)
