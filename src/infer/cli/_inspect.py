"""`infer inspect MODEL`: what the model file holds and which backends here can load it."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from ..inspect import Inspection, Node, inspect
from ..tensors import describe_specs
from ._common import (
    ModelArg,
    fmt_bytes,
    fmt_count,
    fmt_s,
    help_text,
    load_model,
    out,
    write_json,
)

METADATA_CHARS = 120
"""Metadata values longer than this are cut in the text output (--full and --json keep them)."""

HELP = help_text(
    "Show what a model holds: IR version, producer, opsets per domain, inputs and "
    "outputs (symbolic dims by name), node count and op types, initializers and their "
    "bytes, subgraphs, custom domains, external data, and which backends here can "
    "load it: ✓ where a backend implements every op at the model's opsets (checked "
    "without compiling), ✗ with the reason where it cannot, ? where that is known only "
    "by compiling; --compile loads the model on each to be sure.",
    "infer inspect model.onnx",
    "infer inspect model.onnx --compile",
    "infer inspect model.onnx --nodes | less",
    "infer inspect model.onnx --json | jq .onnx.opsets",
)


def register(app: typer.Typer) -> None:
    app.command(
        "inspect", help=HELP, short_help="What a model holds, and which backends can load it."
    )(inspect_command)


def inspect_command(
    model: ModelArg,
    nodes: Annotated[
        bool, typer.Option("--nodes", help="List every node: op, name, attributes, inputs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    backends: Annotated[
        bool,
        typer.Option("--backends/--no-backends", help="Ask each backend whether it can load it."),
    ] = True,
    compile: Annotated[
        bool,
        typer.Option("--compile", help="Load the model on each backend here to be sure."),
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Show long metadata values in full.")
    ] = False,
) -> None:
    source, name = load_model(model)
    result = inspect(source, backends=backends, compile=compile)
    if as_json:
        data = result.to_dict(nodes=nodes)
        data["name"] = name
        write_json(data, "-")
        return
    render(result, name, nodes, full)


def render(r: Inspection, name: str, nodes: bool = False, full: bool = False) -> None:
    console = out()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("model", f"{name} ({r.format}, {fmt_bytes(r.size_bytes)})")
    o = r.onnx
    if o is not None:
        producer = " ".join(p for p in (o.producer, o.producer_version) if p) or "-"
        grid.add_row("producer", producer)
        opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in o.opsets)
        grid.add_row("format", f"IR version {o.ir_version}; opsets: {opsets}")
        for i, spec in enumerate(o.inputs):
            grid.add_row("inputs" if i == 0 else "", _spec(spec))
        for i, spec in enumerate(o.outputs):
            grid.add_row("outputs" if i == 0 else "", _spec(spec))
        nested = f" ({o.nodes_total} with subgraphs)" if o.nodes_total != o.nodes else ""
        grid.add_row("nodes", f"{o.nodes}{nested}, {len(o.op_types)} op types")
        w = o.weights
        grid.add_row(
            "weights",
            f"{w.count} initializers, {fmt_count(w.parameters)} parameters, {fmt_bytes(w.bytes)}"
            + (f" ({w.external} in external data)" if w.external else ""),
        )
        if o.constants.count:
            c = o.constants
            grid.add_row(
                "",
                f"{c.count} Constant nodes, {fmt_count(c.parameters)} values, {fmt_bytes(c.bytes)}",
            )
        if o.overridable:
            grid.add_row("", f"{len(o.overridable)} initializers also listed as inputs")
        if o.subgraphs:
            depth = max(s.depth for s in o.subgraphs)
            ops = sorted({s.op for s in o.subgraphs})
            grid.add_row(
                "subgraphs",
                f"{len(o.subgraphs)} ({', '.join(ops)}), nested {depth} deep, "
                f"{sum(s.nodes for s in o.subgraphs)} nodes",
            )
        if o.functions:
            grid.add_row("functions", ", ".join(o.functions))
        if o.custom_domains:
            grid.add_row("custom", ", ".join(o.custom_domains))
        if o.nonstandard_ops:
            line = Text(", ".join(o.nonstandard_ops))
            if r.run_by:
                line.append(f" (run by {', '.join(r.run_by)})", style="dim")
            elif r.backends:
                line.append(" (no backend here runs them)", style="yellow")
            grid.add_row("non-ONNX ops", line)
        if o.external_data:
            grid.add_row(
                "external",
                f"{', '.join(o.external_data)} ({fmt_bytes(o.external_bytes)})",
            )
        for i, (k, v) in enumerate(o.metadata):
            grid.add_row("metadata" if i == 0 else "", f"{k}: {v if full else _value(v)}")
    elif r.native is not None:
        n = r.native
        for note in n.notes:
            grid.add_row("format", note)
        for i, spec in enumerate(n.inputs):
            grid.add_row("inputs" if i == 0 else "", _spec(spec))
        for i, spec in enumerate(n.outputs):
            grid.add_row("outputs" if i == 0 else "", _spec(spec))
        if n.nodes is not None:
            grid.add_row("layers", str(n.nodes))
    here = [s for s in r.backends if s.device != "-"]
    absent = [s.backend for s in r.backends if s.device == "-"]
    for i, s in enumerate(here):
        mark = {True: Text("✓ ", style="green"), None: Text("? ", style="yellow")}.get(
            s.ok, Text("✗ ", style="red")
        )
        line = mark + Text(f"{s.backend} on {s.device}")
        if s.verdict == "compiled":
            line.append(f": compiled in {fmt_s(s.seconds)}", style="dim")
        elif s.ok is None:
            line.append(f": not checked ({s.reason})", style="dim")
        elif not s.ok:
            line.append(f": {s.reason}", style="dim")
        grid.add_row("backends" if i == 0 else "", line)
    if absent:
        grid.add_row(
            "" if here else "backends",
            Text(f"not available here: {', '.join(absent)} (see `infer devices`)", style="dim"),
        )
    console.print(grid)
    histogram = o.op_types if o is not None else r.native.op_types if r.native else ()
    if histogram:
        console.print()
        console.print(Text("op types", style="bold"))
        console.print(_columns([f"{op} {n}" for op, n in histogram], console.width - 2))
    if nodes and r.nodes:
        console.print()
        console.print(Text("nodes", style="bold"))
        for node in r.nodes:
            console.print(_node(node))


def _spec(spec: Any) -> str:
    return describe_specs([spec])


def _value(text: str, limit: int = METADATA_CHARS) -> str:
    """A metadata value on one line, cut to `limit` characters, saying how long it is."""
    flat = text.replace("\r", "").replace("\n", "⏎")
    if len(flat) <= limit:
        return flat
    lines = text.count("\n") + 1
    size = f"{len(text):,} characters" + (f", {lines:,} lines" if lines > 1 else "")
    return f"{flat[:limit]}… ({size}; --full shows it)"


def _columns(items: list[str], width: int = 78) -> Table:
    """Items laid out in as many columns as fit in `width`."""
    cell = max(len(i) for i in items) + 2
    ncol = max(1, min(len(items), width // cell))
    table = Table.grid(padding=(0, 2))
    for _ in range(ncol):
        table.add_column(no_wrap=True)
    nrow = -(-len(items) // ncol)
    for r in range(nrow):
        table.add_row(
            *[items[c * nrow + r] if c * nrow + r < len(items) else "" for c in range(ncol)]
        )
    return table


def _node(n: Node) -> Text:
    where = f"{n.graph}/" if n.graph else ""
    head = Text(f"[{where}{n.index}] ", style="dim")
    head.append(n.op_id, style="bold")
    if n.name:
        head.append(f"  {n.name}")
    lines = [head]
    if n.attributes:
        attrs = ", ".join(f"{k}={_short(v)}" for k, v in n.attributes)
        lines.append(Text(f"    attrs: {attrs}"))
    if n.inputs:
        ins = ", ".join(
            f"{i} ← {p}" if p and p != i else (i or "(none)") for i, p in zip(n.inputs, n.producers)
        )
        lines.append(Text(f"    in:    {ins}"))
    lines.append(Text(f"    out:   {', '.join(n.outputs)}"))
    return Text("\n").join(lines)


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
