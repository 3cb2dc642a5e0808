"""The `infer` command line: devices, inspect, run, bench, compare, build, cache.

`main()` is the console script. The commands live in `infer.cli._app` (typer and rich come
with the `[cli]` extra); more command groups plug in through `_app.REGISTRARS` or the
"infer.cli" entry-point group, each a `register(app)` function.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_NEEDS = ("typer", "rich", "click")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 check failed, 2 user error)."""
    try:
        from ._app import run
    except ImportError as e:
        if (e.name or "").split(".")[0] not in _NEEDS:
            raise
        print(
            f"error: the infer command line needs the [cli] extra ({e.name} is missing): "
            'pip install "infer-engine[cli]"',
            file=sys.stderr,
        )
        return 2
    return run(argv)
