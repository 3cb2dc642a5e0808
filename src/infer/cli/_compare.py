"""`infer compare MODEL`: the same feeds through several backends; exit 1 when they disagree."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .._diff import ATOL, RTOL, SCALE_FLOOR
from ..compare import Comparison, compare, parse_runner
from ..engine import Engine
from ..errors import OptionError
from ..feeds import read_inputs
from ..model import Model
from ._app import EXIT_CHECK_FAILED
from ._common import (
    DeviceOpt,
    InputOpt,
    ModelArg,
    PrecisionOpt,
    SeedOpt,
    ShapeOpt,
    err,
    fmt_num,
    fmt_s,
    help_text,
    load_model,
    out,
    precision_of,
    shapes_of,
    split_list,
    write_json,
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
    "Run the same seeded inputs through several backends and compare every output with "
    "the first backend's (or with --expected outputs): max absolute and relative error, "
    "cosine similarity, top-1 agreement, and pass/fail against --rtol/--atol "
    "(|got - want| <= atol + rtol * |want|). Exits 1 when any output fails, for CI. "
    "Append @PRECISION to a backend to compare precisions, e.g. onnxruntime@int8; int8 "
    "calibrates on --calibration and is held to its budget as `infer build` is.",
    "infer compare model.onnx -b onnxruntime,openvino,reference",
    "infer compare model.onnx -b onnxruntime,onnxruntime@int8 --calibration samples/ "
    "--min-top1 0.99",
    "infer run good.onnx --save want.npz",
    "infer compare new.onnx -b onnxruntime --expected want.npz",
)


def register(app: typer.Typer) -> None:
    app.command(
        "compare", help=HELP, short_help="Compare outputs across backends; exit 1 if they differ."
    )(compare_command)


def compare_command(
    model: ModelArg,
    backends: Annotated[
        str | None,
        typer.Option(
            "--backends",
            "-b",
            help="Backends, first is the baseline (default: every one here that can; "
            "those that cannot load the model are left out, with the reason).",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance.")] = RTOL,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = ATOL,
    min_cosine: Annotated[
        float | None, typer.Option("--min-cosine", help="Also require this cosine similarity.")
    ] = None,
    min_top1: Annotated[
        float | None, typer.Option("--min-top1", help="Also require this top-1 agreement.")
    ] = None,
    inputs: InputOpt = None,
    shape: ShapeOpt = None,
    seed: SeedOpt = 0,
    runs: Annotated[
        int, typer.Option("--runs", help="Random feed sets to compare on (seeds seed, seed+1...).")
    ] = 1,
    expected: Annotated[
        str | None,
        typer.Option(
            "--expected",
            help="Known-good outputs (.npz, e.g. from `infer run --save`) as the baseline.",
        ),
    ] = None,
    json_file: Annotated[
        str | None, typer.Option("--json", help="Write the report as JSON (- for stdout).")
    ] = None,
    calibration: CalibrationOpt = None,
    limit: LimitOpt = None,
    validation: ValidationOpt = None,
    max_drop: MaxDropOpt = Int8Args.max_drop,
    max_rel_error: MaxRelErrorOpt = Int8Args.max_rel_error,
    min_speedup: MinSpeedupOpt = Int8Args.min_speedup,
    time_limit: TimeLimitOpt = Int8Args.time_limit,
    accept_best: AcceptBestOpt = False,
    no_budget: NoBudgetOpt = False,
) -> None:
    source, name = load_model(model)
    names = split_list(backends) if backends is not None else None
    if names is not None and not names:
        raise OptionError("--backends is empty; give names such as onnxruntime,reference")
    if runs < 1:
        raise OptionError(f"--runs must be >= 1, got {runs}")
    given = read_inputs(inputs or [], source.inputs)
    want = read_inputs([expected], source.outputs) if expected else None
    if want is not None and runs != 1:
        raise OptionError("--expected holds one set of outputs; use it with --runs 1")
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
    loaded = _int8_runners(source, name, names, device, precision_of(precision), shape, int8)
    runners = [loaded.get(i, n) for i, n in enumerate(names)] if names is not None else None
    try:
        result = compare(
            source,
            runners,
            given or None,
            device=device,
            precision=precision_of(precision),
            rtol=rtol,
            atol=atol,
            min_cosine=min_cosine,
            min_top1=min_top1,
            expected=want,
            seed=seed,
            runs=runs,
            shapes=shapes_of(shape),
        )
    finally:
        for engine in loaded.values():
            engine.close()
    if json_file is not None:
        data = result.to_dict()
        data["model"] = name
        write_json(data, json_file)
    if json_file != "-":
        render(result, name)
    if not result.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _int8_runners(
    source: Model,
    name: str,
    names: list[str] | None,
    device: str,
    precision: str,
    shape: list[str] | None,
    int8: Int8Args,
) -> dict[int, Engine]:
    """Engines for the int8 runners, calibrated and budgeted by the command's options (compare()
    loads the others itself). Without --calibration, compare() loads them and says what is
    missing."""
    if int8.calibration is None:
        if int8.validation is not None:
            raise OptionError("--validation measures int8 calibrated on --calibration: give both")
        return {}
    wanted = [(i, *parse_runner(n, precision)) for i, n in enumerate(names or [])]
    if not any(p == "int8" for _, _, p in wanted):
        raise OptionError(
            "--calibration is for int8 runners: name one, e.g. -b onnxruntime,onnxruntime@int8"
        )
    calib = int8.calibration_for(source, name, shapes_of(shape))
    assert calib is not None
    err().print(int8.describe(calib, source, shapes_of(shape)))
    loaded: dict[int, Engine] = {}
    try:
        for i, backend, prec in wanted:
            if prec == "int8":
                loaded[i] = Engine.load(
                    source, device, backend=backend, precision="int8", calibration=calib
                )
    except BaseException:
        for engine in loaded.values():
            engine.close()
        raise
    return loaded


def render(c: Comparison, name: str) -> None:
    console = out()
    feeds = ", ".join(f"{n}: {d}[{', '.join(map(str, s))}]" for n, s, d in c.feeds)
    console.print(
        Text(f"{name}", style="bold") + Text(f"  ({feeds}; {c.runs} run(s))", style="dim")
    )
    for n in c.notes:
        console.print(Text(f"note: {n}; set it with --shape", style="dim"))
    runners = Table(box=None, padding=(0, 1), header_style="bold", pad_edge=False)
    for col in ("", "backend", "ran as", "precision", "load", "run"):
        runners.add_column(col, justify="right" if col in ("load", "run") else "left")
    for i, r in enumerate(c.runners):
        role = "baseline" if i == 0 else ""
        runners.add_row(
            role,
            r.label,
            f"{r.backend} on {r.device}" if r.backend else "-",
            r.precision or "-",
            fmt_s(r.load_s),
            fmt_s(r.run_s),
        )
    console.print(runners)
    for label, why in c.known_wrong.items():
        console.print(
            Text(f"! {label} is known to answer this model wrongly: {why}", style="yellow")
        )
    for a in c.skipped:
        why = a.reason.strip().splitlines()[0] if a.reason.strip() else a.verdict
        console.print(Text(f"– left out {a.backend} on {a.device}: {why}", style="dim"))
    console.print()
    table = Table(box=None, padding=(0, 1), header_style="bold", pad_edge=False)
    table.add_column("output", overflow="fold")
    table.add_column("backend", overflow="fold")
    for col in ("max abs", "max rel", "cosine", "top-1"):
        table.add_column(col, justify="right")
    table.add_column("", no_wrap=True)
    for d in c.diffs:
        verdict = Text("pass", style="green") if d.passed else Text("FAIL", style="bold red")
        if d.runner in c.known_wrong:
            verdict = (
                Text("pass", style="green") if d.passed else Text("off (known)", style="yellow")
            )
        table.add_row(
            d.output,
            d.runner,
            fmt_num(d.max_abs),
            fmt_num(d.max_rel),
            "-" if d.cosine is None else f"{d.cosine:.6f}",
            "-" if d.top1 is None else f"{d.top1:.1%}",
            verdict,
        )
    console.print(table)
    console.print(
        Text(
            f"  max rel: max abs over the output's largest magnitude (at least {SCALE_FLOOR:g})",
            style="dim",
        )
    )
    for d in c.failures():
        detail = f"{d.mismatched} of {d.elements} elements outside tolerance"
        if d.note:
            detail = f"{d.note}; {detail}" if d.elements else d.note
        console.print(Text(f"  {d.runner} / {d.output}: {detail}", style="red"))
    limits = f"rtol {c.rtol:g}, atol {c.atol:g}"
    if c.min_cosine is not None:
        limits += f", cosine >= {c.min_cosine:g}"
    if c.min_top1 is not None:
        limits += f", top-1 >= {c.min_top1:g}"
    verdict = Text("PASS", style="bold green") if c.passed else Text("FAIL", style="bold red")
    console.print(verdict + Text(f" against {c.baseline} ({limits})"))
