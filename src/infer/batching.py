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

Merging is not always faster than running requests apart, so by default (`Batching.measure`)
the batcher times both on the live traffic and passes requests straight through while that
answers more of them (`infer.batching_trial`). The queue itself is `infer.batcher.Batcher`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import sequence
from .errors import InputError, OptionError, RuntimeFailure
from .tensors import TensorSpec

Feeds = Mapping[str, np.ndarray]


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
    measure: time merged runs against requests passed straight to the session, each its own
        run, on the live traffic, and pass requests through while that answers more of them
        (`infer.batching_trial`; `batching_stats.merging` says which way is kept, and the
        rates); False: always merge.
    """

    max_batch: int = 16
    max_delay_ms: float = 2.0
    max_padding: float = 0.25
    measure: bool = True

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
        if not isinstance(self.measure, (bool, np.bool_)):
            raise OptionError(f"Batching: measure must be True or False, got {self.measure!r}")


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
    passed: int = 0
    """Requests run on their own, unmerged, while passing them through was timed or kept
    (`Batching.measure`): runs of one by the batcher, or `run()` in the caller's thread."""
    merging: bool = True
    """Whether merging is the way kept; False while passing requests through answers more."""
    merged_rate: float = 0.0
    passed_rate: float = 0.0
    """Requests answered per busy second in the latest window of each way (0.0: not timed)."""

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
        return _stats(
            {k: getattr(self, k) - getattr(earlier, k) for k in _COUNTS},
            self.max_batch,
            recent,
            new,
            (self.merging, self.merged_rate, self.passed_rate),
        )

    def __str__(self) -> str:
        padding = (
            f"; padding {self.padding_waste:.1%} of {self.tokens} tokens" if self.tokens else ""
        )
        way = ""
        if self.passed or not self.merging:
            way = (
                f"; {self.passed} passed through unmerged, "
                f"{'merging' if self.merging else 'passing through'} kept "
                f"({self.merged_rate:.0f} req/s merged, {self.passed_rate:.0f} passed through)"
            )
        return (
            f"{self.requests} requests in {self.batches} runs (mean batch {self.mean_batch:.1f} "
            f"rows, {self.full} full, max {self.max_batch}); queued p50 {self.delay_p50_ms:.2f} "
            f"ms, p99 {self.delay_p99_ms:.2f} ms{padding}{way}; {self.failed} failed"
        )


_COUNTS = ("requests", "batches", "rows", "full", "failed", "tokens", "padded_tokens", "passed")


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


def _stats(
    counts: Mapping[str, int],
    max_batch: int,
    delays: tuple[float, ...],
    recorded: int,
    way: tuple[bool, float, float],
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
        merging=way[0],
        merged_rate=way[1],
        passed_rate=way[2],
    )
