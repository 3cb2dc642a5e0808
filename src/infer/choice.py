"""The measured choice: which backend the default runs a model on, raced on the model.

`choose` compiles the table's candidates (`selection.select`), runs the first at once and,
unless the verdict is cached, races the others on representative feeds, at load
(choose="measure") or in the background once the engine has been busy a while (`Pending`);
the engine then switches to the fastest whose outputs agree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _race, sequence
from .backends import base
from .backends.base import Backend, Session
from .cache import Cache, Key
from .device import Device, probe_hardware
from .errors import (
    BackendUnavailable,
    InferError,
    InputError,
)
from .feeds import random_feeds, representative_shapes, roles_of
from .model import Model
from .options import Options
from .selection import FASTEST, TABLE, Attempt, Choice, _compile, check, select

log = logging.getLogger(__name__)


@dataclass
class Chosen:
    """What `choose` settled on: the session to run now, every verdict, and the background
    race still to run (None: the choice is made)."""

    session: Session
    attempts: list[Attempt]
    pending: Pending | None = None


def choose(
    model: Model,
    request: Device,
    options: Options,
    backend: str | Sequence[str] | None = None,
    transform: Transform | None = None,
) -> Chosen:
    """The session `Engine.load` runs: a named backend (or list) as `select` tries them;
    otherwise the measured choice, as `options.choose` says:

    - "first": the table's first row that compiles, nothing timed.
    - "measure": race every eligible row now (`backend="fastest"` too).
    - "background": the table's first row now, and a `Pending` race for the engine to run
      once it has been busy a while (it switches when a faster backend agrees).

    A verdict raced before for this model, device, precision, options and installed runtimes
    is read from the cache: the winner is compiled alone, without a race.
    """
    mode = "measure" if backend == FASTEST else options.choose
    if (backend is not None and backend != FASTEST) or mode == "first":
        session, attempts = select(model, request, options, backend, transform)
        return Chosen(session, attempts)
    pending = Pending(model, request, options, transform)
    cached = pending.cached()
    if cached is not None:
        return cached
    if mode == "measure":
        return pending.race()
    # Rows that take minutes to build wait for the race, where they could run; the quick rows
    # answer now. (Checked without compiling, so the selection still says why one cannot.)
    rows = TABLE[request.kind]
    deferred = {}
    for row in rows:
        if row.builds and any(not r.builds for r in rows):
            device, refused = check(row, model, request, options)
            if refused is None:
                deferred[row.label] = Attempt(
                    row.label,
                    str(device),
                    "deferred",
                    "built in the background race: its first build takes minutes",
                )
    quick = [r.label for r in rows if r.label not in deferred] if deferred else None
    try:
        session, attempts = select(model, request, options, quick, transform, listed=False)
    except BackendUnavailable:
        if not deferred:
            raise
        # no quick row takes the model: build the slow ones now
        session, attempts = select(model, request, options, None, transform)
        deferred = {}
    if not pending.worth_racing(attempts):
        return Chosen(session, attempts)
    pending.passed = {a.backend for a in attempts[:-1]}
    shown = {a.backend: a for a in attempts} | deferred
    return Chosen(session, [shown[r.label] for r in rows if r.label in shown], pending)


Transform = Callable[[Model, Backend, Device, "str | None"], Model]


def raced(request: Device) -> list[str]:
    """The labels of the rows the measured choice times for `request`, in table order."""
    return [r.label for r in TABLE[request.kind] if r.race]


def cached_verdict(model: Model, request: Device, options: Options) -> _race.Verdict | None:
    """The race `choose` would read for `model` on `request` with these options (its winner is
    what a load with no backend named compiles), without compiling anything; None: no race is
    cached, and the next such load races."""
    pending = Pending(model, request, options, None)
    return _race.read(pending.cache, pending.key)


class Pending:
    """A race to run: every row of the device's table that is timed (`Choice.race`), on the
    model as `choose` was asked for it."""

    def __init__(
        self, model: Model, request: Device, options: Options, transform: Transform | None
    ) -> None:
        self.model = model
        self.request = request
        self.options = options
        self.transform = transform
        self.rows = [r for r in TABLE[request.kind] if r.race]
        self.cache = Cache(options.cache_dir) if options.cache else None
        example = options.example
        if isinstance(example, (list, tuple)):
            example = example[0] if example else None
        self.example: Mapping[str, Any] | None = example
        self.passed: set[str] = set()
        """Rows that could not take the model at load: the race leaves them out."""
        self._key: Key | None = None

    @property
    def key(self) -> Key:
        """The verdict's cache key (see `_race.key`); reading it imports no runtime."""
        if self._key is None:
            o = self.options
            self._key = _race.key(
                model=self.model.digest,
                request=str(self.request),
                device=",".join(d.identity for d in probe_hardware().devices),
                precision=o.precision,
                options={
                    "hint": o.hint,
                    "threads": o.threads,
                    "shapes": {k: repr(v) for k, v in o.shapes.items()},
                    "backend_options": repr(dict(o.backend_options)),
                },
                runtimes={
                    name: base.get(name).fingerprint()
                    for name in dict.fromkeys(r.backend for r in self.rows)
                },
                example=_race.feeds_digest(self.example),
            )
        return self._key

    def worth_racing(self, attempts: Sequence[Attempt]) -> bool:
        """Whether a race could change the choice `select` made: it chose a timed row, and a
        timed row was never tried (one after it, or one that builds for minutes)."""
        reached = {a.backend for a in attempts}
        timed = {r.label for r in self.rows}
        return attempts[-1].backend in timed and any(r.label not in reached for r in self.rows)

    def cached(self) -> Chosen | None:
        """The winner of a cached race, compiled alone; None when there is no usable verdict."""
        verdict = _race.read(self.cache, self.key)
        if verdict is None:
            return None
        row = next((r for r in self.rows if r.label == verdict.winner), None)
        if row is None:
            return None
        device, refused = check(row, self.model, self.request, self.options)
        start = time.perf_counter()
        session = (
            _compile(row, device, self.model, self.options, self.transform)
            if refused is None and device is not None
            else None
        )
        if not isinstance(session, Session):
            _race.forget(self.cache, self.key)  # it no longer compiles here: race again
            return None
        attempts = self._attempts(verdict, {row.label: session}, time.perf_counter() - start)
        return Chosen(session, attempts)

    def race(
        self,
        incumbent: tuple[str, Session] | None = None,
        feeds: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
    ) -> Chosen:
        """Compile the timed rows (reusing `incumbent`, (label, session), already running),
        race them on `feeds` (else the example, else seeded random feeds at the shapes a real
        run takes), cache the verdict and return the winner. Losers are closed; the incumbent
        is left to its owner."""
        attempts: dict[str, Attempt] = {}
        compiled: dict[str, tuple[Choice, Device, Session, float]] = {}
        for row in [r for r in self.rows if r.label not in self.passed]:
            if cancel is not None and cancel.is_set():
                break
            device, refused = check(row, self.model, self.request, self.options)
            if refused is not None or device is None:
                attempts[row.label] = refused or Attempt(
                    row.label, str(self.request), "unavailable"
                )
                continue
            if incumbent is not None and incumbent[0] == row.label:
                compiled[row.label] = (row, device, incumbent[1], 0.0)
                continue
            start = time.perf_counter()
            session = _compile(row, device, self.model, self.options, self.transform)
            seconds = time.perf_counter() - start
            if isinstance(session, InferError):
                attempts[row.label] = Attempt(
                    row.label, str(device), "failed", str(session), seconds
                )
                continue
            compiled[row.label] = (row, device, session, seconds)
        try:
            if cancel is not None and cancel.is_set():
                raise _race.RaceCancelled
            if not compiled:
                if incumbent is None:  # nothing timed compiles: the untimed rows' turn
                    session, tried = select(
                        self.model, self.request, self.options, None, self.transform
                    )
                    return Chosen(session, tried)
                raise _race.RaceError("no candidate compiles")
            if len(compiled) == 1:
                ((label, (row, device, session, seconds)),) = compiled.items()
                attempts[label] = Attempt(
                    label,
                    str(device),
                    "selected",
                    f"the only timed candidate that compiles; {session.details.get('summary', '')}",
                    seconds,
                )
                return Chosen(
                    session, [attempts[r.label] for r in self.rows if r.label in attempts]
                )
            try:
                workloads = self._workloads(next(iter(compiled.values()))[2], feeds)
                verdict = _race.run(
                    [_race.Candidate(label, str(d), s) for label, (_, d, s, _) in compiled.items()],
                    workloads,
                    self.options.precision,
                    cancel=cancel,
                    versions={
                        label: str(base.get(r.backend).probe().version)
                        for label, (r, _, _, _) in compiled.items()
                    },
                )
            except (_race.RaceError, InputError) as e:
                if incumbent is not None:
                    raise _race.RaceError(str(e)) from e
                return self._unraced(compiled, attempts, e)
        except BaseException:
            for label, (_, _, session, _) in compiled.items():
                if incumbent is None or label != incumbent[0]:
                    session.close()
            raise
        _race.write(self.cache, self.key, verdict)
        winner = compiled[verdict.winner][2]
        for label, (_, _, session, _) in compiled.items():
            if label != verdict.winner and (incumbent is None or label != incumbent[0]):
                session.close()
        times = {label: seconds for label, (_, _, _, seconds) in compiled.items()}
        found = self._attempts(verdict, {verdict.winner: winner}, times.get(verdict.winner), times)
        merged = {a.backend: a for a in found}
        merged.update({k: v for k, v in attempts.items() if k not in merged})
        return Chosen(winner, [merged[r.label] for r in self.rows if r.label in merged])

    def _unraced(
        self,
        compiled: Mapping[str, tuple[Choice, Device, Session, float]],
        attempts: dict[str, Attempt],
        why: Exception,
    ) -> Chosen:
        """The table's first compiled row, when the race could not run at all."""
        first, *rest = compiled
        for label in rest:
            _, device, session, seconds = compiled[label]
            session.close()
            attempts[label] = Attempt(label, str(device), "skipped", "not raced", seconds)
        _, device, session, seconds = compiled[first]
        attempts[first] = Attempt(
            first,
            str(device),
            "selected",
            f"first in table order: the race could not run ({why}); "
            f"{session.details.get('summary', '')}",
            seconds,
        )
        return Chosen(session, [attempts[r.label] for r in self.rows if r.label in attempts])

    def _workloads(self, session: Session, given: Mapping[str, Any] | None) -> list[_race.Workload]:
        """What the race times: the feeds given (the first real ones, or `example=`), else
        seeded random feeds at the shapes a real run takes; a sequence model's phases each
        (a decoder's decode step, deciding, then its prefill), named for the selection. A
        decoder raced on given feeds is also timed on its decode step, which decides."""
        given = given if given is not None else self.example
        roles = roles_of(session.inputs, self.model)
        phases = sequence.phases(roles)
        if given is not None:
            named = f"the {'first' if self.example is None else 'example'} feeds"
            workloads = [_race.Workload(named if phases else "", dict(given))]
            if not roles.is_decoder:
                return workloads
            ids = given.get(roles.ids) if roles.ids is not None else None
            batch = int(np.shape(ids)[0]) if ids is not None and np.ndim(ids) else 1
            phases = sequence.phases(roles, batch=batch)[:1]
        else:
            workloads = []
        made: list[_race.Workload] = []
        each: list[sequence.Phase | None] = [*phases] or [None]
        for phase in each:
            shapes, notes = representative_shapes(
                session.inputs, self.options.shapes, model=self.model, roles=roles, phase=phase
            )
            for note in notes:
                log.debug("race feeds: %s", note)
            feeds = random_feeds(session.inputs, shapes, seed=0, roles=roles, phase=phase)
            if any(_same_shapes(feeds, w.feeds) for w in made):
                continue  # --shape fixed what the phases would have changed
            made.append(_race.Workload(str(phase) if phase else "", feeds))
        return made + workloads

    def _attempts(
        self,
        verdict: _race.Verdict,
        sessions: Mapping[str, Session],
        seconds: float | None,
        compile_s: Mapping[str, float] | None = None,
    ) -> list[Attempt]:
        """One Attempt per raced row, from the verdict (cached or just made)."""
        when = "a cached race" if compile_s is None else "a race"
        winner = verdict.entry(verdict.winner)
        assert winner is not None and winner.median_ms is not None
        out = []
        for e in verdict.entries:
            took = None if compile_s is None else compile_s.get(e.label)
            if e.label == verdict.winner:
                others = [x.describe() for x in verdict.entries if x.label != e.label]
                summary = sessions[e.label].details.get("summary", "")
                reason = (
                    f"fastest that agrees with {verdict.reference} ({when} at "
                    f"{verdict.shapes_text()}): {e.describe()}"
                    + (f"; {'; '.join(others)}" if others else "")
                    + (f"; {summary}" if summary else "")
                )
                out.append(Attempt(e.label, e.device, "selected", reason, seconds))
            elif e.median_ms is None:
                out.append(Attempt(e.label, e.device, "failed", e.note, took))
            elif not e.agrees:
                out.append(Attempt(e.label, e.device, "skipped", f"{e.describe()}; {e.note}", took))
            else:
                why = f"{e.describe()}; slower than {winner.label} ({winner.median_ms:.3g} ms)"
                out.append(Attempt(e.label, e.device, "skipped", why, took))
        return out


def _same_shapes(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(np.shape(a[k]) == np.shape(b[k]) for k in a)
