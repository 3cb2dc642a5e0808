"""Run the same feeds through several backends and report how far their outputs agree.

The first runner is the baseline (or `expected` outputs, when given); every other runner's
outputs are compared with it, output by output: max absolute and relative error, cosine
similarity, top-1 agreement along the last axis, and pass/fail against `rtol`/`atol`
(numpy's `allclose` rule: |got - want| <= atol + rtol * |want|, NaN matching NaN).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import selection
from ._diff import ATOL, RTOL, OutputDiff, diff
from .engine import Engine
from .errors import InferError, InputError, OptionError
from .feeds import profile, random_feeds, representative_shapes, roles_of
from .model import Model, ModelFormat, ModelSource
from .options import PRECISIONS, Options
from .sequence import Roles
from .tensors import TensorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runner:
    """One side of a comparison: a backend (variant) at a precision, as it ran."""

    label: str  # as asked: "onnxruntime", "openvino@fp16", or "expected"
    backend: str  # what ran ("" for expected outputs)
    device: str
    precision: str
    load_s: float | None = None
    run_s: float | None = None
    miscomputes: str = ""  # why it is known to answer this model wrongly (`Backend.miscomputes`)


@dataclass(frozen=True)
class Comparison:
    """The result of `compare`: every runner, every output diff, and the verdict."""

    model: str
    baseline: str
    runners: tuple[Runner, ...]
    diffs: tuple[OutputDiff, ...]
    rtol: float
    atol: float
    min_cosine: float | None
    min_top1: float | None
    feeds: tuple[tuple[str, tuple[int, ...], str], ...]  # (input, shape, dtype) of the first run
    runs: int
    skipped: tuple[selection.Attempt, ...] = ()  # backends here left out (default list), and why
    notes: tuple[str, ...] = ()  # how each dynamic dimension of the random feeds was sized

    @property
    def passed(self) -> bool:
        """Every output of every runner within tolerance, runners known to miscompute aside
        (they are compared to show how far they are off, not to be held to the tolerance)."""
        known = self.known_wrong
        return all(d.passed for d in self.diffs if d.runner not in known)

    @property
    def known_wrong(self) -> dict[str, str]:
        """{runner label: why it is known to answer this model wrongly}."""
        return {r.label: r.miscomputes for r in self.runners if r.miscomputes}

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> list[OutputDiff]:
        """The diffs outside tolerance, those of runners known to miscompute included."""
        return [d for d in self.diffs if not d.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "passed": self.passed,
            "baseline": self.baseline,
            "tolerances": {
                "rtol": self.rtol,
                "atol": self.atol,
                "min_cosine": self.min_cosine,
                "min_top1": self.min_top1,
            },
            "runs": self.runs,
            "feeds": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.feeds],
            "runners": [vars(r) for r in self.runners],
            "outputs": [
                {**vars(d), "shape": None if d.shape is None else list(d.shape)} for d in self.diffs
            ],
            "skipped": [a.to_dict() for a in self.skipped],
            "notes": list(self.notes),
        }


def compare(
    model: ModelSource,
    backends: Sequence[str | Engine] | None = None,
    feeds: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    rtol: float = RTOL,
    atol: float = ATOL,
    min_cosine: float | None = None,
    min_top1: float | None = None,
    expected: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
    runs: int = 1,
    shapes: Mapping[str, Any] | None = None,
    load_options: Mapping[str, Any] | None = None,
) -> Comparison:
    """Run the same feeds through each backend and compare every output with the first's.

    backends: names as `Engine.load` takes them ("onnxruntime", "openvino",
        "onnxruntime[cpu]"), each optionally "@precision" ("openvino@fp16"), or Engines
        already loaded (they are not closed). Default: every backend that can take the model
        on `device` here (`selection.preflight`); those that then fail to load it or to run
        the feeds are left out too, each with its reason in `Comparison.skipped`. A backend that
        takes the model but is known to answer it wrongly (`Backend.miscomputes`, which the
        default choice passes over) is compared too, marked with the reason
        (`Runner.miscomputes`), and does not fail the comparison.
    feeds: one feed dict, or a list of them; inputs they leave out are random. Default:
        `runs` seeded random feed sets (seeds seed, seed + 1, ...), the same `infer run
        --seed` makes: their dynamic dimensions sized by `shapes`, else as a real run would
        size them (`infer.feeds.representative_shapes`: the model's metadata, else a size of
        its kind), each size chosen noted in `Comparison.notes`.
    expected: known-good outputs (one dict per feed set) to compare every runner against,
        instead of the first runner.
    min_cosine, min_top1: extra pass criteria, for precisions where element-wise tolerances
        are the wrong question (int8).
    load_options: other `Engine.load` keyword arguments, applied to every backend named.
    """
    source = model if isinstance(model, Model) else Model.load(model)
    if rtol < 0 or atol < 0:
        raise OptionError(f"tolerances must be >= 0, got rtol={rtol}, atol={atol}")
    every = backends is None
    skipped: list[selection.Attempt] = []
    where: dict[str, str] = {}  # label -> the device preflight found for it
    wrong: dict[str, str] = {}  # label -> why it is known to miscompute the model
    if every:
        specs: list[str | Engine] = []
        for a in selection.preflight(source, device, Options(precision=precision)):
            why = selection.known_wrong(a)
            if a.eligible or why is not None:
                specs.append(a.backend)
                where[a.backend] = a.device
                if why is not None:
                    wrong[a.backend] = why
            elif a.verdict == "unsupported":
                skipped.append(a)
    else:
        specs = list(backends)  # type: ignore[arg-type]
    _enough(specs, expected, skipped)
    runners: list[Runner] = []
    results: list[list[dict[str, Any]]] = []
    feed_sets: list[dict[str, np.ndarray]] | None = None
    notes: list[str] = []
    partial: list[dict[str, Any]] = [{} for _ in range(runs)]
    if feeds is not None:
        partial = [dict(feeds)] if isinstance(feeds, Mapping) else [dict(f) for f in feeds]
        if not partial:
            raise InputError("feeds is an empty list")
    load_options = dict(load_options or {})
    if "shapes" not in load_options:
        load_options["shapes"] = _profile(source, shapes, partial)
    for spec in specs:
        try:
            engine, label, owned, load_s = _engine(spec, source, device, precision, load_options)
        except OptionError:
            raise  # the caller's mistake, whichever backend
        except InferError as e:
            if not every:
                raise
            label = str(spec)
            skipped.append(selection.Attempt(label, where.get(label, device), "failed", str(e)))
            continue
        try:
            if feed_sets is None:
                # Dimension names are the ONNX model's (a backend that compiled static shapes
                # reports none).
                declared = source.inputs if source.format is ModelFormat.ONNX else engine.inputs
                roles = roles_of(declared, source)
                sized = [_shapes_for(declared, shapes, given, source, roles) for given in partial]
                notes = sized[0][1]
                feed_sets = [
                    random_feeds(engine.inputs, resolved, seed=seed + i, given=given, roles=roles)
                    for i, ((resolved, _), given) in enumerate(zip(sized, partial))
                ]
            start = time.perf_counter()
            try:
                outs = [engine.run(f) for f in feed_sets]
            except (InputError, OptionError):
                raise
            except InferError as e:
                if not every:
                    raise
                at = ", ".join(
                    f"{n} {'x'.join(map(str, np.shape(a)))}" for n, a in feed_sets[0].items()
                )
                why = f"could not run the feeds ({at}): {e}"
                skipped.append(selection.Attempt(label, str(engine.device), "failed", why))
                continue
            run_s = (time.perf_counter() - start) / len(feed_sets)
            runners.append(
                Runner(
                    label,
                    engine.backend,
                    str(engine.device),
                    engine.precision,
                    load_s,
                    run_s,
                    wrong.get(label, ""),
                )
            )
            results.append(outs)
            log.info("%s: %d run(s) in %.3f s each", label, len(outs), run_s)
        finally:
            if owned:
                engine.close()
    if every:
        _enough([r.label for r in runners], expected, skipped)
    assert feed_sets is not None
    if expected is not None:
        want = [dict(expected)] if isinstance(expected, Mapping) else [dict(e) for e in expected]
        if len(want) != len(feed_sets):
            raise InputError(
                f"expected holds {len(want)} output set(s) for {len(feed_sets)} feed set(s)"
            )
        runners.insert(0, Runner("expected", "", "", ""))
        results.insert(0, want)
    base = runners[0].label
    diffs: list[OutputDiff] = []
    for runner, outs in zip(runners[1:], results[1:]):
        names = list(results[0][0]) if expected is not None else list(outs[0])
        for name in names:
            got = [o.get(name) for o in outs]
            want_arrays = [o.get(name) for o in results[0]]
            diffs.append(
                diff(
                    name,
                    got,
                    want_arrays,
                    runner=runner.label,
                    baseline=base,
                    rtol=rtol,
                    atol=atol,
                    min_cosine=min_cosine,
                    min_top1=min_top1,
                )
            )
    first = feed_sets[0]
    return Comparison(
        model=str(source.path) if source.path else source.name,
        baseline=base,
        runners=tuple(runners),
        diffs=tuple(diffs),
        rtol=rtol,
        atol=atol,
        min_cosine=min_cosine,
        min_top1=min_top1,
        feeds=tuple((n, tuple(np.shape(a)), str(np.asarray(a).dtype)) for n, a in first.items()),
        runs=len(feed_sets),
        skipped=tuple(skipped),
        notes=tuple(notes),
    )


def _enough(specs: Sequence[Any], expected: Any, skipped: Sequence[selection.Attempt]) -> None:
    """Refuse a comparison of fewer than two sides, saying which backends were left out."""
    if specs and (len(specs) >= 2 or expected is not None):
        return
    left = "".join(f"\n  - {a}" for a in skipped)
    raise OptionError(
        "compare needs at least two backends (or one and `expected` outputs); got "
        f"{[str(s) for s in specs]}" + (f"; left out:{left}" if left else "")
    )


def parse_runner(text: str, default_precision: str = "fp32") -> tuple[str, str]:
    """'openvino@fp16' -> ('openvino', 'fp16'); 'onnxruntime' -> ('onnxruntime', default)."""
    name, sep, precision = text.strip().partition("@")
    precision = precision.strip() if sep else default_precision
    if precision not in PRECISIONS:
        raise OptionError(
            f"backend {text!r}: precision {precision!r} is not valid; use one of "
            f"{', '.join(PRECISIONS)}"
        )
    if not name:
        raise OptionError(f"backend {text!r} has no name")
    return name.strip(), precision


def _engine(
    spec: str | Engine,
    model: Model,
    device: str,
    precision: str,
    load_options: Mapping[str, Any] | None,
) -> tuple[Engine, str, bool, float | None]:
    if isinstance(spec, Engine):
        return spec, f"{spec.backend}@{spec.precision}", False, None
    name, prec = parse_runner(spec, precision)
    start = time.perf_counter()
    engine = Engine.load(model, device, backend=name, precision=prec, **dict(load_options or {}))
    return engine, spec, True, time.perf_counter() - start


def _shapes_for(
    specs: Sequence[TensorSpec],
    shapes: Mapping[str, Any] | None,
    given: Mapping[str, Any],
    model: Model,
    roles: Roles | None = None,
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Every input's shape for one feed set, and a note for each size chosen: `given` arrays
    as they are, the rest by `shapes`, else as `run` and `bench` size them."""
    arrays = {k: np.asarray(v) for k, v in given.items()}
    return representative_shapes(specs, shapes, arrays=arrays, model=model, roles=roles)


def _profile(
    model: Model, shapes: Mapping[str, Any] | None, partial: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """Build-time shapes for the feeds compare will make, for backends that fix them."""
    if model.format is not ModelFormat.ONNX:
        return None
    specs = model.inputs
    try:
        sets = [_shapes_for(specs, shapes, p, model)[0] for p in partial]
    except InferError:
        return None  # the feeds will fail with the reason when they are made
    return profile(sets) or None


def _available(model: Model, device: str, precision: str) -> list[str]:
    verdicts = selection.preflight(model, device, Options(precision=precision))
    return [a.backend for a in verdicts if a.eligible]
