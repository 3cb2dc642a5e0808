"""The int8 options `infer build` and `infer compare` share: calibration data and the budget."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ..budget import Budget
from ..calibration import Calibration
from ..errors import OptionError
from ..feeds import IMAGE_SUFFIXES, read_samples, sample_image_size
from ..model import Model, ModelFormat

CalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        help="Folder of calibration samples for int8: .npy (single-input models), .npz (one "
        "array per input) or images (resized to the size `infer run` uses: --shape, else the "
        "model's metadata such as imgsz, else its kind's; scaled to [0, 1]).",
    ),
]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", help="Use at most this many calibration samples.")
]
ValidationOpt = Annotated[
    Path | None,
    typer.Option(
        "--validation",
        help="Folder of samples the int8 budget is measured on (default: 1 in 5 calibration "
        "samples, held out of calibration).",
    ),
]
MaxDropOpt = Annotated[
    float,
    typer.Option(
        "--max-drop",
        help="Budget: how far argmax agreement with fp32 (last axis) may fall below 100%.",
    ),
]
MaxRelErrorOpt = Annotated[
    float,
    typer.Option("--max-rel-error", help="Budget: relative error allowed on other outputs."),
]
MinSpeedupOpt = Annotated[
    float,
    typer.Option("--min-speedup", help="Budget: int8 must be this many times as fast as fp32."),
]
TimeLimitOpt = Annotated[
    float,
    typer.Option("--time-limit", help="Seconds the search for nodes to keep in float may take."),
]
AcceptBestOpt = Annotated[
    bool,
    typer.Option(
        "--accept-best", help="When the budget is missed, keep the best graph found (and say so)."
    ),
]
NoBudgetOpt = Annotated[
    bool,
    typer.Option("--no-budget", help="Quantize without measuring against fp32 (no guard)."),
]

_DEFAULT = Budget()


@dataclass(frozen=True)
class Int8Args:
    """The int8 options as given on the command line."""

    calibration: Path | None = None
    limit: int | None = None
    validation: Path | None = None
    max_drop: float = _DEFAULT.max_drop
    max_rel_error: float = _DEFAULT.max_rel_error
    min_speedup: float = _DEFAULT.min_speedup or 1.0
    time_limit: float = _DEFAULT.time_limit
    accept_best: bool = False
    no_budget: bool = False

    def calibration_for(
        self, source: Model, name: str, shapes: dict[str, Any] | None = None
    ) -> Calibration | None:
        """The Calibration these options describe for `source` (None without --calibration)."""
        if self.calibration is None:
            if self.validation is not None:
                raise OptionError(
                    "--validation measures int8 calibrated on --calibration: give both"
                )
            return None
        if source.format is not ModelFormat.ONNX:
            raise OptionError(f"--calibration needs an ONNX model; {name} is {source.format}")
        data = read_samples(self.calibration, source.inputs, shapes, limit=self.limit, model=source)
        budget = None
        if not self.no_budget:
            validation = (
                read_samples(self.validation, source.inputs, shapes, model=source)
                if self.validation is not None
                else None
            )
            budget = Budget(
                max_drop=self.max_drop,
                max_rel_error=self.max_rel_error,
                min_speedup=self.min_speedup,
                time_limit=self.time_limit,
                accept_best=self.accept_best,
                validation=validation,
            )
        return Calibration(data, budget=budget)

    def describe(
        self, calib: Calibration, source: Model, shapes: dict[str, Any] | None = None
    ) -> str:
        data = calib.data
        count = len(data) if isinstance(data, Sized) else "?"
        where = f"{count} samples from {self.calibration}"
        folders = [f for f in (self.calibration, self.validation) if f is not None]
        if any(p.suffix.lower() in IMAGE_SUFFIXES for f in folders for p in Path(f).iterdir()):
            size = sample_image_size(source.inputs, shapes, model=source)
            if size is not None:
                (h, w), why = size
                where += f" (images resized to {h}x{w}: {why})"
        if calib.budget is None:
            return f"calibration: {where}; no budget (--no-budget)"
        on = f"{self.validation}" if self.validation else "1 in 5 held out"
        return f"calibration: {where}; budget: {calib.budget.describe()}, measured on {on}"
