"""The measured choice of backend: time the candidates that compile the model, keep the
fastest whose outputs agree with the reference candidate's (the table's first, the most
conformant), and remember the verdict so that later loads compile the winner alone.

Timing is one candidate at a time in blocks, round-robin over a few rounds with a short pause
between blocks: ONNX Runtime's worker threads spin after a run, so timing engines call by call
would measure one runtime's spinning in the other's time. Agreement is judged per output with
`_diff.diff` against a tolerance scaled to that output (its largest magnitude): a backend that
answers differently is passed over however fast it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._diff import diff
from .backends.base import Session
from .cache import Cache, Key
from .errors import CacheError, InferError

log = logging.getLogger("infer.selection")

KIND = "backend-choice"
"""The cache kind of verdicts (`infer cache list backend-choice`)."""

TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 3e-2, "int8": 5e-2}
"""How far a candidate's output may be from the reference's, relative to that output's largest
magnitude: float rounding across runtimes stays far below; a different answer does not."""


ROUNDS = 3
"""Timed blocks per candidate, taken round-robin."""
BLOCK_S = 0.15
"""Seconds a block lasts (it holds at least one run)."""
PAUSE_S = 0.02
"""Pause between blocks, for the previous runtime's threads to stop spinning."""
WARMUP_RUNS = 2


@dataclass(frozen=True)
class Workload:
    """Feeds a race times: a model's one representative run, or one phase of a sequence
    model's life (a decoder's decode step, its prefill), named for the selection."""

    name: str
    feeds: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Entry:
    """One candidate's result in a race."""

    label: str
    device: str
    median_ms: float | None = None  # median per-run time on the deciding workload; None: not timed
    runs: int = 0
    difference: float | None = None  # worst output's max |got - want| / max |want|
    agrees: bool = False
    note: str = ""  # why it did not run, or where it disagrees
    others_ms: Mapping[str, float] = field(default_factory=dict)
    """Median per-run time on each workload after the deciding one, by workload name."""

    def describe(self) -> str:
        """'openvino 0.426 ms median, difference 2.9e-07' (the difference from the reference,
        relative to the output's largest magnitude); a sequence model's other phases after."""
        if self.median_ms is None:
            return f"{self.label}: {self.note or 'not timed'}"
        diff_text = "" if self.difference is None else f", difference {self.difference:.2g}"
        others = "".join(
            f", {ms:.3g} ms {name.split(':')[0]}" for name, ms in self.others_ms.items()
        )
        return f"{self.label} {self.median_ms:.3g} ms median{others}{diff_text}"


@dataclass(frozen=True)
class Verdict:
    """What a race found: the winner, every candidate's numbers, and what was raced."""

    winner: str
    reference: str
    entries: tuple[Entry, ...]
    shapes: Mapping[str, tuple[int, ...]]
    seconds: float
    versions: Mapping[str, str] = field(default_factory=dict)
    workloads: tuple[tuple[str, Mapping[str, tuple[int, ...]]], ...] = ()
    """(name, input shapes) of each named workload timed, the deciding one first; () when
    the race timed one unnamed run (`shapes`)."""

    def entry(self, label: str) -> Entry | None:
        return next((e for e in self.entries if e.label == label), None)

    def shapes_text(self) -> str:
        if not self.workloads:
            return _shapes_text(self.shapes)
        deciding, *rest = self.workloads
        text = f"{deciding[0]}, deciding ({_shapes_text(deciding[1])})"
        return "; ".join([text, *(f"{n} ({_shapes_text(s)})" for n, s in rest)])

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["shapes"] = {n: list(s) for n, s in self.shapes.items()}
        data["workloads"] = [
            [name, {n: list(s) for n, s in shapes.items()}] for name, shapes in self.workloads
        ]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        def shapes(value: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
            return {n: tuple(int(d) for d in s) for n, s in value.items()}

        return cls(
            winner=str(data["winner"]),
            reference=str(data["reference"]),
            entries=tuple(Entry(**e) for e in data["entries"]),
            shapes=shapes(data["shapes"]),
            seconds=float(data["seconds"]),
            versions=dict(data.get("versions", {})),
            workloads=tuple((str(n), shapes(s)) for n, s in data.get("workloads", ())),
        )


def _shapes_text(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items())


@dataclass
class Candidate:
    """A compiled row taking part in a race."""

    label: str
    device: str
    session: Session


def run(
    candidates: Sequence[Candidate],
    feeds: Mapping[str, np.ndarray] | Sequence[Workload],
    precision: str,
    *,
    cancel: threading.Event | None = None,
    versions: Mapping[str, str] | None = None,
) -> Verdict:
    """Race compiled candidates on `feeds` (or on each of several workloads, the first
    deciding: a decoder's decode step, then its prefill); the first candidate is the
    reference for agreement, on every workload.

    A candidate that cannot run a workload is out (its entry says why); a candidate that
    disagrees with the reference is timed but cannot win. `cancel` stops between blocks.
    """
    start = time.perf_counter()
    workloads = [Workload("", feeds)] if isinstance(feeds, Mapping) else list(feeds)
    tolerance = TOLERANCE.get(precision, TOLERANCE["fp32"])
    reference = candidates[0]
    outputs: dict[str, list[dict[str, Any]]] = {}
    notes: dict[str, str] = {}
    for c in candidates:
        try:
            got = []
            for w in workloads:
                for _ in range(WARMUP_RUNS):
                    out = c.session.run(w.feeds)
                got.append(out)
            outputs[c.label] = got
        except InferError as e:
            where = f" ({w.name})" if w.name else ""
            notes[c.label] = f"could not run the race's feeds{where}: {_first_line(e)}"
    if reference.label not in outputs:
        raise RaceError(f"the reference {reference.label} {notes[reference.label]}")
    timed = [c for c in candidates if c.label in outputs]
    samples: dict[tuple[str, int], list[float]] = {}
    runs: dict[str, int] = dict.fromkeys(outputs, 0)
    for _ in range(ROUNDS):
        for c in timed:
            for i, w in enumerate(workloads):
                if cancel is not None and cancel.is_set():
                    raise RaceCancelled
                per_run, count = block(c.session, w.feeds)
                samples.setdefault((c.label, i), []).append(per_run)
                runs[c.label] += count
                time.sleep(PAUSE_S)
    entries = []
    want = outputs[reference.label]
    for c in candidates:
        if c.label not in outputs:
            entries.append(Entry(c.label, c.device, note=notes[c.label]))
            continue
        found = [agreement(w, g) for w, g in zip(want, outputs[c.label])]
        at = max(range(len(found)), key=lambda i: found[i][0])
        difference, where = found[at]
        if workloads[at].name:
            where += f" ({workloads[at].name})"
        agrees = difference <= tolerance
        medians = [statistics.median(samples[c.label, i]) * 1e3 for i in range(len(workloads))]
        entries.append(
            Entry(
                c.label,
                c.device,
                median_ms=medians[0],
                runs=runs[c.label],
                difference=difference,
                agrees=agrees,
                note="" if agrees else f"disagrees with {reference.label} on {where}",
                others_ms={w.name: ms for w, ms in zip(workloads[1:], medians[1:])},
            )
        )
    eligible = [e for e in entries if e.agrees and e.median_ms is not None]
    winner = min(eligible, key=lambda e: e.median_ms or 0.0)
    named = [w for w in workloads if w.name]
    return Verdict(
        winner=winner.label,
        reference=reference.label,
        entries=tuple(entries),
        shapes=_shapes_of(workloads[0].feeds),
        seconds=time.perf_counter() - start,
        versions=dict(versions or {}),
        workloads=tuple((w.name, _shapes_of(w.feeds)) for w in named),
    )


def _shapes_of(feeds: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(np.shape(a)) for n, a in feeds.items()}


class RaceError(InferError):
    """The race could not be run (the reference candidate fails on the race's feeds)."""


class RaceCancelled(Exception):
    """The engine closed while its background race ran."""


def block(
    session: Session, feeds: Mapping[str, np.ndarray], seconds: float = BLOCK_S
) -> tuple[float, int]:
    """(seconds per run, runs) over one block of back-to-back runs lasting about `seconds`
    (at least one run)."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        session.run(feeds)
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / count, count


def agreement(want: Mapping[str, Any], got: Mapping[str, Any]) -> tuple[float, str]:
    """(worst relative difference over the outputs, the output it is on). Relative to each
    output's largest finite magnitude, at least `_diff.SCALE_FLOOR` (`OutputDiff.max_rel`); inf
    where shapes, integer values or NaNs differ."""
    worst, where = 0.0, ""
    for name, reference in want.items():
        value = got.get(name)
        if isinstance(reference, np.ndarray) and isinstance(value, np.ndarray):
            d = diff(name, [value], [reference], rtol=0.0, atol=0.0)
            if d.mismatched == 0 and not d.note:
                relative = 0.0
            elif d.note or reference.dtype.kind in "biuO":  # shapes, NaNs or exact values differ
                relative = float("inf")
            else:  # floats, ml_dtypes' included: relative to the output's largest magnitude
                relative = d.max_rel
        else:
            relative = 0.0 if _same(reference, value) else float("inf")
        if relative > worst or not where:
            worst, where = max(worst, relative), name
    return worst, f"output {where!r}"


def _same(a: Any, b: Any) -> bool:
    """Equality for what is not an array: sequences, maps, None."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return bool(a == b)


# -- the verdict cache ------------------------------------------------------------------------


def key(
    *,
    model: str,
    request: str,
    device: str,
    precision: str,
    options: Mapping[str, Any],
    runtimes: Mapping[str, str],
    example: str = "",
) -> Key:
    """The key of a verdict: the model's content, the device asked for and the one it
    resolves to, precision and the load options that change speed, each runtime's
    fingerprint, and the example feeds raced (a digest)."""
    return Key.of(
        KIND,
        model=model,
        request=request,
        device=device,
        precision=precision,
        options=dict(options),
        runtimes=dict(runtimes),
        example=example,
    )


def feeds_digest(feeds: Mapping[str, Any] | None) -> str:
    if not feeds:
        return ""
    h = hashlib.sha256()
    for name in sorted(feeds):
        arr = np.ascontiguousarray(feeds[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def read(cache: Cache | None, k: Key) -> Verdict | None:
    if cache is None:
        return None
    try:
        entry = cache.get(k)
        if entry is None:
            return None
        return Verdict.from_json(json.loads(entry.file("choice.json").read_text("utf-8")))
    except (OSError, ValueError, KeyError, TypeError, CacheError) as e:
        log.debug("cached backend choice unreadable (%s): racing again", e)
        return None


def write(cache: Cache | None, k: Key, verdict: Verdict) -> None:
    if cache is None:
        return

    def build(folder: Path) -> dict[str, Any]:
        (folder / "choice.json").write_text(
            json.dumps(verdict.to_json(), indent=1, sort_keys=True), encoding="utf-8"
        )
        return {
            "winner": verdict.winner,
            "median_ms": {e.label: e.median_ms for e in verdict.entries},
            "shapes": verdict.shapes_text(),
        }

    try:
        cache.get_or_build(k, build)
    except CacheError as e:
        log.warning("could not cache the backend choice: %s", e)


def forget(cache: Cache | None, k: Key) -> None:
    """Drop a verdict whose winner no longer compiles."""
    entry = cache.get(k) if cache is not None else None
    if entry is not None and cache is not None:
        cache.remove(entry)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
