"""How far an engine's outputs are from a reference's on the same feeds.

`infer.accuracy(engine, reference="fp32", feeds=holdout)` runs every feed through both and
reports, per output: the largest absolute error, that error relative to the reference's largest
magnitude, the mean absolute error, the worst per-sample cosine similarity and, for 2-D
[batch, classes] outputs, how often the top-1 class agrees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, OptionError

if TYPE_CHECKING:
    from .engine import Engine


@dataclass(frozen=True)
class OutputAccuracy:
    """One output compared over every feed."""

    name: str
    samples: int  # rows compared (feeds x batch)
    max_abs: float  # max |engine - reference|
    max_rel: (
        float  # max_abs / max |reference| (0 when the reference is all zeros and so is the error)
    )
    mean_abs: float
    cosine: float  # the lowest cosine similarity of one row (flattened) with its reference
    top1: float | None  # share of rows whose argmax agrees; None unless the output is [N, C>1]

    def __str__(self) -> str:
        top1 = "" if self.top1 is None else f", top-1 agreement {self.top1:.2%}"
        return (
            f"{self.name}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}, mean abs "
            f"{self.mean_abs:.3g}, min cosine {self.cosine:.6f}{top1} ({self.samples} rows)"
        )


@dataclass(frozen=True)
class AccuracyReport:
    """Per-output errors of `engine` against `reference` (what each ran is in its label)."""

    engine: str
    reference: str
    feeds: int
    outputs: Mapping[str, OutputAccuracy]

    def __getitem__(self, name: str) -> OutputAccuracy:
        return self.outputs[name]

    @property
    def top1(self) -> float | None:
        """The lowest top-1 agreement over the outputs that have one."""
        values = [o.top1 for o in self.outputs.values() if o.top1 is not None]
        return min(values) if values else None

    def __str__(self) -> str:
        lines = [f"{self.engine} vs {self.reference}, {self.feeds} feeds:"]
        lines += [f"  {o}" for o in self.outputs.values()]
        return "\n".join(lines)


def accuracy(
    engine: Engine,
    reference: str | Engine = "fp32",
    feeds: Iterable[Any] | Mapping[str, Any] | np.ndarray = (),
    *,
    outputs: Sequence[str] | None = None,
) -> AccuracyReport:
    """Compare `engine` with `reference` on `feeds`.

    reference: "fp32" loads the same model at fp32 with the same backend on the same device
        (and closes it after); or give any Engine with the same outputs.
    feeds: an iterable of feeds (dicts, or arrays for a single-input model); one dict or array
        counts as one feed. Use inputs the model was not calibrated on.
    outputs: which outputs to compare (default: every output of `engine`).
    """
    batch = _feed_list(feeds, engine)
    if not batch:
        raise OptionError("accuracy() needs at least one feed to compare on")
    own = None
    if isinstance(reference, str):
        if reference != "fp32":
            raise OptionError(
                f"reference={reference!r} is not known: give 'fp32' or an infer.Engine"
            )
        own = ref = _fp32_twin(engine)
    else:
        ref = reference
    try:
        names = list(outputs) if outputs is not None else [o.name for o in engine.outputs]
        theirs = {o.name for o in ref.outputs}
        missing = [n for n in names if n not in theirs]
        if missing:
            raise InputError(
                f"the reference has no output(s) {missing}; its outputs are {sorted(theirs)}"
            )
        got: dict[str, list[np.ndarray]] = {n: [] for n in names}
        want: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for feed in batch:
            a = engine.run(feed, names)
            b = ref.run(feed, names)
            for n in names:
                got[n].append(np.asarray(a[n]))
                want[n].append(np.asarray(b[n]))
        results = {n: _compare(n, got[n], want[n]) for n in names}
        return AccuracyReport(_label(engine), _label(ref), len(batch), results)
    finally:
        if own is not None:
            own.close()


def _feed_list(feeds: Any, engine: Engine) -> list[Any]:
    if isinstance(feeds, (Mapping, np.ndarray)):
        feeds = [feeds]
    if not isinstance(feeds, Iterable):
        raise OptionError(
            f"feeds must be an iterable of feeds (dicts or arrays), got {type(feeds).__name__}"
        )
    out = []
    names = [s.name for s in engine.inputs]
    for f in feeds:
        if not isinstance(f, Mapping):
            if len(names) != 1:
                raise InputError(
                    f"the model takes {len(names)} inputs {names}: each feed must be a dict"
                )
            f = {names[0]: f}
        out.append(f)
    return out


def _fp32_twin(engine: Engine) -> Engine:
    """The engine's model at fp32, on the same backend (and variant) and device."""
    from .engine import Engine

    opts = engine.options
    chosen = engine.selection[-1].backend if engine.selection else engine.backend
    return Engine.load(
        engine.model,
        engine.device,
        backend=chosen,
        precision="fp32",
        shapes=opts.shapes,
        cast=opts.cast,
        threads=opts.threads,
        cache=opts.cache,
        cache_dir=opts.cache_dir,
        backend_options=opts.backend_options,
    )


def _label(engine: Engine) -> str:
    return f"{engine.backend} {engine.precision}"


def _compare(name: str, got: list[np.ndarray], want: list[np.ndarray]) -> OutputAccuracy:
    rows_a, rows_b = [], []
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            raise InputError(
                f"output {name!r}, feed {i}: shape {list(a.shape)} differs from the reference's "
                f"{list(b.shape)}"
            )
        if a.dtype == object or b.dtype == object:
            raise InputError(f"output {name!r} is not a numeric tensor; it cannot be compared")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if a64.ndim >= 1 and a64.shape[0] > 0:
            rows_a += list(a64.reshape(a64.shape[0], -1))
            rows_b += list(b64.reshape(b64.shape[0], -1))
        else:
            rows_a.append(a64.reshape(-1))
            rows_b.append(b64.reshape(-1))
    A = np.concatenate([r.reshape(-1) for r in rows_a]) if rows_a else np.zeros(0)
    B = np.concatenate([r.reshape(-1) for r in rows_b]) if rows_b else np.zeros(0)
    diff = np.abs(A - B)
    max_abs = float(diff.max()) if diff.size else 0.0
    peak = float(np.abs(B).max()) if B.size else 0.0
    max_rel = max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else float("inf"))
    cosines = [_cosine(a, b) for a, b in zip(rows_a, rows_b)]
    top1 = None
    first = got[0]
    if first.ndim == 2 and first.shape[1] > 1 and first.dtype.kind == "f":
        agree = [
            np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))
            for a, b in zip(got, want)
            if a.shape[0]
        ]
        weights = [a.shape[0] for a in got if a.shape[0]]
        top1 = float(np.average(agree, weights=weights)) if weights else None
    return OutputAccuracy(
        name=name,
        samples=len(rows_a),
        max_abs=max_abs,
        max_rel=max_rel,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=min(cosines) if cosines else 1.0,
        top1=top1,
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
