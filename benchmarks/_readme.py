"""Put a benchmark's latest table into README.md, between its start/end markers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def update(section: str, markdown: str, env: dict[str, Any]) -> None:
    """Replace the text between `<!-- {section}:start -->` and `<!-- {section}:end -->`."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = README.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"README.md has no {start} ... {end} section to update")
    backends = ", ".join(f"{k} {v}" for k, v in env.get("backends", {}).items())
    note = (
        f"_{env.get('time', '')[:10]}, {env.get('cpu', '?')} ({env.get('cores', '?')} cores, "
        f"shared), {backends}._"
    )
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    README.write_text(f"{before}{start}\n{markdown}\n\n{note}\n{end}{after}", encoding="utf-8")
