"""Dynamic batching inside the engine (`infer.Batching`), and the merge/split helpers that the
engine's batcher and the servers' batchers (Triton, Ray Serve) share.

Under `Engine.load(..., batching=infer.Batching(max_batch=16, max_delay_ms=2.0))` every `run`,
`submit`, `map` and `arun` call becomes a request in one queue. Requests whose inputs agree past
the batch axis (same inputs, dtypes, trailing shapes and requested outputs) are merged along it
and run once; each caller gets its own rows back. As in Triton's dynamic batcher, a batch goes
as soon as it holds `max_batch` rows, and the oldest request waits at most `max_delay_ms` for a
fuller one.

Sequence encoders (token ids with an attention mask, `infer.sequence` roles) also merge requests
of different lengths: each is padded at the end to the run's longest (ids with the model's pad
id, mask and token types with 0, positions continued), and outputs along the sequence axis are
cut back to each caller's length; pooled outputs come back as they are. The padding a run may
hold is bounded (`Batching.max_padding`, and `pad_limit` per request), so requests are grouped
by length rather than all padded to the longest.
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

from . import sequence
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
    max_padding: sequence encoders (token ids and an attention mask): requests of different
        lengths share a run padded to its longest request while the padding stays within
        this fraction of the run's real tokens (0.25: at most 1 padded token per 4 real
        ones; 0: only requests of one length share a run). Whatever it is, no request is
        padded past `pad_limit` (twice its length, or 8 tokens for shorter ones), nor past
        what the model takes. Padding relies on the model honouring its mask (transformers'
        encoders do); for one that does not, set 0.
    """

    max_batch: int = 16
    max_delay_ms: float = 2.0
    max_padding: float = 0.25

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
        padding = self.max_padding
        if (
            not isinstance(padding, (int, float, np.integer, np.floating))
            or isinstance(padding, bool)
            or not math.isfinite(padding)
            or padding < 0
        ):
            raise OptionError(
                "Batching: max_padding must be a fraction of a run's tokens >= 0 (0.25: one "
                f"padded token per 4 real ones), got {padding!r}"
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
    """Runs that went because their group held max_batch rows (the others: max_delay ran out,
    or close()); a run of padded requests may hold fewer of them."""
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
    tokens: int = 0
    """Sequence encoders: the tokens those runs' requests held (rows x length)."""
    padded_tokens: int = 0
    """Sequence encoders: the padding added to merge requests of different lengths."""

    @property
    def mean_batch(self) -> float:
        """Rows per merged run."""
        return self.rows / self.batches if self.batches else 0.0

    @property
    def padding_waste(self) -> float:
        """Padded tokens per real token (0.0 where nothing was padded)."""
        return self.padded_tokens / self.tokens if self.tokens else 0.0

    def since(self, earlier: BatchingStats) -> BatchingStats:
        """What happened between `earlier` (from the same engine) and these counters."""
        new = self.delays_recorded - earlier.delays_recorded
        recent = self.recent_delays_ms[
            len(self.recent_delays_ms) - min(new, len(self.recent_delays_ms)) :
        ]
        counts = ("requests", "batches", "rows", "full", "failed", "tokens", "padded_tokens")
        return _stats(
            {k: getattr(self, k) - getattr(earlier, k) for k in counts},
            self.max_batch,
            recent,
            new,
        )

    def __str__(self) -> str:
        padding = (
            f"; padding {self.padding_waste:.1%} of {self.tokens} tokens" if self.tokens else ""
        )
        return (
            f"{self.requests} requests in {self.batches} runs (mean batch {self.mean_batch:.1f} "
            f"rows, {self.full} full, max {self.max_batch}); queued p50 {self.delay_p50_ms:.2f} "
            f"ms, p99 {self.delay_p99_ms:.2f} ms{padding}; {self.failed} failed"
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


# -- requests of different lengths (sequence encoders) ------------------------------------------

_SHORT = 8  # tokens any request may be padded to: short requests share runs with each other


def pad_limit(length: int) -> int:
    """The longest run a request of `length` tokens is padded into: twice its length, and 8
    tokens for shorter ones (so it never costs more than twice its own run, short ones aside)."""
    return max(2 * length, _SHORT)


def fit(
    lengths: Sequence[int], rows: Sequence[int], max_rows: int, max_padding: float
) -> list[int]:
    """Which queued requests (lengths and rows, oldest first) share the next run: the oldest,
    and the others that make the most rows while the run's padding stays within `max_padding`
    of its real tokens, no request is padded past `pad_limit` and the rows within `max_rows`;
    between as many rows, the least padding. Indices, in queue order."""
    first = lengths[0]
    best: tuple[int, int] | None = None
    chosen = [0]
    for longest in sorted({n for n in lengths if first <= n <= pad_limit(first)}):
        fits = [i for i in range(1, len(lengths)) if lengths[i] <= longest <= pad_limit(lengths[i])]
        fits.sort(key=lambda i: (longest - lengths[i], i))  # least padding first, then oldest
        picked, count, real, top = [0], rows[0], rows[0] * first, first
        for i in fits:
            n, r = lengths[i], rows[i]
            if count + r > max_rows:
                continue
            widest = max(top, n)
            if (count + r) * widest - (real + r * n) > max_padding * (real + r * n):
                continue
            picked.append(i)
            count, real, top = count + r, real + r * n, widest
        score = (count, real - count * top)  # more rows, then less padding
        if best is None or score > best:
            best, chosen = score, sorted(picked)
    return chosen


class Padding:
    """How requests of different lengths share a run of a sequence encoder.

    The inputs that carry the sequence axis (token ids, attention mask, token types,
    positions) are padded at the end to the run's longest request: ids with the model's pad
    id, mask and token types with 0, positions continued. Outputs along that axis (found by
    their dimension's name: the ids' sequence dimension) are cut back to each request's
    length; outputs without it (pooled) come back as they are. Built by `of`, which gives
    None unless the roles say where the padding goes and that a mask hides it, and every
    output dimension that could follow the length is that sequence axis.
    """

    def __init__(
        self,
        ids: str,
        axes: Mapping[str, int],
        fills: Mapping[str, int | None],
        bounds: Mapping[str, int],
        longest: tuple[str, int] | None,
        trims: Mapping[str, tuple[int, ...]],
    ) -> None:
        self.ids = ids
        self.axes = dict(axes)  # input -> its sequence axis
        self.fills = dict(fills)  # input -> pad value (None: positions, continued)
        self.bounds = dict(bounds)  # input -> rows of the table it indexes
        self.longest = longest  # (what limits it, rows): the most tokens one request holds
        self.trims = dict(trims)  # output -> its sequence axes (none: pooled)

    @classmethod
    def of(
        cls, roles: sequence.Roles, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
    ) -> Padding | None:
        """The padding plan for a model with these roles and specs; None where requests of
        different lengths must not share a run (no mask, a decoder, a fixed length, an
        output whose size could follow the length on another axis)."""
        length = roles.sequence
        if (
            roles.ids is None
            or roles.mask is None
            or length is None
            or roles.is_decoder
            or roles.encoder_states is not None
        ):
            return None

        def follows(d: object) -> bool:  # a dimension computed from the length
            return isinstance(d, str) and d != length and length in sequence.symbols(d)

        fills: dict[str, int | None] = {roles.ids: roles.pad_id, roles.mask: 0}
        if roles.token_types:
            fills[roles.token_types] = 0
        if roles.positions:
            fills[roles.positions] = None
        bound = roles.bounds.get(roles.ids)
        if bound is not None and not 0 <= roles.pad_id < bound:
            fills[roles.ids] = 0  # a pad id outside the table: any id does under the mask
        axes: dict[str, int] = {}
        for spec in inputs:
            if spec.shape is None or any(follows(d) for d in spec.shape):
                return None
            found = [i for i, d in enumerate(spec.shape) if d == length]
            if not found:
                continue
            if spec.name not in fills or len(found) != 1 or found[0] == 0:
                return None
            axes[spec.name] = found[0]
        if roles.ids not in axes or roles.mask not in axes:
            return None
        named = {d for s in inputs for d in s.shape or () if isinstance(d, str)}
        trims: dict[str, tuple[int, ...]] = {}
        for spec in outputs:
            if spec.shape is None:
                return None
            along = []
            for axis, d in enumerate(spec.shape[1:], 1):
                if d == length:
                    along.append(axis)
                elif not isinstance(d, int) and (d not in named or follows(d)):
                    return None  # a size nothing names: it might follow the length
            trims[spec.name] = tuple(along)
        longest: tuple[str, int] | None = None
        if roles.max_positions is not None:
            longest = ("the position table it indexes itself", roles.max_positions)
        table = roles.bounds.get(roles.positions) if roles.positions in axes else None
        if table is not None and (longest is None or table < longest[1]):
            longest = (f"the position table {roles.positions!r} indexes", table)
        return cls(
            roles.ids,
            axes,
            {k: v for k, v in fills.items() if k in axes},
            {k: v for k, v in roles.bounds.items() if k in axes},
            longest,
            trims,
        )

    def length(self, feeds: Feeds) -> int:
        """A request's length (its ids' sequence axis); InputError past what the model takes."""
        n = int(feeds[self.ids].shape[self.axes[self.ids]])
        if self.longest is not None and n > self.longest[1]:
            what, rows = self.longest
            raise InputError(
                f"input {self.ids!r} holds {n} tokens; this model takes at most {rows} "
                f"({what} has {rows} rows): shorten the request"
            )
        return n

    def signature(self, feed: Feeds) -> tuple:
        """What requests must share to be padded into one run: `signature` with the sequence
        axis left out."""
        return tuple(
            sorted(
                (
                    n,
                    a.dtype.str,
                    tuple(-1 if i == self.axes.get(n) else d for i, d in enumerate(a.shape))[1:],
                )
                for n, a in feed.items()
            )
        )

    def merge(self, feeds: Sequence[Feeds], lengths: Sequence[int]) -> dict[str, np.ndarray]:
        """One feed dict holding every request's rows, padded to the longest."""
        longest = max(lengths)
        out: dict[str, np.ndarray] = {}
        for name, first in feeds[0].items():
            axis = self.axes.get(name)
            if axis is None:
                out[name] = np.concatenate([f[name] for f in feeds])
                continue
            shape = list(first.shape)
            shape[0], shape[axis] = sum(f[name].shape[0] for f in feeds), longest
            fill = self.fills[name]
            merged = np.full(shape, 0 if fill is None else fill, dtype=first.dtype)
            row = 0
            for f, n in zip(feeds, lengths):
                value = f[name]
                where: list[slice] = [slice(None)] * value.ndim
                where[0] = slice(row, row + value.shape[0])
                where[axis] = slice(0, n)
                merged[tuple(where)] = value
                if fill is None and n < longest:
                    where[axis] = slice(n, longest)
                    merged[tuple(where)] = self._continued(name, value, axis, n, longest)
                row += value.shape[0]
            out[name] = merged
        return out

    def _continued(
        self, name: str, value: np.ndarray, axis: int, n: int, longest: int
    ) -> np.ndarray:
        """Positions for the padding: on from the request's last, within the table."""
        shape = [1] * value.ndim
        shape[axis] = longest - n
        steps = np.arange(1, longest - n + 1, dtype=value.dtype).reshape(shape)
        last = np.take(value, [n - 1], axis=axis) if n else np.full_like(steps, -1)
        positions = last + steps
        table = self.bounds.get(name)
        return np.minimum(positions, table - 1) if table else positions

    def split(
        self, out: Mapping[str, np.ndarray], feeds: Sequence[Feeds], lengths: Sequence[int]
    ) -> list[dict[str, np.ndarray]]:
        """The padded run's outputs cut back into one dict per request, each output along the
        sequence axis to its request's length."""
        longest = max(lengths)
        for name, value in out.items():
            for axis in self.trims.get(name, ()):
                if value.ndim <= axis or value.shape[axis] != longest:
                    raise RuntimeFailure(
                        f"output {name!r} has shape {list(value.shape)} for a run padded to "
                        f"{longest} tokens: its axis {axis} should follow the length, so the "
                        "padding cannot be cut off; run it with batching off"
                    )
        parts = split(out, feeds)
        for part, n in zip(parts, lengths):
            if n == longest:
                continue
            for name, value in part.items():
                along = self.trims.get(name, ())
                if along:
                    where: list[slice] = [slice(None)] * value.ndim
                    for axis in along:
                        where[axis] = slice(0, n)
                    part[name] = np.ascontiguousarray(value[tuple(where)])
        return parts


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
    __slots__ = ("alone", "feeds", "future", "length", "outputs", "queued", "rows", "started")

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
        self._counts = dict.fromkeys(
            ("requests", "batches", "rows", "full", "failed", "tokens", "padded_tokens"), 0
        )
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
        padding = self.padding
        try:
            checked = self._validate(feeds)
            names = self._check_outputs(outputs)
            length = padding.length(checked) if padding is not None else 0
            request = _Request(checked, names, self._rows(checked), length)
        except InputError as e:
            failed: Future = Future()
            failed.set_exception(e)
            return failed
        key = (names, signature(checked) if padding is None else padding.signature(checked))
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
