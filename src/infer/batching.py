"""Dynamic batching inside the engine (`infer.Batching`), and the merge/split helpers that the
engine's batcher and the servers' batchers (Triton, Ray Serve) share.

Under `Engine.load(..., batching=infer.Batching(max_batch=16, max_delay_ms=2.0))` every `run`,
`submit`, `map` and `arun` call becomes a request in one queue. Requests whose inputs agree past
the batch axis (same inputs, dtypes, trailing shapes and requested outputs) are merged along it
and run once; each caller gets its own rows back. As in Triton's dynamic batcher, a batch goes
as soon as it holds `max_batch` rows, and the oldest request waits at most `max_delay_ms` for a
fuller one.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import EngineClosed, InputError, OptionError, RuntimeFailure
from .tensors import FeedValidator, TensorSpec, describe

Feeds = Mapping[str, np.ndarray]

_DELAYS_KEPT = 10_000  # queue delays kept for the percentiles (the most recent ones)


class NoBatchAxis(OptionError):
    """batching= was given for a model whose inputs and outputs do not lead with a batch axis."""


@dataclass(frozen=True)
class Batching:
    """Dynamic batching for `Engine.load(..., batching=Batching(...))`.

    max_batch: the most rows one merged run holds; a batch goes as soon as it is full.
    max_delay_ms: the longest the oldest queued request waits for a fuller batch.
    """

    max_batch: int = 16
    max_delay_ms: float = 2.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_batch, (int, np.integer))
            or isinstance(self.max_batch, bool)
            or self.max_batch < 1
        ):
            raise OptionError(
                f"Batching: max_batch must be an integer >= 1, got {self.max_batch!r}"
            )
        delay = self.max_delay_ms
        if (
            not isinstance(delay, (int, float, np.integer, np.floating))
            or isinstance(delay, bool)
            or not math.isfinite(delay)
            or delay < 0
        ):
            raise OptionError(
                f"Batching: max_delay_ms must be a number of milliseconds >= 0, got {delay!r}"
            )


@dataclass(frozen=True)
class BatchingStats:
    """What an engine's batcher has done (`engine.batching_stats`)."""

    requests: int
    """Requests answered (with outputs or an error)."""
    batches: int
    """Merged runs."""
    rows: int
    """Rows those runs held."""
    full: int
    """Runs that went because they were full (the others: max_delay ran out, or close())."""
    failed: int
    """Requests answered with an error."""
    max_batch: int
    """The most rows one run holds: Batching.max_batch, or less where a TensorRT profile is."""
    delay_p50_ms: float
    delay_p90_ms: float
    delay_p99_ms: float
    delay_max_ms: float
    """Time requests spent queued before their run, over the last 10,000 requests."""
    delays_recorded: int = 0
    """Requests whose queue delay was recorded (all those that reached a run)."""
    recent_delays_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)
    """The last 10,000 queue delays, oldest first."""

    @property
    def mean_batch(self) -> float:
        """Rows per merged run."""
        return self.rows / self.batches if self.batches else 0.0

    def since(self, earlier: BatchingStats) -> BatchingStats:
        """What happened between `earlier` (from the same engine) and these counters."""
        new = self.delays_recorded - earlier.delays_recorded
        recent = self.recent_delays_ms[
            len(self.recent_delays_ms) - min(new, len(self.recent_delays_ms)) :
        ]
        counts = ("requests", "batches", "rows", "full", "failed")
        return _stats(
            {k: getattr(self, k) - getattr(earlier, k) for k in counts},
            self.max_batch,
            recent,
            new,
        )

    def __str__(self) -> str:
        return (
            f"{self.requests} requests in {self.batches} runs (mean batch {self.mean_batch:.1f} "
            f"rows, {self.full} full, max {self.max_batch}); queued p50 {self.delay_p50_ms:.2f} "
            f"ms, p99 {self.delay_p99_ms:.2f} ms; {self.failed} failed"
        )


# -- merging and splitting ----------------------------------------------------------------------


def has_batch_axis(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """True when every input and output leads with a dynamic dimension the inputs share.

    That first dimension is taken as the batch, as Triton's own config auto-complete does for
    ONNX models; a model whose leading dynamic dimension means something else must be run (or
    served) with batching off.
    """
    if not inputs or not outputs:
        return False
    for spec in (*inputs, *outputs):
        if not spec.shape or isinstance(spec.shape[0], int):
            return False
    named = {s.shape[0] for s in inputs if isinstance(s.shape[0], str)}  # type: ignore[index]
    return len(named) <= 1


def signature(feed: Feeds) -> tuple:
    """What requests must share to be merged: input names, dtypes and shapes past the batch axis."""
    return tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feed.items()))


def groups(feeds: Sequence[Feeds], batched: bool) -> list[list[int]]:
    """Indices of requests that can share one run: same inputs, dtypes and shapes past the
    batch axis (every request alone when the model has no batch axis). Order is kept."""
    if not batched:
        return [[i] for i in range(len(feeds))]
    found: dict[Any, list[int]] = {}
    for i, f in enumerate(feeds):
        found.setdefault(signature(f), []).append(i)
    return list(found.values())


def merge(feeds: Sequence[Feeds]) -> dict[str, np.ndarray]:
    """One feed dict holding every request's rows, in order."""
    if len(feeds) == 1:
        return dict(feeds[0])
    return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}


def rows(feed: Feeds) -> int:
    """Rows (batch size) of one request."""
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def split(out: Mapping[str, np.ndarray], feeds: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    """The merged run's outputs cut back into one dict per request."""
    if len(feeds) == 1:
        return [dict(out)]
    counts = [rows(f) for f in feeds]
    total = sum(counts)
    for name, value in out.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise RuntimeFailure(
                f"output {name!r} has shape {list(value.shape)} for a batch of {total} rows: the "
                "model does not keep the batch axis, so requests cannot share a run; run it "
                "with batching off (serve: max_batch=0; Engine.load: no batching=)"
            )
    cuts = np.cumsum(counts)[:-1]
    pieces = {name: np.split(value, cuts) for name, value in out.items()}
    return [{name: pieces[name][k] for name in out} for k in range(len(feeds))]


# -- the engine's batcher -----------------------------------------------------------------------


class Session(Protocol):
    """What the batcher uses of a backend's session (infer.backends.base.Session)."""

    backend: str
    device: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def max_in_flight(self) -> int: ...

    def submit(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> Future: ...


class _Request:
    __slots__ = ("alone", "feeds", "future", "outputs", "queued", "rows", "started")

    def __init__(self, feeds: dict[str, np.ndarray], outputs: tuple[str, ...] | None, n: int):
        self.feeds = feeds
        self.outputs = outputs
        self.rows = n
        self.future: Future = Future()
        self.queued = time.perf_counter()
        self.alone = False  # retried on its own after a merged run failed
        self.started = False


class Batcher:
    """The queue behind an engine loaded with `batching=`: one dispatcher thread forms batches
    and hands each to the session's `submit`, at most `session.max_in_flight` at a time.

    `session` fixes the specs, the limits and the run slots; `current()` gives the session
    to run on now (an engine's background race may switch it), `session` by default.
    """

    def __init__(
        self,
        session: Session,
        config: Batching,
        *,
        cast: bool = False,
        current: Callable[[], Session] | None = None,
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
        self._output_names = [o.name for o in session.outputs]
        self._delay = config.max_delay_ms / 1000.0
        self._slots = max(1, session.max_in_flight)
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
        self._counts = {"requests": 0, "batches": 0, "rows": 0, "full": 0, "failed": 0}
        self._delays: deque[float] = deque(maxlen=_DELAYS_KEPT)
        self._recorded = 0

    @property
    def window(self) -> int:
        """Requests `map` keeps ahead of the one it yields: enough to fill every run in flight."""
        return self.config.max_batch * (self._slots + 1)

    # -- requests -----------------------------------------------------------------------------

    def submit(
        self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None, *, block: bool = True
    ) -> Future:
        """Queue one request; its Future gets its own rows of the merged run's outputs.

        Feeds are checked here, so a bad one never joins a batch: its InputError is set on the
        returned Future at once (as `Session.submit` does). Only a closed engine raises.
        block: wait while the queue is full (False for asyncio callers, which bound their
        requests themselves).
        """
        if self._closing:
            raise EngineClosed(
                f"{self._session.backend} engine on {self._session.device} is closed"
            )
        try:
            checked = self._validate(feeds)
            names = self._check_outputs(outputs)
            request = _Request(checked, names, self._rows(checked))
        except InputError as e:
            failed: Future = Future()
            failed.set_exception(e)
            return failed
        key = (names, signature(checked))
        with self._lock:
            while block and self._queued >= self._limit and not self._closing:
                self._room.wait()
            if self._closing:
                raise EngineClosed(
                    f"{self._session.backend} engine on {self._session.device} is closed"
                )
            self._enqueue(key, request)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._dispatch,
                    name=f"infer-batcher-{self._session.backend}",
                    daemon=True,
                )
                self._thread.start()
        return request.future

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
        if first or rows >= self.max_rows or request.alone:
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
            full = self._group_rows[key] >= self.max_rows or group[0].alone
            if full and (best_full is None or head < self._queue[best_full][0].queued):
                best_full = key
            if best is None or head < self._queue[best][0].queued:
                best = key
        if best_full is not None:
            return best_full, True
        assert best is not None
        return best, False

    def _take(self, key: tuple) -> list[_Request]:
        """Up to max_rows rows of the group's oldest requests (lock held); cancelled ones drop."""
        group = self._queue[key]
        taken: list[_Request] = []
        total = 0
        while group and (
            not taken or (total + group[0].rows <= self.max_rows and not group[0].alone)
        ):
            request = group.popleft()
            self._queued -= 1
            self._group_rows[key] -= request.rows
            if not request.started:
                if not request.future.set_running_or_notify_cancel():
                    continue
                request.started = True
            taken.append(request)
            total += request.rows
            if request.alone:
                break
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
            feeds = merge([r.feeds for r in batch])
            outputs = list(batch[0].outputs) if batch[0].outputs is not None else None
            session = self._current()
            try:
                run = session.submit(feeds, outputs)
            except EngineClosed:
                if self._current() is session:
                    raise
                run = self._current().submit(feeds, outputs)  # switched as the batch went
        except BaseException as e:
            self._finish(batch, full, None, e)
            return
        run.add_done_callback(lambda f: self._finish(batch, full, f, None))

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
                    parts = split(run.result(), [r.feeds for r in batch])
                except CancelledError:
                    error = EngineClosed(
                        f"{self._session.backend} engine on {self._session.device} was closed"
                    )
                except BaseException as e:
                    error = e
            retry = len(batch) > 1 and isinstance(error, RuntimeFailure) and parts is None
            with self._lock:
                self._busy -= 1
                self._counts["batches"] += 1
                self._counts["rows"] += sum(r.rows for r in batch)
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
                    request.future.set_exception(error)  # type: ignore[arg-type]
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
        return _stats(counts, self.max_rows, delays, recorded)


def _stats(
    counts: Mapping[str, int], max_batch: int, delays: tuple[float, ...], recorded: int
) -> BatchingStats:
    p50, p90, p99, worst = (
        np.percentile(np.array(delays), [50, 90, 99, 100]) if delays else (0.0, 0.0, 0.0, 0.0)
    )
    return BatchingStats(
        **counts,
        max_batch=max_batch,
        delay_p50_ms=float(p50),
        delay_p90_ms=float(p90),
        delay_p99_ms=float(p99),
        delay_max_ms=float(worst),
        delays_recorded=recorded,
        recent_delays_ms=delays,
    )


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
