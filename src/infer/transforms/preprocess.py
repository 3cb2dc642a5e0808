"""Preprocessing declared once, fused into the model as ONNX nodes, and mirrored in numpy.

`Preprocess.image(...)` and `Preprocess.tensor(...)` are frozen, serializable specs. `fuse`
prepends the nodes that carry them out to the model (with `onnx.compose`), so every backend
runs the same preprocessing on its own device and the engine's inputs become the raw ones
(uint8 frames, say). `Preprocess.apply` does the same arithmetic in numpy, in the same order,
for callers who need the tensor itself; the tests hold the two equal.

Resizing is bilinear (or nearest) with the half-pixel convention, emitted as integer index
arithmetic and gathers so that every backend and numpy agree bit for bit (_preprocess_graph.py
says how and why).

Order of operations for an image: raw frame (source dtype and layout) -> resize (per `resize`,
in float32 on the source values) -> letterbox padding with `pad_value` -> layout -> channel
selection/reorder -> `x * (scale / std) - mean / std` in float32 -> `dtype`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import TensorProto

from .. import _onnx
from ..cache import Cache, Key
from ..errors import InputError, OptionError
from ..feeds import IMAGE_SIZE_KEYS, metadata_image_size
from ..model import Model, ModelFormat
from ..tensors import Dim, TensorSpec, describe, dtype_info, graph_inputs
from ._preprocess_graph import (
    METADATA_KEY,
    Builder,
    build,
    np_along,
    np_sample,
    onnx_along,
    onnx_sample,
    placement,
    source_index,
    specs_json,
)

log = logging.getLogger(__name__)

FORMAT = 1
"""Version of the spec's dict form and of the graph this module emits (part of the cache key)."""

RESIZE_MODES = ("stretch", "letterbox", "center_crop", "none")
INTERPOLATIONS = ("linear", "nearest")
LAYOUTS = ("NCHW", "NHWC")
SOURCE_LAYOUTS = ("NHWC", "NCHW", "HWC", "CHW")


# -- the specs --------------------------------------------------------------------------------


class Preprocess(abc.ABC):
    """A preprocessing spec for one model input. Build one with `Preprocess.image` or
    `Preprocess.tensor`; pass it (or {input name: spec}) to `Engine.load(preprocess=...)`."""

    kind: ClassVar[str]

    @staticmethod
    def image(
        size: int | Sequence[int] | None = None,
        resize: str = "stretch",
        *,
        interpolation: str = "linear",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        scale: float = 1 / 255,
        channels: str = "RGB",
        source_channels: str = "BGR",
        layout: str = "NCHW",
        source_layout: str = "NHWC",
        dtype: str | None = None,
        source_dtype: str = "uint8",
        pad_value: float = 114.0,
    ) -> ImagePreprocess:
        """Frames in, the model's image tensor out.

        size: (height, width) the model takes (an int: square); None takes it from the model
            when fused: its fixed height and width, else its metadata as `infer run` reads
            it (an image size such as Ultralytics' "imgsz").
        resize: "stretch" (to `size`, aspect ratio not kept), "letterbox" (fit inside `size`,
            aspect kept, padded with `pad_value`), "center_crop" (cover `size`, aspect kept,
            centre cut out) or "none" (frames already have the model's size).
        interpolation: "linear" (bilinear, half-pixel centres) or "nearest" (the source pixel
            whose centre is nearest). No antialiasing.
        mean, std: per output channel, applied after `scale`: (x * scale - mean) / std.
        channels / source_channels: channel order the model takes / the frames have, as
            letters ("RGB", "BGR", "BGRA", "L"); channels may drop source channels.
        layout / source_layout: "NCHW"/"NHWC" for the model; "NHWC", "NCHW", or "HWC"/"CHW"
            for single frames without a batch axis.
        dtype: the model input's float type (None: whatever the model takes).
        source_dtype: element type of the raw frames.
        pad_value: letterbox border, in source units (114: the usual YOLO grey).
        """
        return ImagePreprocess(
            size=size,  # type: ignore[arg-type]  # normalised in __post_init__
            resize=resize,
            interpolation=interpolation,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            scale=scale,
            channels=channels,
            source_channels=source_channels,
            layout=layout,
            source_layout=source_layout,
            dtype=dtype,
            source_dtype=source_dtype,
            pad_value=pad_value,
        )

    @staticmethod
    def tensor(
        source_dtype: str | None = None,
        scale: float | Sequence[float] = 1.0,
        offset: float | Sequence[float] = 0.0,
        transpose: Sequence[int] | None = None,
        *,
        dtype: str | None = None,
    ) -> TensorPreprocess:
        """Any tensor: cast from `source_dtype`, transpose, then `x * scale + offset`.

        source_dtype: element type the raw input arrives in (e.g. "int16" audio); the graph
            casts it to the model's type. None: the model's own type.
        transpose: permutation taking the raw input's axes to the model's (numpy.transpose).
        scale, offset: a number, or one value per element of the model input's last axis.
        dtype: the model input's type (None: whatever the model takes).
        """
        return TensorPreprocess(
            source_dtype=source_dtype,
            scale=scale,  # type: ignore[arg-type]
            offset=offset,  # type: ignore[arg-type]
            transpose=transpose,  # type: ignore[arg-type]
            dtype=dtype,
        )

    # -- serialization ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `Preprocess.from_dict` reads it back."""
        out: dict[str, Any] = {"kind": self.kind, "format": FORMAT}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Preprocess:
        """The spec `to_dict` wrote; raises OptionError on unknown kinds or fields."""
        if not isinstance(data, Mapping):
            raise OptionError(f"a preprocess spec must be a dict, got {type(data).__name__}")
        fields = dict(data)
        kind = fields.pop("kind", None)
        fmt = fields.pop("format", FORMAT)
        classes: dict[str, type[ImagePreprocess] | type[TensorPreprocess]] = {
            "image": ImagePreprocess,
            "tensor": TensorPreprocess,
        }
        if kind not in classes:
            raise OptionError(
                f"preprocess spec: kind {kind!r} is not valid; use 'image' or 'tensor'"
            )
        if fmt != FORMAT:
            raise OptionError(
                f"preprocess spec: format {fmt!r} is not supported (this is {FORMAT})"
            )
        cls = classes[kind]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise OptionError(
                f"Preprocess.{kind}: unknown field(s) {unknown}; it takes {sorted(known)}"
            )
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Preprocess:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise OptionError(f"preprocess spec is not valid JSON: {e}") from e
        return Preprocess.from_dict(data)

    @staticmethod
    def parse(text: str) -> Preprocess | dict[str, Preprocess]:
        """A spec from the text `--preprocess` takes: "image:letterbox,size=640,mean=0.485/
        0.456/0.406,std=0.229/0.224/0.225", "NAME=image:..." for one input of several, a JSON
        object, or a path to a .json/.toml file of `Preprocess.image`'s keywords."""
        from ._preprocess_text import parse

        return parse(text, "preprocess")

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal specs, equal digests, on every machine."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    # -- implemented by each kind -------------------------------------------------------------

    @abc.abstractmethod
    def apply(self, array: Any) -> np.ndarray:
        """The preprocessing in numpy: the raw input in, the model's input tensor out."""

    @abc.abstractmethod
    def _resolve(self, spec: TensorSpec, model: Model | None = None) -> Preprocess:
        """This spec checked against the model input `spec` and completed from it (and from
        the metadata of `model`, which has that input)."""

    @abc.abstractmethod
    def _raw_spec(self, spec: TensorSpec, dims: tuple[str, str]) -> TensorSpec:
        """The raw input that replaces model input `spec` (`dims`: names for dynamic H, W)."""

    @abc.abstractmethod
    def _emit(self, g: Builder, raw: str, spec: TensorSpec) -> str:
        """Add the nodes taking `raw` to the model input; return the output's name."""


def _where(kind: str, field: str) -> str:
    return f"Preprocess.{kind}: {field}"


def _choice(kind: str, field: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise OptionError(
            f"{_where(kind, field)} {value!r} is not valid; use one of {', '.join(allowed)}"
        )
    return value


def _number(kind: str, field: str, value: Any, *, nonzero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptionError(f"{_where(kind, field)} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (nonzero and value == 0):
        raise OptionError(
            f"{_where(kind, field)} must be a finite{' non-zero' if nonzero else ''} number, got {value!r}"
        )
    return value


def _per_channel(
    kind: str, field: str, value: Any, count: int | None, *, nonzero: bool = False
) -> tuple[float, ...] | float:
    """A number, or a sequence of numbers (exactly `count` of them when count is given)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        values = tuple(_number(kind, field, v, nonzero=nonzero) for v in np.asarray(value).ravel())
        if not values or (count is not None and len(values) != count):
            want = f"{count} values" if count is not None else "at least one value"
            raise OptionError(f"{_where(kind, field)} must have {want}, got {len(values)}")
        return values
    return _number(kind, field, value, nonzero=nonzero)


def _dtype_name(kind: str, field: str, value: Any, *, floats: bool) -> str:
    try:
        info = dtype_info(value if isinstance(value, str) else np.dtype(value))
    except (KeyError, TypeError) as e:
        raise OptionError(f"{_where(kind, field)} {value!r} is not an element type") from e
    if floats and not _is_float(info.numpy):
        raise OptionError(f"{_where(kind, field)} must be a float type, got {info.name}")
    if not floats and info.numpy.kind not in "biuf" and not _is_float(info.numpy):
        raise OptionError(f"{_where(kind, field)} must be a numeric type, got {info.name}")
    return info.name


@dataclass(frozen=True)
class ImagePreprocess(Preprocess):
    """See `Preprocess.image`."""

    kind: ClassVar[str] = "image"

    size: tuple[int, int] | None = None
    resize: str = "stretch"
    interpolation: str = "linear"
    mean: tuple[float, ...] | float | None = None
    std: tuple[float, ...] | float | None = None
    scale: float = 1 / 255
    channels: str = "RGB"
    source_channels: str = "BGR"
    layout: str = "NCHW"
    source_layout: str = "NHWC"
    dtype: str | None = None
    source_dtype: str = "uint8"
    pad_value: float = 114.0

    def __post_init__(self) -> None:
        k, put = self.kind, object.__setattr__
        if self.size is not None:
            size = self.size
            if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
                size = (int(size), int(size))
            if (
                not isinstance(size, (list, tuple))
                or len(size) != 2
                or not all(
                    isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                    for s in size
                )
            ):
                raise OptionError(
                    f"{_where(k, 'size')} must be (height, width) in positive pixels or one int, "
                    f"got {self.size!r}"
                )
            put(self, "size", (int(size[0]), int(size[1])))
        _choice(k, "resize", self.resize, RESIZE_MODES)
        _choice(k, "interpolation", self.interpolation, INTERPOLATIONS)
        _choice(k, "layout", self.layout, LAYOUTS)
        _choice(k, "source_layout", self.source_layout, SOURCE_LAYOUTS)
        for name in ("channels", "source_channels"):
            value = getattr(self, name)
            if (
                not isinstance(value, str)
                or not value
                or not value.isalpha()
                or len(set(value.upper())) != len(value)
            ):
                raise OptionError(
                    f"{_where(k, name)} must be distinct channel letters such as 'RGB', got {value!r}"
                )
            put(self, name, value.upper())
        missing = [c for c in self.channels if c not in self.source_channels]
        if missing:
            raise OptionError(
                f"{_where(k, 'channels')} {self.channels!r} needs {missing}, which "
                f"source_channels {self.source_channels!r} does not have"
            )
        count = len(self.channels)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                put(self, name, _per_channel(k, name, value, count, nonzero=name == "std"))
        put(self, "scale", _number(k, "scale", self.scale, nonzero=True))
        put(self, "pad_value", _number(k, "pad_value", self.pad_value))
        if self.dtype is not None:
            put(self, "dtype", _dtype_name(k, "dtype", self.dtype, floats=True))
        put(self, "source_dtype", _dtype_name(k, "source_dtype", self.source_dtype, floats=False))

    # -- derived facts ------------------------------------------------------------------------

    @property
    def _batched(self) -> bool:
        return len(self.source_layout) == 4

    @property
    def _axes(self) -> tuple[int, int, int]:
        """(height, width, channel) axes of the raw input."""
        layout = self.source_layout
        return layout.index("H"), layout.index("W"), layout.index("C")

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per output channel (a, b) with x * a + b == (x * scale - mean) / std, as float32."""
        count = len(self.channels)
        mean = np.broadcast_to(
            np.asarray(0.0 if self.mean is None else self.mean, np.float64), (count,)
        )
        std = np.broadcast_to(
            np.asarray(1.0 if self.std is None else self.std, np.float64), (count,)
        )
        return (self.scale / std).astype(np.float32), (-mean / std).astype(np.float32)

    def _channel_index(self) -> list[int] | None:
        """Source channel per output channel; None when they are the same."""
        index = [self.source_channels.index(c) for c in self.channels]
        return None if index == list(range(len(self.source_channels))) else index

    def _need_size(self) -> tuple[int, int]:
        if self.size is None:
            raise OptionError(
                f"{_where(self.kind, 'size')} is None (taken from the model when fused); give "
                "size=(height, width) to use this spec on its own, or use engine.preprocess"
            )
        return self.size

    # -- where the model's pixels come from ---------------------------------------------------

    def meta(self, frame_shape: Sequence[int]) -> ResizeMeta:
        """How a frame of `frame_shape` maps onto the model's input (scale and offset per axis).

        frame_shape: the raw input's shape (in `source_layout`) or just (height, width).
        """
        th, tw = self._need_size()
        fh, fw = self._frame_hw(frame_shape)
        (rh, oh), (rw, ow) = placement(self.resize, fh, fw, th, tw)
        return ResizeMeta(
            frame=(fh, fw), size=(th, tw), resized=(int(rh), int(rw)), offset=(int(oh), int(ow))
        )

    def unletterbox(
        self, boxes: Any, frame_shape: Sequence[int], *, clip: bool = False
    ) -> np.ndarray:
        """Boxes [..., 4] as (x1, y1, x2, y2) in model-input pixels -> frame pixels.

        Works for every resize mode (letterbox padding, centre crop, stretch).
        """
        return self.meta(frame_shape).to_frame(boxes, clip=clip)

    def _frame_hw(self, frame_shape: Sequence[int]) -> tuple[int, int]:
        shape = tuple(int(d) for d in frame_shape)
        if len(shape) == 2:
            return shape[0], shape[1]
        if len(shape) != len(self.source_layout):
            raise InputError(
                f"frame shape {list(shape)} does not match source_layout {self.source_layout!r}; "
                "give the raw input's shape or (height, width)"
            )
        h, w, _ = self._axes
        return shape[h], shape[w]

    # -- numpy ----------------------------------------------------------------------------------

    def apply(self, array: Any) -> np.ndarray:
        """Frames (in `source_layout`, of `source_dtype`) -> the model's input tensor."""
        th, tw = self._need_size()
        x = np.asarray(array)
        want = _np(self.source_dtype)
        if x.dtype != want:
            raise InputError(f"Preprocess.apply: expected {want.name} frames, got {x.dtype.name}")
        if x.ndim != len(self.source_layout):
            raise InputError(
                f"Preprocess.apply: expected rank {len(self.source_layout)} ({self.source_layout}), "
                f"got shape {list(x.shape)}"
            )
        if not self._batched:
            x = x[None]
        layout4 = self.source_layout if self._batched else "N" + self.source_layout
        hax, wax, cax = (layout4.index(c) for c in "HWC")
        if x.shape[cax] != len(self.source_channels):
            raise InputError(
                f"Preprocess.apply: expected {len(self.source_channels)} channels "
                f"({self.source_channels}) on axis {cax}, got shape {list(x.shape)}"
            )
        fh, fw = x.shape[hax], x.shape[wax]
        if self.resize == "none":
            if (fh, fw) != (th, tw):
                raise InputError(
                    f"Preprocess.apply: resize='none' takes {th}x{tw} frames, got {fh}x{fw}"
                )
            v = x.astype(np.float32)
        else:
            (rh, oh), (rw, ow) = placement(self.resize, fh, fw, th, tw)
            ys = source_index(self.interpolation, th, fh, rh, oh)
            xs = source_index(self.interpolation, tw, fw, rw, ow)
            v = np_sample(x, ys, xs, hax, wax, self.interpolation)
        target = self.layout
        v = v.transpose([layout4.index(c) for c in target])
        if self.resize == "letterbox":
            valid = np_along(ys.valid, target.index("H")) & np_along(xs.valid, target.index("W"))
            v = np.where(valid, v, np.float32(self.pad_value)).astype(np.float32)
        index = self._channel_index()
        out_c = target.index("C")
        if index is not None:
            v = np.take(v, index, axis=out_c)
        a, b = self._affine()
        shape = [1] * 4
        shape[out_c] = len(a)
        v = v * a.reshape(shape) + b.reshape(shape)
        return np.ascontiguousarray(v.astype(_np(self.dtype or "float32")))

    # -- with a model ---------------------------------------------------------------------------

    def _resolve(self, spec: TensorSpec, model: Model | None = None) -> ImagePreprocess:
        where = f"preprocess for input {spec.name!r} ({_describe(spec)})"
        if spec.shape is None or len(spec.shape) != 4:
            raise OptionError(f"{where}: an image spec needs a rank-4 model input ({self.layout})")
        if not _is_float(spec.dtype):
            raise OptionError(f"{where}: an image spec needs a float model input")
        model_dtype = dtype_info(spec.dtype).name
        if self.dtype is not None and self.dtype != model_dtype:
            raise OptionError(
                f"{where}: dtype {self.dtype!r} does not match the model's {model_dtype}"
            )
        dims = dict(zip(self.layout, spec.shape))
        if isinstance(dims["C"], int) and dims["C"] != len(self.channels):
            raise OptionError(
                f"{where}: channels {self.channels!r} gives {len(self.channels)} channels, the "
                f"model's {self.layout} input has {dims['C']}"
            )
        hw = (dims["H"], dims["W"])
        size = self.size
        if size is None:
            # Where `infer run` takes it: the fixed size, else the model's metadata.
            axes = (self.layout.index("H"), self.layout.index("W"))
            found = metadata_image_size(model, spec, axes) if model is not None else None
            if found is None and all(isinstance(d, int) for d in hw):
                found = (int(hw[0]), int(hw[1])), ""  # type: ignore[arg-type]
            if found is None:
                keys = ", ".join(IMAGE_SIZE_KEYS)
                raise OptionError(
                    f"{where}: size is None but the model's height and width are not fixed "
                    f"and its metadata gives no image size (keys looked for: {keys}, or the "
                    "input's or its dimensions' names); give size=(height, width)"
                )
            size, keys = found
            if keys:
                log.info("%s: size %dx%d from the model's metadata %s", where, *size, keys)
        for axis, model_dim, want in zip(("height", "width"), hw, size):
            if isinstance(model_dim, int) and model_dim != want:
                raise OptionError(
                    f"{where}: size {size} does not fit the model, whose {axis} is {model_dim}"
                )
        return dataclasses.replace(self, size=size, dtype=model_dtype)

    def _raw_spec(self, spec: TensorSpec, dims: tuple[str, str]) -> TensorSpec:
        batch = spec.shape[self.layout.index("N")] if spec.shape else None
        h, w = self.size if self.resize == "none" else dims  # type: ignore[misc]
        values: dict[str, Any] = {"N": batch, "H": h, "W": w, "C": len(self.source_channels)}
        return TensorSpec(
            spec.name,
            tuple(values[c] for c in self.source_layout),
            _np(self.source_dtype),
        )

    def _emit(self, g: Builder, raw: str, spec: TensorSpec) -> str:
        th, tw = self._need_size()
        x = raw
        if not self._batched:
            x = g.op("Reshape", [x, g.op("Concat", [g.const([1]), g.op("Shape", [x])], axis=0)])
        layout4 = self.source_layout if self._batched else "N" + self.source_layout
        hax, wax, cax = (layout4.index(c) for c in "HWC")
        if self.resize == "none":
            v = g.op("Cast", [x], to=TensorProto.FLOAT)
        else:
            x_shape = g.op("Shape", [x])
            fh = g.op("Gather", [x_shape, g.const(hax)], axis=0)  # scalar int64
            fw = g.op("Gather", [x_shape, g.const(wax)], axis=0)
            (rh, oh), (rw, ow) = placement(self.resize, fh, fw, th, tw, g)
            ys = source_index(self.interpolation, th, fh, rh, oh, g)
            xs = source_index(self.interpolation, tw, fw, rw, ow, g)
            v = onnx_sample(
                g, x, ys, xs, (hax, wax, cax), len(self.source_channels), self.interpolation
            )
        target = self.layout
        perm = [layout4.index(c) for c in target]
        if perm != [0, 1, 2, 3]:
            v = g.op("Transpose", [v], perm=perm)
        if self.resize == "letterbox":
            # Masked in the model's layout: a [1, 1, H, W] mask broadcasts fast over NCHW.
            valid_y = onnx_along(g, ys.valid, target.index("H"))
            valid_x = onnx_along(g, xs.valid, target.index("W"))
            if target[-1] == "C":
                count = len(self.source_channels)
                valid_x = g.op("Tile", [valid_x, g.const(np.asarray([1, 1, 1, count], np.int64))])
            valid = g.op("And", [valid_y, valid_x])
            v = g.op("Where", [valid, v, g.const(np.float32(self.pad_value))])
        index = self._channel_index()
        out_c = target.index("C")
        if index is not None:
            v = g.op("Gather", [v, g.const(np.asarray(index, np.int64))], axis=out_c)
        a, b = self._affine()
        shape = [1] * 4
        shape[out_c] = len(a)
        v = g.op("Mul", [v, g.const(a.reshape(shape))])
        v = g.op("Add", [v, g.const(b.reshape(shape))])
        if spec.dtype != np.float32:
            v = g.op("Cast", [v], to=dtype_info(spec.dtype).onnx)
        return v


@dataclass(frozen=True)
class TensorPreprocess(Preprocess):
    """See `Preprocess.tensor`."""

    kind: ClassVar[str] = "tensor"

    source_dtype: str | None = None
    scale: tuple[float, ...] | float = 1.0
    offset: tuple[float, ...] | float = 0.0
    transpose: tuple[int, ...] | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        k, put = self.kind, object.__setattr__
        if self.source_dtype is not None:
            put(
                self,
                "source_dtype",
                _dtype_name(k, "source_dtype", self.source_dtype, floats=False),
            )
        if self.dtype is not None:
            put(self, "dtype", _dtype_name(k, "dtype", self.dtype, floats=False))
        put(self, "scale", _per_channel(k, "scale", self.scale, None, nonzero=True))
        put(self, "offset", _per_channel(k, "offset", self.offset, None))
        if self.transpose is not None:
            perm = self.transpose
            if (
                not isinstance(perm, (list, tuple))
                or not all(
                    isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in perm
                )
                or sorted(int(p) for p in perm) != list(range(len(perm)))
            ):
                raise OptionError(
                    f"{_where(k, 'transpose')} must be a permutation of 0..rank-1, got {perm!r}"
                )
            put(self, "transpose", tuple(int(p) for p in perm))
        for name in ("scale", "offset"):
            if (
                isinstance(getattr(self, name), tuple)
                and self.dtype is not None
                and not _is_float(_np(self.dtype))
            ):
                raise OptionError(f"{_where(k, name)} needs a float dtype, got {self.dtype}")

    @property
    def _is_affine(self) -> bool:
        return self.scale != 1.0 or self.offset != 0.0

    def apply(self, array: Any) -> np.ndarray:
        """The raw tensor -> the model's input tensor."""
        x = np.asarray(array)
        if self.source_dtype is not None and x.dtype != _np(self.source_dtype):
            raise InputError(
                f"Preprocess.apply: expected {self.source_dtype} input, got {x.dtype.name}"
            )
        dtype = _np(self.dtype) if self.dtype is not None else x.dtype
        if self.transpose is not None:
            if x.ndim != len(self.transpose):
                raise InputError(
                    f"Preprocess.apply: transpose {list(self.transpose)} needs rank "
                    f"{len(self.transpose)}, got shape {list(x.shape)}"
                )
            x = x.transpose(self.transpose)
        compute = _compute_dtype(dtype)
        x = x.astype(compute)
        if self._is_affine:
            x = x * np.asarray(self.scale, compute) + np.asarray(self.offset, compute)
        return np.ascontiguousarray(x.astype(dtype))

    def _resolve(self, spec: TensorSpec, model: Model | None = None) -> TensorPreprocess:
        where = f"preprocess for input {spec.name!r} ({_describe(spec)})"
        model_dtype = dtype_info(spec.dtype).name
        if spec.dtype.kind not in "biuf" and not _is_float(spec.dtype):
            raise OptionError(f"{where}: a tensor spec needs a numeric model input")
        if self.dtype is not None and self.dtype != model_dtype:
            raise OptionError(
                f"{where}: dtype {self.dtype!r} does not match the model's {model_dtype}"
            )
        if self._is_affine and not _is_float(spec.dtype):
            raise OptionError(
                f"{where}: scale/offset need a float model input, it is {model_dtype}"
            )
        rank = None if spec.shape is None else len(spec.shape)
        if self.transpose is not None and rank != len(self.transpose):
            raise OptionError(
                f"{where}: transpose {list(self.transpose)} is for rank {len(self.transpose)}, "
                f"the input has rank {rank}"
            )
        for name in ("scale", "offset"):
            value = getattr(self, name)
            last = spec.shape[-1] if spec.shape else None
            if (
                isinstance(value, tuple)
                and len(value) != 1
                and not (isinstance(last, int) and last == len(value))
            ):
                raise OptionError(
                    f"{where}: {name} has {len(value)} values, the input's last axis is {last}"
                )
        return dataclasses.replace(
            self, dtype=model_dtype, source_dtype=self.source_dtype or model_dtype
        )

    def _raw_spec(self, spec: TensorSpec, dims: tuple[str, str]) -> TensorSpec:
        shape = spec.shape
        if shape is not None and self.transpose is not None:
            raw: list[Dim] = [None] * len(shape)
            for model_axis, raw_axis in enumerate(self.transpose):
                raw[raw_axis] = shape[model_axis]
            shape = tuple(raw)
        source = _np(self.source_dtype) if self.source_dtype else spec.dtype
        return TensorSpec(spec.name, shape, source)

    def _emit(self, g: Builder, raw: str, spec: TensorSpec) -> str:
        x = raw
        if self.transpose is not None:
            x = g.op("Transpose", [x], perm=list(self.transpose))
        compute = _compute_dtype(spec.dtype)
        if _np(self.source_dtype) != compute:  # type: ignore[arg-type]
            x = g.op("Cast", [x], to=dtype_info(compute).onnx)
        if self._is_affine:
            x = g.op("Mul", [x, g.const(np.asarray(self.scale, compute))])
            x = g.op("Add", [x, g.const(np.asarray(self.offset, compute))])
        if compute != spec.dtype:
            x = g.op("Cast", [x], to=dtype_info(spec.dtype).onnx)
        if x == raw:  # nothing to do: still give the model input its own edge
            x = g.op("Identity", [x])
        return x


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16/bfloat16/float8 inputs are computed in float32 and cast at the end, like images."""
    dtype = np.dtype(dtype)
    if _is_float(dtype) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


def _describe(spec: TensorSpec) -> str:
    return describe(spec.shape, spec.dtype)


def _np(name: str) -> np.dtype:
    """numpy dtype for a name from the dtype table ("bfloat16" included)."""
    return dtype_info(name).numpy


def _is_float(dtype: np.dtype) -> bool:
    """float16/32/64 and ml_dtypes' bfloat16 and float8 types."""
    if np.dtype(dtype).kind == "f":
        return True
    try:
        return dtype_info(dtype).name.startswith(("bfloat", "float"))
    except KeyError:
        return False


# -- where a frame lands in the model's input ----------------------------------------------


@dataclass(frozen=True)
class ResizeMeta:
    """Where a frame lands in the model's input: model = frame * resized / frame + offset.

    frame: (height, width) of the raw frame; size: the model's (height, width); resized: the
    frame's size after resizing; offset: (top, left) of the resized frame in the model's input
    (letterbox padding is positive, a centre crop negative). Coordinates are continuous pixel
    edges (the half-pixel convention), so the mappings are exact inverses.
    """

    frame: tuple[int, int]
    size: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(y, x) model pixels per frame pixel."""
        return self.resized[0] / self.frame[0], self.resized[1] / self.frame[1]

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """Letterbox border (top, left, bottom, right) in model pixels; 0 where there is none."""
        top, left = max(self.offset[0], 0), max(self.offset[1], 0)
        bottom = max(self.size[0] - self.resized[0] - self.offset[0], 0)
        right = max(self.size[1] - self.resized[1] - self.offset[1], 0)
        return top, left, bottom, right

    def to_frame(self, boxes: Any, *, clip: bool = False) -> np.ndarray:
        """Boxes [..., 4] (x1, y1, x2, y2) in model pixels -> frame pixels (float64)."""
        b = _boxes(boxes)
        (fh, fw), (rh, rw), (oy, ox) = self.frame, self.resized, self.offset
        out = np.empty_like(b)
        out[..., 0::2] = (b[..., 0::2] - ox) * fw / rw
        out[..., 1::2] = (b[..., 1::2] - oy) * fh / rh
        if clip:
            out[..., 0::2] = out[..., 0::2].clip(0, fw)
            out[..., 1::2] = out[..., 1::2].clip(0, fh)
        return out

    def to_model(self, boxes: Any) -> np.ndarray:
        """Boxes [..., 4] (x1, y1, x2, y2) in frame pixels -> model pixels (float64)."""
        b = _boxes(boxes)
        (fh, fw), (rh, rw), (oy, ox) = self.frame, self.resized, self.offset
        out = np.empty_like(b)
        out[..., 0::2] = b[..., 0::2] * rw / fw + ox
        out[..., 1::2] = b[..., 1::2] * rh / fh + oy
        return out


def _boxes(boxes: Any) -> np.ndarray:
    b = np.asarray(boxes, np.float64)
    if b.ndim == 0 or b.shape[-1] != 4:
        raise InputError(f"boxes must have shape [..., 4] (x1, y1, x2, y2), got {list(b.shape)}")
    return b


# -- the graph ------------------------------------------------------------------------------


def fuse(model: Model, preprocess: Any, cache: Cache | None = None) -> Model:
    """The model with `preprocess` prepended as ONNX nodes; its inputs become the raw ones.

    preprocess: one spec (for a one-input model), or {input name: spec or spec dict}.
    cache: the cache to keep the fused model in (keyed by the model's digest, the specs'
    digest, the onnx version and this module's FORMAT), or None to build it in memory.
    """
    if model.format is not ModelFormat.ONNX:
        raise OptionError(
            f"preprocess= fuses ONNX nodes into the model, but {model!r} is {model.format.value}; "
            "give the ONNX model, or preprocess the inputs yourself (Preprocess.apply)"
        )
    skeleton = model.proto if model.path is None else model._skeleton
    resolved = resolve(skeleton, preprocess, model)
    digest = specs_digest(resolved)
    if cache is None:
        return _named(Model.load(build(model.proto, resolved)), model)
    key = Key.of(
        "onnx-preprocess",
        model=model.digest,
        preprocess=digest,
        onnx=onnx.__version__,
        format=FORMAT,
    )

    def write(folder: Any) -> dict[str, Any]:
        fused = build(model.proto, resolved)
        _onnx.save(fused, folder / "model.onnx")
        return {"source": str(model.path or model.name), "specs": specs_json(resolved)}

    entry, built = cache.get_or_build(key, write)
    log.debug(
        "%s fused preprocessing %s (%s)", "built" if built else "reused", digest[:12], entry.path
    )
    return _named(Model.load(entry.file("model.onnx")), model)


def _named(fused: Model, source: Model) -> Model:
    fused.name = source.name
    return fused


def resolve(
    proto: onnx.ModelProto, preprocess: Any, model: Model | None = None
) -> dict[str, Preprocess]:
    """{input name: spec}, each checked against the model input and completed from it
    (size and dtype filled in; a size the input leaves open from `model`'s metadata), in
    the model's input order."""
    inputs = {s.name: s for s in graph_inputs(proto.graph)}
    if isinstance(preprocess, str):
        preprocess = Preprocess.parse(preprocess)
    if isinstance(preprocess, Preprocess):
        if len(inputs) != 1:
            raise OptionError(
                f"preprocess: the model has {len(inputs)} inputs ({', '.join(inputs)}); "
                "give preprocess={input name: spec}"
            )
        given: dict[str, Any] = {next(iter(inputs)): preprocess}
    elif isinstance(preprocess, Mapping):
        given = dict(preprocess)
    else:
        raise OptionError(
            "preprocess must be a Preprocess (Preprocess.image(...), Preprocess.tensor(...)), "
            "its text (Preprocess.parse) or a dict of input name -> Preprocess, got "
            f"{type(preprocess).__name__}"
        )
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise OptionError(
            f"preprocess: unknown input(s) {unknown}; the model's inputs are {list(inputs)}"
        )
    out: dict[str, Preprocess] = {}
    for name, spec in inputs.items():
        if name not in given:
            continue
        value = given[name]
        if isinstance(value, Mapping):
            value = Preprocess.from_dict(value)
        if not isinstance(value, Preprocess):
            raise OptionError(
                f"preprocess[{name!r}] must be a Preprocess or its dict, got {type(value).__name__}"
            )
        out[name] = value._resolve(spec, model)
    return out


def specs_digest(specs: Mapping[str, Preprocess]) -> str:
    """One digest for a model's specs (part of the fused model's cache key)."""
    return hashlib.sha256(specs_json(specs).encode()).hexdigest()


def specs_of(model: Model) -> dict[str, Preprocess]:
    """The specs a fused model carries in its metadata ({} for a model without any)."""
    if model.format is not ModelFormat.ONNX:
        return {}
    for prop in model._skeleton.metadata_props:
        if prop.key == METADATA_KEY:
            return {n: Preprocess.from_dict(d) for n, d in json.loads(prop.value).items()}
    return {}
