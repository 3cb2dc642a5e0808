"""`infer run MODEL`: run once on given or seeded random inputs; print or save the outputs."""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table
from rich.text import Text

from ..engine import Engine
from ..errors import InputError, OptionError
from ..feeds import random_feeds, read_inputs, representative_shapes, roles_of
from ..model import ModelFormat
from ..tensors import dtype_info
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

log = logging.getLogger(__name__)

HELP = help_text(
    "Run a model once and show its outputs. Inputs not given with --input are random "
    "(uniform [0, 1) floats, 0/1 integers), the same for the same --seed; dynamic "
    "dimensions take their size from --shape, else from the model's metadata, else a "
    "size a model of that kind takes (batch 1, a detector's 640x640, ...), noted.",
    "infer run model.onnx --shape images=1x3x640x640 --save out.npz",
    "infer run vad.onnx -i input=chunk.npy -i sr=16000 --backend openvino",
    "infer run model.onnx -p int8 --calibration samples/",
)


def register(app: typer.Typer) -> None:
    app.command("run", help=HELP, short_help="Run a model once on given or random inputs.")(
        run_command
    )


def run_command(
    model: ModelArg,
    inputs: InputOpt = None,
    device: DeviceOpt = "auto",
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend", "-b", help="Backend to use, or several in order (a,b); default: auto."
        ),
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
    shape: ShapeOpt = None,
    seed: SeedOpt = 0,
    save: Annotated[
        Path | None, typer.Option("--save", help="Write the outputs to this .npz file.")
    ] = None,
    save_inputs: Annotated[
        Path | None,
        typer.Option("--save-inputs", help="Write the inputs used to this .npz file."),
    ] = None,
) -> None:
    source, name = load_model(model)
    names = split_list(backend)
    if backend is not None and not names:
        raise OptionError("--backend is empty; give a backend name such as onnxruntime")
    chosen = names[0] if len(names) == 1 else (names or None)
    shapes = shapes_of(shape)
    given = read_inputs(inputs or [], source.inputs)
    onnx = source.format is ModelFormat.ONNX
    build_shapes = None
    if shapes and onnx:
        # Backends that fix shapes when they build (TensorRT) build for exactly these.
        build_shapes, _ = representative_shapes(source.inputs, shapes, arrays=given, model=source)
    precision = precision_of(precision)
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
    if calibration is not None and precision != "int8":
        raise OptionError(f"--calibration is for --precision int8, not {precision}")
    samples = int8.calibration_for(source, name, shapes)
    if samples is not None:
        err().print(int8.describe(samples, source, shapes))
    start = time.perf_counter()
    with Engine.load(
        source,
        device,
        backend=chosen,
        precision=precision,
        calibration=samples,
        shapes=build_shapes,
    ) as engine:
        load_s = time.perf_counter() - start
        # Dimension names are the ONNX model's: a backend that compiled static shapes (OpenVINO
        # given shapes=) reports none.
        declared = source.inputs if onnx else engine.inputs
        resolved, notes = representative_shapes(declared, shapes, arrays=given, model=source)
        feeds = random_feeds(
            engine.inputs, resolved, seed=seed, given=given, roles=roles_of(declared, source)
        )
        for note in notes:
            err().print(Text(f"note: dynamic dimension {note}; set it with --shape", style="dim"))
        start = time.perf_counter()
        outputs = engine.run(feeds)
        run_s = time.perf_counter() - start
        console = out()
        console.print(
            f"{name}: {engine.backend} on {engine.device} ({engine.precision}); "
            f"loaded in {fmt_s(load_s)}, ran in {fmt_s(run_s)}"
        )
        table = Table(box=None, padding=(0, 1), header_style="bold")
        for col in ("", "name", "dtype", "shape", "min", "max", "mean"):
            table.add_column(col, justify="right" if col in ("min", "max", "mean") else "left")
        for spec in engine.inputs:
            arr = feeds[spec.name]
            kind = "input" if spec.name in given else f"random({seed})"
            table.add_row(kind, *_row(spec.name, arr))
        for oname, arr in outputs.items():
            table.add_row("output", *_row(oname, arr))
        console.print(table)
    if save is not None:
        _savez(_npz(save), {k: np.asarray(v) for k, v in outputs.items()})
        out().print(f"outputs saved to {_npz(save)}")
    if save_inputs is not None:
        _savez(_npz(save_inputs), feeds)
        out().print(f"inputs saved to {_npz(save_inputs)}")


def _savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez(path, **arrays) for any tensor names: savez takes arrays named like its own
    arguments ("file", ...) as those (a TypeError, or an array missing from the file)."""
    plain = {name: _plain(name, arr) for name, arr in arrays.items()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, arr in plain.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


def _plain(name: str, value: Any) -> np.ndarray:
    """An array .npy holds as plain data: strings as fixed-width unicode."""
    arr = np.asanyarray(value)
    if arr.dtype == object:
        if not all(isinstance(x, str) for x in arr.flat):
            raise InputError(
                f"{name!r} holds Python objects (a sequence or a map), which .npz files keep "
                "only as serialized Python objects; --save writes tensors"
            )
        arr = arr.astype(str)
    return arr


def _npz(path: Path) -> Path:
    """The file np.savez writes: it adds .npz when the name lacks it."""
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _row(name: str, arr: object) -> list[str]:
    if not isinstance(arr, np.ndarray):
        return [name, type(arr).__name__, "-", "", "", ""]
    try:
        dtype = dtype_info(arr.dtype).name
    except KeyError:
        dtype = str(arr.dtype)
    shape = "[" + ", ".join(str(d) for d in arr.shape) + "]"
    if arr.size == 0 or arr.dtype == object:
        return [name, dtype, shape, "-", "-", "-"]
    values = arr.astype(np.float64) if arr.dtype != np.float64 else arr
    return [
        name,
        dtype,
        shape,
        fmt_num(float(np.min(values))),
        fmt_num(float(np.max(values))),
        fmt_num(float(np.mean(values))),
    ]
