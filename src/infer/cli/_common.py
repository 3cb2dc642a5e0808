"""What the commands share: options, model loading, consoles, number formatting, JSON output."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from .. import demo
from ..errors import OptionError
from ..feeds import parse_shapes
from ..model import Model
from ..options import PRECISIONS

DEMO = "demo"


def help_text(summary: str, *examples: str) -> str:
    """A command's help: a one-paragraph summary, then examples (kept under 78 columns)."""
    lines = "\n".join(f"$ {e}" for e in examples)
    return f"{summary}\n\nExamples:\n\n{lines}" if examples else summary


# -- options used by several commands ------------------------------------------------------------

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Model file (.onnx, TensorRT plan, OpenVINO .xml, Core ML), or `demo`.",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", "-d", help="auto, cpu, cuda[:N], gpu[:N], npu or ane.", show_default=True
    ),
]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", "-p", help=f"One of {', '.join(PRECISIONS)}.")
]
ShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--shape",
        help="INPUT=1x3x224x224 (a whole input) or DIM=4 (a named dimension); repeatable. "
        "Dynamic dimensions not named are sized as a real run would be (noted).",
        show_default=False,
    ),
]
InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        help="NAME=FILE.npy, NAME=VALUE (e.g. sr=16000) or FILE.npz; repeatable. "
        "Inputs not given are random (seeded).",
        show_default=False,
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for random inputs.")]


def load_model(text: str) -> tuple[Model, str]:
    """The model a MODEL argument names, and a short name for it (`demo`: the built-in one)."""
    if text == DEMO and not Path(text).exists():
        return Model.load(demo.model()), DEMO
    model = Model.load(text)
    return model, Path(text).name


def shapes_of(items: Sequence[str] | None) -> dict[str, Any]:
    return parse_shapes(items or [])


def precision_of(text: str) -> str:
    if text not in PRECISIONS:
        raise OptionError(f"--precision {text!r} is not valid; use one of {', '.join(PRECISIONS)}")
    return text


def split_list(text: str | None) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(t) for t in split_list(text)]
    except ValueError:
        raise OptionError(f"{option} {text!r}: expected integers separated by commas") from None
    if not values or any(v < 1 for v in values):
        raise OptionError(f"{option} {text!r}: expected positive integers, e.g. 1,4,16")
    return values


# -- output ----------------------------------------------------------------------------------------


def out() -> Console:
    """Console for results (stdout). Markup is off: names like "onnxruntime[cpu]" print as
    they are; styles are set with rich.text.Text."""
    return Console(highlight=False, markup=False, soft_wrap=False)


def err() -> Console:
    """Console for progress and notes (stderr), so stdout stays clean for results."""
    return Console(stderr=True, highlight=False, markup=False)


def write_json(data: Any, target: str) -> None:
    """Write `data` as JSON to a file, or to stdout for "-"."""
    text = json.dumps(data, indent=2, default=_json_default, allow_nan=True)
    if target == "-":
        sys.stdout.write(text + "\n")
        return
    Path(target).write_text(text + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def fmt_count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def fmt_ms(ms: float | None) -> str:
    if ms is None or math.isnan(ms):
        return "-"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"
