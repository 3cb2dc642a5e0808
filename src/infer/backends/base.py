"""The backend contract: a `Backend` probes and compiles, a `Session` runs, a `Binding` reuses
buffers across runs.

The I/O edge is written once, here, for every backend. `Session.run`, `submit`, `bind` and
`close`, and `Binding.run` and `close`, are final: they check feeds (host arrays and device
arrays) against the specs fixed at compile time (`FeedCheck`, _feed_check.py), parse
`bind(outputs=...)` into one `OutputPlan`, and turn a runtime's own exception into a `RuntimeFailure` chained to it
(`Session.failure`, the one seam). Backends implement only the hooks that move bytes: `_run`,
and where their runtime does better than the defaults, `_submit`, `_bind` and `_close`.

A backend module is the only place that imports its runtime, and only inside functions, so
`import infer` works with no runtime installed.
"""

from __future__ import annotations

import abc
import functools
import importlib
import importlib.util
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast, final

import numpy as np

from .. import device_array
from ..binding import dtype_name, fits, target_mismatch, where_is
from ..device import Device
from ..device_array import DeviceView
from ..errors import EngineClosed, InferError, InputError, ModelError, OptionError, RuntimeFailure
from ..model import Model, ModelFormat, NativeSummary
from ..options import Options
from ..tensors import TensorSpec, describe
from ._feed_check import (
    BoundedFeedCheck,
    EmptyBatch,
    FeedCheck,
    GraphFacts,
    graph_bounds,
    output_shapes,
)

if TYPE_CHECKING:
    from ..sequence import KVPair, Roles

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
    runtime: ClassVar[str] = ""
    """The module of the runtime it drives ("onnxruntime", "openvino", ...)."""
    formats: ClassVar[frozenset[ModelFormat]] = frozenset({ModelFormat.ONNX})
    install: ClassVar[str] = ""

    def __init__(self) -> None:
        self._info: BackendInfo | None = None
        self._fingerprint: str | None = None
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

    def fingerprint(self) -> str:
        """What changes when the runtime is upgraded or replaced, read without importing it
        (for cache keys): where its package is, with the size and time of its __init__; ""
        when it is not installed. Read once per process (an upgrade takes a restart)."""
        if self._fingerprint is None:
            self._fingerprint = self._read_fingerprint()
        return self._fingerprint

    def _read_fingerprint(self) -> str:
        try:
            spec = importlib.util.find_spec(self.runtime)
        except (ImportError, ValueError):
            return ""
        if spec is None or spec.origin is None:
            return ""
        try:
            st = os.stat(spec.origin)
        except OSError:
            return spec.origin
        return f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}"

    def describe(self, model: Model) -> NativeSummary | None:
        """What the runtime's own format (one of `formats`, not ONNX) says of the model without
        loading it, for `infer inspect`; None: nothing to say."""
        return None

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

    def runtime_int8(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        """At precision="int8", for a model whose weights are already int8 (or int4): how this
        runtime quantizes the activations too, on the fly, in words ("OpenVINO dynamic
        activation quantization, group 32, ..."); None where it does not. The engine holds it
        to the accuracy budget (`int8_search.runtime`). Cheap: a walk over the graph."""
        return None

    def miscomputes(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        """None if no reason is known why this backend, taking the model, would answer
        differently from the ONNX spec; else the reason, naming the node and what it does.

        For what a backend runs but computes otherwise: an op its runtime version gets wrong
        (measured against the ONNX backend suite, tests/conformance), or a type it computes
        narrower (OpenVINO's float64 in float32). Where the answer is wrong whoever asks,
        `supports` refuses instead. Under the default choice (no backend named, or a list of
        them), selection passes a row with a reason over (verdict "skipped", the reason in
        `engine.selection`) to the next row; a caller who names the backend gets it, with a
        warning naming the reason. Cheap, like `supports`: a walk over the graph, no compile.
        """
        return None

    @abc.abstractmethod
    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> Session:
        """Build a runnable session; raises CompileError (chained) when the runtime refuses."""


# -- the output plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputPlan:
    """What `bind(outputs=...)` asked for: device outputs or not, and the caller's arrays
    (numpy arrays, or `DeviceView`s of device arrays, which the binding closes with itself)."""

    device: bool
    given: Mapping[str, Any]


def parse_outputs(session: Any, outputs: Any, *, device_outputs: bool = False) -> OutputPlan:
    """Check `bind(outputs=...)`: "host", "device", or {output name: preallocated array}.

    device_outputs: whether the binding can leave outputs in device memory. "device" on a
    session whose outputs are host memory anyway (the CPU, a plugin that picks its device)
    means host buffers: the same code runs on every machine.
    """
    if isinstance(outputs, str):
        if outputs == "host":
            return OutputPlan(False, {})
        if outputs == "device":
            if session.device.kind in ("cpu", "auto"):
                return OutputPlan(False, {})
            if not device_outputs:
                raise OptionError(
                    f"bind(outputs='device'): the {session.backend} binding on {session.device} "
                    "returns host arrays only; use outputs='host'"
                )
            return OutputPlan(True, {})
        raise OptionError(
            f"bind(outputs={outputs!r}) is not valid; use 'host', 'device' or "
            "{output name: preallocated array}"
        )
    if not isinstance(outputs, Mapping):
        raise OptionError(
            "bind(outputs=...) must be 'host', 'device' or a dict of output name -> array, "
            f"got {type(outputs).__name__}"
        )
    specs = {s.name: s for s in session.outputs}
    unknown = sorted(set(outputs) - set(specs))
    if unknown:
        raise OptionError(
            f"bind(outputs=...): unknown output(s) {unknown}; the model's outputs are {list(specs)}"
        )
    given: dict[str, Any] = {}
    try:
        for name, value in outputs.items():
            given[name] = _target(session, specs[name], value, device_outputs)
    except BaseException:
        for v in given.values():
            if isinstance(v, DeviceView):
                v.close()
        raise
    return OutputPlan(False, given)


def _target(session: Any, spec: TensorSpec, value: Any, device_outputs: bool) -> Any:
    """One array given to `bind(outputs=...)`, checked: itself, or a view of a device array."""
    name = spec.name
    if type(value) is not np.ndarray and device_array.is_device_array(value):
        if not device_outputs:
            raise OptionError(
                f"bind(outputs={{{name!r}: ...}}): a {where_is(value)} array, but the "
                f"{session.backend} binding on {session.device} writes host memory only"
            )
        try:
            view = device_array.view(value)
        except Exception as e:
            raise OptionError(
                f"bind(outputs={{{name!r}: ...}}): the {type(value).__name__} cannot be "
                f"written in place: {e}"
            ) from e
        try:
            _check_target(spec, view.dtype, view.shape)
            if not view.contiguous:
                raise OptionError(
                    f"bind(outputs={{{name!r}: ...}}): the device array must be C-contiguous"
                )
        except OptionError:
            view.close()
            raise
        return view
    if not isinstance(value, np.ndarray):
        raise OptionError(
            f"bind(outputs={{{name!r}: ...}}) must be a numpy or device array, got {type(value).__name__}"
        )
    if not value.flags.c_contiguous or not value.flags.writeable:
        raise OptionError(
            f"bind(outputs={{{name!r}: ...}}): the array must be C-contiguous and writeable"
        )
    _check_target(spec, value.dtype, value.shape)
    return value


def _check_target(spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    name = spec.name
    if dtype != spec.dtype:
        raise OptionError(
            f"bind(outputs={{{name!r}: ...}}): output {name!r} is {describe(spec.shape, spec.dtype)}, "
            f"the array given is {dtype_name(dtype)}"
        )
    if not fits(spec, shape):
        raise OptionError(
            f"bind(outputs={{{name!r}: ...}}): output {name!r} is {describe(spec.shape, spec.dtype)}, "
            f"the array given has shape {list(shape)}"
        )


def _value(counter: itertools.count) -> int:
    """The next value an itertools.count would give, without taking it."""
    return cast(int, counter.__reduce__()[1][0])


def _failed(error: BaseException) -> Future:
    fut: Future = Future()
    fut.set_exception(error)
    return fut


# -- sessions ---------------------------------------------------------------------------------


class Session(abc.ABC):
    """A compiled model on one device. Thread-safe: `run` may be called from any thread.

    The public methods are final (see the module docstring); a backend implements `_run` and,
    where its runtime offers better, `_submit`, `_bind`, `_binds_device_outputs` and `_close`.
    """

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
        device_inputs: bool = False,
    ) -> None:
        """device_inputs: whether `_run` reads device arrays in place (they reach it as given);
        otherwise `run` refuses them in words."""
        self.backend = backend
        self.device = device
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.options = options
        self.precision = precision
        self.details: dict[str, Any] = dict(details or {})
        self._device_inputs = device_inputs
        self._facts: GraphFacts | None = None
        self._feeds = self.feed_check(device_inputs)
        self._output_names = [o.name for o in self.outputs]
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: threading.BoundedSemaphore | None = None
        self._exec_lock = threading.Lock()
        # Runs started and finished (each `next` is atomic): close() waits for the runs
        # other threads have in progress before the runtime's resources go.
        self._started = itertools.count()
        self._finished = itertools.count()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} on {self.device}>"

    def feed_check(self, device_inputs: bool) -> FeedCheck:
        """A feed check for this session's inputs; `device_inputs`: the reader takes device
        arrays in place (else they are refused with the reason)."""
        reader = (
            None
            if device_inputs
            else f"{self.backend} reads this model's inputs from host memory on {self.device}"
        )
        bounded = self._facts is not None and self._facts.bounds
        return (BoundedFeedCheck if bounded else FeedCheck)(
            self.inputs,
            cast=self.options.cast,
            reader=reader,
            outputs=self.outputs,
            facts=self._facts,
        )

    def check_values(self, feeds: Mapping[str, Any]) -> None:
        """Refuse integer values outside the graph's bounds (InputError) before `feeds` join a
        merged run (dynamic batching); `run` and `submit` check them themselves."""
        self._feeds.check_values(feeds)

    def know(self, model: Model) -> None:
        """Read what the feed check takes from the graph this session was compiled from (see
        `GraphFacts`), once, before the session runs."""
        shapes = None
        if model.format is ModelFormat.ONNX:
            shapes = functools.partial(output_shapes, model)
        self._facts = GraphFacts(bounds=graph_bounds(model), shapes=shapes)
        self._feeds = self.feed_check(self._device_inputs)

    def failure(self, error: BaseException) -> RuntimeFailure:
        """The one seam where a runtime's own exception becomes infer's (raise it `from error`)."""
        return RuntimeFailure(
            f"{self.backend} failed to run on {self.device}: {self._error_text(error)}"
        )

    def _error_text(self, error: BaseException) -> str:
        """A runtime exception's message as users should read it (backends trim noise)."""
        return str(error)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed(f"{self.backend} session on {self.device} is closed")

    # -- running ------------------------------------------------------------------------------

    @final
    def run(
        self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Check `feeds`, run, and return {output name: array} (all outputs, or `outputs`)."""
        next(self._started)  # counted before the closed check: close() waits for this run
        try:
            if self._closed:
                self._check_open()
            feeds = self._feeds(feeds)
            names = None if outputs is None else self._check_outputs(outputs)
            if type(feeds) is EmptyBatch:
                if feeds.outputs is None:
                    return feeds.run(lambda f: self._run(f, names))
                return feeds.answer(names)
            # _run_mapped inlined: a frame less on the hot path (~0.1 us of a 5 us run).
            try:
                return self._run(feeds, names)
            except InferError:
                raise
            except Exception as e:
                raise self.failure(e) from e
        finally:
            next(self._finished)

    @abc.abstractmethod
    def _run(self, feeds: dict[str, Any], outputs: list[str] | None) -> dict[str, np.ndarray]:
        """Run checked feeds; `outputs` None means all, in model order."""

    def _check_outputs(self, requested: Sequence[str]) -> list[str]:
        if isinstance(requested, str):
            requested = [requested]
        bad = [r for r in requested if r not in self._output_names]
        if bad:
            raise InputError(
                f"unknown output(s) {bad}; the model's outputs are {self._output_names}"
            )
        return list(requested)

    @final
    def submit(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> Future:
        """Run in the background; returns a `concurrent.futures.Future` of the outputs.

        One contract on every backend: feeds are checked before anything is queued, and a
        mistake in them (`InputError`) is set on the returned Future at once, like a runtime
        failure later; only a closed session raises here (`EngineClosed`). At most
        `max_in_flight` runs are queued or running: `submit` blocks while that many are.
        """
        self._check_open()
        try:
            feeds = self._feeds(feeds)
            names = None if outputs is None else self._check_outputs(outputs)
        except InferError as e:
            return _failed(e)
        if type(feeds) is EmptyBatch:
            done: Future = Future()
            try:
                if feeds.outputs is None:
                    done.set_result(feeds.run(lambda f: self._run(f, names)))
                else:
                    done.set_result(feeds.answer(names))
            except InferError as e:
                done.set_exception(e)
            return done
        return self._submit(feeds, names)

    def _submit(self, feeds: dict[str, Any], outputs: list[str] | None) -> Future:
        """Start a run of checked feeds. The default runs `_run` on a pool of `max_in_flight`
        threads, which suits runtimes whose sessions are shared between threads; backends
        with asynchronous queues override it. Failures go into the Future."""
        executor, slots = self._pool()
        slots.acquire()
        try:
            fut = executor.submit(self._run_mapped, feeds, outputs)
        except RuntimeError as e:  # the pool was shut down by close()
            slots.release()
            raise EngineClosed(f"{self.backend} session on {self.device} is closed") from e
        except BaseException:
            slots.release()
            raise
        fut.add_done_callback(lambda _f: slots.release())
        return fut

    def _run_mapped(self, feeds: dict[str, Any], outputs: list[str] | None) -> dict[str, Any]:
        """`_run`, a runtime's own exception turned into infer's (run and submit share it)."""
        try:
            return self._run(feeds, outputs)
        except InferError:
            raise
        except Exception as e:
            raise self.failure(e) from e

    def _pool(self) -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
        if self._executor is None:
            with self._exec_lock:
                if self._executor is None:
                    self._check_open()
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

    @final
    def bind(self, outputs: str | Mapping[str, Any] = "host") -> Binding:
        """I/O buffers allocated once and reused by every `Binding.run`.

        outputs: "host" (numpy buffers the binding owns), "device" (device arrays, on backends
        whose device is not the host; where outputs are host memory it means "host"), or
        {output name: preallocated array} to write into.
        """
        self._check_open()
        plan = parse_outputs(self, outputs, device_outputs=self._binds_device_outputs())
        try:
            return self._bind(plan)
        except BaseException:
            _close_views(plan)
            raise

    def _bind(self, plan: OutputPlan) -> Binding:
        """The binding for a checked plan. The default copies each output into its buffer;
        backends that can write into bound memory override this."""
        return HostBinding(self, plan)

    def _binds_device_outputs(self) -> bool:
        """Whether `_bind` can leave outputs in device memory (`bind(outputs="device")`)."""
        return False

    # -- lifetime -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @final
    def close(self) -> None:
        """Finish the runs already submitted, then free the runtime's resources; idempotent."""
        with self._exec_lock:
            if self._closed:
                return
            executor = self._executor
            self._closed = True  # new runs and submits are refused from here on
        if executor is not None:
            # Submitted runs still run; a close from one of the pool's own threads (a
            # done-callback dropping the last engine reference) cannot wait for itself.
            own = threading.current_thread().name.startswith(f"infer-{self.backend}")
            executor.shutdown(wait=not own)
        self._drain()
        self._close()

    def _drain(self) -> None:
        """Wait until no `run` is in progress on another thread (a run that began before the
        session was closed finishes on it; later ones are refused)."""
        delay = 1e-4
        while _value(self._finished) < _value(self._started):
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _close(self) -> None:
        """Release backend resources (called once, after submitted runs have finished)."""

    # -- decoding -----------------------------------------------------------------------------

    @final
    def kv_cache(
        self, roles: Roles, *, host: bool = False, dims: Mapping[str, int] | None = None
    ) -> KVCache:
        """Where a decoder keeps its past keys and values between steps on this session: where
        the runtime keeps them best (`_kv_cache`), or with host=True the plain host loop that
        every backend runs (each present comes back as a numpy array and goes in again).
        dims: sizes of dimensions the pasts name that the graph does not tell (a head size)."""
        self._check_open()
        cache = HostKVCache(self, roles) if host else self._kv_cache(roles)
        cache.dims = dict(dims or {})
        return cache

    def _kv_cache(self, roles: Roles) -> KVCache:
        """The cache a backend keeps best; the default is the host loop."""
        return HostKVCache(self, roles)


# -- the KV cache -----------------------------------------------------------------------------


class KVCache(abc.ABC):
    """A decoder's past keys and values between steps, kept where the runtime keeps them best.

    One per decoder, not thread-safe. `start(batch)` forgets the past and begins `batch` new
    sequences; `step(feeds)` runs the model on `feeds` (every input but the past), keeps the
    present outputs as the next step's past, and returns the logits as a host array. Runtime
    exceptions are left to the caller to map (`Session.failure`).
    """

    where = "host arrays"
    """Where the cache lives, in words (for `Decoder.cache` and the benchmarks)."""

    def __init__(self, session: Session, roles: Roles) -> None:
        self.session = session
        self.roles = roles
        self.specs = {s.name: s for s in (*session.inputs, *session.outputs)}
        self.buffers = frozenset(p.past for p in roles.kv if p.shared)
        """Pasts that share one buffer of a fixed maximum length with their present
        (GroupQueryAttention as onnxruntime-genai builds it): the model writes into it."""
        self.dims: dict[str, int] = {}  # sizes the caller gives for dims the pasts name
        self.once = frozenset(p.past for p in roles.kv if p.encoder)
        """Pasts over the encoder's sequence (cross-attention): the first step computes them,
        later steps' presents are placeholders (optimum's merged seq2seq decoders), so they
        keep the first step's value."""

    def past_shape(
        self, pair: KVPair, batch: int, sizes: Mapping[str, int] | None = None
    ) -> tuple[int, ...]:
        """The shape of `pair`'s past before the first step: `batch` rows, nothing along its
        growing axis (a shared past/present buffer: its whole declared length; a past over the
        encoder: the encoder's length as `sizes` has it, dimension name -> size, for the feed
        check; the first step computes it without reading it)."""
        spec = self.specs[pair.past]
        if spec.shape is None:
            raise ModelError(
                f"past input {pair.past!r} has no declared shape: infer cannot size it"
            )
        # unnamed dynamic dims (OpenVINO IR's "?"): the one beside the growing axis is the batch
        unnamed = [i for i, d in enumerate(spec.shape) if d is None and i != pair.axis]
        shape = []
        for i, d in enumerate(spec.shape):
            if i == pair.axis and pair.past in self.once:
                shape.append((sizes or {}).get(str(d), 0))
            elif i == pair.axis and pair.past not in self.buffers:
                shape.append(0)
            elif isinstance(d, int):
                shape.append(d)
            elif (d is not None and d == self.roles.batch) or unnamed == [i]:
                shape.append(batch)
            elif isinstance(d, str) and d in self.dims:
                shape.append(self.dims[d])
            else:
                raise ModelError(
                    f"past input {pair.past!r} is {describe(spec.shape, spec.dtype)}: infer sizes "
                    f"its batch ({self.roles.batch!r}) and past ({pair.axis}) axes, not axis {i} "
                    f"({d!r}); give its size (engine.decoder(dims={{{d!r}: ...}})) or export "
                    "the model with fixed head counts and head sizes"
                )
        return tuple(shape)

    def batch_axis(self, pair: KVPair) -> int | None:
        """The axis of `pair`'s past that holds the rows (None: none infer can tell)."""
        try:
            one, two = self.past_shape(pair, 2), self.past_shape(pair, 3)
        except ModelError:
            return None
        return next((i for i, (a, b) in enumerate(zip(one, two)) if a != b), None)

    def empty_pasts(self, batch: int, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Every past before the first step (see `past_shape`), as host arrays of zeros; the
        first step's `feeds` size the dimensions the pasts share with them."""
        sizes: dict[str, int] = {}
        for name, value in feeds.items():
            for d, n in zip(self.specs[name].shape or (), np.shape(value)):
                if isinstance(d, str):
                    sizes[d] = int(n)
        return {
            p.past: np.zeros(self.past_shape(p, batch, sizes), self.specs[p.past].dtype)
            for p in self.roles.kv
        }

    @abc.abstractmethod
    def start(self, batch: int) -> None:
        """Forget the past: the next step begins `batch` new sequences."""

    @abc.abstractmethod
    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run one step on `feeds` (every input but the past); return the logits (host)."""

    def close(self) -> None:
        """Free what the cache holds (idempotent)."""


class HostKVCache(KVCache):
    """The host loop: each step's present outputs come back as numpy arrays and go in as the
    next step's past, through `Session.run` (so every backend runs it, feeds checked)."""

    where = "host arrays"

    def __init__(self, session: Session, roles: Roles) -> None:
        super().__init__(session, roles)
        if roles.logits is None:
            raise ModelError("the decoder has no logits output (last dimension the vocabulary)")
        self._all = [roles.logits, *(p.present for p in roles.kv if p.present is not None)]
        self._later = [
            roles.logits,
            *(p.present for p in roles.kv if p.present is not None and p.past not in self.once),
        ]
        self._outputs = self._all
        self._past: dict[str, np.ndarray] = {}
        self._batch = 0

    def start(self, batch: int) -> None:
        self._batch = batch
        self._past = {}
        self._outputs = self._all

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not self._past:
            self._past = self.empty_pasts(self._batch, feeds)
        out = self.session.run({**feeds, **self._past}, self._outputs)
        for p in self.roles.kv:
            if p.present in out:
                self._past[p.past] = out[p.present]
        self._outputs = self._later
        return out[self.roles.logits]  # type: ignore[index]

    def close(self) -> None:
        self._past = {}


# -- bindings ---------------------------------------------------------------------------------


class Binding(abc.ABC):
    """Buffers bound to one session and reused across runs.

    Not thread-safe: each thread binds its own. The arrays `run` returns are the bound output
    buffers, overwritten by the next `run`, unless `copy=True`. `run` and `close` are final;
    a backend implements `_run` (and `_close`, `_copy`).
    """

    def __init__(self, session: Session, plan: OutputPlan, *, device_inputs: bool = False) -> None:
        """device_inputs: whether `_run` reads device arrays in place (else they are refused)."""
        self.session = session
        self.plan = plan
        self.owner: Any = None  # what must outlive the binding (the Engine that made it)
        self.on_close: Callable[[], None] | None = None  # told once the binding is closed
        self._closed = False
        self._check = session.feed_check(device_inputs)

    def __repr__(self) -> str:
        s = self.session
        where = "device" if self.plan.device else "host"
        given = f", into given arrays for {sorted(self.plan.given)}" if self.plan.given else ""
        state = " (closed)" if self._closed or s.closed else ""
        return f"<{type(self).__name__} {s.backend} on {s.device}: {where} outputs{given}{state}>"

    @final
    def run(self, feeds: Mapping[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """Check `feeds` as `Session.run` does, run into the bound buffers, return them.

        Feeds may also be device arrays (`__cuda_array_interface__`, DLPack) where the binding
        reads them in place; elsewhere they are refused in words.
        """
        if self._closed or self.session._closed:
            raise EngineClosed(f"binding on {self.session.backend} is closed")
        feeds = self._check(feeds)
        if type(feeds) is EmptyBatch and feeds.outputs is not None:
            return feeds.answer(None)
        try:
            out = feeds.run(self._run) if type(feeds) is EmptyBatch else self._run(feeds)
        except InferError:
            raise
        except Exception as e:
            raise self.session.failure(e) from e
        if copy:
            return {k: self._copy(v) for k, v in out.items()}
        return out

    @abc.abstractmethod
    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run checked feeds (numpy arrays, or device arrays as given) into the outputs."""

    def _copy(self, value: Any) -> Any:
        """A copy of one returned output that the next run leaves alone."""
        return value.copy() if isinstance(value, np.ndarray) else value

    @property
    def closed(self) -> bool:
        return self._closed

    @final
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()
            _close_views(self.plan)
            if self.on_close is not None:
                self.on_close()

    def _close(self) -> None:
        """Release bound buffers (called once)."""

    def __enter__(self) -> Binding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_views(plan: OutputPlan) -> None:
    for target in plan.given.values():
        if isinstance(target, DeviceView):
            target.close()


class HostBinding(Binding):
    """The default binding: runs the session as usual, then copies each output into a
    buffer allocated once per shape (or into the array the caller bound for it).

    It keeps the arrays it returns stable across runs; the backend still allocates its own
    results inside each run. Backends with a binding of their own (ONNX Runtime's IOBinding)
    write straight into the buffers instead.
    """

    def __init__(self, session: Session, plan: OutputPlan) -> None:
        super().__init__(session, plan)
        self._buffers: dict[str, np.ndarray] = dict(plan.given)

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        results = self.session._run(feeds, None)
        return {name: self._store(name, value) for name, value in results.items()}

    def _store(self, name: str, value: Any) -> Any:
        if not isinstance(value, np.ndarray):
            return value  # sequences and maps are handed through as the backend returns them
        buf = self._buffers.get(name)
        if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
            if name in self.plan.given:
                raise target_mismatch(name, buf, value.shape)
            log.debug(
                "binding on %s: output %r buffer allocated for %s (was %s)",
                self.session.backend,
                name,
                describe(value.shape, value.dtype),
                "none" if buf is None else describe(buf.shape, buf.dtype),
            )
            buf = self._buffers[name] = np.empty(value.shape, value.dtype)
        np.copyto(buf, value)
        return buf


# -- the registry -----------------------------------------------------------------------------

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
