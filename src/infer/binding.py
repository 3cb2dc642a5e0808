"""I/O binding: output buffers allocated once per shape and reused, and device arrays.

`Session.bind()` returns a `Binding` (the contract lives in backends/base.py). This module
holds what every binding shares:

- `HostBinding`, the default for backends without a binding of their own: the backend runs
  as usual and each output is copied into a buffer the binding owns (allocated again only
  when the output's shape changes), or into the array the caller gave for it.
- `parse_outputs`, the one reading of `bind(outputs=...)`.
- `FeedCheck`: `Session.run`'s feed validation for bindings, letting device arrays (CUDA
  arrays recognised by `infer.device_array` through `__cuda_array_interface__` or DLPack)
  through to the binding, which reads them in place (`device_view`) or refuses them in
  words (`refuse_device_inputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import device_array
from .device_array import DeviceView
from .errors import InputError, OptionError
from .tensors import FeedValidator, TensorSpec, describe, dtype_info

if TYPE_CHECKING:
    from .backends.base import Session

from .backends.base import Binding

log = logging.getLogger(__name__)


def host_array(obj: Any) -> np.ndarray | None:
    """A zero-copy numpy view of a host-memory DLPack object (None if it is not one)."""
    where = getattr(obj, "__dlpack_device__", None)
    if where is None or isinstance(obj, np.ndarray):
        return None
    try:
        if int(where()[0]) not in (device_array.DL_CPU, device_array.DL_CUDA_HOST):
            return None
        return np.from_dlpack(obj)
    except Exception:  # e.g. a dtype numpy cannot hold: numpy's own conversion tries later
        return None


def where_is(value: Any) -> str:
    """'cuda:N' (or 'cuda' when the array's protocol does not say which GPU) for messages."""
    try:
        kind, index = value.__dlpack_device__()
        if int(kind) in (device_array.DL_CUDA, device_array.DL_CUDA_MANAGED):
            return f"cuda:{int(index)}"
    except Exception:
        pass
    return "cuda"


def device_view(session: Session, name: str, value: Any, stream: int | None = None) -> DeviceView:
    """A device input read in place: its view, checked against the model input `name`.

    The caller owns the view and must `close()` it once the memory is no longer read.
    """
    try:
        view = device_array.view(value, stream)
    except Exception as e:  # masked arrays, odd dtypes, tensors that refuse to export
        raise InputError(
            f"input {name!r}: the {type(value).__name__} cannot be read in place: {e}"
        ) from e
    spec = next(s for s in session.inputs if s.name == name)
    problem = None
    if view.dtype != spec.dtype:
        problem = (
            f"holds {_dtype_name(view.dtype)}; device arrays are read in place, so cast it on "
            "the device first"
        )
    elif not _fits(spec, view.shape):
        problem = f"has shape {list(view.shape)}"
    elif not view.contiguous:
        problem = "is not C-contiguous; make it contiguous on the device first"
    if problem:
        view.close()
        raise InputError(
            f"input {name!r}: expected {describe(spec.shape, spec.dtype)}, the device array "
            f"{problem}"
        )
    return view


# -- feeds ----------------------------------------------------------------------------------


class FeedCheck:
    """Session feed validation for bindings: host feeds go through the session's
    `FeedValidator`; device arrays are passed through as they are, for the binding to read in
    place (`device_view`) or refuse (`refuse_device_inputs`).

    Feeding the very arrays of the previous call (the usual loop over an input refilled in
    place) skips validation: they passed it already.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._validate = session._validate
        self._specs = {s.name: s for s in session.inputs}
        self._count = len(self._specs)
        self._partial: dict[frozenset[str], FeedValidator] = {}
        self._last: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}  # name -> (array, shape)

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if type(feeds) is dict and len(feeds) == self._count:
            last = self._last
            for name, value in feeds.items():
                seen = last.get(name)
                if seen is None or seen[0] is not value or seen[1] != value.shape:
                    break
            else:
                return feeds  # type: ignore[return-value]
        out = self._check(feeds)
        # Remember the arrays that passed unchanged (not cast or copied).
        last = {}
        for n, v in out.items():
            if type(v) is np.ndarray and v is feeds.get(n):
                last[n] = (v, v.shape)
        self._last = last
        return out

    def _check(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if type(feeds) is dict:
            for value in feeds.values():
                if type(value) is not np.ndarray:
                    break
            else:
                return self._validate(feeds)
        if not isinstance(feeds, Mapping) or feeds.keys() != self._specs.keys():
            return self._validate(feeds)  # raises the usual message (or takes host feeds)
        device: dict[str, Any] = {}
        host: dict[str, Any] = {}
        for name, value in feeds.items():
            if type(value) is not np.ndarray and device_array.is_device_array(value):
                device[name] = value
            else:
                view = host_array(value)
                host[name] = view if view is not None else value
        if not device:
            return self._validate(host)
        rest = frozenset(host)
        validator = self._partial.get(rest)
        if validator is None:
            validator = FeedValidator(
                [self._specs[n] for n in host], cast=self.session.options.cast
            )
            self._partial[rest] = validator
        out: dict[str, Any] = dict(validator(host)) if host else {}
        out.update(device)
        return out


def refuse_device_inputs(session: Session, feeds: Mapping[str, Any]) -> None:
    """Raise InputError for any feed in device memory: for bindings that read host memory only."""
    for name, value in feeds.items():
        if type(value) is not np.ndarray and device_array.is_device_array(value):
            raise InputError(
                f"input {name!r} is in {where_is(value)} memory, but {session.backend} reads "
                f"this model's inputs from host memory on {session.device}: pass a numpy array "
                "(copy it to the host), or load the engine on the GPU"
            )


# -- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputPlan:
    """What `bind(outputs=...)` asked for: device outputs or not, and the caller's arrays."""

    device: bool
    given: Mapping[str, Any]


def parse_outputs(session: Session, outputs: Any, *, device_outputs: bool = False) -> OutputPlan:
    """Check `bind(outputs=...)`: "host", "device", or {output name: preallocated array}.

    device_outputs: whether the binding can leave outputs in device memory. "device" on a
    session whose device is the host means host buffers: the same code runs on every machine.
    A device array given for an output comes back as its `DeviceView`, which the binding
    closes when it is closed.
    """
    if isinstance(outputs, str):
        if outputs == "host":
            return OutputPlan(False, {})
        if outputs == "device":
            if session.device.kind == "cpu":
                return OutputPlan(False, {})
            if not device_outputs:
                raise OptionError(
                    f"bind(outputs='device'): the {session.backend} binding on {session.device} "
                    "returns host arrays only; use outputs='host'"
                )
            return OutputPlan(True, {})
        raise OptionError(
            f"bind(outputs={outputs!r}) is not valid; use 'host', 'device' or "
            "{output name: preallocated array}"
        )
    if not isinstance(outputs, Mapping):
        raise OptionError(
            "bind(outputs=...) must be 'host', 'device' or a dict of output name -> array, "
            f"got {type(outputs).__name__}"
        )
    specs = {s.name: s for s in session.outputs}
    unknown = sorted(set(outputs) - set(specs))
    if unknown:
        raise OptionError(
            f"bind(outputs=...): unknown output(s) {unknown}; the model's outputs are {list(specs)}"
        )
    given: dict[str, Any] = {}
    for name, value in outputs.items():
        spec = specs[name]
        if type(value) is not np.ndarray and device_array.is_device_array(value):
            if not device_outputs:
                raise OptionError(
                    f"bind(outputs={{{name!r}: ...}}): a {where_is(value)} array, but the "
                    f"{session.backend} binding on {session.device} writes host memory only"
                )
            try:
                view = device_array.view(value)
            except Exception as e:
                raise OptionError(
                    f"bind(outputs={{{name!r}: ...}}): the {type(value).__name__} cannot be "
                    f"written in place: {e}"
                ) from e
            try:
                _check_target(name, spec, view.dtype, view.shape)
                if not view.contiguous:
                    raise OptionError(
                        f"bind(outputs={{{name!r}: ...}}): the device array must be C-contiguous"
                    )
            except OptionError:
                view.close()
                raise
            given[name] = view
            continue
        if not isinstance(value, np.ndarray):
            raise OptionError(
                f"bind(outputs={{{name!r}: ...}}) must be a numpy or device array, got {type(value).__name__}"
            )
        if not value.flags.c_contiguous or not value.flags.writeable:
            raise OptionError(
                f"bind(outputs={{{name!r}: ...}}): the array must be C-contiguous and writeable"
            )
        _check_target(name, spec, value.dtype, value.shape)
        given[name] = value
    return OutputPlan(False, given)


def _check_target(name: str, spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if dtype != spec.dtype:
        raise OptionError(
            f"bind(outputs={{{name!r}: ...}}): output {name!r} is {describe(spec.shape, spec.dtype)}, "
            f"the array given is {_dtype_name(dtype)}"
        )
    if not _fits(spec, shape):
        raise OptionError(
            f"bind(outputs={{{name!r}: ...}}): output {name!r} is {describe(spec.shape, spec.dtype)}, "
            f"the array given has shape {list(shape)}"
        )


def _fits(spec: TensorSpec, shape: tuple[int, ...]) -> bool:
    """Whether `shape` has the spec's rank and its fixed dims."""
    return spec.shape is None or (
        len(shape) == len(spec.shape)
        and all(not isinstance(w, int) or w == g for w, g in zip(spec.shape, shape))
    )


def _dtype_name(dtype: np.dtype) -> str:
    try:
        return dtype_info(dtype).name
    except KeyError:
        return str(dtype)


def target_mismatch(name: str, target: Any, shape: tuple[int, ...]) -> InputError:
    """The error for a run whose output does not fit the array the caller bound for it."""
    return InputError(
        f"output {name!r} has shape {list(shape)} for these inputs, but the array bound for it "
        f"has shape {list(target.shape)}; bind an array of that shape (or let the binding allocate)"
    )


class HostBinding(Binding):
    """The default binding: runs the session as usual, then copies each output into a
    buffer allocated once per shape (or into the array the caller bound for it).

    It keeps the arrays it returns stable across runs; the backend still allocates its own
    results inside each run. Backends with a binding of their own (ONNX Runtime's IOBinding)
    write straight into the buffers instead.
    """

    def __init__(self, session: Session, outputs: Any = "host") -> None:
        super().__init__(session)
        self._plan = parse_outputs(session, outputs)
        self._buffers: dict[str, np.ndarray] = dict(self._plan.given)

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        refuse_device_inputs(self.session, feeds)
        results = self.session._run(feeds, None)
        return {name: self._store(name, value) for name, value in results.items()}

    def _store(self, name: str, value: Any) -> Any:
        if not isinstance(value, np.ndarray):
            return value  # sequences and maps are handed through as the backend returns them
        buf = self._buffers.get(name)
        if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
            if name in self._plan.given:
                raise target_mismatch(name, buf, value.shape)
            log.debug(
                "binding on %s: output %r buffer allocated for %s (was %s)",
                self.session.backend,
                name,
                describe(value.shape, value.dtype),
                "none" if buf is None else describe(buf.shape, buf.dtype),
            )
            buf = self._buffers[name] = np.empty(value.shape, value.dtype)
        np.copyto(buf, value)
        return buf
