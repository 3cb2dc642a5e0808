"""`infer cache list | clear | path`: the artifact cache (transformed models, plans, runtime caches)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from ..cache import KINDS, META, Cache
from ..errors import OptionError
from ._common import fmt_bytes, help_text, out, write_json

HELP = help_text(
    "Look after the artifact cache: converted models, TensorRT plans, the folders "
    "runtimes cache compiled models in. It lives in $INFER_CACHE_DIR, else "
    "$XDG_CACHE_HOME/infer, else ~/.cache/infer.",
    "infer cache list",
    "infer cache clear --kind onnx-int8-search",
    "du -sh $(infer cache path)",
)

_HEX = re.compile(r"^[0-9a-f]{32,}$")


@dataclass(frozen=True)
class Item:
    """A cache entry (with meta.json) or a folder a runtime manages itself."""

    kind: str
    path: Path
    size: int
    files: int
    created: float
    key: dict[str, Any] = field(default_factory=dict, compare=False)
    managed: bool = False  # a runtime's own folder: no meta.json, key parts unknown
    note: str = ""  # what the entry says of itself (a backend choice: winner and timings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "size_bytes": self.size,
            "files": self.files,
            "created": self.created,
            "key": self.key,
            "managed_by_runtime": self.managed,
            "note": self.note,
        }


def scan(cache: Cache, kind: str | None = None) -> list[Item]:
    """Every entry and runtime folder under the cache root, newest first."""
    root = cache.root
    if not root.is_dir():
        return []
    kinds = [root / kind] if kind else sorted(p for p in root.iterdir() if p.is_dir())
    items = []
    for kdir in kinds:
        if not kdir.is_dir():
            continue
        entries = {e.path: e for e in cache.entries(kdir.name)}
        for folder in sorted(kdir.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue  # lock files, half-built temporary folders
            files = [p for p in folder.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            entry = entries.get(folder)
            if entry is not None:
                created = float(entry.meta.get("created", folder.stat().st_mtime))
                key = dict(entry.meta.get("key", {}))
                files = [f for f in files if f.name != META]
                note = _note(entry.meta)
                items.append(
                    Item(kdir.name, folder, entry.size, len(files), created, key, note=note)
                )
            elif not (folder / META).exists():
                mtime = max([p.stat().st_mtime for p in files] or [folder.stat().st_mtime])
                items.append(Item(kdir.name, folder, size, len(files), mtime, managed=True))
    return sorted(items, key=lambda i: i.created, reverse=True)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)
    group.command(
        "list",
        help=help_text("List cache entries: kind, size, age and key.", "infer cache list --json"),
    )(list_command)
    group.command(
        "clear",
        help=help_text(
            "Remove cache entries (all, or one kind). Kinds:\n\n"
            + "\n\n".join(f"{k}: {v}" for k, v in KINDS.items()),
            "infer cache clear --kind onnx-int8-search",
            "infer cache clear --kind backend-choice",
        ),
    )(clear_command)
    group.command("path", help=help_text("Print the cache folder.", "ls $(infer cache path)"))(
        path_command
    )
    app.add_typer(group, name="cache", help=HELP, short_help="List or clear the artifact cache.")


KindOpt = Annotated[
    str | None,
    typer.Option(
        "--kind",
        help="Only entries of this kind: " + ", ".join(KINDS) + ".",
        show_default=False,
    ),
]


def _kind(cache: Cache, kind: str | None) -> str | None:
    """`kind` if infer writes it (or the cache holds it, from another version); else OptionError."""
    if kind is None or kind in KINDS or (cache.root.is_dir() and (cache.root / kind).is_dir()):
        return kind
    raise OptionError(f"--kind {kind!r} is not a cache kind; use one of {', '.join(KINDS)}")


def list_command(
    kind: KindOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    cache = Cache()
    items = scan(cache, _kind(cache, kind))
    if as_json:
        write_json(
            {"root": str(cache.root), "entries": [i.to_dict() for i in items]},
            "-",
        )
        return
    console = out()
    console.print(Text(f"{cache.root}", style="bold"))
    if not items:
        console.print("(empty)")
        return
    table = Table(box=None, padding=(0, 1), header_style="bold", pad_edge=False)
    table.add_column("kind", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("key", overflow="fold")
    for i in items:
        key = "(kept by the runtime)" if i.managed else _key_text(i.key)
        if i.note:
            key = f"{i.note}; {key}"
        table.add_row(i.kind, i.path.name[:10], fmt_bytes(i.size), _age(i.created), key)
    console.print(table)
    total = sum(i.size for i in items)
    console.print(Text(f"{len(items)} entries, {fmt_bytes(total)}", style="dim"))


def clear_command(kind: KindOpt = None) -> None:
    cache = Cache()
    items = scan(cache, _kind(cache, kind))
    removed = cache.clear(kind)
    freed = sum(i.size for i in items)
    what = f"{kind} " if kind else ""
    out().print(f"removed {removed} {what}cache entries ({fmt_bytes(freed)}) from {cache.root}")


def path_command() -> None:
    print(Cache().root)


def _note(meta: Mapping[str, Any]) -> str:
    """A backend choice's verdict in a line: 'winner openvino (openvino 0.43 ms, ...)'."""
    winner, medians = meta.get("winner"), meta.get("median_ms")
    if not winner or not isinstance(medians, dict):
        return ""
    timings = ", ".join(
        f"{label} {ms:.3g} ms" for label, ms in medians.items() if isinstance(ms, (int, float))
    )
    shapes = f" at {meta['shapes']}" if meta.get("shapes") else ""
    return f"winner {winner} ({timings}{shapes})"


def _key_text(key: dict[str, Any]) -> str:
    parts = []
    for k, v in sorted(key.items()):
        text = str(v)
        if _HEX.match(text):
            text = text[:8]
        elif len(text) > 40:
            text = text[:37] + "..."
        parts.append(f"{k}={text}")
    return " ".join(parts)


def _age(created: float) -> str:
    s = max(0.0, time.time() - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"
