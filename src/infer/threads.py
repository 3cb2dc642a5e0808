"""The thread budget the engines of one process share.

Left to their defaults, ONNX Runtime and OpenVINO size their CPU pools for the whole machine,
and ONNX Runtime's pool threads keep spinning after every run, waiting for the next one. One
engine alone gains a little from that; several engines in one process (a pipeline: detection,
then direction, then recognition) lose a lot: the pool of the model that just ran spins on the
cores the next model needs. So every engine infer loads keeps to this budget by default:

- its pool holds at most the cores this process may use (`cores()`: the CPU affinity and a
  cgroup CPU quota, which the runtimes' own counts can miss inside containers);
- its threads spin only while one of its runs is in progress and stop when the run returns
  (`SPIN_RUN`), so an engine that is not running leaves the cores to the engine that is (and
  to other processes on a shared machine).

`Engine.load(..., threads=N)` gives one engine a pool of N threads; the onnxruntime backend
option `spinning` picks another policy for one engine: "always" (ONNX Runtime's own default)
or "never" (no spinning at all: the fastest on a machine whose cores other processes keep
busy, slower on a quiet one). The README's "Many engines in one process" section has the
measurements behind the default.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")  # where Linux mounts the cgroup hierarchy

SPIN_RUN = "run"  # spin while a run is in progress, stop when it returns (the default)
SPIN_ALWAYS = "always"  # keep spinning after a run (ONNX Runtime's default)
SPIN_NEVER = "never"  # block instead of spinning, even within a run
SPINNING = (SPIN_RUN, SPIN_ALWAYS, SPIN_NEVER)


@dataclass(frozen=True)
class Share:
    """What one engine's runtime may use of the budget."""

    threads: int | None
    """Threads for the engine's pool; None: the runtime's own count, which fits the budget."""
    spinning: str
    """When pool threads may spin rather than block (ONNX Runtime): one of SPINNING."""
    cores: int
    """The budget: cores this process may use."""

    def __str__(self) -> str:
        pool = f"{self.threads} threads" if self.threads else "the runtime's thread count"
        spin = {
            SPIN_RUN: "spinning only during runs",
            SPIN_ALWAYS: "spinning after runs too",
            SPIN_NEVER: "no spinning",
        }[self.spinning]
        return f"{pool} of {self.cores} cores, {spin}"


@functools.cache
def cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota if any."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def share(threads: int | None = None, spinning: str = SPIN_RUN) -> Share:
    """One engine's share: `threads` (Engine.load's threads=) or the budget, and its spinning
    policy (one of SPINNING)."""
    budget = cores()
    if threads is None and budget < (os.cpu_count() or budget):
        # The runtimes count the machine's cores; this process may use fewer.
        threads = budget
    return Share(threads=threads, spinning=spinning, cores=budget)


def _cgroup_quota() -> float | None:
    """CPUs a cgroup quota allows (cgroup v2 cpu.max, v1 cfs_quota_us), None without one."""
    try:
        text = (_CGROUP / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((_CGROUP / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((_CGROUP / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
