"""`infer build MODEL`: build and cache now what `Engine.load` would build on first use."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..cache import Cache
from ..engine import Engine
from ..errors import InferError, InputError, OptionError
from ..feeds import parse_shape, random_feeds, representative_shapes
from ._cache import Item, scan
from ._common import (
    DeviceOpt,
    ModelArg,
    PrecisionOpt,
    err,
    fmt_bytes,
    fmt_s,
    help_text,
    load_model,
    out,
    precision_of,
    split_list,
)
from ._int8 import (
    AcceptBestOpt,
    CalibrationOpt,
    Int8Args,
    LimitOpt,
    MaxDropOpt,
    MaxRelErrorOpt,
    MinSpeedupOpt,
    NoBudgetOpt,
    TimeLimitOpt,
    ValidationOpt,
)

HELP = help_text(
    "Build what loading the model needs (a TensorRT plan, OpenVINO's compiled model "
    "cache, an fp16 or int8 model) and keep it in the cache, so Engine.load with the "
    "same arguments starts warm. int8 calibrates on --calibration: a folder of .npy "
    "(single-input models), .npz (one array per input) or image files (resized to the "
    "input, scaled to [0, 1]); the int8 graph is measured against fp32 (an accuracy "
    "budget: --max-drop, --max-rel-error, --min-speedup, on --validation or held-out "
    "samples) and the nodes that cost the most stay in float; it fails when no graph "
    "faster than fp32 meets the budget (--accept-best keeps the best found). The result "
    "is run once on random inputs at the shapes `infer run` takes (--no-check skips it); "
    "exit status 1 when that check run fails, 2 when the model cannot be built.",
    "infer build model.onnx --device cuda --precision fp16",
    "infer build model.onnx -d cpu -p int8 --calibration samples/",
    "infer build model.onnx -p int8 --calibration samples/ --validation val/ --max-drop 0.02",
    "infer build model.onnx -d cuda --shape x=1x3x64x64:8x3x64x64:16x3x64x64",
)


def register(app: typer.Typer) -> None:
    app.command("build", help=HELP, short_help="Build and cache what loading the model needs.")(
        build_command
    )


def build_command(
    model: ModelArg,
    device: DeviceOpt = "auto",
    backend: Annotated[
        str | None,
        typer.Option("--backend", "-b", help="Backend to build for (default: what auto picks)."),
    ] = None,
    precision: PrecisionOpt = "fp32",
    calibration: CalibrationOpt = None,
    limit: LimitOpt = None,
    validation: ValidationOpt = None,
    max_drop: MaxDropOpt = Int8Args.max_drop,
    max_rel_error: MaxRelErrorOpt = Int8Args.max_rel_error,
    min_speedup: MinSpeedupOpt = Int8Args.min_speedup,
    time_limit: TimeLimitOpt = Int8Args.time_limit,
    accept_best: AcceptBestOpt = False,
    no_budget: NoBudgetOpt = False,
    shape: Annotated[
        list[str] | None,
        typer.Option(
            "--shape",
            help="INPUT=SHAPE or INPUT=MIN:OPT:MAX for backends that build for fixed shapes "
            "(TensorRT profiles), e.g. x=1x3x64x64:4x3x64x64:8x3x64x64.",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Run the result once on random inputs.")
    ] = True,
) -> None:
    source, name = load_model(model)
    precision = precision_of(precision)
    names = split_list(backend)
    chosen = names[0] if len(names) == 1 else (names or None)
    shapes = _shapes(shape or [])
    samples: Any = None
    int8 = Int8Args(
        calibration,
        limit,
        validation,
        max_drop,
        max_rel_error,
        min_speedup,
        time_limit,
        accept_best,
        no_budget,
    )
    if calibration is not None:
        if precision != "int8":
            raise OptionError(f"--calibration is for --precision int8, not {precision}")
        opt = {
            k: v[1] if isinstance(v, tuple) and v and isinstance(v[0], tuple) else v
            for k, v in shapes.items()
        }
        samples = int8.calibration_for(source, name, opt)
        err().print(int8.describe(samples, source, opt))
    cache = Cache()
    before = {i.path: i for i in scan(cache)}
    start = time.perf_counter()
    with _Stages() as stages:
        # With no backend named, race the candidates now and keep the verdict: a later
        # Engine.load of the model on this device compiles the winner alone.
        engine = Engine.load(
            source,
            device,
            backend=chosen,
            precision=precision,
            calibration=samples,
            shapes=shapes or None,
            choose="measure",
            progress=stages.update,
        )
    seconds = time.perf_counter() - start
    console = out()
    with engine:
        console.print(
            Text(f"{name}", style="bold")
            + Text(
                f": built for {engine.backend} on {engine.device} ({engine.precision}) "
                f"in {fmt_s(seconds)}"
            )
        )
        chosen_attempt = next((a for a in engine.selection if a.verdict == "selected"), None)
        summary = chosen_attempt.reason if chosen_attempt is not None else ""
        if summary:
            console.print(Text(f"  {summary}", style="dim"))
        if engine.precision_report is not None:
            console.print(Text(str(engine.precision_report), style="dim"))
        failed = None
        if check:
            # At the shapes `infer run` takes (a dynamic dimension at 1 breaks detectors).
            start = time.perf_counter()
            shown = ""
            try:
                resolved, _ = representative_shapes(engine.inputs, shapes, model=engine.model)
                shown = " at " + ", ".join(
                    f"{k}={'x'.join(map(str, v))}" for k, v in resolved.items()
                )
                engine.run(random_feeds(engine.inputs, resolved, roles=engine.roles))
            except InferError as e:
                failed = f"the check run on random inputs{shown} failed: {e}"
            else:
                took = fmt_s(time.perf_counter() - start)
                console.print(
                    Text(f"  checked: one run on random inputs{shown}, {took}", style="dim")
                )
    after = scan(cache)
    changed = [i for i in after if _changed(before.get(i.path), i)]
    if not changed:
        console.print(
            f"nothing new in the cache: {engine.backend} keeps no artifact for this model, "
            f"or the cache held it already (this load took {fmt_s(seconds)})"
        )
    else:
        console.print(f"cached in {cache.root}:")
        for i in changed:
            what = "runtime cache" if i.managed else "entry"
            console.print(
                f"  {i.kind}/{i.path.name[:10]}  {what}, {i.files} files, {fmt_bytes(i.size)}"
            )
    if failed is not None:
        err().print(
            f"error: {failed}\n  (what was built stays cached; --shape sizes the check run, "
            "--no-check skips it)"
        )
        from ._app import EXIT_CHECK_FAILED  # here: _app imports this module to register it

        raise typer.Exit(EXIT_CHECK_FAILED)


def _changed(old: Item | None, new: Item) -> bool:
    return old is None or (old.size, old.files, old.created) != (new.size, new.files, new.created)


def _shapes(items: list[str]) -> dict[str, Any]:
    """--shape INPUT=SHAPE or INPUT=MIN:OPT:MAX -> Engine.load's shapes."""
    shapes: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--shape {item!r}: expected INPUT=SHAPE or INPUT=MIN:OPT:MAX")
        parts = value.split(":")
        if len(parts) == 1:
            shapes[name.strip()] = parse_shape(parts[0])
        elif len(parts) == 3:
            shapes[name.strip()] = tuple(parse_shape(p) for p in parts)
        else:
            raise InputError(f"--shape {item!r}: give one shape or three (MIN:OPT:MAX)")
    return shapes


class _Stages:
    """A progress bar per stage reported through Engine.load(progress=...), on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or err(),
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Stages:
        self.progress.start()
        self.tasks["load"] = self.progress.add_task("loading", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(f"{stage:<24.24}", total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)
