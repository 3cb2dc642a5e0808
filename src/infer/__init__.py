"""infer: run one model on any machine through one API.

engine = infer.Engine.load("model.onnx", device="auto")
outputs = engine.run({"images": x})
"""

from __future__ import annotations

import logging

from .backends.base import Attempt, BackendInfo
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
    RuntimeFailure,
)
from .model import Model, ModelFormat
from .selection import backends, devices
from .tensors import TensorSpec
from .transforms.preprocess import Preprocess

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "BackendInfo",
    "BackendUnavailable",
    "CacheError",
    "Capabilities",
    "CompileError",
    "Device",
    "Engine",
    "EngineClosed",
    "InferError",
    "InputError",
    "Model",
    "ModelError",
    "ModelFormat",
    "OptionError",
    "Preprocess",
    "RuntimeFailure",
    "TensorSpec",
    "backends",
    "devices",
]

# Library convention: silent unless the application configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
