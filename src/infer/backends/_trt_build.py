"""Building TensorRT plans: builder options, the plan cache key, the timing cache, build progress.

Plans are built from ONNX with the named-tensor API of TensorRT 10 and 11 and cached by
`infer.cache` (atomic, locked, checksummed). A plan file is never modified: what infer knows
about it (I/O names with their symbolic dimensions, profiles, precision, builder options) is a
sidecar JSON entry in the cache, keyed by the plan's sha256.

Features that one TensorRT version has and another lacks are detected on the module
(`hasattr`), never by parsing version strings, and a missing one fails in words.

TensorRT objects are always held in variables named for their class (`builder`, `network`,
`config`, `parser`, `profile`, `runtime`, `engine`, `context`, `timing_cache`, `error`): the API
conformance test checks every attribute used on them against TensorRT's published API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..cache import Cache, Entry, Key, file_lock
from ..device import Device
from ..errors import CompileError, OptionError
from ..model import Model
from ..options import parse_size
from ._trt_profiles import Range

log = logging.getLogger("infer.backends.tensorrt")

PLAN = "plan.engine"
INFO = "info.json"
LAYOUT = 1  # bump when what infer stores beside a plan changes meaning

OPTIONS: dict[str, Any] = {
    "max_batch": 8,  # derived profiles: a dynamic first dimension runs 1..max_batch
    "contexts": None,  # execution contexts that may run at once (None: max_in_flight, else 1)
    "workspace": None,  # bytes (or "4GiB") TensorRT may use for tactics; None: its default
    "builder_optimization_level": None,  # 0..5; None: TensorRT's default (3)
    "timing_cache": True,  # reuse tactic timings across builds (kept in infer's cache)
    "tf32": False,  # let fp32 layers use TF32 math (faster, ~1e-3 relative error)
    "precision_flags": False,  # TensorRT 10: also set BuilderFlag.FP16/INT8 (weakly typed build)
    "version_compatible": False,  # plans later TensorRT versions can run (and may load such plans)
    "hardware_compatible": False,  # True/"ampere_plus", or "same_compute_capability"
    "max_aux_streams": None,  # auxiliary streams TensorRT may use inside one run
}

_HARDWARE_LEVELS = {
    True: "AMPERE_PLUS",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}


@dataclass(frozen=True)
class Settings:
    """backend_options["tensorrt"], validated."""

    max_batch: int = 8
    contexts: int | None = None
    workspace: int | None = None
    builder_optimization_level: int | None = None
    timing_cache: bool = True
    tf32: bool = False
    precision_flags: bool = False
    version_compatible: bool = False
    hardware_compatible: str | None = None  # a HardwareCompatibilityLevel member name
    max_aux_streams: int | None = None

    def key_parts(self) -> dict[str, Any]:
        """The settings that change the plan TensorRT builds (part of the plan cache key)."""
        parts = asdict(self)
        for runtime_only in ("max_batch", "contexts", "timing_cache"):
            parts.pop(runtime_only)  # max_batch and contexts reach the key through the profiles
        return parts


def settings(own: Mapping[str, Any]) -> Settings:
    """Validate the merged options (`Options.for_backend("tensorrt", OPTIONS)`)."""

    def whole(key: str, low: int, *, optional: bool = True) -> int | None:
        value = own[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise OptionError(
                f"backend_options['tensorrt'][{key!r}] must be an integer >= {low}, got {value!r}"
            )
        return value

    def flag(key: str) -> bool:
        value = own[key]
        if not isinstance(value, bool):
            raise OptionError(
                f"backend_options['tensorrt'][{key!r}] must be True or False, got {value!r}"
            )
        return value

    level = own["hardware_compatible"]
    if level in (False, None):
        hardware = None
    elif level in _HARDWARE_LEVELS:
        hardware = _HARDWARE_LEVELS[level]
    else:
        raise OptionError(
            "backend_options['tensorrt']['hardware_compatible'] must be False, True (Ampere and "
            f"later), 'ampere_plus' or 'same_compute_capability', got {level!r}"
        )
    return Settings(
        max_batch=whole("max_batch", 1, optional=False),  # type: ignore[arg-type]
        contexts=whole("contexts", 1),
        workspace=_bytes(own["workspace"]),
        builder_optimization_level=whole("builder_optimization_level", 0),
        timing_cache=flag("timing_cache"),
        tf32=flag("tf32"),
        precision_flags=flag("precision_flags"),
        version_compatible=flag("version_compatible"),
        hardware_compatible=hardware,
        max_aux_streams=whole("max_aux_streams", 0),
    )


def _bytes(value: Any) -> int | None:
    return parse_size(value, "backend_options['tensorrt']['workspace']")


# -- the plan cache ---------------------------------------------------------------------------


def compute_capability(device: Device) -> str:
    cc = device.capabilities.compute_capability
    return f"{cc[0]}.{cc[1]}" if cc else "unknown"


def plan_key(
    *,
    model: str,
    tensorrt: str,
    device: Device,
    profiles: Sequence[Mapping[str, Range]],
    precision: str,
    settings: Settings,
) -> Key:
    """The cache key of a plan: every input that changes the bytes TensorRT would build."""
    return Key.of(
        "tensorrt-plan",
        model=model,
        tensorrt=tensorrt,
        gpu=device.name,
        compute_capability=compute_capability(device),
        profiles=[{name: r.to_json() for name, r in p.items()} for p in profiles],
        precision=precision,
        builder=settings.key_parts(),
        layout=LAYOUT,
    )


def load_or_build(
    cache: Cache,
    key: Key,
    build: Callable[[Path], Mapping[str, Any] | None],
    load: Callable[[bytes], Any],
) -> tuple[Any, Entry, bool]:
    """The loaded plan for `key`: from the cache, or built (and cached) now.

    `load(plan_bytes)` returns None when TensorRT cannot deserialize the plan (corrupt, or built
    by another TensorRT or GPU): that entry is removed and the plan rebuilt once. Returns
    (loaded, entry, built_now).
    """
    for _ in range(2):
        entry, built = cache.get_or_build(key, build)
        try:
            plan = entry.file(PLAN).read_bytes()
        except OSError:
            plan = b""
        loaded = load(plan) if plan else None
        if loaded is not None:
            return loaded, entry, built
        if built:
            raise CompileError(
                f"TensorRT cannot deserialize the plan it has just built ({entry.file(PLAN)})"
            )
        log.warning(
            "cached TensorRT plan %s cannot be deserialized (damaged, or from another TensorRT "
            "or GPU); rebuilding it",
            entry.path,
        )
        cache.remove(entry)
    raise CompileError(f"TensorRT cannot deserialize the plan rebuilt for {key.digest[:12]}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def info_key(plan_sha256: str) -> Key:
    return Key.of("tensorrt-plan-info", sha256=plan_sha256)


def write_info(cache: Cache, plan_sha256: str, info: Mapping[str, Any]) -> Entry:
    """Record what infer knows about a plan, beside it (never inside it)."""

    def build(folder: Path) -> Mapping[str, Any]:
        (folder / INFO).write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
        return {"plan_sha256": plan_sha256}

    entry, _ = cache.get_or_build(info_key(plan_sha256), build)
    return entry


def read_info(cache: Cache, plan_sha256: str) -> dict[str, Any] | None:
    """The sidecar infer wrote for a plan with this sha256, if any."""
    entry = cache.get(info_key(plan_sha256))
    if entry is None:
        return None
    try:
        data = json.loads(entry.file(INFO).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- logging ----------------------------------------------------------------------------------

_LEVELS = (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.DEBUG, logging.DEBUG)
_logger: Any = None
_logger_lock = threading.Lock()


def logger(trt: Any) -> Any:
    """The process's one TensorRT logger: messages go to `infer.backends.tensorrt`, and recent
    errors are kept so a failure can say what TensorRT said."""
    global _logger
    if _logger is None:
        with _logger_lock:
            if _logger is None:

                class Logger(trt.ILogger):
                    def __init__(self) -> None:
                        trt.ILogger.__init__(self)
                        self.errors: deque[tuple[int, str]] = deque(maxlen=64)
                        self.count = 0

                    def log(self, severity: Any, msg: str) -> None:
                        level = _LEVELS[min(int(severity), 4)]
                        if level >= logging.ERROR:
                            self.count += 1
                            self.errors.append((self.count, msg))
                        if log.isEnabledFor(level):
                            log.log(level, "[TensorRT] %s", msg)

                    def mark(self) -> int:
                        return self.count

                    def since(self, mark: int) -> str:
                        found = [m for n, m in list(self.errors) if n > mark]
                        return "; ".join(found[-5:]) or "no error was logged"

                _logger = Logger()
    return _logger


# -- build ------------------------------------------------------------------------------------


_plugins_ready = False


def init_plugins(trt: Any) -> None:
    """Register TensorRT's bundled plugins (ops the ONNX parser maps to them) once per process."""
    global _plugins_ready
    if not _plugins_ready and hasattr(trt, "init_libnvinfer_plugins"):
        trt_log = logger(trt)  # before taking the lock: logger() takes it too
        with _logger_lock:
            if not _plugins_ready:
                trt.init_libnvinfer_plugins(trt_log, "")
                _plugins_ready = True


def _progress_monitor(trt: Any, report: Callable[[str, int, int | None], None]) -> Any:
    class Progress(trt.IProgressMonitor):
        """Build phases -> options.progress("tensorrt: <phase>", done, total)."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._totals: dict[str, int] = {}
            self._lock = threading.Lock()
            self._failed = False

        def _emit(self, phase: str, done: int, total: int | None) -> None:
            if self._failed:
                return
            try:
                report(f"tensorrt: {phase}", done, total)
            except Exception:
                self._failed = True  # TensorRT must not see the caller's exception; say it once
                log.warning(
                    "the progress callback raised; progress is no longer reported", exc_info=True
                )

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._totals[phase_name] = num_steps
            self._emit(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            self._emit(phase_name, step + 1, self._totals.get(phase_name))
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                total = self._totals.pop(phase_name, None)
            self._emit(phase_name, total or 1, total or 1)

    return Progress()


def _flag(trt: Any, name: str, why: str) -> Any:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise OptionError(f"{name} flag is unavailable in TensorRT {trt.__version__}: {why}")
    return flag


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    # TensorRT 11 is always strongly typed (the flag is deprecated and ignored); 10 asks for it.
    if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def precision_mode(trt: Any, precision: str, settings: Settings) -> str:
    """How TensorRT is told the precision: the graph's types, or TensorRT 10's builder flags."""
    if settings.precision_flags:
        need = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
        for name in need:
            _flag(trt, name, "precision is set in the graph; drop precision_flags")
        return "weakly typed" + (" + " + " + ".join(f"{n} flag" for n in need) if need else "")
    if precision == "fp32" and hasattr(trt.BuilderFlag, "FP16"):
        return "weakly typed"  # TensorRT 10 without flags: fp32 layers (TF32 as set)
    return "strongly typed"


def build_plan(
    trt: Any,
    model: Model,
    *,
    device: Device,
    precision: str,
    settings: Settings,
    profiles: Sequence[Mapping[str, Range]],
    timing_cache: Path | None,
    progress: Callable[[str, int, int | None], None] | None,
    out: Path,
) -> dict[str, Any]:
    """Parse the ONNX `model`, build a serialized plan into `out`; returns what the build was."""
    trt_log = logger(trt)
    mark = trt_log.mark()
    mode = precision_mode(trt, precision, settings)
    init_plugins(trt)
    builder = trt.Builder(trt_log)
    network = builder.create_network(_network_flags(trt, mode == "strongly typed"))
    parser = trt.OnnxParser(network, trt_log)
    if settings.version_compatible or settings.hardware_compatible:
        native = getattr(getattr(trt, "OnnxParserFlag", None), "NATIVE_INSTANCENORM", None)
        if native is not None:
            parser.set_flag(native)  # compatible plans cannot carry the InstanceNorm plugin
    check_quantization(model.proto, repr(model))
    t0 = time.perf_counter()
    if progress is not None:
        progress("tensorrt: parse", 0, 1)
    parsed = (
        parser.parse_from_file(str(model.path))
        if model.path is not None
        else parser.parse(model.data)
    )
    if not parsed:
        raise CompileError(f"TensorRT's ONNX parser rejected {model!r}: {_parser_errors(parser)}")
    if progress is not None:
        progress("tensorrt: parse", 1, 1)
    inputs = _check_inputs(network, profiles[0] if profiles else {}, model)

    config = builder.create_builder_config()
    if settings.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace)
    if settings.builder_optimization_level is not None:
        if not hasattr(config, "builder_optimization_level"):
            raise OptionError(
                f"builder_optimization_level is unavailable in TensorRT {trt.__version__}"
            )
        config.builder_optimization_level = settings.builder_optimization_level
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None and settings.tf32:
        config.set_flag(tf32)
    elif tf32 is not None:
        config.clear_flag(tf32)  # on by default in TensorRT; fp32 should mean fp32
    if settings.precision_flags:
        if precision in ("fp16", "int8"):
            config.set_flag(_flag(trt, "FP16", "precision is set in the graph"))
        if precision == "int8":
            config.set_flag(_flag(trt, "INT8", "precision is set in the graph"))
    if settings.version_compatible:
        config.set_flag(_flag(trt, "VERSION_COMPATIBLE", "plans are tied to this version"))
    if settings.hardware_compatible:
        levels = getattr(trt, "HardwareCompatibilityLevel", None)
        level = getattr(levels, settings.hardware_compatible, None)
        if level is None:
            raise OptionError(
                f"hardware compatibility level {settings.hardware_compatible} is unavailable in "
                f"TensorRT {trt.__version__}"
            )
        config.hardware_compatibility_level = level
    if settings.max_aux_streams is not None:
        config.max_aux_streams = settings.max_aux_streams
    monitor = None
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        monitor = _progress_monitor(trt, progress)
        config.progress_monitor = monitor
    for ranges in profiles:
        profile = builder.create_optimization_profile()
        for name, r in ranges.items():
            if name in inputs:  # TensorRT drops graph inputs that nothing reads
                profile.set_shape(name, r.min, r.opt, r.max)
        config.add_optimization_profile(profile)

    timing = _TimingCache(timing_cache) if timing_cache is not None else None
    if timing is not None:
        timing.attach(config)
    if progress is not None and monitor is None:
        progress("tensorrt: build", 0, None)
    log.info("building a TensorRT %s plan for %r on %s (%s)", precision, model, device, mode)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompileError(
            f"TensorRT {trt.__version__} could not build {model!r} on {device} "
            f"({device.name or 'GPU'}): {trt_log.since(mark)}"
        )
    seconds = time.perf_counter() - t0
    if progress is not None and monitor is None:
        progress("tensorrt: build", 1, 1)
    with open(out, "wb") as f:
        f.write(serialized)
    if timing is not None:
        timing.save(config)
    log.info("built the TensorRT plan in %.1f s (%d bytes)", seconds, out.stat().st_size)
    return {
        "tensorrt": {
            "version": trt.__version__,
            "precision": precision,
            "precision_mode": mode,
            "build_seconds": round(seconds, 3),
            "gpu": device.name,
            "compute_capability": compute_capability(device),
        }
    }


def check_quantization(proto: Any, where: str) -> None:
    """TensorRT runs Q/DQ graphs with zero points of 0 only (symmetric int8, fp8, int4); say so
    before its parser does, naming the node. Zero points computed at run time are left to it."""
    import numpy as np
    from onnx import numpy_helper

    from .. import _onnx

    graph = proto.graph
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return
    constants = _onnx.constants(graph)
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        zero = constants.get(n.input[2])
        if zero is None:
            continue
        values = numpy_helper.to_array(zero)
        unsigned = values.dtype.kind == "u"
        if unsigned or np.any(values.astype(np.float64) != 0):
            what = f"{values.dtype} zero point" + (
                f" {values.reshape(-1)[:4].tolist()}" if values.size else ""
            )
            raise CompileError(
                f"{where}: node {n.name or n.output[0]!r} ({n.op_type}) has a {what}; TensorRT "
                "runs Q/DQ graphs with signed zero points of 0 only (symmetric quantization): "
                "quantize activations and weights as symmetric int8"
            )


def _parser_errors(parser: Any) -> str:
    found = []
    for i in range(min(parser.num_errors, 5)):
        error = parser.get_error(i)
        where = error.node_name() or f"node {error.node()}"
        op = error.node_operator()
        found.append(f"{where}{f' ({op})' if op else ''}: {error.desc()}")
    more = parser.num_errors - len(found)
    return "; ".join(found) + (f" (and {more} more)" if more > 0 else "") or "no error given"


def _check_inputs(network: Any, ranges: Mapping[str, Range], model: Model) -> set[str]:
    """The network's input names, once each is known to be a data tensor with a profile."""
    names = set()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.is_shape_tensor:
            raise CompileError(
                f"input {tensor.name!r} of {model!r} is a shape tensor (its values set other "
                "tensors' shapes); the tensorrt backend feeds data tensors only: use onnxruntime"
            )
        if any(int(d) < 0 for d in tensor.shape) and tensor.name not in ranges:
            raise CompileError(
                f"input {tensor.name!r} of {model!r} has dynamic shape {list(tensor.shape)} in "
                "TensorRT but no optimization profile; give shapes={...} for it"
            )
        names.add(tensor.name)
    return names


class _TimingCache:
    """The tactic timing cache in infer's cache: loaded before a build, merged and saved after,
    under a file lock so concurrent builders (threads or processes) lose nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = path.with_name(path.name + ".lock")
        self.timing_cache: Any = None

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError:
            return b""

    def attach(self, config: Any) -> None:
        with file_lock(self.lock):
            data = self._read()
        timing_cache = None
        if data:
            try:
                timing_cache = config.create_timing_cache(data)
            except Exception:
                timing_cache = None
            if timing_cache is None:
                log.warning("TensorRT timing cache %s is unreadable; starting a new one", self.path)
        if timing_cache is None:
            timing_cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(timing_cache, False):
            log.warning(
                "TensorRT refused timing cache %s (another GPU?); starting a new one", self.path
            )
            timing_cache = config.create_timing_cache(b"")
            config.set_timing_cache(timing_cache, False)
        self.timing_cache = timing_cache

    def save(self, config: Any) -> None:
        timing_cache = config.get_timing_cache() or self.timing_cache
        if timing_cache is None:
            return
        try:
            with file_lock(self.lock):
                data = self._read()  # what other builders saved meanwhile
                if data:
                    on_disk = config.create_timing_cache(data)
                    if on_disk is not None and not timing_cache.combine(on_disk, False):
                        log.debug("could not merge timing cache %s; overwriting it", self.path)
                serialized = timing_cache.serialize()
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".timing.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(serialized)
                    os.replace(tmp, self.path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except Exception:  # a timing cache only saves build time: never fail a build over it
            log.warning("could not save TensorRT timing cache %s", self.path, exc_info=True)


def timing_cache_path(cache: Cache, trt_version: str, device: Device) -> Path:
    folder = cache.folder(
        "tensorrt-timing",
        tensorrt=trt_version,
        gpu=device.name,
        compute_capability=compute_capability(device),
    )
    return folder / "timing.cache"
