"""The options `Engine.load` takes, parsed once into one frozen value every backend reads."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batching import Batching
from .errors import OptionError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
HINTS = ("latency", "throughput")
CHOICES = ("background", "measure", "first")
"""How the default picks a backend (see choice.choose): race the candidates in the
background after the engine has been busy a while, race them at load, or take the table's
first that compiles."""


@dataclass(frozen=True)
class Options:
    """Everything about how to load and run a model, except which model and device.

    `backend_options` holds per-backend settings keyed by backend name; each backend
    validates its own keys and names the unknown ones in an OptionError.
    """

    precision: str = "fp32"
    calibration: Any = None
    preprocess: Any = None
    shapes: Mapping[str, Any] = field(default_factory=dict)
    cast: bool = False
    hint: str = "latency"
    choose: str = "background"
    example: Any = None
    """Feeds (a dict, or a list of dicts) the measured choice races on."""
    threads: int | None = None
    max_in_flight: int | None = None
    batching: Batching | None = None
    cache: bool = True
    cache_dir: Path | None = None
    backend_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    progress: Callable[[str, int, int | None], None] | None = field(default=None, compare=False)
    """progress(stage, done, total): long steps (calibration, engine builds) report through it."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(
                f"precision {self.precision!r} is not valid; use one of {', '.join(PRECISIONS)}"
            )
        if self.hint not in HINTS:
            raise OptionError(f"hint {self.hint!r} is not valid; use one of {', '.join(HINTS)}")
        if self.choose not in CHOICES:
            raise OptionError(
                f"choose {self.choose!r} is not valid; use one of {', '.join(CHOICES)}"
            )
        for name, value in (("threads", self.threads), ("max_in_flight", self.max_in_flight)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise OptionError(f"{name} must be a positive integer, got {value!r}")
        if self.batching is not None and not isinstance(self.batching, Batching):
            raise OptionError(
                "batching must be an infer.Batching(max_batch=..., max_delay_ms=...), got "
                f"{self.batching!r}"
            )
        if self.calibration is not None and self.precision != "int8":
            raise OptionError(
                f"calibration data is only used with precision='int8', but precision is {self.precision!r}"
            )
        if not isinstance(self.shapes, Mapping):
            raise OptionError(
                f"shapes must be a dict of input name -> shape, got {type(self.shapes).__name__}"
            )
        if not isinstance(self.backend_options, Mapping) or not all(
            isinstance(v, Mapping) for v in self.backend_options.values()
        ):
            raise OptionError(
                "backend_options must map a backend name to a dict of its options, e.g. "
                "{'openvino': {'num_streams': 2}}"
            )

    def for_backend(self, name: str, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """This backend's own options; with `known` (name -> default), unknown keys are refused."""
        given = dict(self.backend_options.get(name, {}))
        if known is None:
            return given
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise OptionError(
                f"backend_options[{name!r}]: unknown option(s) {unknown}; "
                f"{name} takes {sorted(known)}"
            )
        return {**known, **given}


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: Any, option: str) -> int | None:
    """A size in bytes from an option: a positive int, or text such as "4GiB", "512MB"
    (None stays None); raises OptionError naming `option` otherwise."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise OptionError(
        f"{option} must be a positive number of bytes or a size such as '4GiB' or '512MB', "
        f"got {value!r}"
    )
