"""The background half of the measured choice: an engine answers at once on the table's first
backend, races the others once it has been busy long enough for a race to pay, and switches
atomically when a faster backend agrees.

`Sessions` holds an engine's sessions: the one running now, those a switch retired (they stay
open while a binding made on them is open, and close once the runs in flight on them finish),
and the bindings. `Watch` counts the engine's runs, keeps a copy of the first real feeds (the
race's inputs: the shapes the user runs), and starts the race in a thread of its own after
about RACE_AFTER_S seconds of runs. A model loaded to run once never pays for a race.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _race
from .backends.base import Binding, Session
from .errors import InferError

if TYPE_CHECKING:
    from .choice import Chosen, Pending

log = logging.getLogger("infer.selection")

RACE_AFTER_S = 2.0
"""Seconds of runs (estimated from the engine's second run) after which the race starts."""
MIN_RUNS = 3


class Sessions:
    """The sessions an engine has opened, and the bindings made on them."""

    def __init__(self, session: Session) -> None:
        self.current = session
        self.retired: list[Session] = []
        self.bindings: weakref.WeakSet[Binding] = weakref.WeakSet()
        self.watch: Watch | None = None
        self.lock = threading.RLock()
        self.closed = False

    def bound(self, binding: Binding) -> None:
        with self.lock:
            self.bindings.add(binding)
        binding.on_close = self.reap

    def adopt(self, session: Session) -> bool:
        """Make `session` the current one (False: the engine closed meanwhile)."""
        with self.lock:
            if self.closed:
                return False
            self.current = session
            return True

    def retire(self, session: Session) -> None:
        """`session` was replaced: close it once no open binding uses it."""
        with self.lock:
            self.retired.append(session)
        self.reap()

    def reap(self) -> None:
        """Close the retired sessions no open binding uses (runs in flight finish first)."""
        with self.lock:
            idle = [
                s
                for s in self.retired
                if not any(b.session is s and not b.closed for b in list(self.bindings))
            ]
            for s in idle:
                self.retired.remove(s)
        for s in idle:
            s.close()

    def close(self) -> None:
        """Stop a race in progress, then close every session (the engine's finalizer)."""
        with self.lock:
            self.closed = True
            watch, self.watch = self.watch, None
        if watch is not None:
            watch.stop()
        with self.lock:
            sessions = [self.current, *self.retired]
            self.retired = []
        for s in sessions:
            s.close()


class Watch:
    """Counts an engine's runs until a race pays, then runs it in the background."""

    def __init__(
        self,
        pending: Pending,
        sessions: Sessions,
        label: str,
        on_done: Callable[[Chosen | None], None],
    ) -> None:
        """label: the table row the current session was compiled from."""
        self.pending = pending
        self.sessions = sessions
        self.label = label
        # Held weakly: a pending race must not keep its engine alive.
        self._on_done: Callable[[], Callable[[Chosen | None], None] | None] = (
            weakref.WeakMethod(on_done) if hasattr(on_done, "__self__") else lambda: on_done
        )
        self.runs = 0
        self.trigger: int | None = None  # runs after which to race: set from a timed run
        self.feeds: dict[str, np.ndarray] | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- counting -----------------------------------------------------------------------------

    def run(self, call: Callable[[], dict[str, Any]], feeds: Mapping[str, Any]) -> dict[str, Any]:
        """`call()` the engine's run, counting it; the first two are timed and the first
        good feeds kept."""
        self.runs += 1  # approximate under threads: it only decides when to start
        if self.trigger is None:
            start = time.perf_counter()
            out = call()
            self._timed(time.perf_counter() - start, feeds)
            return out
        if self.runs >= self.trigger and self._thread is None:
            self.start()
        return call()

    def submitted(self, future: Future, feeds: Mapping[str, Any]) -> None:
        """Count a submit; its round trip times it while no run has."""
        self.runs += 1
        if self.trigger is None:
            start = time.perf_counter()

            def finished(f: Future) -> None:
                if not f.cancelled() and f.exception() is None:
                    self._timed(time.perf_counter() - start, feeds)

            future.add_done_callback(finished)
        elif self.runs >= self.trigger and self._thread is None:
            self.start()

    def _timed(self, seconds: float, feeds: Mapping[str, Any]) -> None:
        if self.feeds is None:
            self.feeds = _host_copy(feeds)
            return  # the first run warms up: time the next
        if self.trigger is None:
            self.trigger = max(MIN_RUNS, math.ceil(RACE_AFTER_S / max(seconds, 1e-6)))

    # -- racing -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the race now (once)."""
        with self._lock:
            if self._thread is not None or self._cancel.is_set():
                return
            self._thread = threading.Thread(target=self._race, name="infer-race", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Start the race if it has not started, and wait for it to end."""
        self.start()
        return self.done.wait(timeout)

    def stop(self) -> None:
        """Cancel the race and wait for its thread (it stops between compiles and blocks)."""
        self._cancel.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.done.set()

    def _race(self) -> None:
        chosen: Chosen | None = None
        try:
            incumbent = (self.label, self.sessions.current)
            chosen = self.pending.race(incumbent, self.feeds, self._cancel)
        except _race.RaceCancelled:
            chosen = None
        except InferError as e:
            log.info("the background race found nothing better: %s", e)
        except Exception:  # a bug in the race must not take the engine down
            log.exception("the background race failed; the engine keeps its backend")
        try:
            on_done = self._on_done()
            cancelled = self._cancel.is_set() or on_done is None
            if cancelled and chosen is not None and chosen.session is not self.sessions.current:
                chosen.session.close()  # raced for an engine that is gone
            if on_done is not None:
                on_done(None if cancelled else chosen)
        finally:
            self.done.set()


def _host_copy(feeds: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """A copy of numpy feeds (the caller may refill its arrays); None for other kinds."""
    if not isinstance(feeds, Mapping) or not all(isinstance(v, np.ndarray) for v in feeds.values()):
        return None
    return {k: np.array(v, copy=True) for k, v in feeds.items()}
