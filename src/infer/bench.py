"""Benchmarks: load time (cold and warm), latency percentiles and throughput, per backend.

`benchmark()` loads the model once per backend into an empty cache folder (cold: the
runtime is started and everything it caches is built) and again from that folder (warm),
then for each batch size warms up and measures for a fixed time. With `concurrency` N > 1,
N requests are kept in flight through `Engine.submit`; latency is then per request, from
submit to result. With `batching` (an `infer.Batching`) the engines merge those requests into
larger runs, and each measurement carries the batcher's counters. `infer bench --plot` draws
the report (infer.cli._plot).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _race, choice, selection, sequence
from ._diff import diff
from .batching import Batching, BatchingStats
from .device import Device, cpu
from .engine import Engine
from .errors import BackendUnavailable, InferError, OptionError, RuntimeFailure
from .feeds import profile, random_feeds, representative_shapes, roles_of
from .model import Model, ModelFormat, ModelSource
from .options import Options
from .tensors import TensorSpec

log = logging.getLogger(__name__)

Progress = Callable[[str, str, float, float], None]
"""progress(backend label, phase, done, total): phases are "load (cold)", "load (warm)",
"warm-up b=N" and "measure b=N"; done/total are seconds of the timed phases."""

MIN_RUNS = 3


@dataclass(frozen=True)
class Stats:
    """Latency statistics in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = np.asarray(seconds, np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(
            float(p50),
            float(p90),
            float(p99),
            float(ms.mean()),
            float(ms.std()),
            float(ms.min()),
            float(ms.max()),
        )


@dataclass(frozen=True)
class Decoding:
    """A decoder's generate loop timed (`decoding`): time to first token and tokens per second."""

    batch: int
    context: int  # prompt tokens per row
    new_tokens: int  # tokens generated per row and run
    cache: str  # where the past lived between steps
    runs: int
    ttft_ms: float  # median: prefill and the first token picked
    step_ms: float  # median time of one decode step (a token for every row)
    tokens_per_s: float  # decode tokens per second over all rows (after the first token)


@dataclass(frozen=True)
class Measurement:
    """One backend at one batch size."""

    backend: str
    device: str
    batch: int
    precision: str = ""
    concurrency: int = 1
    load_cold_s: float | None = None
    load_warm_s: float | None = None
    runs: int = 0
    warmup_runs: int = 0
    seconds: float = 0.0
    latency: Stats | None = None
    throughput: float | None = None  # samples (batch items) per second
    summary: str = ""  # the backend's own line from engine.selection
    error: str | None = None
    skipped: bool = False  # the batch size does not apply to the model (an error, not a failure)
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # the inputs timed
    batching: BatchingStats | None = None  # the timed phase's runs (queue delays: last 10,000)
    decode: Decoding | None = None  # a decoder's generate loop, timed (None: not a decoder)
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)
    baseline: str = ""  # the row its outputs were compared with ("": it is the baseline, or none)
    agrees: bool | None = None  # within the race's tolerance of the baseline (None: not compared)
    difference: float | None = None  # the race's figure: max abs over the output's magnitude
    max_abs: float | None = None  # the largest absolute difference over the outputs

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class BenchReport:
    """Everything one `benchmark()` call measured."""

    model: str
    device: str
    precision: str
    batches: tuple[int, ...]
    duration: float
    warmup: float
    concurrency: int
    results: tuple[Measurement, ...]
    skipped: tuple[selection.Attempt, ...]  # rows not benchmarked, with why
    auto: str | None  # the backend device="..." with no backend named picks
    notes: tuple[str, ...] = ()
    environment: Mapping[str, Any] = field(default_factory=dict, compare=False)
    batching: Batching | None = None
    auto_from: str = ""  # how `auto` is known: a cached race, or the race's rule on these rows

    def failures(self) -> list[Measurement]:
        """Rows that did not run: a backend that failed to load, or a run that failed."""
        return [m for m in self.results if not m.ok and not m.skipped]

    def best(self, batch: int) -> Measurement | None:
        """The fastest backend (lowest median latency) at `batch` among those whose outputs
        agree with the baseline's."""
        ok = [
            m
            for m in self.results
            if m.ok and m.batch == batch and m.latency and m.agrees is not False
        ]
        return min(ok, key=lambda m: m.latency.p50) if ok else None  # type: ignore[union-attr]

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """JSON-ready data; `samples=True` keeps every latency sample."""

        def one(m: Measurement) -> dict[str, Any]:
            d: dict[str, Any] = {
                "backend": m.backend,
                "device": m.device,
                "batch": m.batch,
                "precision": m.precision,
                "concurrency": m.concurrency,
                "load_s": {"cold": m.load_cold_s, "warm": m.load_warm_s},
                "runs": m.runs,
                "warmup_runs": m.warmup_runs,
                "seconds": m.seconds,
                "latency_ms": vars(m.latency) if m.latency else None,
                "throughput": m.throughput,
                "summary": m.summary,
                "error": m.error,
                "skipped": m.skipped,
                "shapes": {k: list(v) for k, v in m.shapes.items()},
                "batching": _batching_dict(m.batching, samples),
                "baseline": m.baseline,
                "agrees": m.agrees,
                "difference": m.difference,
                "max_abs": m.max_abs,
                "decode": vars(m.decode) if m.decode else None,
            }
            if samples:
                d["samples_ms"] = list(m.samples_ms)
            return d

        return {
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "batches": list(self.batches),
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "concurrency": self.concurrency,
            "batching": vars(self.batching) if self.batching else None,
            "auto": self.auto,
            "auto_from": self.auto_from,
            "results": [one(m) for m in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": list(self.notes),
            "environment": dict(self.environment),
        }


def targets(
    model: Model,
    device: str | Device = "auto",
    precision: str = "fp32",
    backends: str | Sequence[str] = "all",
) -> tuple[list[selection.Attempt], list[selection.Attempt]]:
    """What to benchmark: every backend (variant) that can take the model on `device` here
    ("all"), or the first that can for each name given; and what was left out, with why.
    Both are `selection.preflight`'s verdicts."""
    return _split(model, Device.parse(device), Options(precision=precision), backends)[:2]


def _split(
    model: Model, request: Device, options: Options, backends: str | Sequence[str]
) -> tuple[list[selection.Attempt], list[selection.Attempt], str | None]:
    """(to benchmark, left out, what device=... with no backend named would try first)."""
    everything = selection.preflight(model, request, options)
    auto = next((a.backend for a in everything if a.eligible), None)
    if isinstance(backends, str) and backends == "all":
        found = [a for a in everything if a.eligible]
        return found, [a for a in everything if not a.eligible], auto
    found, skipped = [], []
    for name in [backends] if isinstance(backends, str) else backends:
        rows = selection.preflight(model, request, options, name)
        hit = next((a for a in rows if a.eligible), None)
        if hit is None:
            skipped += [a for a in rows if a not in skipped]
        elif hit not in found:
            found.append(hit)
    return found, skipped, auto


def auto_choice(model: Model, device: str | Device = "auto", precision: str = "fp32") -> str | None:
    """The backend `Engine.load(model, device)` would try first (None: no candidate passes)."""
    return _split(model, Device.parse(device), Options(precision=precision), "all")[2]


def benchmark(
    model: ModelSource,
    *,
    device: str = "auto",
    backends: str | Sequence[str] = "all",
    precision: str = "fp32",
    batches: Sequence[int] = (1,),
    duration: float = 2.0,
    warmup: float = 0.5,
    concurrency: int = 1,
    batching: Batching | None = None,
    shapes: Mapping[str, Any] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    name: str | None = None,
    context: int = 128,
    new_tokens: int = 32,
) -> BenchReport:
    """Benchmark `model` on each backend in `backends` ("all" or names) on `device`.

    duration, warmup: seconds per backend and batch size (at least 3 timed runs and 1
        warm-up run happen however long they take).
    concurrency: requests kept in flight (through Engine.submit); > 1 also asks backends
        for their throughput setting (hint="throughput").
    batching: load the engines with this `infer.Batching`, so the requests in flight are
        merged into larger runs (give concurrency > 1 for there to be something to merge).
    shapes: sizes for dynamic dimensions (see `infer.feeds.representative_shapes`, which
        sizes those not given as a real run would); the first dimension of every input
        where it is dynamic is the batch size.
    inputs: arrays to use as they are for some inputs (a sample rate, a state); the others
        are seeded random.
    cache_dir: where the cold load builds and the warm load reads back; default a temporary
        folder, so "cold" is truly cold. Give your cache folder to time loads with it.
    context, new_tokens: for a decoder (a model with past/present pairs), each batch size
        also times `generate` from prompts of `context` tokens for `new_tokens` tokens
        (`Measurement.decode`: time to first token, tokens per second).
    """
    if duration <= 0 or warmup < 0:
        raise OptionError(f"duration must be > 0 and warmup >= 0, got {duration}, {warmup}")
    if concurrency < 1:
        raise OptionError(f"concurrency must be >= 1, got {concurrency}")
    batches = tuple(int(b) for b in batches)
    if not batches or any(b < 1 for b in batches):
        raise OptionError(f"batch sizes must be positive integers, got {list(batches)}")
    source = model if isinstance(model, Model) else Model.load(model)
    request = Device.parse(device)
    todo, skipped, first = _split(source, request, Options(precision=precision), backends)
    if not todo:
        why = "\n".join(f"  - {s.backend} on {s.device}: {s.reason}" for s in skipped)
        what = name or (str(source.path) if source.path else repr(source))
        raise BackendUnavailable(
            f"no backend here can run {what} on {device} at {precision}:\n{why}"
        )
    notes: list[str] = []
    results: list[Measurement] = []
    judge = _Judge(precision)
    with _cache_folder(cache_dir) as folder:
        for target in todo:
            results += _bench_one(
                source,
                target,
                precision=precision,
                batches=batches,
                duration=duration,
                warmup=warmup,
                concurrency=concurrency,
                batching=batching,
                shapes=shapes,
                given=dict(inputs or {}),
                seed=seed,
                threads=threads,
                cache_dir=folder,
                progress=progress,
                notes=notes,
                judge=judge,
                decode=(context, new_tokens) if sequence.read(source).is_decoder else None,
            )
    auto, auto_from = _default_pick(source, request, precision, results, first)
    return BenchReport(
        model=name or (str(source.path) if source.path else source.name),
        device=device,
        precision=precision,
        batches=batches,
        duration=duration,
        warmup=warmup,
        concurrency=concurrency,
        results=tuple(results),
        skipped=tuple(skipped),
        auto=auto,
        notes=tuple(dict.fromkeys(notes)),
        environment=environment(),
        batching=batching,
        auto_from=auto_from,
    )


def _default_pick(
    model: Model,
    request: Device,
    precision: str,
    results: Sequence[Measurement],
    first: str | None,
) -> tuple[str | None, str]:
    """What a load with no backend named runs, and how that is known: the winner of the race
    cached for this model (the load compiles it alone); else the race's rule applied to the
    rows timed here (the fastest of the raced rows whose outputs agree with the baseline's);
    else the table's first row that takes the model (nothing here is raced)."""
    try:
        verdict = choice.cached_verdict(model, request, Options(precision=precision))
    except InferError:
        verdict = None
    if verdict is not None:
        return verdict.winner, f"the race cached for this model at {verdict.shapes_text()}"
    # The rows the race would time: a row named here that the default passes over (one that
    # answers this model wrongly, say) is not one.
    eligible = {
        a.backend
        for a in selection.preflight(model, request, Options(precision=precision))
        if a.eligible
    }
    raced = [label for label in choice.raced(request) if label in eligible]
    timed: dict[str, Measurement] = {}
    for m in results:  # each row's first batch
        if m.ok and m.latency is not None and m.backend in raced:
            timed.setdefault(m.backend, m)
    agreeing = [m for m in timed.values() if m.agrees is not False]
    if len(timed) > 1 and agreeing:
        fastest = min(agreeing, key=lambda m: m.latency.p50 if m.latency else float("inf"))
        base = next((m.baseline for m in timed.values() if m.baseline), "")
        against = f" whose outputs agree with {base}" if base else ""
        return fastest.backend, (
            f"no race cached: the race's rule on the rows timed here (the fastest{against})"
        )
    return first, "the first row of the table that takes the model (nothing to race)"


class _Judge:
    """Compares each row's outputs with the first row's at the same batch size, on the first
    row's feeds, by the race's rule (`_race.agreement` within its tolerance for the precision)."""

    def __init__(self, precision: str) -> None:
        self.tolerance = _race.TOLERANCE.get(precision, _race.TOLERANCE["fp32"])
        self.first: dict[int, tuple[str, dict[str, np.ndarray], dict[str, Any]]] = {}

    def __call__(
        self, label: str, batch: int, engine: Engine, feeds: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """The Measurement fields saying how `engine`'s outputs compare ({} for the first row,
        or where the feeds' shapes differ from the first row's)."""
        if batch not in self.first:
            self.first[batch] = (label, feeds, engine.run(feeds))
            return {}
        base, given, want = self.first[batch]
        if {k: np.shape(v) for k, v in given.items()} != {k: np.shape(v) for k, v in feeds.items()}:
            return {}
        got = engine.run(given)
        difference, _ = _race.agreement(want, got)
        biggest = [
            diff(name, [got[name]], [value]).max_abs
            for name, value in want.items()
            if name in got and isinstance(value, np.ndarray)
        ]
        return {
            "baseline": base,
            "agrees": difference <= self.tolerance,
            "difference": difference,
            "max_abs": max(biggest, default=None),
        }


@contextlib.contextmanager
def _cache_folder(given: str | Path | None) -> Iterator[Path]:
    if given is not None:
        yield Path(given)
        return
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        yield Path(tmp)


def _bench_one(
    model: Model,
    target: selection.Attempt,
    *,
    precision: str,
    batches: tuple[int, ...],
    duration: float,
    warmup: float,
    concurrency: int,
    batching: Batching | None,
    shapes: Mapping[str, Any] | None,
    given: dict[str, np.ndarray],
    seed: int,
    threads: int | None,
    cache_dir: Path,
    progress: Progress | None,
    notes: list[str],
    judge: _Judge | None = None,
    decode: tuple[int, int] | None = None,
) -> list[Measurement]:
    label = target.backend
    total = len(batches) * (warmup + duration)
    tick = progress or (lambda *_: None)
    kw: dict[str, Any] = dict(
        backend=label,
        precision=precision,
        # Build-time shapes cover the merged runs too.
        shapes=_profile(
            model, shapes, (*batches, *((batching.max_batch,) if batching else ())), given
        ),
        hint="throughput" if concurrency > 1 else "latency",
        # Under batching the requests in flight are the batcher's; the runs stay the engine's.
        max_in_flight=concurrency if concurrency > 1 and batching is None else None,
        batching=batching,
        threads=threads,
        cache_dir=cache_dir,
    )
    try:
        tick(label, "load (cold)", 0.0, total)
        start = time.perf_counter()
        Engine.load(model, target.device, **kw).close()
        cold = time.perf_counter() - start
        tick(label, "load (warm)", 0.0, total)
        start = time.perf_counter()
        engine = Engine.load(model, target.device, **kw)
        warm = time.perf_counter() - start
    except InferError as e:
        log.debug("%s failed to load", label, exc_info=True)
        return [
            Measurement(label, target.device, b, precision, concurrency, error=_one_line(e))
            for b in batches
        ]
    out = []
    generator: Engine | None = None  # the engine generate is timed on
    try:
        summary = engine.selection[-1].reason if engine.selection else ""
        for i, batch in enumerate(batches):
            base = i * (warmup + duration)
            common: dict[str, Any] = dict(
                backend=label,
                device=str(engine.device),
                precision=engine.precision,
                concurrency=concurrency,
                load_cold_s=cold,
                load_warm_s=warm,
                summary=summary,
            )
            try:
                feed_shapes, batch_used, dims = _batched_shapes(
                    _declared(model, engine), shapes, batch, given, model
                )
                notes += [f"{d}; set it with --shape" for d in dims]
                roles = roles_of(_declared(model, engine), model)
                feeds = random_feeds(
                    engine.inputs, feed_shapes, seed=seed, given=given, roles=roles
                )
            except _NoBatch as e:
                out.append(Measurement(batch=batch, error=_one_line(e), skipped=True, **common))
                continue
            except InferError as e:
                out.append(Measurement(batch=batch, error=_one_line(e), **common))
                continue
            common["shapes"] = {k: tuple(np.shape(v)) for k, v in feeds.items()}

            def report(phase: str, seconds: float, base: float = base, batch: int = batch) -> None:
                tick(label, f"{phase} b={batch}", base + seconds, total)

            try:
                warm_runs = _loop(engine, feeds, warmup, 1, 1, lambda s: report("warm-up", s))[0]
                before = engine.batching_stats
                samples, elapsed = _loop(
                    engine,
                    feeds,
                    duration,
                    MIN_RUNS,
                    concurrency,
                    lambda s: report("measure", warmup + s),
                )
            except InferError as e:
                out.append(Measurement(batch=batch_used, error=_one_line(e), **common))
                continue
            counters = _since(engine.batching_stats, before)  # before the judge's own run
            compared: dict[str, Any] = {}
            if judge is not None:
                try:
                    compared = judge(label, batch_used, engine, feeds)
                except InferError as e:
                    log.debug("%s: the comparison run failed: %s", label, e)
            decoded = None
            if decode is not None:
                try:
                    if generator is None:
                        # prompts of any length: no build-time shapes fixed at the decode step's
                        generator = (
                            Engine.load(model, target.device, **{**kw, "shapes": None})
                            if kw["shapes"]
                            else engine
                        )
                    decoded = decoding(
                        generator,
                        batch=batch_used,
                        context=decode[0],
                        new_tokens=decode[1],
                        duration=duration,
                        seed=seed,
                    )
                except InferError as e:
                    notes.append(f"{label}: generate not timed at batch {batch_used}: {e}")
            out.append(
                Measurement(
                    **compared,
                    decode=decoded,
                    batch=batch_used,
                    runs=len(samples),
                    warmup_runs=len(warm_runs),
                    seconds=elapsed,
                    latency=Stats.of(samples),
                    throughput=len(samples) * batch_used / elapsed if elapsed > 0 else None,
                    samples_ms=tuple(float(s * 1e3) for s in samples),
                    batching=counters,
                    **common,
                )
            )
        tick(label, "done", total, total)
    finally:
        engine.close()
        if generator is not None and generator is not engine:
            generator.close()
    return out


def decoding(
    engine: Engine,
    *,
    batch: int = 1,
    context: int = 128,
    new_tokens: int = 32,
    duration: float = 2.0,
    seed: int = 0,
    cache: str = "auto",
) -> Decoding:
    """Time `engine`'s decoder: greedy `generate` from `batch` random prompts of `context`
    tokens for `new_tokens` tokens (no end id), once to warm up, then for `duration` seconds
    (at least MIN_RUNS - 1 runs). Time to first token is prefill plus the first pick; tokens
    per second count the later tokens of every row."""
    if new_tokens < 2 or context < 1 or batch < 1:
        raise OptionError(
            f"decoding: context >= 1, new_tokens >= 2 and batch >= 1, got {context}, "
            f"{new_tokens}, {batch}"
        )
    decoder = engine.decoder(cache=cache)
    if decoder.max_length is not None and context + new_tokens > decoder.max_length:
        raise OptionError(
            f"decoding: {context} + {new_tokens} tokens exceed the model's "
            f"{decoder.max_length}; give a shorter context"
        )
    vocab = decoder.roles.vocab or 2
    rng = np.random.default_rng(seed)
    prompts = rng.integers(1 if vocab > 1 else 0, vocab, (batch, context), dtype=np.int64)
    first: list[float] = []
    steps: list[float] = []
    try:
        start = time.perf_counter()
        runs = -1  # the first run warms up
        while runs < MIN_RUNS - 1 or time.perf_counter() - start < duration:
            t0 = time.perf_counter()
            stream = decoder.stream(prompts, new_tokens)
            next(stream)
            t1 = time.perf_counter()
            for _ in stream:
                pass
            t2 = time.perf_counter()
            if runs >= 0:
                first.append(t1 - t0)
                steps.append((t2 - t1) / (new_tokens - 1))
            else:
                start = time.perf_counter()
            runs += 1
    finally:
        decoder.close()
    step = float(np.median(steps))
    return Decoding(
        batch=batch,
        context=context,
        new_tokens=new_tokens,
        cache=decoder.cache,
        runs=runs,
        ttft_ms=float(np.median(first)) * 1e3,
        step_ms=step * 1e3,
        tokens_per_s=batch / step if step > 0 else float("inf"),
    )


def _batching_dict(stats: BatchingStats | None, samples: bool) -> dict[str, Any] | None:
    if stats is None:
        return None
    d = {k: v for k, v in vars(stats).items() if samples or k != "recent_delays_ms"}
    d["mean_batch"] = stats.mean_batch
    d["padding_waste"] = stats.padding_waste
    return d


def _since(now: BatchingStats | None, before: BatchingStats | None) -> BatchingStats | None:
    """The batcher's counters of one timed phase."""
    return now.since(before) if now is not None and before is not None else now


def _profile(
    model: Model,
    shapes: Mapping[str, Any] | None,
    batches: Sequence[int],
    given: Mapping[str, np.ndarray],
) -> dict[str, Any] | None:
    """Build-time shapes covering every batch size, for backends that fix them (TensorRT)."""
    if model.format is not ModelFormat.ONNX:
        return None
    specs = model.inputs
    sets = []
    for batch in batches:
        try:
            sets.append(_batched_shapes(specs, shapes, batch, given, model)[0])
        except InferError:
            continue  # that batch will fail with its reason when it is run
    return profile(sets) or None


def _declared(model: Model, engine: Engine) -> list[TensorSpec]:
    """The inputs to size feeds from: an ONNX model's own (with its dimension names, which a
    backend that compiled static shapes no longer reports), else the engine's."""
    return model.inputs if model.format is ModelFormat.ONNX else engine.inputs


class _NoBatch(OptionError):
    """The batch size asked for does not apply: no input has a dynamic first dimension."""


def _batched_shapes(
    specs: Sequence[TensorSpec],
    shapes: Mapping[str, Any] | None,
    batch: int,
    given: Mapping[str, np.ndarray] | None = None,
    model: Model | None = None,
) -> tuple[dict[str, tuple[int, ...]], int, list[str]]:
    """Input shapes with `batch` on every dynamic first dimension of a random input (whatever
    `shapes` says about it), other dynamic dims as a real run would size them
    (`representative_shapes`), the batch that applies, and notes for the sizes chosen.
    Inputs in `given` keep their own shapes."""
    given = given or {}
    dynamic = [
        s.name for s in specs if s.shape and not isinstance(s.shape[0], int) and s.name not in given
    ]
    wanted = dict(shapes or {})
    for s in specs:  # a named batch dimension takes the batch wherever it appears
        first = s.shape[0] if s.shape else None
        if s.name in dynamic and isinstance(first, str) and first:
            wanted[first] = batch
    resolved, notes = representative_shapes(specs, wanted, arrays=given, model=model)
    out = dict(resolved)
    for name in dynamic:
        out[name] = (batch, *resolved[name][1:])
    notes = [n for n in notes if not any(n.startswith(f"{name}[0] (?)") for name in dynamic)]
    if dynamic:
        return out, batch, notes
    firsts = {v[0] for v in out.values() if v}
    used = firsts.pop() if len(firsts) == 1 else 1
    if batch not in (used, 1):
        raise _NoBatch(
            f"batch {batch} cannot be run: no input has a dynamic first dimension "
            f"(inputs: {', '.join(f'{k}={list(v)}' for k, v in out.items())})"
        )
    return out, used, notes


def _loop(
    engine: Engine,
    feeds: dict[str, np.ndarray],
    seconds: float,
    min_runs: int,
    concurrency: int,
    tick: Callable[[float], None],
) -> tuple[list[float], float]:
    """Run for `seconds` (and at least `min_runs` times); per-run latencies and elapsed time."""
    if concurrency > 1:
        return _loop_concurrent(engine, feeds, seconds, min_runs, concurrency, tick)
    clock = time.perf_counter
    samples: list[float] = []
    append = samples.append
    run = engine.run
    start = clock()
    next_tick = start
    while True:
        t0 = clock()
        run(feeds)
        t1 = clock()
        append(t1 - t0)
        if t1 >= next_tick:
            tick(min(t1 - start, seconds))
            next_tick = t1 + 0.1
            if t1 - start >= seconds and len(samples) >= min_runs:
                break
        elif t1 - start >= seconds and len(samples) >= min_runs:
            break
    return samples, clock() - start


def _loop_concurrent(
    engine: Engine,
    feeds: dict[str, np.ndarray],
    seconds: float,
    min_runs: int,
    concurrency: int,
    tick: Callable[[float], None],
) -> tuple[list[float], float]:
    clock = time.perf_counter
    slots = threading.BoundedSemaphore(concurrency)
    samples: list[float] = []
    errors: list[BaseException] = []
    done = threading.Condition()
    pending = 0
    last = [0.0]

    def finished(fut: Any, t0: float) -> None:
        nonlocal pending
        t1 = clock()
        exc = fut.exception()
        with done:
            if exc is not None:
                errors.append(exc)
            else:
                samples.append(t1 - t0)
            last[0] = max(last[0], t1)
            pending -= 1
            done.notify_all()
        slots.release()

    def idle() -> bool:
        return pending == 0

    start = clock()
    next_tick = start
    submitted = 0
    while not errors:
        now = clock()
        if now - start >= seconds and submitted >= min_runs:
            break
        if now >= next_tick:
            tick(min(now - start, seconds))
            next_tick = now + 0.1
        slots.acquire()
        t0 = clock()
        with done:
            pending += 1
        try:
            fut = engine.submit(feeds)
        except BaseException:
            with done:
                pending -= 1
                done.wait_for(idle)
            slots.release()
            raise
        submitted += 1
        fut.add_done_callback(functools.partial(finished, t0=t0))
    with done:
        done.wait_for(idle)
    if errors:
        err = errors[0]
        if isinstance(err, InferError):
            raise err
        raise RuntimeFailure(f"a submitted run failed: {_one_line(err)}") from err
    return samples, (last[0] or clock()) - start


def _one_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def environment() -> dict[str, Any]:
    """Where the numbers came from: machine, Python, and every backend's version."""
    from . import __version__

    c = cpu()
    return {
        "infer": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": c.name,
        "cores": os.cpu_count(),
        "backends": {i.name: i.version for i in selection.backends() if i.available},
        "argv": sys.argv[1:] if sys.argv else [],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
