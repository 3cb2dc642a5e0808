"""infer: run one model on any machine through one API.

engine = infer.Engine.load("model.onnx", device="auto")
outputs = engine.run({"images": x})
"""

from __future__ import annotations

import logging

from . import cache, convert, sequence  # cheap to import: runtimes load on use
from ._version import __version__ as __version__
from .accuracy import AccuracyReport, accuracy
from .backends.base import BackendInfo
from .batching import Batching, BatchingStats
from .budget import Budget
from .calibration import Calibration
from .compare import compare
from .decoder import Decoder
from .device import Capabilities, Device
from .engine import Engine
from .errors import (
    BackendUnavailable,
    CacheError,
    CompileError,
    EngineClosed,
    InferError,
    InputError,
    ModelError,
    OptionError,
    PrecisionError,
    RuntimeFailure,
)
from .inspect import inspect
from .model import Model, ModelFormat
from .selection import Attempt, backends, devices
from .tensors import TensorSpec
from .transforms.int8_search import Int8Report
from .transforms.preprocess import Preprocess

__all__ = [
    "AccuracyReport",
    "Attempt",
    "BackendInfo",
    "BackendUnavailable",
    "Batching",
    "BatchingStats",
    "Budget",
    "CacheError",
    "Calibration",
    "Capabilities",
    "CompileError",
    "Decoder",
    "Device",
    "Engine",
    "EngineClosed",
    "InferError",
    "InputError",
    "Int8Report",
    "Model",
    "ModelError",
    "ModelFormat",
    "OptionError",
    "PrecisionError",
    "Preprocess",
    "RuntimeFailure",
    "TensorSpec",
    "accuracy",
    "backends",
    "cache",
    "compare",
    "convert",
    "devices",
    "inspect",
    "sequence",
]

# Library convention: silent unless the application configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> object:
    """`infer.serve` and `infer.ray` load on first use; neither imports a server or Ray until called."""
    if name in ("serve", "ray"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
