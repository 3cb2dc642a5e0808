"""The errors a user of infer can meet.

Every failure the caller can cause is an `InferError`. A runtime's own exception is
chained (`raise ... from e`) so its text stays available without leaking its type.
"""

from __future__ import annotations


class InferError(Exception):
    """Root of every error infer raises on purpose."""


class OptionError(InferError, ValueError):
    """An argument to `Engine.load` (device, backend, precision, ...) is not valid."""


class ModelError(InferError):
    """The model cannot be read: unknown format, corrupt bytes, unsafe external data."""


class InputError(InferError, ValueError):
    """The feeds given to `run` do not match the model's inputs."""


class BackendUnavailable(InferError):
    """No backend can run the model on the requested device; the message says why each one cannot."""


class CompileError(InferError):
    """A backend accepted the model but failed to compile it."""


class PrecisionError(InferError):
    """An int8 (or other reduced-precision) model misses its accuracy budget or is not faster than
    fp32; the message gives the measured figures. `report` holds them when the search made one."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class RuntimeFailure(InferError):
    """A backend failed while running a compiled model."""


class EngineClosed(RuntimeFailure):
    """The engine was used after `close()`."""


class CacheError(InferError):
    """The artifact cache could not be read or written."""
