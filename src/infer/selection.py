"""Backend selection: the one table from device kind to backends in order of preference, and
the loop that tries them (probe, supports, compile), falling back and recording each verdict.

This table is the only place besides `backends/` that names backends. Adding a backend is a
module `infer/backends/<name>.py` plus a row here.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import base
from .backends.base import GRAPH, Attempt, Backend, BackendInfo, Session
from .cache import Cache, Key
from .device import Device, probe_hardware
from .errors import (
    BackendUnavailable,
    CacheError,
    CompileError,
    InferError,
    OptionError,
    PrecisionError,
)
from .feeds import random_array
from .model import Model
from .options import Options
from .tensors import TensorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """A row of the table: a backend (and its variant) on a kind of device."""

    backend: str
    kind: str
    variant: str | None = None
    race: bool = True
    """Whether backend="fastest" times this row (False: a last resort, too slow to time)."""

    @property
    def label(self) -> str:
        return f"{self.backend}[{self.variant}]" if self.variant else self.backend


BACKENDS = ("tensorrt", "onnxruntime", "openvino", "coreml", "reference")
"""Every backend infer knows, by module name."""

_CUDA = (
    Choice("tensorrt", "cuda"),
    Choice("onnxruntime", "cuda", "tensorrt"),
    Choice("onnxruntime", "cuda", "cuda"),
)
_ANE = (Choice("onnxruntime", "ane", "coreml"),)
_REFERENCE = Choice("reference", "cpu", race=False)
# Core ML runs .mlpackage/.mlmodel models only, which no other backend takes, so its rows never
# stand in front of another backend for an ONNX model. Under "auto" it gets every compute unit.
_COREML_AUTO = Choice("coreml", "auto", "all")
# ONNX Runtime leads on the CPU: it runs the most of the ONNX spec, and no backend wins every
# model on speed (see benchmarks/); backend="fastest" measures instead of assuming.
# OpenVINO follows it. Measured by benchmarks/openvino_vs_ort.py on a quiet 2-core EPYC (batch 1,
# OpenVINO's CPU pinning off as infer sets it), OpenVINO over ONNX Runtime latency: ocr_det 0.58x,
# ocr_rec 0.67x, ocr_cls 0.82x, orientation 1.25x, cnn 1.59x, a one-node model 11.6x (per-call
# cost). So speed alone would split the models between them; ONNX Runtime stays first because it
# is the more correct default: it passes 1,861 of the 2,033 ONNX backend tests to OpenVINO's
# 1,633 (tests/conformance), computes int64 and float64 at full width where OpenVINO's CPU
# plugin uses 32 bits, rounds f32 -> bf16 Casts to nearest as ONNX says, runs models OpenVINO
# cannot convert (silero_vad), and loads 2.5-7x faster than OpenVINO compiles cold.
# For speed on a given model, backend="fastest" times both and caches the winner.
_CPU = (
    Choice("onnxruntime", "cpu", "cpu"),
    Choice("openvino", "cpu"),
    _REFERENCE,
)

TABLE: dict[str, tuple[Choice, ...]] = {
    "cuda": _CUDA,
    "gpu": (
        *_CUDA,
        Choice("openvino", "gpu"),
        Choice("coreml", "gpu"),
        Choice("onnxruntime", "gpu", "coreml"),
        Choice("onnxruntime", "gpu", "openvino"),
    ),
    "npu": (Choice("openvino", "npu"), Choice("onnxruntime", "npu", "openvino")),
    "ane": (Choice("coreml", "ane"), *_ANE),
    # A Core ML package asked onto the CPU runs on Core ML's CPU_ONLY units (no other backend
    # reads packages, so the row costs ONNX models nothing).
    "cpu": (*_CPU, Choice("coreml", "cpu")),
    # OpenVINO's AUTO plugin picks among its own devices (an Intel GPU or NPU, else the CPU).
    "auto": (
        *_CUDA,
        _COREML_AUTO,
        *_ANE,
        _CPU[0],
        Choice("openvino", "auto"),
        _REFERENCE,
    ),
}


def candidates(request: Device, backend: str | Sequence[str] | None = None) -> list[Choice]:
    """The rows to try for a device request, restricted to `backend` (a name, "name[variant]",
    or a list of them, tried in the order given)."""
    rows = list(TABLE[request.kind])
    if backend is None:
        return rows
    wanted = [backend] if isinstance(backend, str) else list(backend)
    out: list[Choice] = []
    for w in wanted:
        name, _, variant = w.partition("[")
        variant = variant.rstrip("]") or None
        if name not in BACKENDS:
            raise OptionError(
                f"backend {w!r} is not known; use one of {', '.join(BACKENDS)}, or {FASTEST!r}"
            )
        matching = [
            r for r in rows if r.backend == name and (variant is None or r.variant == variant)
        ]
        if not matching:
            kinds = sorted(
                {k for k, rs in TABLE.items() for r in rs if r.backend == name and k != "auto"}
            )
            raise OptionError(
                f"backend {w!r} does not run on {request.kind!r} devices; it runs on {', '.join(kinds)}"
            )
        out += [r for r in matching if r not in out]
    return out


def _device_request(row: Choice, request: Device) -> Device:
    """What to ask the row's backend for: the row's kind, with the user's index when it applies."""
    same = row.kind == request.kind or (request.kind == "gpu" and row.kind == "cuda")
    return Device(row.kind, request.index if same else None)


def select(
    model: Model,
    request: Device,
    options: Options,
    backend: str | Sequence[str] | None = None,
    transform: Callable[[Model, Backend, Device, str | None], Model] | None = None,
) -> tuple[Session, list[Attempt]]:
    """Try each candidate in order; return the first session that compiles and every verdict.

    `transform(model, backend, device, variant)` gives the model a backend should compile (the
    precision transform, applied once and shared); None compiles `model` as it is.
    With a single `backend` named, its failure is raised instead of falling back.
    """
    if backend == FASTEST:
        return _race(model, request, options, transform)
    rows = candidates(request, backend)
    forced = isinstance(backend, str)
    attempts: list[Attempt] = []
    last_error: InferError | None = None
    for row in rows:
        device, verdict = check(row, model, request, options)
        if verdict is not None:
            attempts.append(verdict)
            continue
        start = time.perf_counter()
        session = _compile(row, device, model, options, transform)
        seconds = time.perf_counter() - start
        if isinstance(session, InferError):
            attempts.append(Attempt(row.label, str(device), "failed", str(session), seconds))
            last_error = session
            continue
        attempts.append(
            Attempt(row.label, str(device), "selected", session.details.get("summary", ""), seconds)
        )
        _warn_on_fallback(attempts, named=forced)
        return session, attempts
    if forced and isinstance(last_error, PrecisionError):  # with its figures
        raise PrecisionError(str(last_error), last_error.report) from last_error
    if forced and last_error is not None:  # a named backend's own failure, not "none could"
        raise type(last_error)(f"{last_error}\n{_explain(attempts)}") from last_error
    if isinstance(last_error, PrecisionError):  # int8 measured short of its budget everywhere
        raise PrecisionError(
            f"no backend runs int8 {model!r} within its budget on {request}:\n{_explain(attempts)}",
            last_error.report,
        ) from last_error
    raise BackendUnavailable(f"no backend can run {model!r} on {request}:\n{_explain(attempts)}")


def check(
    row: Choice, model: Model, request: Device, options: Options
) -> tuple[Device | None, Attempt | None]:
    """The checks `select` makes on a row before compiling, without compiling anything.

    Returns (device, None) when the row would be compiled on `device`, else (device or None,
    the Attempt saying why not). For tools (`infer devices`, `inspect`, `bench`) that ask
    which backends could take a model.
    """
    b = base.get(row.backend)
    info = b.probe()
    where = _device_request(row, request)
    if not info.available:
        return None, Attempt(row.label, str(where), "unavailable", _unavailable(info))
    device = b.device_for(where)
    if device is None:
        return None, Attempt(row.label, str(where), "unavailable", _no_device(b, where))
    why = b.supports(model, device, options, row.variant)
    if why:
        # A backend that does not read the model's format is passed over, not fallen back from.
        verdict = "unsupported" if model.format in b.formats else "skipped"
        return device, Attempt(row.label, str(device), verdict, why)
    return device, None


def _compile(
    row: Choice,
    device: Device,
    model: Model,
    options: Options,
    transform: Callable[[Model, Backend, Device, str | None], Model] | None,
) -> Session | InferError:
    """Compile one row; a failure the next row may not share comes back as the error."""
    b = base.get(row.backend)
    # The precision transform is shared by every candidate: its failure (no calibration
    # data, feeds that do not fit the model) is the load's, raised rather than fallen back from.
    # An int8 graph measured on this row and found short of its budget (PrecisionError) is
    # this row's failure: the next row measures its own.
    try:
        target = transform(model, b, device, row.variant) if transform else model
    except PrecisionError as e:
        return e
    try:
        return b.compile(target, device, options, row.variant)
    except OptionError:
        raise  # the caller's mistake: no other backend would make it right
    except Exception as e:
        log.debug("%s on %s failed", row.label, device, exc_info=True)
        if isinstance(e, InferError):
            return e
        wrapped = CompileError(f"{row.label} failed unexpectedly: {type(e).__name__}: {e}")
        wrapped.__cause__ = e  # a backend bug must not leak a raw exception
        return wrapped


def preflight(
    model: Model,
    request: Device,
    options: Options,
    backend: str | Sequence[str] | None = None,
) -> list[tuple[Choice, Device | None, Attempt | None]]:
    """`check` for every candidate `select` would try, in the same order."""
    return [(row, *check(row, model, request, options)) for row in candidates(request, backend)]


def needs_graph_precision(
    backend: Backend, device: Device, options: Options, variant: str | None
) -> bool:
    """Whether this backend wants the shared ONNX precision transform for `options.precision`."""
    return backend.precisions(device, variant).get(options.precision) == GRAPH


def _warn_on_fallback(attempts: list[Attempt], named: bool = False) -> None:
    chosen = attempts[-1]
    passed = [a for a in attempts[:-1] if a.verdict in ("failed", "unsupported")]
    if passed:
        log.warning(
            "using %s on %s after: %s",
            chosen.backend,
            chosen.device,
            "; ".join(str(a) for a in passed),
        )
    if chosen.backend == "reference" and not named:  # a caller who named it knows
        log.warning(
            "running on the ONNX reference evaluator, which is slow: %s",
            base.get("reference").probe().reason,
        )


def _unavailable(info: BackendInfo) -> str:
    hint = f" (install: {info.install})" if info.install else ""
    return f"{info.reason}{hint}"


def _no_device(b: Backend, where: Device) -> str:
    found = ", ".join(str(d) for d in b.probe().devices) or "none"
    notes = list(probe_hardware().notes) if where.kind in ("cuda", "gpu") else []
    if where.kind in ("ane", "gpu") and not any(d.kind == "ane" for d in probe_hardware().devices):
        notes.append(
            f"no Apple silicon here ({platform.system()} {platform.machine()}): the Neural Engine "
            "and Apple GPUs are reached through Core ML (coremltools) or onnxruntime's CoreML "
            "execution provider, both on macOS"
        )
    return f"no {where} device for {b.name} (it sees: {found})" + (
        f"; {'; '.join(notes)}" if notes else ""
    )


def _explain(attempts: Sequence[Attempt]) -> str:
    return "\n".join(f"  - {a}" for a in attempts) or "  (no candidates)"


def backends() -> list[BackendInfo]:
    """What every known backend's probe says, in table order."""
    return [base.get(name).probe() for name in BACKENDS]


def devices() -> list[Device]:
    """The devices found on this machine: the hardware probe's, then any a backend adds."""
    found: dict[tuple[str, int | None], Device] = {}
    for d in probe_hardware().devices:
        found[(d.kind, d.index)] = d
    for info in backends():
        for d in info.devices:
            found.setdefault((d.kind, d.index), d)
    return list(found.values())


# -- backend="fastest" ------------------------------------------------------------------------

FASTEST = "fastest"
"""backend=FASTEST: time every eligible row on the model and keep the fastest."""
RACE_RUNS = 5
"""Timed runs per candidate (after one untimed warm-up run)."""
RACE_SECONDS = 2.0
"""Per candidate, no new timed run starts after this many seconds (one always runs)."""
RACE_DIM = 64
"""Size given to a dynamic dimension that `shapes` does not fix (the first axis gets 1)."""


def _race(
    model: Model,
    request: Device,
    options: Options,
    transform: Callable[[Model, Backend, Device, str | None], Model] | None,
) -> tuple[Session, list[Attempt]]:
    """Compile every eligible candidate, time each on the same seeded random feeds, keep the
    fastest and close the rest. The choice is cached per model, candidates (backend versions
    and device identities), precision, hint and shapes, so the next load compiles only it."""
    rows = TABLE[request.kind]
    verdicts: dict[Choice, Attempt] = {}
    racers: list[tuple[Choice, Device]] = []
    for row in rows:
        device, verdict = check(row, model, request, options)
        if verdict is not None:
            verdicts[row] = verdict
        elif row.race:
            racers.append((row, device))
    if len(racers) < 2:  # nothing to race: the table's order decides
        log.info("backend='fastest': %d candidate(s) to time; using the table order", len(racers))
        return select(model, request, options, None, transform)

    cache = Cache(options.cache_dir) if options.cache else None
    key = Key.of(
        "fastest-choice",
        model=model.digest,
        precision=options.precision,
        hint=options.hint,
        shapes={k: repr(v) for k, v in options.shapes.items()},
        candidates=[
            f"{row.label} {base.get(row.backend).probe().version} on {device.identity}"
            for row, device in racers
        ],
    )
    entry = cache.get(key) if cache is not None else None
    if entry is not None:
        try:
            earlier = json.loads(entry.file("choice.json").read_text(encoding="utf-8"))
            winner = next(r for r in racers if r[0].label == earlier["winner"])
        except (OSError, ValueError, KeyError, StopIteration):
            earlier, winner = None, None
        if winner is not None:
            row, device = winner
            start = time.perf_counter()
            compiled = _compile(row, device, model, options, transform)
            seconds = time.perf_counter() - start
            if isinstance(compiled, Session):
                timings = ", ".join(f"{k} {v:.3g} ms" for k, v in earlier["median_ms"].items())
                for other, other_device in racers:
                    if other != row:
                        verdicts[other] = Attempt(
                            other.label,
                            str(other_device),
                            "skipped",
                            f"a cached race chose {row.label} ({timings})",
                        )
                verdicts[row] = Attempt(
                    row.label,
                    str(device),
                    "selected",
                    f"fastest in a cached race ({timings}); {compiled.details.get('summary', '')}",
                    seconds,
                )
                return compiled, [verdicts[r] for r in rows if r in verdicts]
            # It no longer compiles: race again.
            verdicts[row] = Attempt(row.label, str(device), "failed", str(compiled), seconds)
            cache.remove(entry)  # type: ignore[union-attr]

    timed: list[tuple[float, int, Choice, Device, Session, float]] = []
    untimed: list[tuple[Choice, Device, Session, float]] = []
    feeds: dict[str, np.ndarray] | None = None
    for i, (row, device) in enumerate(racers):
        if options.progress is not None:
            options.progress("race", i, len(racers))
        start = time.perf_counter()
        compiled = _compile(row, device, model, options, transform)
        seconds = time.perf_counter() - start
        if isinstance(compiled, InferError):
            verdicts[row] = Attempt(row.label, str(device), "failed", str(compiled), seconds)
            continue
        if feeds is None:
            feeds = race_feeds(compiled.inputs, options.shapes)
        try:
            median, runs = _time_runs(compiled, feeds)
        except InferError as e:
            untimed.append((row, device, compiled, seconds))
            verdicts[row] = Attempt(
                row.label,
                str(device),
                "failed",
                f"could not run the race's random feeds: {e}",
                seconds,
            )
            continue
        timed.append((median, runs, row, device, compiled, seconds))
    if options.progress is not None:
        options.progress("race", len(racers), len(racers))

    if not timed:
        if not untimed:
            raise BackendUnavailable(
                f"no backend can run {model!r} on {request}:\n"
                + _explain([verdicts[r] for r in rows if r in verdicts])
            )
        # The random feeds were likely unfit for this model: fall back to the table's order.
        row, device, session, seconds = untimed[0]
        for _, _, other, _ in untimed[1:]:
            other.close()
        verdicts[row] = Attempt(
            row.label,
            str(device),
            "selected",
            "no candidate ran the race's random feeds (pass shapes= to size them); first in "
            f"table order; {session.details.get('summary', '')}",
            seconds,
        )
        return session, [verdicts[r] for r in rows if r in verdicts]

    timed.sort(key=lambda t: t[0])
    best_median, best_runs, best_row, best_device, best, best_seconds = timed[0]
    medians = {row.label: median * 1e3 for median, _, row, _, _, _ in timed}
    for median, runs, row, device, session, seconds in timed[1:]:
        session.close()
        verdicts[row] = Attempt(
            row.label,
            str(device),
            "skipped",
            f"{median * 1e3:.3g} ms median over {runs} runs; slower than {best_row.label} "
            f"({best_median * 1e3:.3g} ms)",
            seconds,
        )
    for _, _, session, _ in untimed:
        session.close()
    others = ", ".join(f"{k} {v:.3g} ms" for k, v in medians.items() if k != best_row.label)
    verdicts[best_row] = Attempt(
        best_row.label,
        str(best_device),
        "selected",
        f"fastest: {best_median * 1e3:.3g} ms median over {best_runs} runs"
        + (f" (vs {others})" if others else "")
        + f"; {best.details.get('summary', '')}",
        best_seconds,
    )
    if cache is not None:
        choice = {"winner": best_row.label, "median_ms": medians}
        try:
            cache.get_or_build(key, lambda folder: _write_choice(folder, choice))
        except CacheError as e:
            log.warning("backend='fastest': could not cache the choice: %s", e)
    return best, [verdicts[r] for r in rows if r in verdicts]


def _time_runs(session: Session, feeds: dict[str, np.ndarray]) -> tuple[float, int]:
    """(median seconds, runs) over at most RACE_RUNS runs, after one untimed warm-up."""
    session.run(feeds)
    times: list[float] = []
    deadline = time.perf_counter() + RACE_SECONDS
    while len(times) < RACE_RUNS and (not times or time.perf_counter() < deadline):
        start = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def race_feeds(
    specs: Sequence[TensorSpec], shapes: Mapping[str, Any] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random feeds for `specs` (values as `infer.feeds` makes them): dynamic dims from
    `shapes` (a shape, or the opt of a (min, opt, max) triple), else 1 on the first axis and
    RACE_DIM elsewhere, since 1x1 images would time nothing a real input does."""
    rng = np.random.default_rng(seed)
    shapes = shapes or {}
    feeds = {}
    for spec in specs:
        given = shapes.get(spec.name)
        if (
            given is not None
            and len(given) == 3
            and all(isinstance(s, (tuple, list)) for s in given)
        ):
            given = given[1]
        dims = spec.shape if spec.shape is not None else (1,)
        shape = tuple(
            int(given[axis])
            if given is not None and axis < len(given)
            else d
            if isinstance(d, int)
            else (1 if axis == 0 else RACE_DIM)
            for axis, d in enumerate(dims)
        )
        feeds[spec.name] = random_array(shape, spec.dtype, rng)
    return feeds


def _write_choice(folder: Path, choice: Mapping[str, Any]) -> None:
    with open(folder / "choice.json", "w", encoding="utf-8") as f:
        json.dump(choice, f, indent=1, sort_keys=True)
