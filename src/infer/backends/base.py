"""The backend contract: a `Backend` probes and compiles, a `Session` runs.

A backend module is the only place that imports its runtime, and only inside functions, so
`import infer` works with no runtime installed. `Session.run` does the work every backend
shares (feed validation from specs fixed at compile time, error wrapping) and calls the
backend's `_run`; no backend checks feeds itself.
"""

from __future__ import annotations

import abc
import importlib
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..device import Device
from ..errors import EngineClosed, InferError, InputError, RuntimeFailure
from ..model import Model, ModelFormat
from ..options import Options
from ..tensors import FeedValidator, TensorSpec

log = logging.getLogger(__name__)

# How a backend runs a precision on a device:
NATIVE = "native"  # the graph as given (fp32 models, or graphs already holding fp16 / Q/DQ)
GRAPH = "graph"  # the engine applies the shared ONNX precision transform before compile
HINT = "hint"  # the backend sets its runtime's own precision setting on the fp32 graph


@dataclass(frozen=True)
class BackendInfo:
    """What a backend's probe found: installed or not, version, devices, and why not."""

    name: str
    available: bool
    version: str | None = None
    devices: tuple[Device, ...] = ()
    reason: str = ""  # why unavailable (or a note when available)
    install: str = ""  # what to install to get it

    def __repr__(self) -> str:
        state = f"version={self.version!r}" if self.available else f"reason={self.reason!r}"
        devs = ", ".join(str(d) for d in self.devices)
        return f"BackendInfo({self.name!r}, available={self.available}, {state}, devices=[{devs}])"


class Backend(abc.ABC):
    """One runtime: answers what it can do without loading a model, and compiles sessions."""

    name: ClassVar[str]
    formats: ClassVar[frozenset[ModelFormat]] = frozenset({ModelFormat.ONNX})
    install: ClassVar[str] = ""

    def __init__(self) -> None:
        self._info: BackendInfo | None = None
        self._lock = threading.Lock()

    def probe(self) -> BackendInfo:
        """Installed? Which version and devices? Cached; never raises."""
        if self._info is None:
            with self._lock:
                if self._info is None:
                    try:
                        self._info = self._probe()
                    except Exception as e:  # a broken install is a reason, not a crash
                        log.debug("probe of %s failed", self.name, exc_info=True)
                        self._info = BackendInfo(
                            self.name, False, reason=f"probe failed: {e}", install=self.install
                        )
        return self._info

    @abc.abstractmethod
    def _probe(self) -> BackendInfo: ...

    def device_for(self, request: Device) -> Device | None:
        """The first device this backend drives that satisfies `request` (None: it has none)."""
        return next((d for d in self.probe().devices if request.matches(d)), None)

    def precisions(self, device: Device, variant: str | None = None) -> Mapping[str, str]:
        """precision -> how it runs on `device` (NATIVE, GRAPH or HINT); absent: it cannot."""
        return {"fp32": NATIVE}

    def int8_quantizer(self, device: Device, variant: str | None = None) -> str:
        """Whose Q/DQ placement this runtime runs best, for int8 taken as a GRAPH with
        `Calibration(quantizer="auto")`: "onnxruntime" (uint8 activations, int8 weights),
        "onnxruntime-symmetric" (zero points 0, as TensorRT requires) or "nncf" (OpenVINO's)."""
        return "onnxruntime"

    def supports(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        """None if this backend can take the model on the device; else the reason it cannot.

        Cheap: no model is compiled. `variant` is a backend's own sub-choice named in the
        selection table (an ONNX Runtime execution provider, say).
        """
        if model.format not in self.formats:
            takes = ", ".join(sorted(f.value for f in self.formats))
            return f"takes {takes} models, not {model.format.value}"
        runs = self.precisions(device, variant)
        if options.precision not in runs:
            return f"runs {', '.join(runs)} on {device}, not {options.precision}"
        return None

    def unsupported_ops(
        self, model: Model, device: Device, variant: str | None = None
    ) -> list[str] | None:
        """The model's ops this backend cannot run on `device`, found without compiling (its
        op registry at its version, against the model's opsets): [] when it takes them all,
        None when that cannot be told without compiling."""
        return None

    @abc.abstractmethod
    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> Session:
        """Build a runnable session; raises CompileError (chained) when the runtime refuses."""


class Session(abc.ABC):
    """A compiled model on one device. Thread-safe: `run` may be called from any thread."""

    def __init__(
        self,
        *,
        backend: str,
        device: Device,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        options: Options,
        precision: str = "fp32",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.device = device
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.options = options
        self.precision = precision
        self.details: dict[str, Any] = dict(details or {})
        self._validate = FeedValidator(self.inputs, cast=options.cast)
        self._output_names = [o.name for o in self.outputs]
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: threading.BoundedSemaphore | None = None
        self._exec_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} on {self.device}>"

    # -- running ------------------------------------------------------------------------------

    def run(
        self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Validate `feeds`, run, and return {output name: array}."""
        if self._closed:
            raise EngineClosed(f"{self.backend} session on {self.device} is closed")
        feeds = self._validate(feeds)
        names = None if outputs is None else self._check_outputs(outputs)
        try:
            return self._run(feeds, names)
        except InferError:
            raise
        except Exception as e:
            raise RuntimeFailure(f"{self.backend} failed to run on {self.device}: {e}") from e

    @abc.abstractmethod
    def _run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        """Run validated feeds; `outputs` None means all, in model order."""

    def _check_outputs(self, requested: Sequence[str]) -> list[str]:
        if isinstance(requested, str):
            requested = [requested]
        bad = [r for r in requested if r not in self._output_names]
        if bad:
            raise InputError(
                f"unknown output(s) {bad}; the model's outputs are {self._output_names}"
            )
        return list(requested)

    def submit(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> Future:
        """Run in the background; at most `max_in_flight` runs are queued or running at once.

        When that many are in flight, `submit` blocks until one finishes (backpressure). The
        default runs `run` on a pool of `max_in_flight` threads, which suits runtimes whose
        sessions are shared between threads; backends with asynchronous queues override it.
        """
        if self._closed:
            raise EngineClosed(f"{self.backend} session on {self.device} is closed")
        executor, slots = self._pool()
        slots.acquire()
        try:
            fut = executor.submit(self.run, feeds, outputs)
        except RuntimeError as e:  # the pool was shut down by close()
            slots.release()
            raise EngineClosed(f"{self.backend} session on {self.device} is closed") from e
        except BaseException:
            slots.release()
            raise
        fut.add_done_callback(lambda _f: slots.release())
        return fut

    def _pool(self) -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
        if self._executor is None:
            with self._exec_lock:
                if self._executor is None:
                    workers = self.max_in_flight
                    self._in_flight = threading.BoundedSemaphore(workers)
                    self._executor = ThreadPoolExecutor(
                        workers, thread_name_prefix=f"infer-{self.backend}"
                    )
        return self._executor, self._in_flight  # type: ignore[return-value]

    def default_in_flight(self) -> int:
        """Runs in flight for `submit` when the user set none."""
        return 2

    @property
    def max_in_flight(self) -> int:
        """The most runs `submit` keeps queued or running at once (the `max_in_flight` option,
        else the backend's default)."""
        return self.options.max_in_flight or self.default_in_flight()

    def bind(self, outputs: str | Mapping[str, Any] = "host") -> Binding:
        """I/O buffers allocated once and reused by every `Binding.run`.

        outputs: "host" (numpy buffers the binding owns), "device" (device arrays, on backends
        whose device is not the host; on the host it means "host"), or {output name:
        preallocated array} to write into. The default copies each output into its buffer;
        backends that can write into bound memory override this.
        """
        if self._closed:
            raise EngineClosed(f"{self.backend} session on {self.device} is closed")
        from ..binding import HostBinding

        return HostBinding(self, outputs)

    # -- lifetime -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Finish the runs already submitted, then free the runtime's resources; idempotent."""
        with self._exec_lock:
            if self._closed:
                return
            if self._executor is not None:
                # Submitted runs still run (they check `closed`); new submits are refused.
                self._executor.shutdown(wait=True)
            self._closed = True
        self._close()

    def _close(self) -> None:
        """Release backend resources (called once)."""


class Binding(abc.ABC):
    """Buffers bound to one session and reused across runs.

    Not thread-safe: each thread binds its own. The arrays `run` returns are the bound output
    buffers, overwritten by the next `run`, unless `copy=True`.
    """

    def __init__(self, session: Session) -> None:
        from ..binding import FeedCheck

        self.session = session
        self._closed = False
        self._check = FeedCheck(session)

    def run(self, feeds: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """Validate `feeds` as `Session.run` does, run into the bound buffers, return them.

        Feeds may also be CUDA arrays (`__cuda_array_interface__`, DLPack): they reach `_run`
        as given, for the binding to read in place (`infer.binding.device_view`) or refuse
        (`infer.binding.refuse_device_inputs`).
        """
        if self._closed or self.session.closed:
            raise EngineClosed(f"binding on {self.session.backend} is closed")
        feeds = self._check(feeds)
        try:
            out = self._run(feeds)
        except InferError:
            raise
        except Exception as e:
            raise RuntimeFailure(
                f"{self.session.backend} failed to run on {self.session.device}: {e}"
            ) from e
        if copy:
            return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in out.items()}
        return out

    @abc.abstractmethod
    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run validated feeds (numpy arrays, or device arrays as given) into the outputs."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:
        """Release bound buffers (called once)."""

    def __enter__(self) -> Binding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_REGISTRY: dict[str, Backend] = {}
_REGISTRY_LOCK = threading.Lock()


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend known under `cls.name`."""
    _REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Backend:
    """The backend called `name`; its module is `infer.backends.<name>`, imported on first use."""
    if name not in _REGISTRY:
        with _REGISTRY_LOCK:
            if name not in _REGISTRY:
                importlib.import_module(f"{__package__}.{name}")
    return _REGISTRY[name]
