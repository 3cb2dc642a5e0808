"""How far one run's outputs are from another's, output by output: max absolute error, the
same relative to the output's scale, cosine similarity, top-1 agreement along the last axis, and pass/fail against
`rtol`/`atol` (numpy's `allclose` rule: |got - want| <= atol + rtol * |want|, NaN matching NaN).

`infer.compare`, `infer.accuracy` and the measured choice of backend all judge outputs here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RTOL = 1e-3
ATOL = 1e-4

SCALE_FLOOR = 1e-2
"""The least scale an output's differences are measured against (`OutputDiff.max_rel`): an
output that is all but zero (a detector's map of near-zero probabilities on inputs without
objects) is judged in absolute terms, where float rounding is of the size of the numbers
themselves."""


@dataclass(frozen=True)
class OutputDiff:
    """How one runner's output differs from the baseline's."""

    output: str
    runner: str
    baseline: str
    shape: tuple[int, ...] | None
    dtype: str
    max_abs: float
    max_rel: float
    """max_abs relative to the baseline output's scale: its largest finite magnitude, at least
    SCALE_FLOOR (an element-wise ratio is infinite wherever the baseline holds a 0); inf only
    where the two cannot be compared (NaN against a number, an infinity against a finite)."""
    mean_abs: float
    cosine: float | None  # None for non-numeric outputs or all-zero pairs
    top1: float | None  # fraction of rows whose argmax (last axis) agrees
    mismatched: int  # elements outside tolerance
    elements: int
    passed: bool
    note: str = ""  # why it failed when the numbers don't say (shape, dtype, NaN)


def diff(
    name: str,
    got: Sequence[Any],
    want: Sequence[Any],
    *,
    runner: str = "",
    baseline: str = "",
    rtol: float = RTOL,
    atol: float = ATOL,
    min_cosine: float | None = None,
    min_top1: float | None = None,
) -> OutputDiff:
    """Compare one output over several runs (lists of arrays, one per feed set)."""

    def result(passed: bool, note: str, **numbers: Any) -> OutputDiff:
        defaults: dict[str, Any] = dict(
            shape=None,
            dtype="",
            max_abs=float("nan"),
            max_rel=float("nan"),
            mean_abs=float("nan"),
            cosine=None,
            top1=None,
            mismatched=0,
            elements=0,
        )
        defaults.update(numbers)
        return OutputDiff(name, runner, baseline, passed=passed, note=note, **defaults)

    if any(g is None for g in got):
        return result(False, f"{runner} has no output {name!r}")
    if any(w is None for w in want):
        return result(False, f"{baseline} has no output {name!r}")
    a_list = [np.asarray(g) for g in got]
    b_list = [np.asarray(w) for w in want]
    shape = tuple(a_list[0].shape)
    dtype = str(a_list[0].dtype)
    for a, b in zip(a_list, b_list):
        if a.shape != b.shape:
            return result(
                False, f"shape {list(a.shape)} != {list(b.shape)}", shape=shape, dtype=dtype
            )
    if any(a.dtype == object or b.dtype == object for a, b in zip(a_list, b_list)):
        same = all(np.array_equal(a.astype(str), b.astype(str)) for a, b in zip(a_list, b_list))
        count = sum(a.size for a in a_list)
        return result(
            same,
            "" if same else "non-numeric values differ",
            shape=shape,
            dtype=dtype,
            elements=count,
            mismatched=0 if same else count,
            max_abs=0.0 if same else float("nan"),
            max_rel=0.0 if same else float("nan"),
            mean_abs=0.0 if same else float("nan"),
        )
    a = np.concatenate([x.astype(np.float64).reshape(-1) for x in a_list])
    b = np.concatenate([x.astype(np.float64).reshape(-1) for x in b_list])
    exact = all(x.dtype.kind in "biu" for x in (*a_list, *b_list))
    both_nan = np.isnan(a) & np.isnan(b)
    nan_mismatch = int(np.sum(np.isnan(a) != np.isnan(b)))
    err = np.where(both_nan, 0.0, np.abs(a - b))
    err = np.where(np.isnan(err), np.inf, err)  # NaN against a number: as far apart as it gets
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    err = np.where(same_inf, 0.0, err)
    scale = np.abs(b)
    finite_scale = scale[np.isfinite(scale)]
    output_scale = max(float(finite_scale.max()) if finite_scale.size else 0.0, SCALE_FLOOR)
    limit = 0.0 if exact else atol + rtol * np.where(np.isfinite(scale), scale, 0.0)
    bad = err > limit
    mismatched = int(np.sum(bad))
    cosine = _cosine(a, b)
    top1 = argmax_agreement(a_list, b_list)
    notes = []
    if nan_mismatch:
        notes.append(f"{nan_mismatch} NaN(s) where the other has a number")
    passed = mismatched == 0
    if min_cosine is not None and (cosine is None or cosine < min_cosine):
        passed = False
        notes.append(f"cosine below {min_cosine}")
    if min_top1 is not None and top1 is not None and top1 < min_top1:
        passed = False
        notes.append(f"top-1 below {min_top1}")
    finite = err[np.isfinite(err)]
    return result(
        passed,
        "; ".join(notes),
        shape=shape,
        dtype=dtype,
        max_abs=float(err.max()) if err.size else 0.0,
        max_rel=float(err.max()) / output_scale if err.size else 0.0,
        mean_abs=float(finite.mean()) if finite.size else (0.0 if not err.size else float("inf")),
        cosine=cosine,
        top1=top1,
        mismatched=mismatched,
        elements=int(a.size),
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if a.size == 0 or na == 0 or nb == 0:
        return 1.0 if a.size and na == nb == 0 else None
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def argmax_agreement(a_list: Sequence[np.ndarray], b_list: Sequence[np.ndarray]) -> float | None:
    """Agreement of argmax over the last axis, for float outputs with more than one class
    (None otherwise)."""
    if not a_list or a_list[0].ndim == 0 or a_list[0].shape[-1] < 2:
        return None
    if a_list[0].dtype.kind in "biuO":
        return None
    agree = total = 0
    for a, b in zip(a_list, b_list):
        ia = np.argmax(a.reshape(-1, a.shape[-1]), axis=-1)
        ib = np.argmax(b.reshape(-1, b.shape[-1]), axis=-1)
        agree += int(np.sum(ia == ib))
        total += ia.size
    return agree / total if total else None
