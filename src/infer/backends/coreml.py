"""Core ML: `.mlpackage` folders and `.mlmodel` files, run through coremltools on macOS.

The model's signature is read from its specification on any OS, so `engine.inputs` and
`engine.outputs` (and `CoreMlBackend.signature`) are right on Linux too; only predictions need
macOS, which the probe says. ONNX models reach Apple hardware through ONNX Runtime's CoreML
execution provider instead (the `onnxruntime[coreml]` rows of the selection table):
coremltools has no ONNX converter.

What a caller feeds, per Core ML feature type:
- multiarray: an array of the declared type (FLOAT32, FLOAT16, INT32, DOUBLE, INT8) and shape.
  Flexible shapes become `None` dims; the allowed ranges or enumerated shapes are checked
  before Core ML sees the feed, so a wrong shape is an InputError naming what is allowed.
- image: pixels as uint8 `[1, H, W, 3]` in RGB order (`[1, H, W, 1]` for GRAYSCALE; float32
  for GRAYSCALE_FLOAT16). Core ML itself reorders to BGR when the model declares BGR and
  applies the model's own scale and bias, so the pixels go in untouched. Image outputs come
  back in the same layout.
- int64 / double / string features: 0-d arrays. Dictionary and sequence outputs come back as
  the Python objects coremltools returns.

Devices map to compute units: "ane" -> CPU_AND_NE, "gpu" -> CPU_AND_GPU, "cpu" -> CPU_ONLY,
and the "all" variant (the row for device="auto") -> ALL, where Core ML places each op itself.
A package holds its own precision (ML programs convert to fp16 by default): `precision="fp32"`
and `"fp16"` are both accepted, and the session's `precision` says what the package computes
in on that device, with a warning when it differs from the one asked for.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import Cache, Key
from ..device import Device, cpu, probe_hardware
from ..errors import CompileError, InputError, ModelError, OptionError, RuntimeFailure
from ..model import Model, ModelFormat
from ..options import Options
from ..tensors import Dim, TensorSpec, dtype_info
from .base import NATIVE, Backend, BackendInfo, Session, register

log = logging.getLogger(__name__)

ALL = "all"
"""The variant that hands Core ML every compute unit (ComputeUnit.ALL): the device="auto" row."""

# infer device kind -> coremltools.ComputeUnit member
COMPUTE_UNITS = {"ane": "CPU_AND_NE", "gpu": "CPU_AND_GPU", "cpu": "CPU_ONLY"}

# Core ML specification version -> the first macOS that can run it (coremltools' targets).
_SPEC_MACOS: dict[int, tuple[int, ...]] = {
    1: (10, 13),
    2: (10, 13, 2),
    3: (10, 14),
    4: (10, 15),
    5: (11,),
    6: (12,),
    7: (13,),
    8: (14,),
    9: (15,),
    10: (26,),
}

_OPTIONS: dict[str, Any] = {
    "function": None,  # which function of a multifunction package to load (default: its default)
    "specialization": "default",  # or "fast_prediction": Core ML's SpecializationStrategy
    "reshape_frequency": None,  # "frequent" or "infrequent": Core ML's ReshapeFrequency hint
    "low_precision_accumulation_on_gpu": False,  # fp16 accumulation on the GPU
}

_MIL_FP16, _MIL_FP32 = 10, 11  # MIL DataType FLOAT16 / FLOAT32


def import_coremltools() -> Any:
    """Import coremltools; off macOS without its warnings that the Core ML bridge is missing."""
    if "coremltools" in sys.modules or platform.system() == "Darwin":
        import coremltools

        return coremltools
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


# -- the model's signature, read from its specification ----------------------------------------


@dataclass(frozen=True)
class Feature:
    """One Core ML input or output: the TensorSpec infer shows, and what Core ML declares."""

    spec: TensorSpec
    kind: str  # "multiarray", "image", "int64", "double", "string", "dictionary", "sequence"
    color: str | None = None  # image colour space: RGB, BGR, GRAYSCALE, GRAYSCALE_FLOAT16
    shapes: tuple[tuple[int, ...], ...] = ()  # enumerated shapes, in infer's layout
    ranges: tuple[tuple[int, int | None], ...] = ()  # per dim (min, max; None: unbounded)
    optional: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def allowed(self) -> str:
        """The shapes Core ML accepts, in words ('' when only the spec's fixed dims apply)."""
        if self.shapes:
            return "one of " + ", ".join(str(list(s)) for s in self.shapes)
        if self.ranges:
            dims = [
                str(lo) if lo == hi else f"{lo}..{'' if hi is None else hi}"
                for lo, hi in self.ranges
            ]
            return "[" + ", ".join(dims) + "]"
        return ""

    def check(self, arr: np.ndarray) -> None:
        """Raise InputError if `arr`'s shape is outside the model's enumerated shapes or ranges."""
        shape = tuple(arr.shape)
        if self.shapes and shape not in self.shapes:
            raise InputError(
                f"input {self.name!r}: shape {list(shape)} is not one the Core ML model takes; "
                f"it takes {self.allowed()}"
            )
        for axis, ((lo, hi), got) in enumerate(zip(self.ranges, shape)):
            if got < lo or (hi is not None and got > hi):
                raise InputError(
                    f"input {self.name!r}: dimension {axis} is {got}, outside the model's range "
                    f"{lo}..{'' if hi is None else hi} (shape {list(shape)}; it takes {self.allowed()})"
                )


@dataclass(frozen=True)
class Signature:
    """What a Core ML model takes and gives, read from its specification on any OS."""

    inputs: tuple[Feature, ...]
    outputs: tuple[Feature, ...]
    states: tuple[str, ...]  # state features (stateful models)
    model_type: str  # the spec's Type: "mlProgram", "neuralNetwork", "pipeline", ...
    spec_version: int
    function: str | None  # the function read, for multifunction packages
    functions: tuple[str, ...]
    precision: str | None  # what an ML program computes in ("fp16"/"fp32"); None: not a program

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [f.spec for f in self.inputs]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [f.spec for f in self.outputs]

    @property
    def min_macos(self) -> tuple[int, ...] | None:
        """The oldest macOS that runs this specification version (None: newer than infer knows)."""
        return _SPEC_MACOS.get(self.spec_version)


def load_spec(model: Model) -> Any:
    """The model's `Model_pb2.Model` specification; needs coremltools (its protobuf classes).

    A package's root model is found through its Manifest.json, as Core ML does, without the
    native package library.
    """
    try:
        import_coremltools()
        from coremltools.proto import Model_pb2
    except ImportError as e:
        raise ModelError(
            f"{model!r} is a Core ML model; reading it needs coremltools "
            f'(pip install "infer-engine[coreml]"): {e}'
        ) from e
    where: Path | str
    if model.path is not None and model.path.is_dir():
        where = _root_model_file(model.path)
        data = where.read_bytes()
    else:
        where = model.path or "the model bytes"
        data = model.data
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except Exception as e:
        raise ModelError(f"Core ML model {str(where)!r} cannot be parsed: {e}") from e
    if not spec.specificationVersion or not spec.HasField("description"):
        raise ModelError(
            f"{str(where)!r} is not a Core ML model: no specification version or description"
        )
    return spec


def _root_model_file(package: Path) -> Path:
    manifest = package / "Manifest.json"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
        entry = info["itemInfoEntries"][info["rootModelIdentifier"]]
        rel = Path(entry["path"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"Core ML package {str(package)!r}: Manifest.json does not name a root model ({e})"
        ) from e
    data = (package / "Data").resolve()
    target = (data / rel).resolve()
    if rel.is_absolute() or not target.is_relative_to(data):
        raise ModelError(
            f"Core ML package {str(package)!r}: root model path {str(rel)!r} leaves the package"
        )
    if not target.is_file():
        raise ModelError(f"Core ML package {str(package)!r}: root model {str(target)!r} is missing")
    return target


def read_signature(model: Model, function: str | None = None) -> Signature:
    """Inputs, outputs and facts of a Core ML model, from its specification (any OS)."""
    return signature_of(load_spec(model), function, where=repr(model))


def signature_of(spec: Any, function: str | None = None, where: str = "the model") -> Signature:
    """The `Signature` of a parsed specification (`function`: one of a multifunction model's)."""
    desc = spec.description
    functions = tuple(f.name for f in desc.functions)
    chosen: str | None = None
    if functions:
        chosen = function or desc.defaultFunctionName or functions[0]
        if chosen not in functions:
            raise OptionError(
                f"{where} has no function {chosen!r}; its functions are {list(functions)}"
            )
        desc = next(f for f in desc.functions if f.name == chosen)
    elif function is not None:
        raise OptionError(f"{where} has a single function; drop the 'function' option")
    model_type = spec.WhichOneof("Type") or ""
    program = _program_types(spec, chosen) if model_type == "mlProgram" else {}
    return Signature(
        inputs=tuple(_feature(d, program, where) for d in desc.input),
        outputs=tuple(_feature(d, program, where) for d in desc.output),
        states=tuple(d.name for d in desc.state),
        model_type=model_type,
        spec_version=int(spec.specificationVersion),
        function=chosen,
        functions=functions,
        precision=_program_precision(spec, chosen) if model_type == "mlProgram" else None,
    )


def _feature(desc: Any, program: Mapping[str, Any], where: str) -> Feature:
    from coremltools.proto import FeatureTypes_pb2 as ft

    t = desc.type
    which = t.WhichOneof("Type")
    name = desc.name
    optional = bool(t.isOptional)
    if which == "multiArrayType":
        a = t.multiArrayType
        dtype = _array_dtype(a.dataType, name, where)
        flex = a.WhichOneof("ShapeFlexibility")
        shapes: tuple[tuple[int, ...], ...] = ()
        ranges: tuple[tuple[int, int | None], ...] = ()
        shape: tuple[Dim, ...] | None
        if flex == "shapeRange":
            ranges = tuple(
                (int(r.lowerBound), None if r.upperBound < 0 else int(r.upperBound))
                for r in a.shapeRange.sizeRanges
            )
            shape = tuple(lo if lo == hi else None for lo, hi in ranges)
        elif flex == "enumeratedShapes":
            shapes = tuple(tuple(int(d) for d in s.shape) for s in a.enumeratedShapes.shapes)
            shape = _common(shapes)
        elif len(a.shape):
            shape = tuple(int(d) for d in a.shape)
        else:  # outputs often leave the shape out; the ML program still knows rank and dims
            shape = program.get(name)
        return Feature(TensorSpec(name, shape, dtype), "multiarray", None, shapes, ranges, optional)
    if which == "imageType":
        im = t.imageType
        color = ft.ImageFeatureType.ColorSpace.Name(im.colorSpace)
        channels = 1 if color.startswith("GRAYSCALE") else 3
        dtype = np.dtype(np.float32 if color == "GRAYSCALE_FLOAT16" else np.uint8)
        size = im.WhichOneof("SizeFlexibility")
        shapes, ranges = (), ()
        if size == "enumeratedSizes":
            shapes = tuple(
                (1, int(s.height), int(s.width), channels) for s in im.enumeratedSizes.sizes
            )
            shape = _common(shapes)
        elif size == "imageSizeRange":
            h, w = im.imageSizeRange.heightRange, im.imageSizeRange.widthRange
            ranges = (
                (1, 1),
                (int(h.lowerBound), None if h.upperBound < 0 else int(h.upperBound)),
                (int(w.lowerBound), None if w.upperBound < 0 else int(w.upperBound)),
                (channels, channels),
            )
            shape = tuple(lo if lo == hi else None for lo, hi in ranges)
        else:
            shape = (1, int(im.height), int(im.width), channels)
        return Feature(TensorSpec(name, shape, dtype), "image", color, shapes, ranges, optional)
    scalars = {"int64Type": ("int64", np.int64), "doubleType": ("double", np.float64)}
    if which in scalars:
        kind, np_type = scalars[which]
        return Feature(TensorSpec(name, (), np.dtype(np_type)), kind, optional=optional)
    if which == "stringType":
        return Feature(TensorSpec(name, (), np.dtype(object)), "string", optional=optional)
    if which in ("dictionaryType", "sequenceType"):
        kind = which.removesuffix("Type")
        return Feature(TensorSpec(name, None, np.dtype(object)), kind, optional=optional)
    raise ModelError(f"{where}: feature {name!r} has a Core ML type infer cannot map ({which})")


def _array_dtype(code: int, name: str, where: str) -> np.dtype:
    from coremltools.proto import FeatureTypes_pb2 as ft

    if code == ft.ArrayFeatureType.INVALID_ARRAY_DATA_TYPE:
        return np.dtype(np.float32)  # old specs leave it out; Core ML then gives float32
    label = ft.ArrayFeatureType.ArrayDataType.Name(code)
    try:
        return dtype_info(label).numpy
    except KeyError:
        raise ModelError(
            f"{where}: feature {name!r} has an array type infer lacks ({label})"
        ) from None


def _common(shapes: Sequence[tuple[int, ...]]) -> tuple[Dim, ...] | None:
    """One shape for several: dims they all share, None where they differ."""
    if not shapes or len({len(s) for s in shapes}) != 1:
        return None
    return tuple(d[0] if len(set(d)) == 1 else None for d in zip(*shapes))


def _main_block(spec: Any, function: str | None) -> Any:
    program = spec.mlProgram
    name = function or spec.description.defaultFunctionName or "main"
    if name not in program.functions:
        return None
    f = program.functions[name]
    return f.block_specializations.get(f.opset, None)


def _program_types(spec: Any, function: str | None) -> dict[str, tuple[Dim, ...] | None]:
    """name -> shape of every value the ML program's main block defines (rank and fixed dims)."""
    block = _main_block(spec, function)
    if block is None:
        return {}
    values = []
    name = function or spec.description.defaultFunctionName or "main"
    values += list(spec.mlProgram.functions[name].inputs)
    for op in block.operations:
        values += list(op.outputs)
    out: dict[str, tuple[Dim, ...] | None] = {}
    for v in values:
        if v.type.WhichOneof("type") != "tensorType":
            continue
        tt = v.type.tensorType
        if tt.rank < 0 or len(tt.dimensions) != tt.rank:
            out[v.name] = None
            continue
        out[v.name] = tuple(
            int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None
            for d in tt.dimensions
        )
    return out


def _program_precision(spec: Any, function: str | None) -> str | None:
    """ "fp16" if the program computes in fp16 (any non-const op yields fp16), else "fp32"."""
    block = _main_block(spec, function)
    if block is None:
        return None
    seen = set()
    for op in block.operations:
        if op.type in ("const", "cast"):
            continue
        for o in op.outputs:
            if o.type.WhichOneof("type") == "tensorType":
                seen.add(o.type.tensorType.dataType)
    if _MIL_FP16 in seen:
        return "fp16"
    return "fp32" if _MIL_FP32 in seen else None


# -- the backend ---------------------------------------------------------------------------------


def _macos() -> tuple[int, ...] | None:
    if platform.system() != "Darwin":
        return None
    release = platform.mac_ver()[0]
    try:
        return tuple(int(p) for p in release.split(".") if p)
    except ValueError:
        return None


def _version_text(v: Sequence[int]) -> str:
    return ".".join(str(p) for p in v)


@register
class CoreMlBackend(Backend):
    name = "coreml"
    runtime = "coremltools"
    formats = frozenset({ModelFormat.COREML})
    install = 'pip install "infer-engine[coreml]" on macOS'

    def __init__(self) -> None:
        super().__init__()
        self._signatures: weakref.WeakKeyDictionary[Model, dict[str | None, Signature]] = (
            weakref.WeakKeyDictionary()
        )

    def _probe(self) -> BackendInfo:
        system = platform.system()
        if system != "Darwin":  # no import: coremltools would only warn that Core ML is missing
            try:
                version: str | None = importlib.metadata.version("coremltools")
            except importlib.metadata.PackageNotFoundError:
                version = None
            here = (
                f"coremltools {version} here reads and converts models only"
                if version
                else "coremltools is not installed"
            )
            return BackendInfo(
                self.name,
                False,
                version,
                reason=f"Core ML predictions need macOS; this is {system} ({here})",
                install=self.install,
            )
        try:
            ct = import_coremltools()
        except ImportError as e:
            return BackendInfo(
                self.name, False, reason=f"coremltools is not installed ({e})", install=self.install
            )
        version = ct.__version__
        try:
            import coremltools.libcoremlpython  # noqa: F401  - the bridge to Core ML.framework
        except ImportError as e:
            return BackendInfo(
                self.name,
                False,
                version,
                reason=f"coremltools {version} has no Core ML bridge for this Python or macOS "
                f"(libcoremlpython: {e})",
                install=self.install,
            )
        apple = [d for d in probe_hardware().devices if d.capabilities.vendor == "Apple"]
        ordered = [*sorted(apple, key=lambda d: ("ane", "gpu").index(d.kind)), cpu()]
        return BackendInfo(
            self.name,
            True,
            version,
            tuple(ordered),
            reason=f"macOS {platform.mac_ver()[0]}",
            install=self.install,
        )

    def precisions(self, device: Device, variant: str | None = None) -> Mapping[str, str]:
        # The package holds its precision; both are taken as it is and reported as they run.
        return {"fp32": NATIVE, "fp16": NATIVE}

    def signature(self, model: Model, function: str | None = None) -> Signature:
        """The model's inputs, outputs and facts, from its specification (works on any OS)."""
        per_model = self._signatures.setdefault(model, {})
        if function not in per_model:
            per_model[function] = read_signature(model, function)
        return per_model[function]

    def supports(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        if model.format is ModelFormat.COREML and options.precision not in ("fp32", "fp16"):
            return (
                f"a Core ML package carries its own precision, and infer does not {options.precision} "
                "it; quantize it with coremltools.optimize.coreml and load the result as it is"
            )
        why = super().supports(model, device, options, variant)
        if why:
            return why
        own = options.for_backend(self.name, _OPTIONS)
        sig = self.signature(model, own["function"])
        if sig.states:
            return (
                f"the model is stateful (state: {', '.join(sig.states)}); infer's run() carries "
                "no state: use coremltools' make_state() and predict(state=...)"
            )
        mac = _macos()
        if mac is not None:
            need = sig.min_macos
            if need is None:
                return (
                    f"Core ML specification version {sig.spec_version} is newer than this "
                    f"infer knows; this Mac runs macOS {_version_text(mac)}"
                )
            if mac < need:
                return (
                    f"the model needs macOS {_version_text(need)} or newer (Core ML spec "
                    f"{sig.spec_version}); this Mac runs {_version_text(mac)}"
                )
            if _units(device, variant) == "CPU_AND_NE" and mac < (13,):
                return f"compute units CPU_AND_NE need macOS 13; this Mac runs {_version_text(mac)}"
        return None

    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> Session:
        ct = import_coremltools()
        own = options.for_backend(self.name, _OPTIONS)
        sig = self.signature(model, own["function"])
        units = _units(device, variant)
        hints = _hints(ct, own)
        kwargs: dict[str, Any] = {"compute_units": getattr(ct.ComputeUnit, units)}
        if sig.function is not None:
            kwargs["function_name"] = sig.function
        if hints:
            kwargs["optimization_hints"] = hints
        try:
            if options.cache:
                compiled = _compiled(ct, model, Cache(options.cache_dir))
                loaded = ct.models.CompiledMLModel(str(compiled), **kwargs)
            else:
                with _source_path(model) as src:
                    loaded = ct.models.MLModel(str(src), **kwargs)
                if getattr(loaded, "__proxy__", None) is None:
                    # MLModel turns a load failure into a warning and a model that cannot predict.
                    why = getattr(loaded, "_framework_error", None) or "Core ML did not load it"
                    raise RuntimeError(why)
        except Exception as e:
            raise CompileError(f"Core ML could not load {model!r} with {units}: {e}") from e
        precision = _runs_in(sig, device, variant)
        if precision != options.precision:
            log.info(
                "%r computes in %s on %s (asked: %s): a Core ML package carries its own precision",
                model,
                precision,
                device,
                options.precision,
            )
        facts = f"{sig.model_type} (spec {sig.spec_version}), computes in {precision}"
        return CoreMlSession(
            loaded,
            sig,
            backend=self.name,
            device=device,
            options=options,
            precision=precision,
            details={
                "compute_units": units,
                "model_type": sig.model_type,
                "spec_version": sig.spec_version,
                "function": sig.function,
                "package_precision": sig.precision,
                "summary": f"compute units {units}; {facts}",
            },
        )


def _units(device: Device, variant: str | None) -> str:
    """The coremltools ComputeUnit member for a device (the "all" variant: ALL)."""
    if variant == ALL:
        return "ALL"
    return COMPUTE_UNITS.get(device.kind, "ALL")


def _runs_in(sig: Signature, device: Device, variant: str | None) -> str:
    """The precision Core ML computes the model in on this device, as far as it is known.

    ML programs compute in the precision they were converted to (fp32 ops stay off the Neural
    Engine, which only runs fp16). Neural networks run fp32 on the CPU and fp16 elsewhere.
    """
    if sig.precision is not None:
        return sig.precision
    return "fp32" if _units(device, variant) == "CPU_ONLY" else "fp16"


def _hints(ct: Any, own: Mapping[str, Any]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    strategies = {"default": "Default", "fast_prediction": "FastPrediction"}
    if own["specialization"] not in strategies:
        raise OptionError(
            f"backend_options['coreml']['specialization'] must be one of {sorted(strategies)}, "
            f"got {own['specialization']!r}"
        )
    if own["specialization"] != "default":
        hints["specializationStrategy"] = getattr(
            ct.SpecializationStrategy, strategies[own["specialization"]]
        )
    frequencies = {"frequent": "Frequent", "infrequent": "Infrequent"}
    if own["reshape_frequency"] is not None:
        if own["reshape_frequency"] not in frequencies:
            raise OptionError(
                "backend_options['coreml']['reshape_frequency'] must be one of "
                f"{sorted(frequencies)}, got {own['reshape_frequency']!r}"
            )
        hints["reshapeFrequency"] = getattr(
            ct.ReshapeFrequency, frequencies[own["reshape_frequency"]]
        )
    if own["low_precision_accumulation_on_gpu"]:
        hints["allowLowPrecisionAccumulationOnGPU"] = True
    return hints


class _source_path:
    """The model as a path coremltools accepts (a suffix it knows), made only when needed."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._tmp: str | None = None

    def __enter__(self) -> Path:
        m = self.model
        suffix = ".mlpackage" if m.path is not None and m.path.is_dir() else ".mlmodel"
        if m.path is not None and m.path.suffix.lower() == suffix:
            return m.path
        self._tmp = tempfile.mkdtemp(prefix="infer-coreml-")
        target = Path(self._tmp) / f"model{suffix}"
        if m.path is not None:
            os.symlink(m.path.resolve(), target)
        else:
            target.write_bytes(m.data)
        return target

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _compiled(ct: Any, model: Model, cache: Cache) -> Path:
    """The model compiled to .mlmodelc, once per model, coremltools and macOS version."""
    key = Key.of(
        "coreml-compiled",
        model=model.digest,
        coremltools=ct.__version__,
        macos=platform.mac_ver()[0],
        machine=platform.machine(),
    )

    def build(folder: Path) -> dict[str, Any]:
        with _source_path(model) as src:
            ct.utils.compile_model(str(src), str(folder / "model.mlmodelc"))
        return {"model": repr(model)}

    entry, _ = cache.get_or_build(key, build)
    return entry.file("model.mlmodelc")


class CoreMlSession(Session):
    """A loaded Core ML model. Core ML's synchronous predict is not thread-safe: runs take a lock."""

    def __init__(self, loaded: Any, signature: Signature, **kw: Any) -> None:
        super().__init__(inputs=signature.input_specs, outputs=signature.output_specs, **kw)
        self._model = loaded
        self._signature = signature
        self._in = {f.name: f for f in signature.inputs}
        self._out = {f.name: f for f in signature.outputs}
        self._flexible = [f for f in signature.inputs if f.shapes or f.ranges]
        self._lock = threading.Lock()

    def _run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        for f in self._flexible:
            f.check(feeds[f.name])
        data = {name: _to_coreml(self._in[name], arr) for name, arr in feeds.items()}
        with self._lock:
            result = self._model.predict(data)
        names = outputs or self._output_names
        missing = [n for n in names if n not in result]
        if missing:
            raise RuntimeFailure(
                f"Core ML returned no value for output(s) {missing}; it returned {sorted(result)}"
            )
        return {n: _from_coreml(self._out[n], result[n]) for n in names}

    def _close(self) -> None:
        self._model = None


def _to_coreml(feature: Feature, arr: np.ndarray) -> Any:
    if feature.kind == "multiarray":
        return arr
    if feature.kind == "image":
        try:
            from PIL import Image
        except ImportError as e:
            raise InputError(
                f"input {feature.name!r} is a Core ML image: feeding it needs pillow "
                f"(pip install pillow): {e}"
            ) from e
        # uint8 [H, W, 3] -> mode RGB (Core ML reorders BGR itself), uint8 [H, W] -> L,
        # float32 [H, W] -> F (GRAYSCALE_FLOAT16).
        pixels = arr[0, :, :, 0] if arr.shape[-1] == 1 else arr[0]
        return Image.fromarray(np.ascontiguousarray(pixels))
    if feature.kind == "int64":
        return int(arr)
    if feature.kind == "double":
        return float(arr)
    if feature.kind == "string":
        return str(arr.item())
    return arr.item() if arr.ndim == 0 else arr  # dictionary / sequence features


def _from_coreml(feature: Feature, value: Any) -> Any:
    if feature.kind in ("dictionary", "sequence"):
        return value
    if feature.kind == "image":
        pixels = np.asarray(value, dtype=feature.spec.dtype)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return pixels[None]
    return np.asarray(value).astype(feature.spec.dtype, copy=False)
