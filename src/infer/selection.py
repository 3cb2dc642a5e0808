"""Backend selection: the one table from device kind to backends in order of preference, and
the loop that tries them (probe, supports, compile), falling back and recording each verdict.

This table is the only place besides `backends/` that names backends. Adding a backend is a
module `infer/backends/<name>.py` plus a row here.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .backends import base
from .backends.base import GRAPH, Attempt, Backend, BackendInfo, Session
from .device import Device, probe_hardware
from .errors import BackendUnavailable, CompileError, InferError, OptionError
from .model import Model
from .options import Options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """A row of the table: a backend (and its variant) on a kind of device."""

    backend: str
    kind: str
    variant: str | None = None

    @property
    def label(self) -> str:
        return f"{self.backend}[{self.variant}]" if self.variant else self.backend


BACKENDS = ("tensorrt", "onnxruntime", "coreml", "reference")
"""Every backend infer knows, by module name."""

_CUDA = (
    Choice("tensorrt", "cuda"),
    Choice("onnxruntime", "cuda", "tensorrt"),
    Choice("onnxruntime", "cuda", "cuda"),
)
_ANE = (Choice("onnxruntime", "ane", "coreml"),)
# Core ML runs .mlpackage/.mlmodel models only, which no other backend takes, so its rows never
# stand in front of another backend for an ONNX model. Under "auto" it gets every compute unit.
_COREML_AUTO = Choice("coreml", "auto", "all")
# ONNX Runtime leads on the CPU: it runs the most of the ONNX spec, and no backend wins every
# model on speed (see benchmarks/); backend="fastest" measures instead of assuming.
_CPU = (
    Choice("onnxruntime", "cpu", "cpu"),
    Choice("reference", "cpu"),
)

TABLE: dict[str, tuple[Choice, ...]] = {
    "cuda": _CUDA,
    "gpu": (
        *_CUDA,
        Choice("coreml", "gpu"),
        Choice("onnxruntime", "gpu", "coreml"),
        Choice("onnxruntime", "gpu", "openvino"),
    ),
    "npu": (Choice("onnxruntime", "npu", "openvino"),),
    "ane": (Choice("coreml", "ane"), *_ANE),
    # A Core ML package asked onto the CPU runs on Core ML's CPU_ONLY units (no other backend
    # reads packages, so the row costs ONNX models nothing).
    "cpu": (*_CPU, Choice("coreml", "cpu")),
    "auto": (*_CUDA, _COREML_AUTO, *_ANE, *_CPU),
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
            raise OptionError(f"backend {w!r} is not known; use one of {', '.join(BACKENDS)}")
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
    rows = candidates(request, backend)
    forced = isinstance(backend, str)
    attempts: list[Attempt] = []
    last_error: InferError | None = None
    for row in rows:
        b = base.get(row.backend)
        info = b.probe()
        where = _device_request(row, request)
        if not info.available:
            attempts.append(Attempt(row.label, str(where), "unavailable", _unavailable(info)))
            continue
        device = b.device_for(where)
        if device is None:
            attempts.append(Attempt(row.label, str(where), "unavailable", _no_device(b, where)))
            continue
        why = b.supports(model, device, options, row.variant)
        if why:
            # A backend that does not read the model's format is passed over, not fallen back from.
            verdict = "unsupported" if model.format in b.formats else "skipped"
            attempts.append(Attempt(row.label, str(device), verdict, why))
            continue
        start = time.perf_counter()
        try:
            target = transform(model, b, device, row.variant) if transform else model
            session = b.compile(target, device, options, row.variant)
        except OptionError:
            raise  # the caller's mistake: no other backend would make it right
        except Exception as e:
            if not isinstance(e, InferError):  # a backend bug must not leak a raw exception
                wrapped = CompileError(f"{row.label} failed unexpectedly: {type(e).__name__}: {e}")
                wrapped.__cause__ = e
                e = wrapped
            attempts.append(
                Attempt(row.label, str(device), "failed", str(e), time.perf_counter() - start)
            )
            last_error = e
            log.debug("%s on %s failed", row.label, device, exc_info=True)
            continue
        seconds = time.perf_counter() - start
        attempts.append(
            Attempt(row.label, str(device), "selected", session.details.get("summary", ""), seconds)
        )
        _warn_on_fallback(attempts, named=forced)
        return session, attempts
    if forced and last_error is not None:  # a named backend's own failure, not "none could"
        raise type(last_error)(f"{last_error}\n{_explain(attempts)}") from last_error
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
        return device, Attempt(row.label, str(device), "unsupported", why)
    return device, None


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
