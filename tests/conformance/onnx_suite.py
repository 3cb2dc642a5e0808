"""The ONNX backend test suite run through `infer.onnx_backend`, one backend per test module.

`suite_cases(label)` builds onnx's `BackendTest` for a backend label ("onnxruntime", "openvino",
"reference" or "auto"), applies known_failures.toml (strict xfails and tolerance overrides) and
returns the unittest classes a test module puts in its globals.
"""

from __future__ import annotations

import functools
import locale
import re
import sys
import unittest
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KNOWN_FAILURES = Path(__file__).with_name("known_failures.toml")
LABELS = ("onnxruntime", "openvino", "reference", "auto")
CATEGORIES = ("op:unsupported", "op:no-kernel", "dtype", "shape", "numeric", "env")
# How a test listed under "auto" fails: the default choice may refuse a model or fail to run it
# (an InferError), never answer wrongly, except for random draws and the suite's own bad data.
OUTCOMES = ("error", "random", "test-data")
RANDOM_TESTS = re.compile(r"^test_(bernoulli|training_dropout)")
"""The tests of random ops (Bernoulli, Dropout in training mode): the only ones where `auto`
may return other numbers than the expected ones."""

# Passing CPU tests each backend must reach (issue 9, measured with onnx 1.23.2 / onnxruntime
# 1.32.0: onnxruntime's own backend passes 1,697 of 2,033). Known failures are strict xfails, so
# "every other collected test passes" plus these floors is the whole bar.
BARS = {"onnxruntime": 1848, "openvino": 1621, "reference": 2016, "auto": 2017}


@dataclass(frozen=True)
class Failure:
    pattern: re.Pattern[str]
    backends: tuple[str, ...]
    category: str
    note: str
    requires: str | None = None
    strict: bool = True
    """False only for tests whose outcome is random (an unseeded draw that may match by chance)."""
    outcome: str | None = None
    """For entries listing "auto": "error" (an InferError at load or run), "random" (a random
    op's draw differs) or "test-data" (the suite's expected data cannot be compared)."""

    def raises(self) -> type[BaseException] | None:
        """The exception the test must fail with under "auto": any other is a failure."""
        if self.outcome == "error":
            from infer import InferError

            return InferError
        return {"random": AssertionError, "test-data": TypeError}.get(self.outcome or "")

    def applies(self, label: str) -> bool:
        return label in self.backends and not (self.requires and requirement_met(self.requires))


@dataclass(frozen=True)
class Tolerance:
    pattern: re.Pattern[str]
    backends: tuple[str, ...]
    rtol: float | None
    atol: float | None
    note: str


@dataclass(frozen=True)
class KnownFailures:
    failures: tuple[Failure, ...]
    tolerances: tuple[Tolerance, ...]

    def xfails(self, label: str, name: str) -> list[Failure]:
        return [f for f in self.failures if f.applies(label) and f.pattern.search(name)]

    def tolerance(self, label: str, name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.tolerances:
            if label in t.backends and t.pattern.search(name):
                if t.rtol is not None:
                    out["rtol"] = t.rtol
                if t.atol is not None:
                    out["atol"] = t.atol
        return out


def _backends(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    raw = entry.get("backends", entry.get("backend"))
    names = (raw,) if isinstance(raw, str) else tuple(raw or ())
    bad = [n for n in names if n not in LABELS]
    if not names or bad:
        raise ValueError(f"{where}: backends must be some of {LABELS}, got {raw!r}")
    return names


def _pattern(entry: Mapping[str, Any], where: str) -> re.Pattern[str]:
    try:
        return re.compile(entry["pattern"])
    except (KeyError, re.error) as e:
        raise ValueError(f"{where}: pattern must be a valid regex: {e}") from e


def _note(entry: Mapping[str, Any], where: str) -> str:
    note = str(entry.get("note", "")).strip()
    if not note:
        raise ValueError(f"{where}: every entry needs a note saying why")
    return " ".join(note.split())


@functools.cache
def known_failures(path: Path = KNOWN_FAILURES) -> KnownFailures:
    """known_failures.toml parsed and checked; a malformed entry raises ValueError naming it."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    unknown = set(data) - {"failure", "tolerance"}
    if unknown:
        raise ValueError(f"{path.name}: unknown tables {sorted(unknown)}")
    failures = []
    for i, e in enumerate(data.get("failure", [])):
        where = f"{path.name} failure #{i + 1} ({e.get('pattern')!r})"
        extra = set(e) - {
            "pattern",
            "backends",
            "backend",
            "category",
            "note",
            "requires",
            "strict",
            "outcome",
        }
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)}")
        if e.get("category") not in CATEGORIES:
            raise ValueError(
                f"{where}: category must be one of {CATEGORIES}, got {e.get('category')!r}"
            )
        requires = e.get("requires")
        if (e["category"] == "env") != (requires is not None):
            raise ValueError(f"{where}: 'env' entries, and only they, name what they require")
        if requires is not None and requires.partition(":")[0] not in _REQUIREMENTS:
            raise ValueError(f"{where}: requires must start with one of {sorted(_REQUIREMENTS)}")
        strict = e.get("strict", True)
        if not isinstance(strict, bool) or (not strict and e["category"] != "numeric"):
            raise ValueError(
                f"{where}: strict = false is for 'numeric' entries whose outcome is random only"
            )
        backends = _backends(e, where)
        outcome = e.get("outcome")
        if ("auto" in backends) != (outcome is not None) or outcome not in (None, *OUTCOMES):
            raise ValueError(
                f"{where}: entries listing 'auto', and only they, say how it fails: outcome is "
                f"one of {OUTCOMES}, got {outcome!r}"
            )
        if (outcome == "random") != (outcome is not None and e["category"] == "numeric"):
            raise ValueError(
                f"{where}: under 'auto' only random draws may be 'numeric' (outcome 'random')"
            )
        failures.append(
            Failure(
                _pattern(e, where),
                backends,
                e["category"],
                _note(e, where),
                requires,
                strict,
                outcome,
            )
        )
    tolerances = []
    for i, e in enumerate(data.get("tolerance", [])):
        where = f"{path.name} tolerance #{i + 1} ({e.get('pattern')!r})"
        extra = set(e) - {"pattern", "backends", "backend", "rtol", "atol", "note"}
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)}")
        rtol, atol = e.get("rtol"), e.get("atol")
        if rtol is None and atol is None:
            raise ValueError(f"{where}: give rtol, atol or both")
        for v in (rtol, atol):
            if v is not None and not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ValueError(f"{where}: tolerances must be numbers in (0, 1), got {v!r}")
        tolerances.append(
            Tolerance(_pattern(e, where), _backends(e, where), rtol, atol, _note(e, where))
        )
    return KnownFailures(tuple(failures), tuple(tolerances))


def _has_locale(name: str) -> bool:
    saved = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, name)
        return True
    except locale.Error:
        return False
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)


_REQUIREMENTS = {"locale": _has_locale}


def requirement_met(requirement: str) -> bool:
    """Whether this machine has what an 'env' entry requires ("locale:en_US.UTF-8")."""
    kind, _, value = requirement.partition(":")
    return _REQUIREMENTS[kind](value)


# -- the suite ---------------------------------------------------------------------------------


@functools.cache
def model_test_names() -> tuple[str, ...]:
    """Every test the suite defines, without the device suffix ("test_abs")."""
    from onnx.backend.test.loader import load_model_tests

    kinds = ("node", "real", "simple", "pytorch-converted", "pytorch-operator")
    return tuple(sorted(t.name for k in kinds for t in load_model_tests(kind=k)))


def cpu_test_names() -> list[str]:
    return [f"{n}_cpu" for n in model_test_names()]


# The versions known_failures.toml was measured with (pinned in the [test] extra). Another
# version changes the suite or the runtime, so the module skips rather than report noise.
PINNED = {"onnx": "1.23.2", "onnxruntime": "1.32.0", "openvino": "2026.4.1"}
_RUNTIMES = {
    "onnxruntime": ("onnx", "onnxruntime"),
    "openvino": ("onnx", "openvino"),
    "reference": ("onnx",),
    "auto": ("onnx", "onnxruntime", "openvino"),
}


def require_pinned(label: str) -> None:
    """Skip the calling test module unless `label`'s backend runs here at the pinned versions."""
    from importlib.metadata import PackageNotFoundError, version

    from infer import selection
    from infer.backends import base

    for package in _RUNTIMES[label]:
        try:
            found = version(package)
        except PackageNotFoundError:
            found = None
        if package == "openvino" and label == "auto" and "openvino" not in selection.BACKENDS:
            continue  # auto without an OpenVINO backend in the table does not depend on it
        if found != PINNED[package]:
            pytest.skip(
                f"known_failures.toml is for {package}=={PINNED[package]}; found {found}",
                allow_module_level=True,
            )
    if label != "auto":
        if label not in selection.BACKENDS:
            pytest.skip(f"{label} is not in infer's selection table", allow_module_level=True)
        info = base.get(label).probe()
        if not info.available:
            pytest.skip(f"{label} is unavailable: {info.reason}", allow_module_level=True)


def load_options(label: str) -> dict[str, Any]:
    """`Engine.load` keywords for a backend label: a forced backend, or none for "auto"."""
    return {} if label == "auto" else {"backend": label}


def suite_cases(label: str, module: str) -> dict[str, type[unittest.TestCase]]:
    """The suite's unittest classes for `label`, with known failures marked and tolerances set."""
    import onnx.backend.test

    from infer.onnx_backend import InferBackend

    known = known_failures()
    test_kwargs = {}
    for name in model_test_names():
        tol = known.tolerance(label, f"{name}_cpu") or known.tolerance(label, f"{name}_cuda")
        if tol:
            test_kwargs[name] = tol
    backend = InferBackend.with_options(**load_options(label))
    runner = onnx.backend.test.BackendTest(backend, module, test_kwargs=test_kwargs)
    cases = runner.test_cases
    for cls in cases.values():
        cls.__qualname__ = cls.__name__
        for name in [n for n in vars(cls) if n.startswith("test_")]:
            matched = known.xfails(label, name)
            if matched:
                reason = "; ".join(f"[{f.category}] {f.note}" for f in matched)
                strict = all(f.strict for f in matched)
                # Under "auto" the failure must be the kind the entry says: a wrong value where
                # an InferError is expected fails the run.
                raises = matched[0].raises() if label == "auto" else None
                mark = pytest.mark.xfail(strict=strict, reason=reason, raises=raises)
                setattr(cls, name, mark(getattr(cls, name)))
    return cases


def expected_passes(label: str) -> int:
    """CPU tests expected to pass on `label` here: all of them, less the known failures."""
    known = known_failures()
    return sum(1 for n in cpu_test_names() if not known.xfails(label, n))
