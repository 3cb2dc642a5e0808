"""Calibration data for precision="int8": where the feeds come from, how many, and how to quantize.

`Calibration` is what users pass as `Engine.load(..., precision="int8", calibration=...)`. It
reads feeds lazily, checks each one against the model's inputs (the same checks `run` makes),
and hashes them so the quantized model can be cached by what it was calibrated on.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from .budget import Budget
from .errors import InputError, OptionError
from .tensors import FeedValidator, TensorSpec, describe_specs

METHODS = ("minmax", "entropy", "percentile")
QUANTIZERS = ("auto", "onnxruntime", "onnxruntime-symmetric", "nncf")
"""Who places the Q/DQ nodes; "auto" lets the compiling backend choose (`Backend.int8_quantizer`)."""

Feed = Mapping[str, Any] | np.ndarray


@dataclass(frozen=True, eq=False)
class Calibration:
    """Feeds to calibrate int8 ranges on, and how to quantize.

    data: an iterable of feeds, or a callable returning one (called each time the data is
        read). A feed is a dict {input name: array}, or one array for a single-input model; it
        may hold a batch. One-shot iterators (generators) are read once and kept in memory.
    method: "minmax", "entropy" or "percentile" (ONNX Runtime's calibrators).
    limit: at most this many feeds are read (None: all of them).
    percentile: the percentile kept by method="percentile".
    exclude: node names or op types left in floating point.
    per_channel: quantize weights per output channel (else per tensor).
    quantizer: "auto" (the backend's choice), "onnxruntime" (uint8 activations, int8 weights:
        ONNX Runtime's CPU kernels), "onnxruntime-symmetric" (int8 activations with zero point 0,
        as TensorRT requires) or "nncf" (Intel's NNCF: OpenVINO's placement, with bias correction).
    preprocess: turns each item into a feed before it is checked, for a model without fused
        preprocessing calibrated on raw data: an `infer.Preprocess` (its `apply` runs on the
        item, for a single-input model), {input name: Preprocess} (each runs on item[name]),
        or any callable item -> feed. (With `Engine.load(preprocess=...)` the preprocessing is
        in the graph, and the calibration feeds are raw frames already.)
    key: a name for the data that changes whenever the data does. With it, the cache key uses
        the name instead of a hash of the feeds, so a cached model is reused without reading them.
    budget: what the int8 model must keep (`infer.Budget`; the default `Budget()` when not
        given): Engine.load measures the int8 graph against fp32 on the backend that will run
        it, keeps the nodes that cost the most accuracy in float until the budget is met, and
        raises `PrecisionError` when no graph faster than fp32 meets it. None: quantize without
        measuring (the graph is not checked).
    """

    data: Iterable[Feed] | Callable[[], Iterable[Feed]]
    method: str = "minmax"
    limit: int | None = 200
    percentile: float = 99.999
    exclude: Sequence[str] = ()
    per_channel: bool = True
    quantizer: str = "auto"
    preprocess: Any = None
    key: str | None = None
    budget: Budget | None = field(default_factory=Budget)
    _kept: list[Any] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OptionError(
                f"Calibration method {self.method!r} is not known; use one of {', '.join(METHODS)}"
            )
        if self.quantizer not in QUANTIZERS:
            raise OptionError(
                f"Calibration quantizer {self.quantizer!r} is not known; use one of "
                f"{', '.join(QUANTIZERS)}"
            )
        if self.limit is not None and (
            not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1
        ):
            raise OptionError(
                f"Calibration limit must be a positive integer or None, got {self.limit!r}"
            )
        if not 0 < float(self.percentile) <= 100:
            raise OptionError(
                f"Calibration percentile must be in (0, 100], got {self.percentile!r}"
            )
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise OptionError(
                f"Calibration budget must be an infer.Budget or None, got {type(self.budget).__name__}"
            )
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        object.__setattr__(self, "exclude", tuple(str(e) for e in self.exclude))
        data = self.data
        if isinstance(data, (Mapping, np.ndarray)) or not (
            callable(data) or isinstance(data, Iterable)
        ):
            raise OptionError(
                "calibration data must be an iterable of feeds (dicts of input name -> array, or "
                f"arrays for a single-input model) or a callable returning one; got "
                f"{type(data).__name__}"
                + (
                    ": wrap a single feed in a list"
                    if isinstance(data, (Mapping, np.ndarray))
                    else ""
                )
            )

    def __repr__(self) -> str:
        data = self.data
        what = (
            f"{type(data).__name__} of {len(cast(Sized, data))}"
            if hasattr(data, "__len__")
            else getattr(data, "__name__", type(data).__name__)
        )
        extra = "".join(
            f", {name}={getattr(self, name)!r}"
            for name, default in (
                ("exclude", ()),
                ("per_channel", True),
                ("quantizer", "auto"),
                ("key", None),
            )
            if getattr(self, name) != default
        )
        if self.budget is None:
            extra += ", budget=None"
        elif self.budget.__dict__ != Budget().__dict__:
            extra += f", budget={self.budget!r}"
        return f"Calibration(<{what}>, method={self.method!r}, limit={self.limit!r}{extra})"

    @classmethod
    def of(cls, value: Any) -> Calibration:
        """`value` as a Calibration: one already, or the data for a default one."""
        return value if isinstance(value, Calibration) else cls(value)

    # -- reading ------------------------------------------------------------------------------

    def _items(self) -> Iterator[Any]:
        source = self.data
        if callable(source) and not isinstance(source, Iterable):
            try:
                source = source()
            except Exception as e:
                raise OptionError(
                    f"the calibration data callable raised {type(e).__name__}: {e}"
                ) from e
            if isinstance(source, (Mapping, np.ndarray)) or not isinstance(source, Iterable):
                raise OptionError(
                    "the calibration data callable must return an iterable of feeds, got "
                    f"{type(source).__name__}"
                )
            yield from _limited(source, self.limit)
            return
        if iter(source) is not source:  # re-iterable: a list, a dataset
            yield from _limited(source, self.limit)
            return
        with self._lock:  # a one-shot iterator: read it once, keep what was read
            if self._kept is None:
                object.__setattr__(self, "_kept", list(_limited(source, self.limit)))
        yield from self._kept  # type: ignore[misc]

    def feeds(
        self, inputs: Sequence[TensorSpec], *, cast: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """The feeds, preprocessed and checked against `inputs`; raises InputError naming the
        sample and tensor that does not fit."""
        check = FeedValidator(inputs, cast=cast)
        names = [s.name for s in inputs]
        for i, item in enumerate(self._items()):
            if self.preprocess is not None:
                item = self._preprocessed(item, names, i)
            if isinstance(item, Mapping):
                feed = dict(item)
            elif len(names) == 1:
                feed = {names[0]: item}
            else:
                raise InputError(
                    f"calibration sample {i}: the model takes {len(names)} inputs ("
                    + describe_specs(inputs)
                    + f"), so each feed must be a dict; got {type(item).__name__}"
                )
            try:
                yield check(feed)
            except InputError as e:
                raise InputError(f"calibration sample {i}: {e}") from e

    def _preprocessed(self, item: Any, names: Sequence[str], i: int) -> Any:
        pre = self.preprocess
        try:
            if isinstance(pre, Mapping):  # {input name: Preprocess}
                if not isinstance(item, Mapping):
                    raise InputError(
                        f"calibration sample {i}: preprocess is per input ({sorted(pre)}), so "
                        f"each item must be a dict; got {type(item).__name__}"
                    )
                return {k: pre[k].apply(v) if k in pre else v for k, v in item.items()}
            if hasattr(pre, "apply"):  # one infer.Preprocess
                if isinstance(item, Mapping):
                    if len(item) != 1:
                        raise InputError(
                            f"calibration sample {i}: one Preprocess for a dict of {len(item)} "
                            "inputs; give {input name: Preprocess}"
                        )
                    ((name, value),) = item.items()
                    return {name: pre.apply(value)}
                return {names[0]: pre.apply(item)} if len(names) == 1 else pre.apply(item)
            return pre(item)
        except InputError as e:
            if str(e).startswith("calibration sample"):
                raise
            raise InputError(f"calibration sample {i}: preprocess failed: {e}") from e
        except Exception as e:
            raise InputError(
                f"calibration sample {i}: preprocess failed: {type(e).__name__}: {e}"
            ) from e

    def digest(self, inputs: Sequence[TensorSpec], *, cast: bool = False) -> tuple[str, int | None]:
        """(what identifies the data, how many feeds) for cache keys.

        With `key` set, the data is not read and the count is unknown (None).
        """
        if self.key is not None:
            return f"key:{self.key}", None
        h = hashlib.sha256()
        count = 0
        for feed in self.feeds(inputs, cast=cast):
            for name in sorted(feed):
                arr = np.ascontiguousarray(feed[name])
                h.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
                h.update(arr.data if arr.dtype != object else repr(arr.tolist()).encode())
            count += 1
        if count == 0:
            raise OptionError(
                "the calibration data is empty: int8 calibration needs at least one feed"
            )
        return h.hexdigest(), count


def _limited(source: Iterable[Any], limit: int | None) -> Iterator[Any]:
    for i, item in enumerate(source):
        if limit is not None and i >= limit:
            return
        yield item
