"""How far an engine's outputs are from a reference's on the same feeds.

`infer.accuracy(engine, reference="fp32", feeds=holdout)` runs every feed through both and
reports, per output, what `infer.compare` measures (`_diff.diff`: max absolute error, the same
relative to the reference output's largest magnitude, mean absolute error, cosine similarity) and, for 2-D
[batch, classes] outputs, how often the top-1 class agrees. It is the check to run after
`precision="int8"` or `"fp16"`, on feeds the model was not calibrated on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._diff import OutputDiff, diff
from .errors import InputError, OptionError

if TYPE_CHECKING:
    from .engine import Engine


@dataclass(frozen=True)
class AccuracyReport:
    """Per-output differences of `engine` from `reference` (each label says what ran)."""

    engine: str
    reference: str
    feeds: int
    outputs: Mapping[str, OutputDiff]

    def __getitem__(self, name: str) -> OutputDiff:
        return self.outputs[name]

    @property
    def top1(self) -> float | None:
        """The lowest top-1 agreement over the outputs that have one."""
        values = [o.top1 for o in self.outputs.values() if o.top1 is not None]
        return min(values) if values else None

    def __str__(self) -> str:
        lines = [
            f"{self.engine} vs {self.reference}, {self.feeds} feeds (max rel: relative to the "
            "reference output's largest magnitude):"
        ]
        for o in self.outputs.values():
            cosine = "" if o.cosine is None else f", cosine {o.cosine:.6f}"
            top1 = "" if o.top1 is None else f", top-1 agreement {o.top1:.2%}"
            lines.append(
                f"  {o.output}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}, mean abs "
                f"{o.mean_abs:.3g}{cosine}{top1}" + (f" ({o.note})" if o.note else "")
            )
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
        label, ref_label = _label(engine), _label(ref)
        results = {}
        for n in names:
            d = diff(n, got[n], want[n], runner=label, baseline=ref_label)
            if got[n][0].ndim != 2:  # top-1 is a classifier's figure: [batch, classes] only
                d = dataclasses.replace(d, top1=None)
            results[n] = d
        return AccuracyReport(label, ref_label, len(batch), results)
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
