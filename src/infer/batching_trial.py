"""Whether merging requests pays on the traffic an engine gets (`Batching(measure=True)`).

Merging requests into one run is not always faster than running them apart. On a CPU, ONNX
Runtime runs several one-row requests at once about as well as one merged run of them; for a
model that runs in a tenth of a millisecond the batcher's own queueing costs more than merging
saves; requests of different lengths pay for their padding. So the batcher times both ways on
the live requests, in turns: merged runs, and requests passed straight to the session, each
its own run (a `run()` caller's thread runs its request itself, as with no batching=). A turn
(a window) lasts at least `window_requests` answered requests and `window_s` seconds of busy
time. Merging is timed first, for `first_hold` windows; then passing through (a probe). The
other way takes over only where it answered `margin` more requests per busy second than the
median of the kept way's last three windows (one window varies by 10-15% on a busy machine),
over `probe_windows` windows. A probe ends early where it is slower: after one window that
does not beat the kept way, or as soon as a quarter of a window's requests ran at less than
`clear` of its rate, so a way that is far behind (one-row runs on a GPU) costs little to
re-check. The kept way is timed again for `hold` windows before the next probe; the
hold doubles each time the choice stands (up to `max_hold`), so a right choice costs little
re-checking and one the traffic has overturned is found again; a window of the kept way
`changed` off its median (the traffic changed) brings the next probe forward.

Busy time is time with at least one request outstanding, so idle spells between bursts count
against neither way. A window starts once the requests of the previous way have all been
answered, so it times one way alone.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger(__name__)

MERGE = "merge"  # requests merged into shared runs
PASS = "pass"  # each request its own run, as with no batching=


class Ticket(NamedTuple):
    """One request's place in the trial: the way it is run and the window it counts for."""

    epoch: int
    mode: str


class Trial:
    """Times merged runs against passed-through requests on live traffic; `mode` is the way
    the next request goes. Thread-safe: `begin` when a request arrives, `end` when answered."""

    def __init__(
        self,
        *,
        window_requests: int = 64,
        window_s: float = 0.1,
        margin: float = 0.05,
        clear: float = 0.5,
        changed: float = 0.3,
        first_hold: int = 3,
        probe_windows: int = 2,
        max_hold: int = 16,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.window_requests = window_requests
        self.window_s = window_s
        self.margin = margin  # how much faster the other way must be to take its place
        self.changed = changed  # a kept way's window this far off its median: re-check
        self.clear = clear  # a probe this far behind the kept way ends at once
        self.first_hold = first_hold
        self.probe_windows = probe_windows
        self.max_hold = max_hold
        self._clock = clock
        self._lock = threading.Lock()
        self.chosen = MERGE  # the way kept (merging, until passing is measured faster)
        self.mode = MERGE  # the way timed now: the chosen one, or a probe of the other
        self.rates: dict[str, float] = {}  # the latest window's requests per busy second
        self.passed = 0  # requests run on their own because passing was timed or chosen
        self.answered = 0  # passed requests the batcher did not run: answered here
        self.failed = 0  # of those, the ones answered with an error
        self._recent: dict[str, deque[float]] = {MERGE: deque(maxlen=3), PASS: deque(maxlen=3)}
        self._hold = first_hold
        self._left = first_hold  # windows of the chosen way before the next probe
        self._probe: list[float] = []  # the rates of the probe's windows so far
        self._epoch = 0
        self._fresh = 0  # outstanding requests of this window's way
        self._stale = 0  # outstanding requests of earlier windows: this one waits for them
        self._started = True
        self._answered = 0
        self._busy = 0.0
        self._since: float | None = None  # when the outstanding count last rose from 0

    def begin(self) -> Ticket:
        """A request arrives: the way it goes, and its window."""
        with self._lock:
            if self._started and self._fresh == 0:
                self._since = self._clock()
            self._fresh += 1
            if self.mode == PASS:
                self.passed += 1
            return Ticket(self._epoch, self.mode)

    def end(self, ticket: Ticket, failed: bool | None = None) -> None:
        """A request was answered (with outputs or an error). failed: True or False for a
        request the caller's thread or the session ran without the batcher, which counts it
        here (`answered`, `failed`)."""
        with self._lock:
            now = self._clock()
            if failed is not None:
                self.answered += 1
                self.failed += failed
            if ticket.epoch != self._epoch:
                self._stale -= 1
                if self._stale == 0:
                    self._start(now)
                return
            self._fresh -= 1
            if not self._started:
                return
            self._answered += 1
            if self._fresh == 0 and self._since is not None:
                self._busy += now - self._since
                self._since = None
            busy = self._busy + (now - self._since if self._since is not None else 0.0)
            if self.mode == self.chosen:
                if self._answered >= self.window_requests and busy >= self.window_s:
                    self._close(self._answered / busy)
                return
            # A probe needs less time: it only has to tell a slower way apart.
            if self._answered >= self.window_requests and busy >= self.window_s / 4:
                self._close(self._answered / busy)
            elif self._answered >= self.window_requests // 4 and busy >= self.window_s / 8:
                rate = self._answered / busy
                if rate < self.clear * statistics.median(self._recent[self.chosen]):
                    self.rates[self.mode] = rate
                    self._probe = [rate]
                    self._decide()

    @property
    def merging(self) -> bool:
        """Whether merging is the way kept."""
        return self.chosen == MERGE

    def _start(self, now: float) -> None:
        self._started = True
        self._answered = 0
        self._busy = 0.0
        self._since = now if self._fresh else None

    def _switch(self, mode: str) -> None:
        """Time `mode` next, from when the requests sent the other way are answered."""
        self.mode = mode
        self._epoch += 1
        self._stale += self._fresh
        self._fresh = 0
        self._started = False
        if self._stale == 0:
            self._start(self._clock())

    def _close(self, rate: float) -> None:
        """A window ended with `rate` requests per busy second."""
        mode = self.mode
        recent = self._recent[mode]
        if mode == self.chosen and len(recent) == recent.maxlen:
            typical = statistics.median(recent)
            if abs(rate - typical) > self.changed * typical:
                # The traffic changed (more callers, other lengths): re-check soon.
                self._hold, self._left = self.first_hold, 1
        self.rates[mode] = rate
        recent.append(rate)
        other = PASS if mode == MERGE else MERGE
        if mode == self.chosen:
            self._left -= 1
            if self._left > 0:
                self._start(self._clock())
            else:
                self._probe = []
                self._switch(other)  # a probe of the other way
            return
        self._probe.append(rate)
        kept = statistics.median(self._recent[self.chosen])
        if len(self._probe) < self.probe_windows and rate > kept:
            self._start(self._clock())  # promising: time it once more before switching
            return
        self._decide()

    def _decide(self) -> None:
        """A probe ended: keep its way where it beat the kept one by the margin."""
        mode = self.mode
        rate = statistics.fmean(self._probe)
        kept = statistics.median(self._recent[self.chosen])
        if len(self._probe) >= self.probe_windows and rate > kept * (1 + self.margin):
            self.chosen, self._hold = mode, self.first_hold
            log.info(
                "batching: %s (%.0f requests per busy second, against %.0f %s)",
                "requests pass straight to the session"
                if mode == PASS
                else "requests are merged again",
                rate,
                kept,
                "merged" if mode == PASS else "passed straight through",
            )
        else:
            self._hold = min(2 * self._hold, self.max_hold)
        self._left = self._hold
        if self.chosen != mode:
            self._switch(self.chosen)
        else:
            self._start(self._clock())
