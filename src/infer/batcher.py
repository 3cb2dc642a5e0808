"""The engine's batcher: the queue behind `Engine.load(..., batching=infer.Batching(...))`.

One dispatcher thread forms runs from the queued requests with `infer.batching`'s merge, split
and padding helpers, hands each to the session's `submit`, and answers every request with its
own rows. With `Batching.measure`, an `infer.batching_trial.Trial` decides, on the live
traffic, whether requests are merged or passed straight through.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any, Protocol

import numpy as np

from . import sequence
from .batching import (
    _COUNTS,
    Batching,
    BatchingStats,
    NoBatchAxis,
    Padding,
    _stats,
    fit,
    has_batch_axis,
    merge,
    signature,
    split,
)
from .batching_trial import MERGE, PASS, Ticket, Trial
from .errors import EngineClosed, InputError, RuntimeFailure
from .tensors import FeedValidator, TensorSpec, describe

_DELAYS_KEPT = 10_000  # queue delays kept for the percentiles (the most recent ones)


class Session(Protocol):
    """What the batcher uses of a backend's session (infer.backends.base.Session)."""

    backend: str
    device: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def max_in_flight(self) -> int: ...

    def submit(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> Future: ...

    def check_values(self, feeds: Mapping[str, Any]) -> None: ...


class _Request:
    __slots__ = (
        "alone",
        "direct",
        "feeds",
        "future",
        "length",
        "outputs",
        "queued",
        "rows",
        "started",
    )

    def __init__(
        self,
        feeds: dict[str, np.ndarray],
        outputs: tuple[str, ...] | None,
        n: int,
        length: int = 0,
    ):
        self.feeds = feeds
        self.outputs = outputs
        self.rows = n
        self.length = length  # tokens, for a sequence encoder's padding (else 0)
        self.future: Future = Future()
        self.queued = time.perf_counter()
        self.alone = False  # retried on its own after a merged run failed
        self.direct = False  # passed through: its own run, at once (Batching.measure)
        self.started = False


class Batcher:
    """The queue behind an engine loaded with `batching=`: one dispatcher thread forms batches
    and hands each to the session's `submit`, at most `session.max_in_flight` at a time.

    `session` fixes the specs, the limits and the run slots; `current()` gives the session
    to run on now (an engine's background race may switch it), `session` by default.
    `roles`: the model's sequence roles; a masked encoder's requests of different lengths are
    padded into one run (`Padding`).
    """

    def __init__(
        self,
        session: Session,
        config: Batching,
        *,
        cast: bool = False,
        current: Callable[[], Session] | None = None,
        roles: sequence.Roles | None = None,
    ) -> None:
        if not has_batch_axis(session.inputs, session.outputs):
            listing = ", ".join(
                f"{s.name}: {describe(s.shape, s.dtype)}"
                for s in (*session.inputs, *session.outputs)
            )
            raise NoBatchAxis(
                f"batching= needs a model whose inputs and outputs all lead with one dynamic "
                f"(batch) dimension; this one has {listing}. Load it without batching="
            )
        self.config = config
        self.max_rows = _profile_limit(session, config.max_batch)
        self._session = session
        self._current = current or (lambda: session)
        self._validate = FeedValidator(session.inputs, cast=cast)
        self.padding = (
            Padding.of(roles, session.inputs, session.outputs) if roles is not None else None
        )
        self._output_names = [o.name for o in session.outputs]
        self._delay = config.max_delay_ms / 1000.0
        self._slots = max(1, session.max_in_flight)
        self._pass_slots = threading.BoundedSemaphore(self._slots)  # asyncio's passed requests
        self._limit = 2 * config.max_batch  # queued requests before a blocking submit waits
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # the dispatcher waits on it
        self._room = threading.Condition(self._lock)  # blocking submits wait on it
        self._queue: dict[tuple, deque[_Request]] = {}
        self._group_rows: dict[tuple, int] = {}
        self._queued = 0
        self._busy = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._counts = dict.fromkeys(_COUNTS, 0)
        self._trial = Trial(window_requests=max(64, 4 * self.max_rows)) if config.measure else None
        self._delays: deque[float] = deque(maxlen=_DELAYS_KEPT)
        self._recorded = 0

    @property
    def window(self) -> int:
        """Requests `map` keeps ahead of the one it yields: enough to fill every run in flight."""
        return self.config.max_batch * (self._slots + 1)

    # -- requests -----------------------------------------------------------------------------

    @property
    def passing(self) -> bool:
        """Whether requests are passed straight to the session now (`Batching.measure`)."""
        trial = self._trial
        return trial is not None and trial.mode == PASS

    def run(
        self,
        feeds: Mapping[str, Any],
        outputs: Sequence[str] | None,
        alone: Callable[[Mapping[str, Any], Sequence[str] | None], dict[str, Any]],
    ) -> dict[str, Any]:
        """`engine.run` under batching: the request's own rows of a merged run, or, while
        passing requests through is timed or kept, `alone(feeds, outputs)` in this thread."""
        trial = self._trial
        if trial is None or trial.mode != PASS:
            return self.submit(feeds, outputs).result()
        if self._closing:
            raise self._closed()
        ticket = trial.begin()
        if ticket.mode != PASS:  # the trial turned as this call came in
            return self._submit(feeds, outputs, True, ticket).result()
        failed = True
        try:
            out = alone(feeds, outputs)
            failed = False
            return out
        finally:
            trial.end(ticket, failed)

    def submit(
        self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None, *, block: bool = True
    ) -> Future:
        """Queue one request; its Future gets its own rows of the merged run's outputs.

        Feeds are checked here, so a bad one never joins a batch: its InputError is set on the
        returned Future at once (as `Session.submit` does). Only a closed engine raises.
        block: wait while the queue is full (False for asyncio callers, which bound their
        requests themselves).
        """
        return self._submit(feeds, outputs, block, None)

    def _submit(
        self,
        feeds: Mapping[str, Any],
        outputs: Sequence[str] | None,
        block: bool,
        ticket: Ticket | None,
    ) -> Future:
        if self._closing:
            raise self._closed()
        trial = self._trial
        if trial is not None:
            if ticket is None:
                ticket = trial.begin()
            if ticket.mode == PASS:
                passed = self._pass(feeds, outputs, block, trial, ticket)
                if passed is not None:
                    return passed
        padding = self.padding
        try:
            checked = self._validate(feeds)
            self._current().check_values(checked)  # a bad id would fail its whole merged run
            names = self._check_outputs(outputs)
            length = padding.length(checked) if padding is not None else 0
            request = _Request(checked, names, self._rows(checked), length)
        except BaseException as e:
            if trial is not None and ticket is not None:
                trial.end(ticket)  # a request left outstanding would stall the trial
            if not isinstance(e, InputError):
                raise
            failed: Future = Future()
            failed.set_exception(e)
            return failed
        if trial is not None and ticket is not None:
            request.direct = ticket.mode == PASS
            request.future.add_done_callback(functools.partial(_answered, trial, ticket))
        if request.direct:
            key: tuple = (id(request),)
        else:
            key = (names, signature(checked) if padding is None else padding.signature(checked))
        with self._lock:
            while block and self._queued >= self._limit and not self._closing:
                self._room.wait()
            if self._closing:
                request.future.cancel()  # answers its ticket
                raise self._closed()
            self._enqueue(key, request)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._dispatch,
                    name=f"infer-batcher-{self._session.backend}",
                    daemon=True,
                )
                self._thread.start()
        return request.future

    def _closed(self) -> EngineClosed:
        return EngineClosed(f"{self._session.backend} engine on {self._session.device} is closed")

    def _pass(
        self,
        feeds: Mapping[str, Any],
        outputs: Sequence[str] | None,
        block: bool,
        trial: Trial,
        ticket: Ticket,
    ) -> Future | None:
        """Hand a request straight to the session (which checks it), as with no batching=.
        None where that would block a caller that must not wait (asyncio): the dispatcher
        then passes it on as a run of its own."""
        held = False
        if not block:
            held = self._pass_slots.acquire(blocking=False)
            if not held:
                return None
        try:
            future = self._on_current(feeds, outputs)
        except BaseException:
            if held:
                self._pass_slots.release()
            trial.end(ticket)
            raise
        future.add_done_callback(functools.partial(self._passed, trial, ticket, held))
        return future

    def _passed(self, trial: Trial, ticket: Ticket, held: bool, future: Future) -> None:
        if held:
            self._pass_slots.release()
        trial.end(ticket, future.cancelled() or future.exception() is not None)

    def _check_outputs(self, outputs: Sequence[str] | None) -> tuple[str, ...] | None:
        if outputs is None:
            return None
        wanted = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        bad = [o for o in wanted if o not in self._output_names]
        if bad:
            raise InputError(
                f"unknown output(s) {bad}; the model's outputs are {self._output_names}"
            )
        return wanted

    def _rows(self, feeds: dict[str, np.ndarray]) -> int:
        counts = {name: int(a.shape[0]) for name, a in feeds.items()}
        if len(set(counts.values())) > 1:
            raise InputError(
                f"batching merges requests along the first axis, so every input must have the "
                f"same number of rows; got {counts}"
            )
        return next(iter(counts.values()), 0)

    def _enqueue(self, key: tuple, request: _Request) -> None:
        """Add to the queue (lock held); wake the dispatcher only when that changes what it
        waits for: a first request (its max_delay starts) or a group that is now full. A later
        request never moves the oldest one's deadline."""
        first = not self._queued
        self._queue.setdefault(key, deque()).append(request)
        rows = self._group_rows[key] = self._group_rows.get(key, 0) + request.rows
        self._queued += 1
        if first or rows >= self.max_rows or request.alone or request.direct:
            self._arrived.notify()

    # -- the dispatcher -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                picked = self._next()
                if picked is None:
                    return
                batch, full = picked
                if not batch:
                    continue
                self._busy += 1
            self._launch(batch, full)

    def _next(self) -> tuple[list[_Request], bool] | None:
        """Wait (lock held) for a batch to go: a full one at once, else the oldest request's
        group once max_delay has passed. None: closed and nothing left."""
        while True:
            if not self._queued:
                if self._closing and not self._busy:
                    return None
                self._arrived.wait()
                continue
            if self._busy >= self._slots:
                self._arrived.wait()
                continue
            key, full = self._pick()
            if full or self._closing:
                return self._take(key), full
            wait = self._queue[key][0].queued + self._delay - time.perf_counter()
            if wait <= 0:
                return self._take(key), False
            self._arrived.wait(wait)

    def _pick(self) -> tuple[tuple, bool]:
        """The group to run next: the full one waiting longest, else the oldest request's."""
        best_full = best = None
        for key, group in self._queue.items():
            head = group[0].queued
            full = self._group_rows[key] >= self.max_rows or group[0].alone or group[0].direct
            if full and (best_full is None or head < self._queue[best_full][0].queued):
                best_full = key
            if best is None or head < self._queue[best][0].queued:
                best = key
        if best_full is not None:
            return best_full, True
        assert best is not None
        return best, False

    def _take(self, key: tuple) -> list[_Request]:
        """Up to max_rows rows of the group's oldest requests (lock held); cancelled ones drop.
        Requests of different lengths: the oldest and those `fit` pads into its run."""
        group = self._queue[key]
        picked: list[_Request] = []
        if self.padding is not None and len(group) > 1 and not group[0].alone:
            lengths = [r.length for r in group]
            if min(lengths) != max(lengths):
                chosen = fit(
                    lengths, [r.rows for r in group], self.max_rows, self.config.max_padding
                )
                picked = [group[i] for i in chosen]
                keep = set(chosen)
                self._queue[key] = group = deque(r for i, r in enumerate(group) if i not in keep)
        if not picked:
            total = 0
            while group and (
                not picked or (total + group[0].rows <= self.max_rows and not group[0].alone)
            ):
                picked.append(group.popleft())
                total += picked[-1].rows
                if picked[-1].alone:
                    break
        taken: list[_Request] = []
        for request in picked:
            self._queued -= 1
            self._group_rows[key] -= request.rows
            if not request.started:
                if not request.future.set_running_or_notify_cancel():
                    continue
                request.started = True
            taken.append(request)
        if not group:
            del self._queue[key]
            del self._group_rows[key]
        self._room.notify_all()
        return taken

    def _launch(self, batch: list[_Request], full: bool) -> None:
        now = time.perf_counter()
        fresh = [now - r.queued for r in batch if not r.alone]
        with self._lock:
            self._delays.extend(fresh)
            self._recorded += len(fresh)
        try:
            feeds = self._merge(batch)
            outputs = list(batch[0].outputs) if batch[0].outputs is not None else None
            run = self._on_current(feeds, outputs)
        except BaseException as e:
            self._finish(batch, full, None, e)
            return
        run.add_done_callback(lambda f: self._finish(batch, full, f, None))

    def _on_current(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None) -> Future:
        """`submit` on the session current now; once more on the next one where a background
        switch closed it as the call began."""
        session = self._current()
        try:
            return session.submit(feeds, outputs)
        except EngineClosed:
            if self._current() is session:
                raise
            return self._current().submit(feeds, outputs)

    def _padded(self, batch: list[_Request]) -> bool:
        return self.padding is not None and len({r.length for r in batch}) > 1

    def _merge(self, batch: list[_Request]) -> dict[str, np.ndarray]:
        feeds = [r.feeds for r in batch]
        if self._padded(batch):
            assert self.padding is not None
            return self.padding.merge(feeds, [r.length for r in batch])
        return merge(feeds)

    def _split(self, out: Mapping[str, np.ndarray], batch: list[_Request]) -> list[Any]:
        feeds = [r.feeds for r in batch]
        if self._padded(batch):
            assert self.padding is not None
            return self.padding.split(out, feeds, [r.length for r in batch])
        return split(out, feeds)

    def _finish(
        self, batch: list[_Request], full: bool, run: Future | None, error: BaseException | None
    ) -> None:
        """Hand each request its rows, or the error; a merged run that failed is retried one
        request at a time, so only the requests that fail alone get an error."""
        self._local.finishing = True
        try:
            parts: list[Any] | None = None
            if run is not None:
                try:
                    parts = self._split(run.result(), batch)
                except CancelledError:
                    error = EngineClosed(
                        f"{self._session.backend} engine on {self._session.device} was closed"
                    )
                except BaseException as e:
                    error = e
            # A merged run's failure (the runtime's, or the session's own feed check: ids past
            # the vocabulary, say) is retried request by request: only the culprit fails.
            retry = (
                len(batch) > 1 and isinstance(error, (RuntimeFailure, InputError)) and parts is None
            )
            with self._lock:
                self._busy -= 1
                self._counts["batches"] += 1
                self._counts["rows"] += sum(r.rows for r in batch)
                if self.padding is not None:
                    longest = max(r.length for r in batch)
                    self._counts["tokens"] += sum(r.rows * r.length for r in batch)
                    self._counts["padded_tokens"] += sum(
                        r.rows * (longest - r.length) for r in batch
                    )
                self._counts["full"] += full
                if retry:
                    for request in batch:
                        request.alone = True
                        self._enqueue((id(request),), request)
                else:
                    self._counts["requests"] += len(batch)
                    self._counts["failed"] += len(batch) if parts is None else 0
                self._arrived.notify()
            if retry:
                return
            for i, request in enumerate(batch):
                if parts is not None:
                    request.future.set_result(parts[i])
                else:
                    request.future.set_exception(error)
        finally:
            self._local.finishing = False

    # -- lifetime and counters ----------------------------------------------------------------

    def close(self) -> None:
        """Refuse new requests, run every queued one, and wait for the runs in flight."""
        with self._lock:
            self._closing = True
            self._arrived.notify_all()
            self._room.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        if getattr(self._local, "finishing", False):
            return  # called from a request's callback: the dispatcher drains on its own
        thread.join()

    def stats(self) -> BatchingStats:
        with self._lock:
            counts = dict(self._counts)
            delays = tuple(d * 1e3 for d in self._delays)
            recorded = self._recorded
        trial = self._trial
        way = (True, 0.0, 0.0)
        if trial is not None:
            counts["passed"] = trial.passed
            counts["requests"] += trial.answered
            counts["failed"] += trial.failed
            way = (trial.merging, trial.rates.get(MERGE, 0.0), trial.rates.get(PASS, 0.0))
        return _stats(counts, self.max_rows, delays, recorded, way)


def _answered(trial: Trial, ticket: Ticket, _future: Future) -> None:
    trial.end(ticket)


def _profile_limit(session: Session, max_batch: int) -> int:
    """max_batch, or the largest batch a TensorRT profile takes where that is smaller.

    A session with optimization profiles (`profiles`: one {input: Range} per profile) runs a
    batch only within some profile's range; merged runs stay within the widest one.
    """
    profiles = getattr(session, "profiles", None)
    if not profiles:
        return max_batch
    widest = 0
    for profile in profiles:
        if not profile:
            continue
        widest = max(widest, min(int(r.max[0]) for r in profile.values()))
    return min(max_batch, widest) if widest else max_batch
