"""`infer bench [MODEL]`: latency, throughput and load time per backend, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .. import _race, demo
from ..batching import Batching
from ..bench import BenchReport, benchmark
from ..errors import OptionError
from ..feeds import read_inputs
from ._app import EXIT_CHECK_FAILED
from ._common import (
    DEMO,
    DeviceOpt,
    InputOpt,
    PrecisionOpt,
    SeedOpt,
    ShapeOpt,
    err,
    fmt_ms,
    fmt_s,
    help_text,
    int_list,
    load_model,
    out,
    precision_of,
    shapes_of,
    split_list,
    write_json,
)
from ._plot import plot

HELP = help_text(
    "Benchmark a model on every backend here (or those named), side by side: load time "
    "(cold, into an empty cache, and warm), then per batch size a warm-up and a timed "
    "run giving latency p50/p90/p99/mean and throughput. With no MODEL, the built-in "
    "demo CNN. With --concurrency N, N requests stay in flight (Engine.submit) and "
    "latency is per request. With --batching 16,2 as well, the engines merge the requests "
    "in flight into runs of up to 16 rows, waiting at most 2 ms (infer.Batching), and the "
    "batcher's counters are shown.",
    "infer bench",
    "infer bench model.onnx -b onnxruntime,openvino --batch 1,8 --plot b.png",
    "infer bench model.onnx -d cuda -p fp16 --concurrency 4 --json b.json",
    "infer bench model.onnx --concurrency 8 --batching 8,2",
)


def register(app: typer.Typer) -> None:
    app.command("bench", help=HELP, short_help="Latency, throughput and load time per backend.")(
        bench_command
    )


def bench_command(
    model: Annotated[
        str | None,
        typer.Argument(help="Model file; default: the built-in demo model.", show_default=False),
    ] = None,
    device: DeviceOpt = "auto",
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            "-b",
            help="all (every backend that can take the model here), or a,b. Default: all, "
            "and a row that fails is reported without failing the command while one ran.",
            show_default=False,
        ),
    ] = None,
    precision: PrecisionOpt = "fp32",
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, e.g. 1,4,16.")] = "1",
    duration: Annotated[
        float, typer.Option("--duration", help="Seconds timed per backend and batch size.")
    ] = 2.0,
    warmup: Annotated[
        float, typer.Option("--warmup", help="Seconds of warm-up runs before timing.")
    ] = 0.5,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Requests kept in flight.")
    ] = 1,
    batching: Annotated[
        str | None,
        typer.Option(
            "--batching",
            help="MAX_BATCH[,MAX_DELAY_MS]: merge the requests in flight (default delay 2 ms).",
            show_default=False,
        ),
    ] = None,
    shape: ShapeOpt = None,
    inputs: InputOpt = None,
    seed: SeedOpt = 0,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Threads per backend (default: theirs).")
    ] = None,
    json_file: Annotated[
        str | None,
        typer.Option("--json", help="Write the results as JSON to this file (- for stdout)."),
    ] = None,
    samples: Annotated[
        bool, typer.Option("--samples", help="Keep every latency sample in the JSON.")
    ] = False,
    plot_file: Annotated[
        Path | None,
        typer.Option("--plot", help="Draw latency and throughput to this PNG (matplotlib)."),
    ] = None,
    context: Annotated[
        int, typer.Option("--context", help="Decoders: prompt tokens for the generate timing.")
    ] = 128,
    new_tokens: Annotated[
        int, typer.Option("--new-tokens", help="Decoders: tokens generated per prompt.")
    ] = 32,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Load through this cache folder (default: a fresh temporary one, so the "
            "cold load is cold).",
        ),
    ] = None,
) -> None:
    source, name = load_model(model or DEMO)
    asked = backend is not None  # a backend the user named (or `all`) must run
    backend = "all" if backend is None else backend
    backends: Any = "all" if backend.strip() == "all" else split_list(backend)
    if not backends:
        raise OptionError("--backend is empty; use all or names such as onnxruntime,openvino")
    batches = int_list(batch, "--batch")
    label = demo.describe() if name == DEMO else name
    with _Bars() as bars:
        report = benchmark(
            source,
            device=device,
            backends=backends,
            precision=precision_of(precision),
            batches=batches,
            duration=duration,
            warmup=warmup,
            concurrency=concurrency,
            batching=batching_of(batching),
            shapes=shapes_of(shape),
            inputs=read_inputs(inputs or [], source.inputs),
            seed=seed,
            threads=threads,
            cache_dir=cache_dir,
            progress=bars.update,
            name=name,
            context=context,
            new_tokens=new_tokens,
        )
    if json_file is not None:
        write_json(report.to_dict(samples=samples), json_file)
    if json_file != "-":
        render(report, label, named=backends != "all")
    if plot_file is not None and any(m.ok for m in report.results):
        plot(report, plot_file, title=f"{name} on {device} ({precision})")
        (out() if json_file != "-" else err()).print(f"plot written to {plot_file}")
    failed = report.failures()
    if failed:
        rows = len([m for m in report.results if not m.skipped])
        if not asked and any(m.ok for m in report.results):
            err().print(
                f"note: {len(failed)} of {rows} benchmark row(s) did not run (see above); "
                "name backends with --backend to require them"
            )
            return
        err().print(f"error: {len(failed)} of {rows} benchmark row(s) did not run (see above)")
        raise typer.Exit(EXIT_CHECK_FAILED)


def batching_of(text: str | None) -> Batching | None:
    """--batching "16" or "16,2.5" -> Batching(max_batch=16, max_delay_ms=2.5)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 1:
            return Batching(max_batch=int(parts[0]))
        if len(parts) == 2:
            return Batching(max_batch=int(parts[0]), max_delay_ms=float(parts[1]))
    except ValueError:
        pass
    raise OptionError(
        f"--batching takes MAX_BATCH or MAX_BATCH,MAX_DELAY_MS (e.g. 16,2), got {text!r}"
    )


class _Bars:
    """One rich progress bar per backend, on stderr."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", justify="left", markup=False),
            BarColumn(bar_width=24),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=err(),
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, label: str, phase: str, done: float, total: float) -> None:
        text = f"{label:<22.22} {phase:<14.14}"
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(text, total=total or 1)
        self.progress.update(self.tasks[label], description=text, completed=done)


def render(r: BenchReport, label: str, named: bool = False) -> None:
    console = out()
    mode = f"{r.concurrency} in flight" if r.concurrency > 1 else "one at a time"
    if r.batching is not None:
        b = r.batching
        mode += f" · batching up to {b.max_batch} rows, {b.max_delay_ms:g} ms"
    console.print(
        Text(f"{label}\n", style="bold")
        + Text(
            f"device {r.device} · {r.precision} · {mode}\n"
            f"{r.duration:g} s timed per backend and batch, after {r.warmup:g} s warm-up",
            style="dim",
        )
    )
    ok = [m for m in r.results if m.ok]
    if ok:
        table = Table(
            box=None, padding=(0, 1), collapse_padding=True, header_style="bold", pad_edge=False
        )
        table.add_column("backend", no_wrap=True)
        table.add_column("batch", justify="right")
        table.add_column("inputs", no_wrap=True, overflow="fold")
        for col in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s"):
            table.add_column(col, justify="right")
        # A column only where a row disagrees: rows that agree need no mark (a note says so).
        compared = any(m.agrees is False for m in ok)
        bases = {m.batch: m.baseline for m in ok if m.baseline}
        if compared:
            table.add_column("outputs", no_wrap=True)
        best = {b: r.best(b) for b in r.batches}
        for m in ok:
            name = m.backend + (" *" if m.backend == r.auto else "")
            style = "bold green" if best.get(m.batch) is m and len(ok) > 1 else None
            if m.agrees is False:
                style = "yellow"
            lat = m.latency
            extra = [_agreement(m, bases)] if compared else []
            table.add_row(
                name,
                str(m.batch),
                _shapes(m.shapes),
                fmt_ms(lat.p50 if lat else None),
                fmt_ms(lat.p90 if lat else None),
                fmt_ms(lat.p99 if lat else None),
                fmt_ms(lat.mean if lat else None),
                f"{m.throughput:,.1f}" if m.throughput is not None else "-",
                *extra,
                style=style,
            )
        console.print()
        console.print(table)
        loads = Table(box=None, padding=(0, 1), header_style="bold", pad_edge=False)
        loads.add_column("backend", no_wrap=True)
        loads.add_column("device")
        loads.add_column("precision")
        loads.add_column("load cold", justify="right")
        loads.add_column("load warm", justify="right")
        loads.add_column("runs", justify="right")
        seen = set()
        for m in ok:
            if m.backend in seen:
                continue
            seen.add(m.backend)
            runs = sum(x.runs for x in ok if x.backend == m.backend)
            loads.add_row(
                m.backend,
                m.device,
                m.precision,
                fmt_s(m.load_cold_s),
                fmt_s(m.load_warm_s),
                str(runs),
            )
        console.print()
        console.print(loads)
        decoded = [m for m in ok if m.decode is not None]
        if decoded:
            gen = Table(box=None, padding=(0, 1), header_style="bold", pad_edge=False)
            gen.add_column("generate", no_wrap=True)
            for col in ("batch", "context", "new", "first token", "ms/token", "tokens/s"):
                gen.add_column(col, justify="right")
            gen.add_column("cache", no_wrap=True)
            for m in decoded:
                d = m.decode
                assert d is not None
                gen.add_row(
                    m.backend,
                    str(d.batch),
                    str(d.context),
                    str(d.new_tokens),
                    fmt_ms(d.ttft_ms),
                    fmt_ms(d.step_ms),
                    f"{d.tokens_per_s:,.1f}",
                    d.cache,
                )
            console.print()
            console.print(gen)
        batched = [m for m in ok if m.batching is not None]
        if batched:
            counters = Table(box=None, padding=(0, 1), header_style="bold", pad_edge=False)
            counters.add_column("backend", no_wrap=True)
            for col in (
                "batch",
                "requests",
                "runs",
                "mean batch",
                "full",
                "queued p50 ms",
                "p99 ms",
                "passed",
            ):
                counters.add_column(col, justify="right")
            for m in batched:
                stats = m.batching
                assert stats is not None
                counters.add_row(
                    m.backend,
                    str(m.batch),
                    str(stats.requests),
                    str(stats.batches),
                    f"{stats.mean_batch:.1f}",
                    str(stats.full),
                    fmt_ms(stats.delay_p50_ms),
                    fmt_ms(stats.delay_p99_ms),
                    f"{stats.passed}{'' if stats.merging else '*'}",
                )
            console.print()
            console.print(counters)
            if any(m.batching is not None and m.batching.passed for m in batched):
                console.print(
                    "passed: requests run unmerged while the batcher timed passing them "
                    "through against merging (infer.Batching measure=True); *: passing "
                    "through answered more, so it is the way kept"
                )
        notes = []
        if r.auto and any(m.backend == r.auto for m in ok):
            notes.append(f"* what device={r.device!r} picks with no backend named: {r.auto_from}")
        elif r.auto:
            notes.append(
                f"device={r.device!r} with no backend named picks {r.auto} ({r.auto_from}), "
                "not timed here"
            )
        if bases:
            base = next(iter(bases.values()))
            tolerance = _race.TOLERANCE.get(r.precision, _race.TOLERANCE["fp32"])
            verdict = "each row's" if compared else "every row's agree"
            notes.append(
                f"outputs: {verdict} against {base}'s on the same feeds, as the race judges "
                f"them (within {tolerance:g} of each output's largest magnitude)"
            )
        if len(ok) > 1 and console.color_system is not None:
            notes.append("green: lowest median latency at that batch size")
        elif len(ok) > 1:  # no colours to show it: say it in words
            for size, fastest in best.items():
                if fastest is not None:
                    notes.append(f"lowest median latency at batch {size}: {fastest.backend}")
        for n in notes:
            console.print(Text(n, style="dim"))
    failed = [m for m in r.results if not m.ok]
    if failed:
        console.print()
        for m in failed:
            style = "dim" if m.skipped else "red"
            console.print(Text(f"✗ {m.backend} (batch {m.batch}): {m.error}", style=style))
    # A row passed over (it cannot take the model, or answers it wrongly) is here: say why.
    shown = [s for s in r.skipped if named or s.verdict != "unavailable"]
    for s in shown:
        console.print(Text(f"– {s.backend} on {s.device}: {s.reason}", style="dim"))
    absent = [s.backend for s in r.skipped if s not in shown]
    if absent:
        console.print(
            Text(
                f"not here: {', '.join(dict.fromkeys(absent))} (see `infer devices`)",
                style="dim",
            )
        )
    for n in r.notes:
        console.print(Text(f"note: {n}", style="dim"))


def _agreement(m: Any, bases: Any) -> str:
    """The outputs column: how a row's outputs compare with the baseline row's."""
    if m.agrees is None:
        return "baseline" if bases.get(m.batch) == m.backend else "-"
    if m.agrees:
        return "agree"
    return "disagrees" + (f": max abs {m.max_abs:.3g}" if m.max_abs is not None else "")


def _shapes(shapes: Any) -> str:
    """The input shapes a row timed: '1x3x640x640' for one input, else one line per input
    ('input_ids 1x128' / 'attention_mask 1x128'): a comma-joined list wrapped mid-name."""
    dims = {k: "x".join(map(str, v)) or "scalar" for k, v in shapes.items()}
    if len(dims) == 1:
        return next(iter(dims.values()))
    return "\n".join(f"{k} {v}" for k, v in dims.items())
