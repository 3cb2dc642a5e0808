"""Tensor descriptions, the one dtype table across runtimes, and feed validation.

The dtype table is keyed by the numpy dtype (ml_dtypes supplies bfloat16, float8, int4, ...)
and gives each runtime's own name for it, so no backend keeps a mapping of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from .errors import InputError

log = logging.getLogger(__name__)

Dim = int | str | None
"""A dimension: a fixed size, a symbolic name (``"batch"``), or ``None`` when unknown."""


@dataclass(frozen=True)
class DType:
    """One element type and the name each runtime gives it (``None`` where it has none)."""

    name: str  # numpy's name: "float32", "bfloat16", "float8_e4m3fn", "object" for strings
    numpy: np.dtype
    onnx: int  # onnx.TensorProto.DataType
    ort: str  # ONNX Runtime's NodeArg.type, e.g. "tensor(float)"
    openvino: str | None  # ov.Type.get_type_name(), e.g. "f32"
    tensorrt: str | None  # tensorrt.DataType member name, e.g. "HALF"
    coreml: str | None  # ArrayFeatureType.ArrayDataType name, e.g. "FLOAT16"

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


# onnx type name -> (openvino, tensorrt, coreml)
_RUNTIME_NAMES: dict[str, tuple[str | None, str | None, str | None]] = {
    "FLOAT": ("f32", "FLOAT", "FLOAT32"),
    "UINT8": ("u8", "UINT8", None),
    "INT8": ("i8", "INT8", "INT8"),
    "UINT16": ("u16", None, None),
    "INT16": ("i16", None, None),
    "INT32": ("i32", "INT32", "INT32"),
    "INT64": ("i64", "INT64", None),
    "STRING": ("string", None, None),
    "BOOL": ("boolean", "BOOL", None),
    "FLOAT16": ("f16", "HALF", "FLOAT16"),
    "DOUBLE": ("f64", None, "DOUBLE"),
    "UINT32": ("u32", None, None),
    "UINT64": ("u64", None, None),
    "COMPLEX64": (None, None, None),
    "COMPLEX128": (None, None, None),
    "BFLOAT16": ("bf16", "BF16", None),
    "FLOAT8E4M3FN": ("f8e4m3", "FP8", None),
    "FLOAT8E4M3FNUZ": (None, None, None),
    "FLOAT8E5M2": ("f8e5m2", None, None),
    "FLOAT8E5M2FNUZ": (None, None, None),
    "UINT4": ("u4", None, None),
    "INT4": ("i4", "INT4", None),
    "FLOAT4E2M1": ("f4e2m1", "FP4", None),
    "FLOAT8E8M0": ("f8e8m0", "E8M0", None),
    "UINT2": ("u2", None, None),
    "INT2": (None, None, None),
    "FLOAT6E2M3": (None, None, None),
    "FLOAT6E3M2": (None, None, None),
}


def _build_table() -> tuple[DType, ...]:
    rows = []
    for onnx_name, code in TensorProto.DataType.items():
        if code == TensorProto.UNDEFINED:
            continue
        try:
            np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(code))
        except (KeyError, ValueError, TypeError):  # a type newer than this numpy/ml_dtypes
            continue
        ov, trt, coreml = _RUNTIME_NAMES.get(onnx_name, (None, None, None))
        name = "object" if code == TensorProto.STRING else np_dtype.name
        rows.append(DType(name, np_dtype, code, f"tensor({onnx_name.lower()})", ov, trt, coreml))
    return tuple(rows)


DTYPES: tuple[DType, ...] = _build_table()
_BY_NUMPY = {row.numpy: row for row in DTYPES}
_BY_ONNX = {row.onnx: row for row in DTYPES}
_BY_NAME: dict[str, DType] = {}
for _row in DTYPES:
    for _key in (_row.name, _row.ort, _row.openvino, _row.tensorrt, _row.coreml):
        if _key is not None:
            _BY_NAME.setdefault(_key, _row)
_BY_NAME.update({"string": _BY_ONNX[TensorProto.STRING], "str": _BY_ONNX[TensorProto.STRING]})

NUMPY_NATIVE: frozenset[np.dtype] = frozenset(
    np.dtype(t)
    for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
              np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)
)  # fmt: skip
"""Element types numpy has itself; runtimes' Python APIs take these directly (ml_dtypes' bfloat16,
float8 and int4 must cross as raw bytes)."""


def dtype_info(key: Any) -> DType:
    """Look a dtype up by numpy dtype, ONNX enum, or any runtime's name for it."""
    if isinstance(key, DType):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        if key in _BY_ONNX:
            return _BY_ONNX[key]
    elif isinstance(key, str) and key in _BY_NAME:
        return _BY_NAME[key]
    else:
        try:
            np_dtype = np.dtype(key)
        except TypeError:
            np_dtype = None
        if np_dtype is not None:
            if np_dtype.kind in "USO":
                return _BY_ONNX[TensorProto.STRING]
            if np_dtype in _BY_NUMPY:
                return _BY_NUMPY[np_dtype]
    raise KeyError(f"unknown element type {key!r}")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (symbolic dims kept by name), element type."""

    name: str
    shape: tuple[Dim, ...] | None  # None: rank unknown
    dtype: np.dtype
    kind: str = "tensor"
    """"tensor", or the ONNX container it is: "sequence" (a list of tensors), "optional" (None
    or a value), "map" (a dict). For containers `dtype` is the tensors' element type where known
    and `shape` is None."""

    def __repr__(self) -> str:
        shape = (
            "?" if self.shape is None else "[" + ", ".join(_dim_str(d) for d in self.shape) + "]"
        )
        kind = "" if self.kind == "tensor" else f", kind={self.kind!r}"
        return f"TensorSpec({self.name!r}, {shape}, {dtype_info(self.dtype).name}{kind})"

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def onnx_type(self) -> int:
        return dtype_info(self.dtype).onnx


def _dim_str(d: Dim) -> str:
    return "?" if d is None else str(d)


def spec_from_value_info(value_info: Any) -> TensorSpec:
    """TensorSpec from an ONNX ValueInfoProto (containers keep their innermost element type)."""
    ttype = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        return _container_spec(value_info.name, value_info.type)
    shape: tuple[Dim, ...] | None = None
    if ttype.HasField("shape"):
        shape = dims(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in ttype.shape.dim
        )
    return TensorSpec(value_info.name, shape, dtype_info(ttype.elem_type).numpy)


def graph_inputs(graph: Any) -> list[TensorSpec]:
    """The inputs an ONNX graph's caller feeds (initializers listed as inputs are not)."""
    initializers = {t.name for t in graph.initializer}
    return [spec_from_value_info(v) for v in graph.input if v.name not in initializers]


def graph_outputs(graph: Any) -> list[TensorSpec]:
    """An ONNX graph's declared outputs."""
    return [spec_from_value_info(v) for v in graph.output]


def _container_spec(name: str, type_proto: Any) -> TensorSpec:
    field = type_proto.WhichOneof("value") or "unknown"
    kind = {"sequence_type": "sequence", "optional_type": "optional"}.get(
        field, field.removesuffix("_type")
    )
    inner = type_proto
    while inner.WhichOneof("value") in ("sequence_type", "optional_type"):
        inner = getattr(inner, inner.WhichOneof("value")).elem_type
    dtype = np.dtype(object)
    if inner.HasField("tensor_type") and kind != "map":
        try:
            dtype = dtype_info(inner.tensor_type.elem_type).numpy
        except KeyError:  # an element type newer than this numpy/ml_dtypes
            dtype = np.dtype(object)
    return TensorSpec(name, None, dtype, kind)


def spec_from_type_string(name: str, type_text: str, shape: Iterable[Any] | None) -> TensorSpec:
    """TensorSpec from a runtime's type text: "tensor(float)", "seq(tensor(float))",
    "optional(seq(tensor(int64)))", "map(int64,tensor(float))" (ONNX Runtime's NodeArg.type)."""
    outer = type_text.split("(", 1)[0]
    kind = {"seq": "sequence", "optional": "optional", "map": "map"}.get(outer, "tensor")
    if kind == "tensor":
        return TensorSpec(name, dims(shape), dtype_info(type_text).numpy)
    element = type_text[type_text.rfind("tensor(") :].split(")", 1)[0] + ")"
    try:
        dtype = dtype_info(element).numpy if kind != "map" else np.dtype(object)
    except KeyError:
        dtype = np.dtype(object)
    return TensorSpec(name, None, dtype, kind)


def dims(shape: Iterable[Any] | None) -> tuple[Dim, ...] | None:
    """Normalise a runtime's shape (ints, strings, -1 or None for dynamic) to TensorSpec dims."""
    if shape is None:
        return None
    out: list[Dim] = []
    for d in shape:
        if isinstance(d, str):
            out.append(None if d in ("", "?") else d)  # "?" is an exporter's "unknown", not a name
        elif d is None or int(d) < 0:
            out.append(None)
        else:
            out.append(int(d))
    return tuple(out)


def describe(shape: Sequence[Dim] | None, dtype: np.dtype) -> str:
    """'float32[N, 3]' style text for error messages."""
    dims_text = "?" if shape is None else "[" + ", ".join(_dim_str(d) for d in shape) + "]"
    return f"{dtype_info(dtype).name}{dims_text}"


def describe_specs(specs: Iterable[TensorSpec]) -> str:
    """'x: float32[N, 3], y: int64[N]' style text: each spec's name and `describe`, in order."""
    return ", ".join(f"{s.name}: {describe(s.shape, s.dtype)}" for s in specs)


class FeedValidator:
    """Checks and normalises feeds for one compiled model, before any backend sees them.

    The first call with a given (dtype, shape) per input does the full check; later calls
    with the same signature take a set lookup, so validation stays cheap per run.
    Lossless casts within a kind (int32 -> int64, float16 -> float32, bool -> any) are done
    silently; integers into a float input (most often an image not yet normalized) and lossy
    casts (float64 -> float32, int64 -> int32) only with ``cast=True``.
    """

    def __init__(self, specs: Sequence[TensorSpec], *, cast: bool = False) -> None:
        self.specs = {s.name: s for s in specs}
        self.names = frozenset(self.specs)
        self.cast = cast
        self._count = len(self.specs)
        self._accepted: dict[str, set[tuple[np.dtype, tuple[int, ...]]]] = {
            n: set() for n in self.specs
        }
        symbols: dict[str, int] = {}
        for s in specs:
            for d in set(s.shape or ()):
                if isinstance(d, str):
                    symbols[d] = symbols.get(d, 0) + 1
        # A symbol shared by several inputs must take one value per call: that ties the inputs
        # together, so the cache is keyed by the whole feed signature instead of per input.
        self._shared_symbols = any(n > 1 for n in symbols.values())
        self._accepted_sigs: set[tuple[tuple[str, np.dtype, tuple[int, ...]], ...]] = set()

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        # Fast path: every feed is a contiguous ndarray whose (dtype, shape) passed before (with
        # shared dimension names: whose whole signature did, as the full check leaves it).
        if type(feeds) is dict and len(feeds) == self._count:
            if self._shared_symbols:
                try:
                    sig = tuple(
                        (name, value.dtype, value.shape)
                        for name, value in feeds.items()
                        if type(value) is np.ndarray and value.flags.c_contiguous
                    )
                except AttributeError:
                    return self._full(feeds)
                if len(sig) == self._count and sig in self._accepted_sigs:
                    return feeds
                return self._full(feeds)
            accepted = self._accepted
            for name, value in feeds.items():
                seen = accepted.get(name)
                if (
                    seen is None
                    or type(value) is not np.ndarray
                    or (value.dtype, value.shape) not in seen
                    or not value.flags.c_contiguous
                ):
                    return self._full(feeds)
            return feeds
        return self._full(feeds)

    def _full(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise InputError(
                f"feeds must be a dict of input name -> array, got {type(feeds).__name__}; "
                f"model inputs: {self._listing()}"
            )
        if feeds.keys() != self.names:
            self._check_names(feeds)
        if self._shared_symbols:
            return self._check_signature(dict(feeds))
        return {name: self._check_one(name, value) for name, value in feeds.items()}

    def _check_signature(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {name: self._check_one(name, value) for name, value in feeds.items()}
        sig = tuple(
            (n, a.dtype, a.shape) if isinstance(a, np.ndarray) else (n, None, ())
            for n, a in out.items()
        )
        if sig in self._accepted_sigs:
            return out
        bound: dict[str, tuple[int, str]] = {}
        fast = True  # the signature may take the fast path: every array as checked, none empty
        for name, arr in out.items():
            for axis, d in enumerate(self.specs[name].shape or ()):
                if not isinstance(d, str):
                    continue
                size = arr.shape[axis]
                if d in bound and bound[d][0] != size:
                    other_size, other = bound[d]
                    raise InputError(
                        f"input {name!r}: dimension {axis} is {d!r} = {size}, but input {other!r} "
                        f"has {d!r} = {other_size}; inputs sharing a dimension name must agree"
                    )
                bound.setdefault(d, (size, name))
        for name, arr in out.items():
            if not (
                isinstance(arr, np.ndarray)
                and arr.size
                and arr is feeds[name]
                and arr.flags.c_contiguous
            ):
                fast = False
        if fast:
            self._accepted_sigs.add(sig)
        return out

    def _check_one(self, name: str, value: Any) -> np.ndarray:
        spec = self.specs[name]
        if spec.kind != "tensor":
            return self._check_container(name, value, spec)
        arr = self._as_array(name, value, spec)
        if arr.dtype != spec.dtype:
            arr = self._cast(name, arr, spec)
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise InputError(
                    f"input {name!r}: expected rank {len(spec.shape)} "
                    f"({describe(spec.shape, spec.dtype)}), got rank {arr.ndim} with shape "
                    f"{list(arr.shape)}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
                if isinstance(want, int) and want != got:
                    raise InputError(
                        f"input {name!r}: dimension {axis} must be {want} "
                        f"({describe(spec.shape, spec.dtype)}), got shape {list(arr.shape)}"
                    )
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        if type(value) is np.ndarray and value.dtype == spec.dtype:
            # Only arrays that need no cast take the fast path: a cast must be redone every call.
            self._accepted[name].add((value.dtype, value.shape))
        return arr

    def _check_container(self, name: str, value: Any, spec: TensorSpec) -> Any:
        """Sequences come as lists of arrays, optionals as None or their value, maps as dicts."""
        kind = spec.kind
        if kind == "optional":
            if value is None:
                return None
            kind = "sequence" if isinstance(value, (list, tuple)) else "tensor"
        if kind == "map":
            if not isinstance(value, Mapping):
                raise InputError(
                    f"input {name!r}: expected a map (dict), got {type(value).__name__}"
                )
            return dict(value)
        if kind not in ("sequence", "tensor"):  # sparse tensors, opaque types: the runtime's call
            return value
        element = TensorSpec(name, None, spec.dtype)
        if kind == "tensor":
            return self._element(name, value, element)
        if not isinstance(value, (list, tuple)):
            raise InputError(
                f"input {name!r}: expected a sequence (list) of {dtype_info(spec.dtype).name} "
                f"tensors, got {type(value).__name__}"
            )
        return [self._element(f"{name}[{i}]", v, element) for i, v in enumerate(value)]

    def _element(self, name: str, value: Any, spec: TensorSpec) -> np.ndarray:
        arr = self._as_array(name, value, spec)
        if arr.dtype != spec.dtype and (spec.dtype != object or arr.dtype.kind in "US"):
            arr = self._cast(name, arr, spec)
        return np.ascontiguousarray(arr)

    @staticmethod
    def _as_array(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        if hasattr(value, "__cuda_array_interface__") and not hasattr(value, "__array__"):
            raise InputError(
                f"input {name!r}: got a device array ({type(value).__name__}); this backend takes "
                "host arrays here: pass numpy, or use engine.bind() on a backend that binds device memory"
            )
        try:
            probe = np.asarray(value)
        except Exception as e:
            raise InputError(
                f"input {name!r}: expected an array of {dtype_info(spec.dtype).name}, got "
                f"{type(value).__name__} that numpy cannot convert ({e})"
            ) from e
        if probe.dtype == object and spec.dtype != object:
            raise InputError(
                f"input {name!r}: expected {describe(spec.shape, spec.dtype)}, got a ragged or "
                f"non-numeric {type(value).__name__}"
            )
        # Plain Python data carries no dtype of its own, so it takes the model's when the kinds agree.
        if not hasattr(value, "dtype") and (
            (probe.dtype.kind in "biu" and spec.dtype.kind in "biuf")
            or probe.dtype.kind == spec.dtype.kind
        ):
            return np.asarray(value, dtype=spec.dtype)
        return probe

    def _cast(self, name: str, arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
        want = spec.dtype
        if want.kind == "O":
            if arr.dtype.kind in "US":
                return arr.astype(object)
        elif (np.can_cast(arr.dtype, want, "safe") and not _changes_kind(arr.dtype, want)) or (
            self.cast and np.can_cast(arr.dtype, want, "same_kind")
        ):
            return arr.astype(want)
        got, exp = (
            dtype_info(arr.dtype).name if arr.dtype in _BY_NUMPY else str(arr.dtype),
            dtype_info(want).name,
        )
        if not self.cast and _changes_kind(arr.dtype, want):
            raise InputError(
                f"input {name!r} is {exp} ({describe(spec.shape, want)}) but got {got}: "
                + _integer_hint(arr)
                + ", or pass cast=True to Engine.load to widen it as it is"
            )
        hint = (
            f"; {got} -> {exp} can lose information: pass cast=True to Engine.load to allow it"
            if not self.cast and np.can_cast(arr.dtype, want, "same_kind")
            else ""
        )
        raise InputError(
            f"input {name!r}: expected dtype {exp} ({describe(spec.shape, want)}), got {got}{hint}"
        )

    def _check_names(self, feeds: Mapping[str, Any]) -> None:
        unknown = sorted(set(feeds) - self.names)
        missing = sorted(self.names - set(feeds))
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        raise InputError(f"{'; '.join(parts)}; the model's inputs are {self._listing()}")

    def _listing(self) -> str:
        return describe_specs(self.specs.values())


def _changes_kind(got: np.dtype, want: np.dtype) -> bool:
    """Integers into a float (or complex) tensor: lossless to numpy, but rarely what was meant."""
    return got.kind in "iu" and want.kind in "fc"


def _integer_hint(arr: np.ndarray) -> str:
    """What an integer array fed to a float input probably was, and what to do instead."""
    channels = (1, 3, 4)
    if arr.dtype == np.uint8 or (
        arr.ndim >= 3 and (arr.shape[-1] in channels or arr.shape[-3] in channels)
    ):
        return (
            "an integer image is usually not yet normalized; scale it (x / 255.0) or declare "
            "preprocessing (infer.Preprocess.image)"
        )
    return (
        "integers into a float input usually mean values not yet scaled or converted as the "
        "model expects; convert them (x.astype(np.float32), scaled as the model was trained)"
    )


_SUBBYTE_BITS = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2}


def packed_bits(dtype: np.dtype) -> int | None:
    """Bits per element for ONNX's packed sub-byte types (int4, uint4, float4, int2, uint2)."""
    return _SUBBYTE_BITS.get(np.dtype(dtype).name)


def pack(arr: np.ndarray) -> np.ndarray:
    """The bytes a runtime stores for `arr`: sub-byte types packed low bits first, as ONNX does."""
    bits = packed_bits(arr.dtype)
    raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    if bits is None:
        return raw
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    padded = np.zeros(-(-raw.size // per_byte) * per_byte, np.uint8)
    padded[: raw.size] = raw & mask
    lanes = padded.reshape(-1, per_byte)
    out = np.zeros(lanes.shape[0], np.uint8)
    for i in range(per_byte):
        out |= lanes[:, i] << (i * bits)
    return out


def unpack(buf: np.ndarray, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """Inverse of `pack`: an array of `dtype` and `shape` from a runtime's bytes (copied)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    bits = packed_bits(dtype)
    buf = np.asarray(buf, np.uint8).reshape(-1)
    if bits is None:
        return buf[: count * dtype.itemsize].copy().view(dtype).reshape(shape)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    lanes = np.stack([(buf >> (i * bits)) & mask for i in range(per_byte)], axis=1).reshape(-1)
    return lanes[:count].view(dtype).reshape(shape)
