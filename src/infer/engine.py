"""Engine: the one object users hold. load -> select -> compile -> run / submit / close."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import choice, selection, sequence
from ._switch import Sessions, Watch
from .backends.base import Backend, Binding, Session
from .batcher import Batcher
from .batching import Batching, BatchingStats
from .cache import Cache
from .choice import Chosen, Pending
from .device import Device
from .errors import EngineClosed, InputError, OptionError
from .model import Model, ModelSource
from .options import Options
from .selection import Attempt, Selection
from .tensors import TensorSpec, describe_specs

if TYPE_CHECKING:
    from .decoder import Decoder
    from .transforms.int8_search import Int8Report

log = logging.getLogger(__name__)


class Engine:
    """A model compiled for one backend on one device.

    Create it with `Engine.load`. It is safe to call `run` from many threads; `close()` (or a
    `with` block) frees the runtime's resources.
    """

    def __init__(
        self,
        session: Session,
        selection: Sequence[Attempt],
        model: Model,
        options: Options,
        pending: Pending | None = None,
    ) -> None:
        self._session = session
        self._selection = Selection(selection)
        self._model = model
        self._options = options
        self._preprocess: dict[str, Any] | None = None
        self._precision_report: Int8Report | None = None  # set by load: the int8 search's outcome
        # per event loop: its runs in flight, and (batching=) its requests passed through
        self._async_slots: weakref.WeakKeyDictionary[Any, tuple[asyncio.Semaphore, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self._sessions = Sessions(session)
        self._batcher: Batcher | None = None
        if options.batching is not None:
            try:  # runs go to the session current at the time (a background race may switch)
                self._batcher = Batcher(
                    session,
                    options.batching,
                    cast=options.cast,
                    current=_current(self._sessions),
                    roles=self.roles,
                )
            except BaseException:
                self._sessions.close()
                raise
        self._watch: Watch | None = None
        if pending is not None:
            self._watch = Watch(pending, self._sessions, self._selection[-1].backend, self._chosen)
            self._sessions.watch = self._watch
        # An engine dropped without close(), or still open at interpreter exit, finishes its
        # in-flight runs and frees the runtime then: a runtime thread calling back into a
        # finalizing interpreter aborts the process (OpenVINO did, with pending submits).
        # Requests queued for batching run first.
        self._finalizer = weakref.finalize(self, _close, self._batcher, self._sessions)

    @classmethod
    def load(
        cls,
        model: ModelSource,
        device: str | Device = "auto",
        *,
        backend: str | Sequence[str] | None = None,
        precision: str = "fp32",
        calibration: Any = None,
        preprocess: Any = None,
        shapes: Mapping[str, Any] | None = None,
        cast: bool = False,
        hint: str = "latency",
        choose: str = "background",
        example: Any = None,
        threads: int | None = None,
        max_in_flight: int | None = None,
        batching: Batching | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> Engine:
        """Load `model` (path, bytes or onnx.ModelProto) on the best backend for `device`.

        device: "auto", "cpu", "cuda[:N]", "gpu[:N]", "npu" or "ane".
        backend: force one backend ("onnxruntime", "openvino", "onnxruntime[cuda]", ...) —
            its failure is then an error — or give a list to try in that order. With none
            named, the choice is measured (see `choose`); "fastest" is choose="measure".
        precision: "fp32" (default), "fp16", "bf16" or "int8" (int8 takes `calibration`).
        shapes: {input: shape or (min, opt, max)} for backends that fix shapes at build time.
        cast: widen integer arrays into float inputs as they are (refused otherwise: most
            often an image not yet normalized), and allow lossy casts within a kind (float64 ->
            float32); widening within a kind (int32 -> int64, float16 -> float32) always happens.
        hint: "latency" (default) or "throughput", for backends with performance hints.
        choose: how the default picks among the device's backends. "background" (default):
            start on the first that compiles, race the others once the engine has been busy a
            couple of seconds, and switch to the fastest whose outputs agree; "measure": race
            them now; "first": the first that compiles, nothing timed. A verdict is cached:
            later loads compile the winner alone.
        example: feeds (a dict, or a list of dicts) to race on; by default the first real
            feeds (background) or random ones at the sizes a model of this kind takes.
        threads: the threads of this engine's runtime pool (default: the process's budget, see
            infer.threads).
        batching: infer.Batching(max_batch=16, max_delay_ms=2.0) merges concurrent calls into
            one run along the batch axis; a sequence encoder's requests of different lengths
            are padded into one (max_padding; see infer.batching). Where passing requests
            straight through answers more of them, measured on the traffic, they pass
            (measure; `batching_stats.merging`).
        backend_options: {backend name: {option: value}} for settings one backend has.
        progress: progress(stage, done, total) for long steps (calibration, engine builds).
        """
        options = Options(
            precision=precision,
            calibration=calibration,
            preprocess=preprocess,
            shapes=dict(shapes or {}),
            cast=cast,
            hint=hint,
            choose=choose,
            example=example,
            threads=threads,
            max_in_flight=max_in_flight,
            batching=batching,
            cache=cache,
            cache_dir=Path(cache_dir) if cache_dir is not None else None,
            backend_options=dict(backend_options or {}),
            progress=progress,
        )
        request = Device.parse(device)
        source = Model.load(model)
        if options.preprocess is not None:
            from .transforms import preprocess as pre

            source = pre.fuse(
                source, options.preprocess, Cache(options.cache_dir) if options.cache else None
            )
        transform = _PrecisionTransform(options)
        chosen = choice.choose(source, request, options, backend, transform=transform)
        engine = cls(chosen.session, chosen.attempts, source, options, chosen.pending)
        engine._precision_report = transform.report_for(chosen.attempts)
        log.info("loaded %s on %s with %s", source, chosen.session.device, chosen.session.backend)
        return engine

    # -- what was chosen ----------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The backend that runs the model ("onnxruntime", "openvino", ...)."""
        return self._session.backend

    @property
    def device(self) -> Device:
        return self._session.device

    @property
    def selection(self) -> Selection:
        """Every candidate considered, in order, with its verdict and reason (a tuple of
        Attempt; `print(engine.selection)` gives one line each). After a background race:
        the race's verdicts, with each candidate's median and difference."""
        return self._selection

    @property
    def choosing(self) -> bool:
        """Whether a background race may still switch the backend (see `settle`)."""
        return self._watch is not None

    def settle(self, timeout: float | None = None) -> bool:
        """Run the background race now, if one is pending, and wait for it: afterwards
        `backend` and `selection` say what runs for good. Returns False if `timeout` passed
        first. For servers that warm up before taking traffic."""
        watch = self._watch
        return True if watch is None else watch.wait(timeout)

    def _chosen(self, chosen: Chosen | None) -> None:
        """The background race's verdict (None: cancelled or failed): switch to its winner.

        The order matters: the new session is made current before the watch goes, so a run
        that finds no watch finds the final session (run's plain path follows nothing), and
        the old session is retired last (its close waits for the runs still on it)."""
        if chosen is None or chosen.session is self._session:
            self._watch = self._sessions.watch = None
            if chosen is not None:
                self._selection = Selection(chosen.attempts)
            return
        old = self._session
        if not self._sessions.adopt(chosen.session):  # closed meanwhile
            chosen.session.close()
            self._watch = self._sessions.watch = None
            return
        self._session = chosen.session
        self._selection = Selection(chosen.attempts)
        self._watch = self._sessions.watch = None
        self._sessions.retire(old)
        log.info(
            "switched from %s to %s: %s",
            old.backend,
            chosen.session.backend,
            next((a.reason for a in chosen.attempts if a.verdict == "selected"), ""),
        )

    @property
    def precision(self) -> str:
        """The precision that actually runs, as the backend describes it."""
        return self._session.precision

    @property
    def precision_report(self) -> Int8Report | None:
        """For int8 with an accuracy budget: what was reached (`infer.Int8Report`: figures against
        fp32, nodes kept in float, speedup, search time); None otherwise."""
        return self._precision_report

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._session.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._session.outputs

    @property
    def details(self) -> Mapping[str, Any]:
        """Backend-specific facts about the compiled model (providers, node counts, ...)."""
        return self._session.details

    @property
    def model(self) -> Model:
        """The model the backend compiled (after any preprocessing was fused in)."""
        return self._model

    @property
    def options(self) -> Options:
        return self._options

    @property
    def roles(self) -> sequence.Roles:
        """What a sequence model's inputs and outputs are for (token ids, masks, a KV cache's
        past/present pairs: `infer.sequence`); empty roles for other models."""
        from .model import ModelFormat

        if self._model.format is ModelFormat.ONNX:
            return sequence.read(self._model)
        return sequence.from_specs(self.inputs, self.outputs)

    @property
    def preprocess(self) -> dict[str, Any]:
        """{input name: Preprocess} fused into the model, completed from it (size, dtype);
        {} without preprocessing. `engine.preprocess[name].apply(frame)` gives the tensor the
        graph computes; `.meta(frame.shape)` maps boxes back to the frame."""
        if self._preprocess is None:
            from .transforms import preprocess as pre

            self._preprocess = pre.specs_of(self._model)
        return dict(self._preprocess)

    @property
    def max_in_flight(self) -> int:
        """The most runs `submit`, `map` and `arun` keep queued or running at once."""
        return self._session.max_in_flight

    @property
    def batching_stats(self) -> BatchingStats | None:
        """What dynamic batching has done (runs, mean batch, queue delays); None without it."""
        return self._batcher.stats() if self._batcher is not None else None

    # -- running ------------------------------------------------------------------------------

    def run(
        self,
        feeds: Mapping[str, Any],
        outputs: Sequence[str] | None = None,
        *,
        return_meta: bool = False,
    ) -> Any:
        """Run once: {input name: array} -> {output name: array} (all outputs, or `outputs`).

        Safe to call from any number of threads. return_meta: also return, for each input with
        image preprocessing, where its frames landed in the model's input
        (`infer.transforms.preprocess.ResizeMeta`: `.to_frame(boxes)` maps boxes back):
        `outputs, meta = engine.run(feeds, return_meta=True)`.
        """
        watch = self._watch
        if watch is None and self._batcher is None:
            # No race pending: the session is final (see _chosen), nothing to follow.
            out = self._session.run(feeds, outputs)
        elif watch is None:
            out = self._run(feeds, outputs)
        else:
            out = watch.run(lambda: self._run(feeds, outputs), feeds)
        if not return_meta:
            return out
        return out, self._meta(feeds)

    def _run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None) -> dict[str, Any]:
        if self._batcher is not None:
            return self._batcher.run(feeds, outputs, self._run_alone)
        return self._run_alone(feeds, outputs)

    def _run_alone(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None) -> dict[str, Any]:
        """One request, its own run, in this thread."""
        session = self._session
        try:
            return session.run(feeds, outputs)
        except EngineClosed:
            if session is self._session:
                raise
            return self._session.run(feeds, outputs)  # switched as the call began

    def _meta(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        from .transforms.preprocess import ImagePreprocess

        meta = {}
        for name, spec in self.preprocess.items():
            if isinstance(spec, ImagePreprocess) and name in feeds:
                meta[name] = spec.meta(np.shape(feeds[name]))
        return meta

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Shorthand: `engine(x)` or `engine(x=..., y=...)`. One output comes back bare,
        several as a tuple in the model's output order (`boxes, scores = engine(x)`);
        `run` gives them by name."""
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            feeds = dict(args[0])
        else:
            names = [s.name for s in self.inputs]
            if len(args) > len(names):
                raise InputError(
                    f"{len(args)} positional inputs given, the model takes {len(names)}: "
                    + describe_specs(self.inputs)
                )
            feeds = dict(zip(names, args))
            clash = sorted(set(feeds) & set(kwargs))
            if clash:
                raise InputError(f"input(s) {clash} given both by position and by name")
            feeds.update(kwargs)
        out = self.run(feeds)
        return next(iter(out.values())) if len(out) == 1 else tuple(out.values())

    def submit(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> Future:
        """Run in the background and return a `concurrent.futures.Future` of the outputs.

        The same on every backend: feeds are checked before anything is queued, and a mistake
        in them (`InputError`) comes back in the Future at once, as a runtime failure does
        later; only a closed engine raises here. At most `max_in_flight` runs are queued or
        running; past that, `submit` blocks until one finishes, so a fast producer cannot
        queue unbounded work. Under batching= the request joins the batcher's queue (which
        blocks while it is full) instead.
        """
        return self._submit(feeds, outputs, block=True)

    def _submit(
        self, feeds: Mapping[str, Any], outputs: Sequence[str] | None, block: bool
    ) -> Future:
        if self._batcher is not None:
            future = self._batcher.submit(feeds, outputs, block=block)
        else:
            session = self._session
            try:
                future = session.submit(feeds, outputs)
            except EngineClosed:
                if session is self._session:
                    raise
                future = self._session.submit(feeds, outputs)  # switched as the call began
        watch = self._watch
        if watch is not None:
            watch.submitted(future, feeds)
        return future

    def map(
        self,
        feeds: Iterable[Mapping[str, Any] | Any],
        outputs: Sequence[str] | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run every item of `feeds` concurrently; yield the outputs in the input order.

        Items are feed dicts, or bare arrays for a one-input model. At most `max_in_flight`
        (default: the engine's) are submitted ahead of the one being yielded, so a long or
        endless iterable is consumed lazily. An error is raised at its item's position, and
        the runs still pending are cancelled when the caller stops iterating.
        """
        window = max_in_flight
        if window is None:
            window = self._batcher.window if self._batcher else self.max_in_flight
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise OptionError(f"max_in_flight must be a positive integer, got {window!r}")
        return self._map(iter(feeds), outputs, window)

    def _map(
        self, items: Iterator[Any], outputs: Sequence[str] | None, window: int
    ) -> Iterator[dict[str, np.ndarray]]:
        pending: deque[Future] = deque()
        try:
            for item in items:
                try:
                    fut = self.submit(self._as_feeds(item), outputs)
                except InputError as e:  # an item that is no feed dict: raised at its place
                    fut = Future()
                    fut.set_exception(e)
                pending.append(fut)
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()

    def _as_feeds(self, item: Any) -> Mapping[str, Any]:
        if isinstance(item, Mapping):
            return item
        if len(self.inputs) != 1:
            names = ", ".join(s.name for s in self.inputs)
            raise InputError(
                f"map() got a {type(item).__name__}; this model takes {len(self.inputs)} inputs "
                f"({names}): give each item as a dict of input name -> array"
            )
        return {self.inputs[0].name: item}

    async def arun(
        self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """`run` for asyncio: awaits the result without blocking the event loop.

        Calls wait (asynchronously) while `max_in_flight` of this loop's runs are in flight,
        so `submit` does not block the loop.
        """
        loop = asyncio.get_running_loop()
        held = self._async_slots.get(loop)
        if held is None:
            size = self._batcher.window if self._batcher else self.max_in_flight
            held = (asyncio.Semaphore(size), asyncio.Semaphore(self.max_in_flight))
            self._async_slots[loop] = held
        slots, passing = held
        # requests the batcher passes through go to the session as with no batching=: at most
        # max_in_flight, so that the session's submit does not block the loop
        passes = self._batcher is not None and self._batcher.passing
        async with slots, passing if passes else contextlib.nullcontext():
            # block=False: the batcher's queue bound must not hold the loop (slots bound it)
            future = self._submit(feeds, outputs, block=False)
            return await asyncio.wrap_future(future, loop=loop)

    def bind(self, outputs: str | Mapping[str, Any] = "host") -> Binding:
        """I/O binding: buffers allocated once (per shape) and reused by every `run`.

        outputs: "host" (numpy buffers the binding owns), "device" (device arrays on a GPU;
        the same as "host" on the CPU), or {output name: preallocated array} to write into.
        The arrays `run` returns are the bound buffers, valid until the next `run`
        (`run(feeds, copy=True)` returns copies). One binding per thread::

            with engine.bind() as b:
                for frame in frames:
                    y = b.run({"images": frame})
        """
        binding = self._session.bind(outputs)
        binding.owner = self  # the engine, and so its session, lives while the binding does
        self._sessions.bound(binding)  # a session a switch retires stays open while it is used
        return binding

    def decoder(
        self,
        *,
        cache: str = "auto",
        max_length: int | None = None,
        dims: Mapping[str, int] | None = None,
    ) -> Decoder:
        """A generate loop over this engine, for a decoder model (past/present pairs):
        `prefill`, `step`, `generate`, `stream`, `reset` (see infer.decoder.Decoder).

        cache: "auto" keeps the past where this backend keeps it best (ONNX Runtime: bound
        OrtValues on the model's device; OpenVINO: a stateful compile of the model); "host"
        feeds each step's present back as numpy arrays, on any backend. A pending background
        race is settled first, so the decoder runs on the backend chosen for good. dims: sizes
        of dimensions the pasts name and the graph leaves open (onnxruntime-genai's
        "kv_cache_dim": the head size).
        """
        from .decoder import Decoder

        self.settle()  # a pending background race decides first: the session is final now
        return Decoder(
            self._session,
            self.roles,
            self._model,
            cache=cache,
            max_length=max_length,
            dims=dims,
            owner=self,
        )

    # -- lifetime -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._session.closed

    def close(self) -> None:
        """Finish the runs in flight (and run the requests queued for batching), then free the
        compiled model; later calls to run raise EngineClosed."""
        self._finalizer()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " (closed)" if self.closed else ""
        name = f" ({self.device.name})" if self.device.name else ""
        ins = describe_specs(self.inputs)
        outs = describe_specs(self.outputs)
        return f"<Engine {self.backend} on {self.device}{name}{state}: ({ins}) -> ({outs})>"


def _current(sessions: Sessions) -> Callable[[], Session]:
    """The session an engine runs on now (held without the engine: its finalizer needs it)."""
    return lambda: sessions.current


def _close(batcher: Batcher | None, sessions: Sessions) -> None:
    if batcher is not None:
        batcher.close()
    sessions.close()


class _PrecisionTransform:
    """Gives each backend the model to compile for the requested precision.

    Backends that take precision from the graph get the shared ONNX transform, built once per
    load (and cached on disk) however many candidates ask for it.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self._converted: dict[str | None, Model] = {}
        self._searched: dict[str, tuple[Model, Int8Report | None]] = {}  # label -> (model, report)

    def __call__(
        self, model: Model, backend: Backend, device: Device, variant: str | None
    ) -> Model:
        if not selection.needs_graph_precision(backend, device, self.options, variant):
            return model
        from .transforms import precision

        # int8 graphs differ by quantizer (Q/DQ placement); a backend may prefer its own.
        quantizer = precision.quantizer_for(self.options, backend.int8_quantizer(device, variant))
        # -- int8 with an accuracy budget: searched and measured on this backend
        from .transforms import int8_search

        how = backend.runtime_int8(model, device, self.options, variant)
        if how is not None or int8_search.guarded(self.options):
            label = selection.row_label(backend.name, variant)
            if label not in self._searched:
                run = (  # int8 weights already: the runtime quantizes the activations
                    functools.partial(int8_search.runtime, how=how)
                    if how is not None
                    else functools.partial(int8_search.search, quantizer=quantizer)
                )
                self._searched[label] = run(
                    model,
                    self.options,
                    backend=backend,
                    device=device,
                    variant=variant,
                    label=label,
                )
            return self._searched[label][0]
        # --
        if quantizer not in self._converted:
            self._converted[quantizer] = precision.convert(model, self.options, quantizer=quantizer)
        return self._converted[quantizer]

    def report_for(self, attempts: Sequence[Attempt]) -> Int8Report | None:
        """The int8 search report of the selected attempt's backend (None without a search)."""
        chosen = next((a for a in attempts if a.verdict == "selected"), None)
        found = self._searched.get(chosen.backend) if chosen is not None else None
        return found[1] if found is not None else None
