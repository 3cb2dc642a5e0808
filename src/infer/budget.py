"""What "good enough" means for an int8 model: the accuracy budget, and how it is measured.

`Budget` is given as `Calibration(data, budget=Budget(...))`. With no budget given, the default
`Budget()` applies, so a plain `precision="int8", calibration=...` is guarded too:

- outputs that hold scores (see `score_outputs`: classifier logits or probabilities, per-step
  scores such as a CTC recognizer's) keep their argmax on the last axis: agreement with fp32 at
  least ``1 - max_drop`` (99% by default), counted over every position (each row of a classifier,
  each time step of a recognizer);
- other float outputs stay within ``max_rel_error`` (1% by default) relative error:
  ``||int8 - fp32|| / ||fp32||`` over all validation feeds;
- integer or boolean outputs (indices, masks) agree element for element at least ``1 - max_drop``;
- with `metric`, the metric decides instead: ``metric(fp32 outputs, labels) - metric(int8 outputs,
  labels) <= max_drop``, labels being `labels` when given, else the fp32 outputs.

and the int8 model must run at least `min_speedup` times as fast as fp32 on the same backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from . import _onnx
from ._diff import argmax_agreement
from .errors import OptionError

Metric = Callable[[list[dict[str, np.ndarray]], list[Any]], float]

_SCORE_PRODUCERS = frozenset({"Softmax", "LogSoftmax"})


@dataclass(frozen=True, eq=False)
class Budget:
    """How far an int8 model may stray from fp32, what it is measured on, and how long to search.

    max_drop: the most the argmax agreement of score outputs (or exact agreement of integer
        outputs) may fall below 100%, or the most `metric` may drop, in absolute terms.
    max_rel_error: the most relative error (L2, over all validation feeds) another float output
        may have.
    metric: metric(outputs, labels) -> float, higher is better; outputs is one dict of output
        arrays per validation feed, labels is `labels` or, without them, the fp32 outputs.
        It replaces the per-output rules.
    labels: one label per validation feed, for `metric` (needs `validation`).
    validation: feeds to measure on (dicts, or arrays for a single-input model; the
        Calibration's preprocess applies to them too). None: every ``1/holdout``-th calibration
        feed is held out and not calibrated on.
    holdout: the share of calibration feeds held out when `validation` is None.
    outputs: the outputs the budget covers (default: all).
    min_speedup: the int8 model must run at least this many times as fast as fp32 on the same
        backend (measured at load, on the first validation feed); None: speed is measured and
        reported but not required.
    time_limit: seconds the search for nodes to keep in float may take once the first int8
        graph is measured; it stops there and says so.
    accept_best: when the budget cannot be met, take the best graph found (and say so in
        `engine.precision`) instead of raising `PrecisionError`.
    ranking_feeds: validation feeds each node's sensitivity is measured on.
    key: a name for the validation data, labels and metric that changes whenever they do; with
        it the cache key uses the name instead of hashing them.
    """

    max_drop: float = 0.01
    max_rel_error: float = 0.01
    metric: Metric | None = None
    labels: Sequence[Any] | None = None
    validation: Iterable[Any] | Callable[[], Iterable[Any]] | None = None
    holdout: float = 0.2
    outputs: Sequence[str] | None = None
    min_speedup: float | None = 1.0
    time_limit: float = 300.0
    accept_best: bool = False
    ranking_feeds: int = 16
    key: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_drop", "max_rel_error"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise OptionError(f"Budget {name} must be a number >= 0, got {value!r}")
        if not 0 < float(self.holdout) < 1:
            raise OptionError(f"Budget holdout must be in (0, 1), got {self.holdout!r}")
        if self.min_speedup is not None and not float(self.min_speedup) >= 0:
            raise OptionError(f"Budget min_speedup must be >= 0 or None, got {self.min_speedup!r}")
        if not float(self.time_limit) >= 0:
            raise OptionError(f"Budget time_limit must be >= 0 seconds, got {self.time_limit!r}")
        if not isinstance(self.ranking_feeds, int) or self.ranking_feeds < 1:
            raise OptionError(
                f"Budget ranking_feeds must be a positive integer, got {self.ranking_feeds!r}"
            )
        if self.metric is not None and not callable(self.metric):
            raise OptionError(
                f"Budget metric must be callable(outputs, labels) -> float, got "
                f"{type(self.metric).__name__}"
            )
        if self.labels is not None:
            if self.validation is None:
                raise OptionError(
                    "Budget labels belong to validation feeds: give validation= with them "
                    "(held-out calibration feeds have no labels)"
                )
            if self.metric is None:
                raise OptionError("Budget labels are read by a metric: give metric= with them")
        if isinstance(self.outputs, str):
            object.__setattr__(self, "outputs", (self.outputs,))

    def __repr__(self) -> str:
        parts = [f"max_drop={self.max_drop:g}"]
        if self.metric is None:
            parts.append(f"max_rel_error={self.max_rel_error:g}")
        else:
            parts.append(f"metric={getattr(self.metric, '__qualname__', repr(self.metric))}")
        if self.validation is not None:
            parts.append("validation=<given>")
        parts.append(f"min_speedup={self.min_speedup!r}, time_limit={self.time_limit:g}")
        if self.accept_best:
            parts.append("accept_best=True")
        return f"Budget({', '.join(parts)})"

    def describe(self) -> str:
        """The budget in words, for messages."""
        if self.metric is not None:
            what = f"metric drop <= {self.max_drop:g}"
        else:
            what = (
                f"argmax agreement >= {1 - self.max_drop:.1%} on score outputs, relative error "
                f"<= {self.max_rel_error:.1%} on others"
            )
        if self.min_speedup is not None:
            what += f", >= {self.min_speedup:g}x the speed of fp32"
        return what

    def key_parts(self) -> dict[str, Any]:
        """What identifies this budget in a cache key (not the validation data: the caller
        hashes that; not accept_best, which changes what is done with the result only)."""
        parts: dict[str, Any] = {
            "max_drop": float(self.max_drop),
            "max_rel_error": float(self.max_rel_error),
            "outputs": None if self.outputs is None else sorted(self.outputs),
            "min_speedup": None if self.min_speedup is None else float(self.min_speedup),
            "time_limit": float(self.time_limit),
            "holdout": None if self.validation is not None else float(self.holdout),
            "ranking_feeds": self.ranking_feeds,
        }
        if self.key is not None:
            parts["key"] = self.key
        elif self.metric is not None:
            parts["metric"] = _callable_digest(self.metric)
            if self.labels is not None:
                parts["labels"] = hashlib.sha256(repr(list(self.labels)).encode()).hexdigest()
        return parts


def _callable_digest(fn: Any) -> str:
    """A name plus a hash of the code for a metric (give Budget(key=...) to be sure)."""
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
    if code is None:
        return name
    h = hashlib.sha256(code.co_code)
    h.update(repr(code.co_consts).encode())
    return f"{name}:{h.hexdigest()[:16]}"


# -- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One measured figure against its limit: "agreement" (argmax on the last axis), "exact"
    (element-wise equality), "rel_error" (relative L2 error) or "metric" (drop of the metric)."""

    output: str
    kind: str
    value: float
    limit: float

    @property
    def met(self) -> bool:
        if self.kind in ("agreement", "exact"):
            return self.value >= self.limit - 1e-12
        return self.value <= self.limit + 1e-12

    def __str__(self) -> str:
        if self.kind in ("agreement", "exact"):
            what = "argmax agreement" if self.kind == "agreement" else "exact agreement"
            return f"{self.output}: {what} {self.value:.2%} (budget >= {self.limit:.2%})"
        if self.kind == "rel_error":
            return f"{self.output}: relative error {self.value:.3%} (budget <= {self.limit:.3%})"
        return f"metric drop {self.value:.4g} (budget <= {self.limit:.4g})"

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "kind": self.kind, "value": self.value, "limit": self.limit}


@dataclass(frozen=True)
class Measure:
    """Every figure of one int8 graph, and `loss`, a continuous error used to rank nodes."""

    figures: tuple[Figure, ...]
    loss: float

    @property
    def met(self) -> bool:
        return all(f.met for f in self.figures)

    @property
    def worst(self) -> Figure:
        """The figure furthest past (or closest to) its limit."""
        return max(self.figures, key=_excess)

    def __str__(self) -> str:
        return "; ".join(str(f) for f in self.figures)


def _excess(f: Figure) -> float:
    if f.kind in ("agreement", "exact"):
        return (f.limit - f.value) / max(1 - f.limit, 1e-9)
    return (f.value - f.limit) / max(f.limit, 1e-9)


def score_outputs(proto: onnx.ModelProto) -> set[str]:
    """Outputs that hold scores, compared by argmax: float outputs of rank 2 whose last axis is
    fixed and >= 2 (classifier logits or probabilities: [batch, classes]), and float outputs of
    any rank >= 2 made by a Softmax/LogSoftmax over the last axis (per-step scores: [batch, steps,
    classes]). A [1, 1, H, W] map or a [1, 84, 8400] detector head is not one."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    out = set()
    for o in graph.output:
        t = o.type.tensor_type
        if t.elem_type not in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.DOUBLE,
        ):
            continue
        dims = list(t.shape.dim) if t.HasField("shape") else []
        if len(dims) < 2:
            continue
        last = dims[-1].dim_value if dims[-1].HasField("dim_value") else 0
        node = producer.get(o.name)
        if node is not None and node.op_type == "Identity":
            node = producer.get(node.input[0])
        softmax = (
            node is not None and node.op_type in _SCORE_PRODUCERS and _last_axis(node, len(dims))
        )
        if (len(dims) == 2 and last >= 2) or (softmax and last != 1):
            out.add(o.name)
    return out


def _last_axis(node: onnx.NodeProto, rank: int) -> bool:
    axis = _onnx.attribute(node, "axis", -1)
    return axis in (-1, rank - 1)


def measure(
    budget: Budget,
    got: Sequence[Mapping[str, np.ndarray]],
    want: Sequence[Mapping[str, np.ndarray]],
    scores: set[str],
    names: Sequence[str],
) -> Measure:
    """The budget's figures for int8 outputs `got` against fp32 outputs `want` (one dict per
    validation feed), over the outputs `names`; `scores` are the outputs compared by argmax."""
    loss = 0.0
    figures: list[Figure] = []
    for name in names:
        a = [np.asarray(g[name]) for g in got]
        b = [np.asarray(w[name]) for w in want]
        rel = _rel_error(a, b)
        loss += rel if np.isfinite(rel) else 1e6
        if budget.metric is not None:
            continue
        if b[0].dtype.kind not in "fc":
            same = _mean([np.asarray(x == y, np.float64).ravel() for x, y in zip(a, b)])
            figures.append(Figure(name, "exact", same, 1 - budget.max_drop))
            loss += 1 - same
        elif name in scores:
            top1 = argmax_agreement(a, b)
            agree = 1.0 if top1 is None else top1  # one class (or no rows): nothing to disagree on
            figures.append(Figure(name, "agreement", agree, 1 - budget.max_drop))
            loss += 1 - agree
        else:
            figures.append(Figure(name, "rel_error", rel, budget.max_rel_error))
    if budget.metric is not None:
        labels = list(budget.labels) if budget.labels is not None else [dict(w) for w in want]
        drop = _metric(budget.metric, want, labels) - _metric(budget.metric, got, labels)
        figures.append(Figure("metric", "metric", drop, budget.max_drop))
        loss += max(drop, 0.0)
    return Measure(tuple(figures), loss)


def _metric(fn: Metric, outputs: Sequence[Mapping[str, np.ndarray]], labels: list[Any]) -> float:
    try:
        value = float(fn([dict(o) for o in outputs], labels))
    except Exception as e:
        raise OptionError(f"Budget metric raised {type(e).__name__}: {e}") from e
    if not np.isfinite(value):
        raise OptionError(f"Budget metric returned {value}; it must return a finite number")
    return value


def _rel_error(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    if b[0].dtype.kind not in "fc":
        a = [x.astype(np.float64) for x in a]
        b = [y.astype(np.float64) for y in b]
    num = sum(float(np.sum(np.square(x.astype(np.float64) - y))) for x, y in zip(a, b))
    den = sum(float(np.sum(np.square(y.astype(np.float64)))) for y in b)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(np.sqrt(num / den))


def _mean(parts: Sequence[np.ndarray]) -> float:
    flat = np.concatenate(parts) if parts else np.zeros(0)
    return float(flat.mean()) if flat.size else 1.0
