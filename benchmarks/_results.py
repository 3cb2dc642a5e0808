"""Where benchmark scripts write their numbers: benchmarks/results/NAME.json, with the machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write(
    name: str, data: dict[str, Any], note: str = "compare ratios measured in the same run"
) -> Path:
    """Write `data` under the benchmark's name with the environment it ran in; returns the path."""
    from infer.bench import environment

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "environment": environment(),
        "load_average": list(os.getloadavg()),
        "note": note,
        **data,
    }
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"\nwrote {path.relative_to(RESULTS.parents[1])}")
    return path
