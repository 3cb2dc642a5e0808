"""Backend selection: the one table from device kind to backends in order of preference, and
the loop that tries them (probe, supports, compile), falling back and recording each verdict.

This table is the only place besides `backends/` that names backends. Adding a backend is a
module `infer/backends/<name>.py` plus a row here. It is also the one answer to "which
backends can take this model here, and why not the others": `preflight` gives one `Attempt`
per row without compiling, and inspect, bench, compare and `infer devices` ask it.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .backends import base
from .backends.base import GRAPH, Backend, BackendInfo, Session
from .device import Device, probe_hardware
from .errors import (
    BackendUnavailable,
    CompileError,
    InferError,
    OptionError,
    PrecisionError,
)
from .model import Model
from .options import PRECISIONS, Options

log = logging.getLogger(__name__)

FASTEST = "fastest"
"""backend=FASTEST: race every eligible row at load (the same as choose="measure")."""


@dataclass(frozen=True)
class Choice:
    """A row of the table: a backend (and its variant) on a kind of device."""

    backend: str
    kind: str
    variant: str | None = None
    race: bool = True
    """Whether the measured choice times this row (False: a last resort, too slow to time)."""
    builds: bool = field(default=False, compare=False)
    """Whether its first compile builds an engine for minutes (TensorRT): the background
    choice starts on a quicker row and builds this one in its race."""

    @property
    def label(self) -> str:
        return row_label(self.backend, self.variant)


def row_label(backend: str, variant: str | None) -> str:
    """How a row is named everywhere (attempts, the cache, CLI tables): `onnxruntime[cpu]`."""
    return f"{backend}[{variant}]" if variant else backend


ELIGIBLE = ("eligible", "unchecked")
"""Verdicts of rows that pass every check made without compiling."""


@dataclass(frozen=True)
class Attempt:
    """One row's verdict: which backend on which device, the verdict, and why.

    verdict: "selected" or "failed" (it was compiled), "deferred" (built in the background
    race, its first build taking minutes), "unavailable" (not installed, or no
    such device), "unsupported" (it cannot take this model), "skipped" (passed over: another
    format, or slower in a race), and from `preflight`: "eligible" (it would be compiled) or
    "unchecked" (it would be compiled, but whether it implements the model's ops cannot be
    told without compiling); "compiled" where a tool (`infer inspect --compile`) compiled it.
    """

    backend: str  # the row's label: "onnxruntime[cpu]", "openvino"
    device: str
    verdict: str
    reason: str = ""
    seconds: float | None = field(default=None, compare=False)
    row: Choice | None = field(default=None, compare=False, repr=False)

    @property
    def eligible(self) -> bool:
        """Whether the row passed every check made without compiling (or compiled)."""
        return self.verdict in (*ELIGIBLE, "selected", "compiled")

    @property
    def ok(self) -> bool | None:
        """True: it can take the model (as far as was checked); False: it cannot; None: not
        known without compiling."""
        return None if self.verdict == "unchecked" else self.eligible

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": self.device,
            "verdict": self.verdict,
            "reason": self.reason,
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"{self.backend} on {self.device}: {self.verdict}{why}"


class Selection(tuple[Attempt, ...]):
    """What `Engine.load` tried, in order (a tuple of Attempt, the data as it was): prints as
    one line per candidate it could try (seconds rounded, each reason whole, on one line) and
    one line naming those not here (their reasons stay in the data); `repr` is one line."""

    @property
    def chosen(self) -> Attempt | None:
        """The attempt that was selected (None: none was)."""
        return next((a for a in reversed(self) if a.verdict == "selected"), None)

    def __str__(self) -> str:
        lines = [self._line(a) for a in self if a.verdict != "unavailable"]
        absent = [a.backend for a in self if a.verdict == "unavailable"]
        if absent:
            lines.append(f"- not here: {', '.join(absent)}")
        return "\n".join(lines) or "(no candidates)"

    def __repr__(self) -> str:
        parts = [
            f"{a.backend} {a.verdict}"
            + (f" in {_seconds(a.seconds)}" if a.seconds is not None else "")
            for a in self
        ]
        return f"Selection({'; '.join(parts)})"

    def _line(self, a: Attempt) -> str:
        mark = "✓" if a.verdict == "selected" else "✗" if a.verdict == "failed" else "-"
        took = f" in {_seconds(a.seconds)}" if a.seconds is not None else ""
        reason = " ".join(a.reason.split())
        return f"{mark} {a.backend} on {a.device}: {a.verdict}{took}" + (
            f": {reason}" if reason else ""
        )


def _seconds(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


BACKENDS = ("tensorrt", "onnxruntime", "openvino", "coreml", "reference")
"""Every backend infer knows, by module name."""

_CUDA = (
    Choice("tensorrt", "cuda", builds=True),
    Choice("onnxruntime", "cuda", "tensorrt", builds=True),
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
        name, _, tail = w.partition("[")
        variant = tail.rstrip("]") or None
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
    *,
    listed: bool | None = None,
) -> tuple[Session, list[Attempt]]:
    """Try each candidate in order; return the first session that compiles and every verdict.

    `transform(model, backend, device, variant)` gives the model a backend should compile (the
    precision transform, applied once and shared); None compiles `model` as it is.
    With a single `backend` named, its failure is raised instead of falling back.
    `listed`: whether the caller named `backend` (default: whenever it is given); False for
    rows infer restricts itself to.
    """
    rows = candidates(request, None if backend == FASTEST else backend)
    forced = isinstance(backend, str)
    if listed is None:
        listed = backend is not None and backend != FASTEST
    attempts: list[Attempt] = []
    last_error: InferError | None = None
    for row in rows:
        device, verdict = check(row, model, request, options, named=forced, listed=listed)
        if verdict is not None:
            attempts.append(verdict)
            continue
        assert device is not None  # check names the device whenever it gives no verdict
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
        # Its own text once: the other candidates' verdicts follow, not this one again.
        others = [a for a in attempts if a.reason != str(last_error)]
        also = f"\n{_explain(others)}" if others else ""
        raise type(last_error)(f"{last_error}{also}") from last_error
    if isinstance(last_error, PrecisionError):  # int8 measured short of its budget everywhere
        raise PrecisionError(
            f"no backend runs int8 {model!r} within its budget on {request}:\n{_explain(attempts)}",
            last_error.report,
        ) from last_error
    slow = [_last_resort(row, options, listed) for row in rows]
    if any(why and a.reason == why for why, a in zip(slow, attempts)):
        raise PrecisionError(_no_fast_precision(model, request, options, rows, attempts))
    raise BackendUnavailable(f"no backend can run {model!r} on {request}:\n{_explain(attempts)}")


def check(
    row: Choice,
    model: Model,
    request: Device,
    options: Options,
    named: bool = False,
    listed: bool = False,
) -> tuple[Device | None, Attempt | None]:
    """The checks `select` makes on a row before compiling, without compiling anything.

    Returns (device, None) when the row would be compiled on `device`, else (device or None,
    the Attempt saying why not). For tools (`infer devices`, `inspect`, `bench`) that ask
    which backends could take a model. `named`: the caller named this backend alone, so a
    known wrong answer (`Backend.miscomputes`) is a warning rather than a reason to skip it.
    `listed`: the caller named the rows to try (this one alone or among others), so a last
    resort runs a lowered precision (`_last_resort`).
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
    slow = _last_resort(row, options, named or listed)
    if slow:
        return device, Attempt(row.label, str(device), "skipped", slow)
    wrong = b.miscomputes(model, device, options, row.variant)
    if wrong and not named:
        return device, Attempt(row.label, str(device), "skipped", f"{_WRONG}{wrong}")
    if wrong:
        log.warning("%s on %s, as named, answers this model wrongly: %s", row.label, device, wrong)
    return device, None


_WRONG = "answers wrongly: "


def known_wrong(attempt: Attempt) -> str | None:
    """Why `check` passed a row over as answering the model wrongly (`Backend.miscomputes`);
    None for any other verdict."""
    if attempt.verdict == "skipped" and attempt.reason.startswith(_WRONG):
        return attempt.reason[len(_WRONG) :]
    return None


def _last_resort(row: Choice, options: Options, named: bool) -> str:
    """Why a last-resort row (too slow to race) is passed over for a lowered precision ("" when
    it is not): fp16, bf16 and int8 are asked for speed, which the slowest backend cannot give,
    so it runs them only when the caller names it."""
    if row.race or named or options.precision == "fp32":
        return ""
    return (
        f"the slowest backend, a last resort at fp32: {options.precision} is asked for speed, "
        f"so it runs {options.precision} only when named (backend={row.label!r})"
    )


def _no_fast_precision(
    model: Model,
    request: Device,
    options: Options,
    rows: Sequence[Choice],
    attempts: Sequence[Attempt],
) -> str:
    """Why no backend here runs `options.precision` fast, and what would: the precisions the
    fast rows here take this model at, the devices whose rows run it, and the last resort."""
    precision = options.precision
    here: dict[str, list[str]] = {}
    for p in PRECISIONS:
        if p == precision:
            continue
        other = replace(options, precision=p, calibration=None)
        for row in rows:
            if row.race and check(row, model, request, other)[1] is None:
                here.setdefault(p, []).append(row.label)
    elsewhere = []
    for kind, choices in TABLE.items():
        if kind in (request.kind, "auto"):
            continue
        names = [
            r.backend
            for r in choices
            if r.race
            and model.format in base.get(r.backend).formats
            and precision in base.get(r.backend).precisions(Device(kind), r.variant)
        ]
        if names:
            elsewhere.append(f"{kind} ({', '.join(dict.fromkeys(names))})")
    offers = [f"{p} ({', '.join(labels)})" for p, labels in here.items()]
    last = next((r.label for r in rows if not r.race), None)
    return (
        f"no fast backend here runs {precision} {model!r} on {request}:\n{_explain(attempts)}\n"
        + (f"Run it at {' or '.join(offers)} here" if offers else "No fast backend takes it here")
        + (f", or on a device that runs {precision}: {', '.join(elsewhere)}" if elsewhere else "")
        + (f"; backend={last!r} runs {precision} all the same, slowly." if last else ".")
    )


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
        session = b.compile(target, device, options, row.variant)
        session.know(target)  # the graph's bounds on ids and shapes at batch 0, for the feed check
        return session
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
    request: Device | str | None = None,
    options: Options | None = None,
    backend: str | Sequence[str] | None = None,
    *,
    ops: bool = True,
) -> list[Attempt]:
    """Which backends can take `model` here, and why not the others: one Attempt per row of
    the table, in its order, from the checks `select` makes before compiling and, with
    `ops`, each backend's own op check (`Backend.unsupported_ops`). Nothing is compiled.
    Rows that pass are "eligible" ("unchecked" where the ops cannot be told without
    compiling), on the device they would get.

    request: a device ("auto", "cpu", ...: the rows `select` would try, restricted to
    `backend` as `candidates` does; one backend named is taken as `select` takes it, a known
    wrong answer no reason to leave it out), or None for every row of every device kind, each on its
    own kind (what `infer inspect` lists).
    """
    options = options or Options()
    if request is None:
        rows: list[Choice] = []
        for kind, choices in TABLE.items():
            if kind != "auto":
                rows += [r for r in choices if r.kind == kind and r not in rows]
        pairs = [(row, Device(row.kind)) for row in rows]
    else:
        wanted = Device.parse(request) if isinstance(request, str) else request
        pairs = [(row, wanted) for row in candidates(wanted, backend)]
    out = []
    for row, where in pairs:
        device, verdict = check(
            row, model, where, options, named=isinstance(backend, str), listed=backend is not None
        )
        if verdict is None:
            assert device is not None
            verdict = _ops_verdict(row, model, device) if ops else None
            verdict = verdict or Attempt(row.label, str(device), "eligible")
        out.append(replace(verdict, row=row))
    return out


_OPS_SHOWN = 6
_ops_checked: dict[tuple[str, str | None, str, str], list[str] | None] = {}


def _ops_verdict(row: Choice, model: Model, device: Device) -> Attempt:
    """The row's verdict from its backend's op check (cached per model, row and device)."""
    b = base.get(row.backend)
    key = (row.backend, row.variant, model.digest, device.identity)
    if key not in _ops_checked:
        try:
            _ops_checked[key] = b.unsupported_ops(model, device, row.variant)
        except Exception:  # a check that breaks tells nothing: compiling will
            log.debug("unsupported_ops of %s failed", row.label, exc_info=True)
            _ops_checked[key] = None
        if len(_ops_checked) > 256:
            _ops_checked.pop(next(iter(_ops_checked)))
    missing = _ops_checked[key]
    version = b.probe().version
    if missing is None:
        return Attempt(
            row.label,
            str(device),
            "unchecked",
            f"whether {b.name} runs every op here is known only by compiling",
        )
    if not missing:
        return Attempt(row.label, str(device), "eligible")
    version = (version or "").split("-")[0]  # OpenVINO's carries its build: 2026.4.1-22982-...
    shown = ", ".join(missing[:_OPS_SHOWN])
    more = f" and {len(missing) - _OPS_SHOWN} more" if len(missing) > _OPS_SHOWN else ""
    return Attempt(
        row.label,
        str(device),
        "unsupported",
        f"{b.name} {version} does not implement {shown}{more} (checked without compiling)",
    )


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
