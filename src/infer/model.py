"""Models: a file, bytes or `onnx.ModelProto`, its format sniffed from content, and its hash."""

from __future__ import annotations

import enum
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import onnx
from onnx.external_data_helper import uses_external_data

from . import _onnx
from .errors import ModelError
from .tensors import TensorSpec, graph_inputs, graph_outputs

ModelSource = Union[str, os.PathLike, bytes, bytearray, memoryview, onnx.ModelProto, "Model"]


class ModelFormat(str, enum.Enum):
    """What a model file holds."""

    ONNX = "onnx"
    TENSORRT = "tensorrt-plan"
    OPENVINO = "openvino-ir"
    COREML = "coreml"

    def __str__(self) -> str:
        return self.value


_PLAN_MAGIC = (b"ftrt", b"ptrt")


def sniff(head: bytes, suffix: str = "") -> ModelFormat | None:
    """The format of a model from its first bytes (and, to break ties, its file suffix)."""
    if head[:4] in _PLAN_MAGIC:
        return ModelFormat.TENSORRT
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"<?xml") or stripped.startswith(b"<net"):
        return ModelFormat.OPENVINO if b"<net" in head else None
    # ONNX and Core ML specs are both protobufs whose field 1 is a varint (tag byte 0x08).
    if head[:1] == b"\x08":
        coreml = suffix == ".mlmodel" or _coreml_description(head)
        return ModelFormat.COREML if coreml else ModelFormat.ONNX
    return None


def _coreml_description(head: bytes) -> bool:
    """Whether field 2 is a Core ML ModelDescription (starting with an input, tag 0x0a).

    In ONNX, field 2 is producer_name, a string that never starts with a newline.
    """
    i = _skip_varint(head, 1)
    if i >= len(head) or head[i] != 0x12:
        return False
    i = _skip_varint(head, i + 1)
    return i < len(head) and head[i] == 0x0A


def _skip_varint(buf: bytes, i: int) -> int:
    while i < len(buf) and buf[i] & 0x80:
        i += 1
    return i + 1


@dataclass(frozen=True)
class NativeSummary:
    """What a runtime's own format says without loading it (`Backend.describe`): inputs,
    outputs, node count and types, and notes such as the format's version."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    nodes: int | None = None
    op_types: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = ()


class Model:
    """A model ready to hand to a backend.

    ONNX models keep their file path when they have one (runtimes read external data
    relative to it) and expose the parsed `proto` and serialized `data` lazily.
    """

    def __init__(
        self,
        format: ModelFormat,
        *,
        path: Path | None = None,
        data: bytes | None = None,
        proto: onnx.ModelProto | None = None,
        name: str | None = None,
    ) -> None:
        if path is None and data is None and proto is None:
            raise ValueError("Model needs a path, data or proto")
        self.format = format
        self.path = path
        self._data = data
        self._proto = proto
        self.name = name or (path.stem if path else "model")
        # Set by a graph transform (transforms/precision.py): what the graph now computes in,
        # e.g. "int8 (QDQ, minmax, 200 samples)". A backend compiling this model reports it as
        # its session's precision; None for a model as loaded.
        self.precision: str | None = None
        # Set by the int8 transform where a runtime's on-the-fly activation quantization
        # (`Backend.runtime_int8`) missed the accuracy budget: compile with float activations.
        self.float_activations = False

    def __repr__(self) -> str:
        where = str(self.path) if self.path else f"{len(self.data)} bytes in memory"
        return f"Model({self.format.value}, {where})"

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def load(cls, source: ModelSource) -> Model:
        """Read a model from a path, bytes, or an `onnx.ModelProto`; raises ModelError."""
        if isinstance(source, Model):
            return source
        if isinstance(source, onnx.ModelProto):
            _check_onnx_proto(source, "the ModelProto given")
            _external_files(source, None, "the ModelProto given")
            return cls(ModelFormat.ONNX, proto=source)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            fmt = sniff(data[:64])
            if fmt is None:
                raise ModelError(
                    f"model bytes ({len(data)} bytes) are not a known format: expected ONNX "
                    f"protobuf or a TensorRT plan, got {data[:8]!r}..."
                )
            model = cls(fmt, data=data)
            if fmt is ModelFormat.ONNX:
                _check_onnx_proto(model._skeleton, "the model bytes")
                _external_files(model._skeleton, None, "the model bytes")
            return model
        if isinstance(source, (str, os.PathLike)):
            return cls._from_path(Path(source))
        raise ModelError(
            f"model must be a path, bytes or onnx.ModelProto; got {type(source).__name__}"
        )

    @classmethod
    def _from_path(cls, path: Path) -> Model:
        if "\0" in str(path):
            raise ModelError(f"model path {str(path)!r} contains a NUL byte")
        if not path.exists():
            raise ModelError(f"model file {str(path)!r} does not exist")
        if path.is_dir():
            if (path / "Manifest.json").is_file():
                return cls(ModelFormat.COREML, path=path)
            raise ModelError(
                f"model path {str(path)!r} is a folder but not a Core ML .mlpackage "
                "(no Manifest.json); point at the model file"
            )
        if not path.is_file():  # a FIFO would block the read below; a device is not a model
            raise ModelError(f"model path {str(path)!r} is not a regular file")
        try:
            with open(path, "rb") as f:
                head = f.read(512)
        except OSError as e:
            raise ModelError(f"model file {str(path)!r} cannot be read: {e}") from e
        fmt = sniff(head, path.suffix.lower())
        if fmt is None:
            raise ModelError(
                f"model file {str(path)!r} is not a known format: expected ONNX, a TensorRT plan, "
                f"OpenVINO IR (.xml) or Core ML; its first bytes are {head[:8]!r}"
            )
        model = cls(fmt, path=path)
        if fmt is ModelFormat.ONNX:
            _check_onnx_proto(model._skeleton, repr(str(path)))
            model.external_data  # noqa: B018 - refuse unsafe external data before any runtime reads it
        elif fmt is ModelFormat.OPENVINO and not model.weights_path.is_file():
            raise ModelError(
                f"OpenVINO IR {str(path)!r} has no weights file: expected {str(model.weights_path)!r}"
            )
        return model

    # -- content ------------------------------------------------------------------------------

    @property
    def proto(self) -> onnx.ModelProto:
        """The parsed ONNX model, external data loaded (ONNX only)."""
        if self.format is not ModelFormat.ONNX:
            raise ModelError(f"{self!r} is {self.format.value}, not ONNX")
        if self._proto is None:
            self._proto = self._parse()
        return self._proto

    def _parse(self) -> onnx.ModelProto:
        proto = self._skeleton
        if self.external_data:
            proto = onnx.ModelProto()
            proto.CopyFrom(self._skeleton)
            try:
                onnx.load_external_data_for_model(proto, str(self.path.parent))  # type: ignore[union-attr]
            except Exception as e:
                raise ModelError(
                    f"ONNX model {str(self.path)!r}: external data cannot be read: {e}"
                ) from e
        return proto

    @functools.cached_property
    def _skeleton(self) -> onnx.ModelProto:
        """The ONNX model parsed without loading its external data."""
        if self._proto is not None:
            return self._proto
        where = repr(str(self.path)) if self.path else "the model bytes"
        try:
            if self.path is not None:
                # Read once: the same bytes are parsed and start the content hash.
                raw = self.path.read_bytes()
                self._file_hash = self._hash_start(self.path.name, raw)
                return onnx.load_from_string(raw)
            assert self._data is not None  # a Model has a path, bytes or a proto
            return onnx.load_from_string(self._data)
        except Exception as e:
            raise ModelError(f"ONNX model {where} cannot be parsed: {e}") from e

    @property
    def data(self) -> bytes:
        """The model serialized (for ONNX with external data: the graph with the data inlined)."""
        if self._data is None:
            if self.format is ModelFormat.ONNX and (self._proto is not None or self.external_data):
                self._data = self.proto.SerializeToString()
            elif self.path is not None and self.path.is_file():
                self._data = self.path.read_bytes()
            else:
                raise ModelError(f"{self!r} has no single-file serialized form")
        return self._data

    @functools.cached_property
    def external_data(self) -> tuple[Path, ...]:
        """The external-data files of an ONNX model on disk, checked to stay inside its folder."""
        if self.format is not ModelFormat.ONNX or self.path is None:
            return ()
        return tuple(_external_files(self._skeleton, self.path.parent, repr(str(self.path))))

    @property
    def inputs(self) -> list[TensorSpec]:
        """The inputs an ONNX model declares (initializers listed as inputs left out)."""
        return self._declared(graph_inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        """The outputs an ONNX model declares."""
        return self._declared(graph_outputs)

    def _declared(self, read: Any) -> list[TensorSpec]:
        if self.format is not ModelFormat.ONNX:
            raise ModelError(
                f"{self!r} is {self.format.value}; its inputs and outputs are known once loaded"
            )
        try:
            return read(self._skeleton.graph)
        except KeyError as e:
            raise ModelError(f"{self!r} declares an element type ONNX does not define ({e})") from e

    @property
    def weights_path(self) -> Path:
        """The .bin beside an OpenVINO IR .xml."""
        if self.path is None:
            raise ModelError("an OpenVINO IR must be given as a path to its .xml")
        return self.path.with_suffix(".bin")

    @property
    def files(self) -> list[Path]:
        """Every file the model is made of, its own first (ONNX external data, an IR's
        weights, a Core ML package's contents); [] for a model in memory."""
        if self.path is None:
            return []
        if self.format is ModelFormat.COREML and self.path.is_dir():
            return sorted(p for p in self.path.rglob("*") if p.is_file())
        files = [self.path]
        if self.format is ModelFormat.ONNX:
            files += list(self.external_data)
        elif self.format is ModelFormat.OPENVINO and self.weights_path.is_file():
            files.append(self.weights_path)
        return files

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the model's content, external data and weight files included."""
        h = hashlib.sha256(self.format.value.encode())
        if self.path is None:
            h.update(
                self.data
                if self._data is not None
                else self.proto.SerializeToString(deterministic=True)
            )
            return h.hexdigest()
        files = self.files
        started = getattr(self, "_file_hash", None)
        if started is not None and files[0] == self.path:
            h, files = started.copy(), files[1:]
        real_folder = os.path.realpath(self.path.parent)
        for f in files:
            # External data paths are resolved: name them from the real folder, so a model
            # reached through a symlinked folder hashes as it does by its own path.
            name = f.name if f == self.path else os.path.relpath(os.path.realpath(f), real_folder)
            h.update(name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(functools.partial(fh.read, 1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    def _hash_start(self, name: str, content: bytes) -> Any:
        """The content hash after the main file: what `digest` computes first."""
        h = hashlib.sha256(self.format.value.encode())
        h.update(name.encode())
        h.update(content)
        return h


def _check_onnx_proto(proto: onnx.ModelProto, where: str) -> None:
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelError(
            f"{where} is not an ONNX model: expected a ModelProto with a graph and opset imports"
        )


def _external_files(proto: onnx.ModelProto, base: Path | None, where: str) -> list[Path]:
    """Resolve every external-data location, refusing any that leaves the model's folder."""
    locations: set[str] = set()
    for tensor in _onnx.tensors(proto):
        if uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            locations.add(info.get("location", ""))
    if not locations:
        return []
    if base is None:
        raise ModelError(
            f"{where} refers to external data files {sorted(locations)}; load it from its path "
            "so the files can be found"
        )
    root = base.resolve()
    files = []
    for loc in sorted(locations):
        if "\0" in loc:
            raise ModelError(f"{where}: external data location {loc!r} contains a NUL byte")
        target = (base / loc).resolve()
        if (
            not loc
            or os.path.isabs(loc)
            or ".." in Path(loc).parts
            or not target.is_relative_to(root)
        ):
            raise ModelError(
                f"{where}: external data location {loc!r} must be a relative path inside "
                f"{str(root)!r}; it resolves to {str(target)!r}"
            )
        if not target.is_file():
            raise ModelError(f"{where}: external data file {str(target)!r} does not exist")
        files.append(target)
    return files
