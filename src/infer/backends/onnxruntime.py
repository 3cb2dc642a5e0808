"""ONNX Runtime: the CPU provider everywhere, and the CUDA, TensorRT, CoreML and OpenVINO
execution providers where the installed build has them.

Each provider is a variant of this backend (a row of its own in the selection table), so a
provider that fails or claims no nodes falls back like any other candidate.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _onnx, tensors, threads
from ..binding import device_view, target_mismatch
from ..cache import Cache
from ..device import Device, cpu, probe_hardware
from ..device_array import DeviceArray, DeviceView
from ..errors import CompileError, InputError, OptionError
from ..model import Model, ModelFormat
from ..options import Options
from ..tensors import NUMPY_NATIVE, TensorSpec, describe, dtype_info
from . import _onnx_rules
from .base import (
    GRAPH,
    HINT,
    NATIVE,
    Backend,
    BackendInfo,
    Binding,
    KVCache,
    OutputPlan,
    Session,
    register,
)

if TYPE_CHECKING:
    from ..sequence import Roles

log = logging.getLogger(__name__)

# variant -> (execution provider, device kinds it serves)
PROVIDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cpu": ("CPUExecutionProvider", ("cpu",)),
    "cuda": ("CUDAExecutionProvider", ("cuda",)),
    "tensorrt": ("TensorrtExecutionProvider", ("cuda",)),
    "coreml": ("CoreMLExecutionProvider", ("ane", "gpu", "cpu")),
    "openvino": ("OpenVINOExecutionProvider", ("cpu", "gpu", "npu")),
}

_COREML_UNITS = {"ane": "CPUAndNeuralEngine", "gpu": "CPUAndGPU", "cpu": "CPUOnly", "auto": "ALL"}
# What to install when a build lacks a provider.
_PROVIDER_INSTALL = {
    "cuda": "install onnxruntime-gpu",
    "tensorrt": "install onnxruntime-gpu and TensorRT",
    "coreml": "the onnxruntime wheels for macOS include it",
    "openvino": "install onnxruntime-openvino",
}
_OPENVINO_DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}

# What ONNX Runtime's CPU provider computes differently from the spec (measured with 1.32.0
# against the ONNX backend suite, tests/conformance), for `miscomputes`.
_CPU_RULES: dict[str, _onnx_rules.Rule] = {
    # test_maxunpool_export_with_output_shape: values at other indices than the spec's
    "MaxUnpool": lambda node, model: (
        "places values at other indices than the spec when output_shape is given"
        if _onnx_rules.given(node, 2)
        else ""
    ),
    "Resize": _onnx_rules.align_corners_by_fractional_scale,
    "Attention": _onnx_rules.causal_mask_over_past,
}

# Element types ONNX Runtime's Python API converts to and from numpy itself.
_NUMPY_BRIDGE = NUMPY_NATIVE | {np.dtype(object)}

_OPTIONS: dict[str, Any] = {
    "graph_optimization_level": "all",  # "disable", "basic", "extended", "all"
    "inter_op_threads": None,
    "execution_mode": "sequential",  # or "parallel"
    "enable_profiling": False,
    "free_dimension_overrides": {},  # {"batch": 1}: fixes symbolic dims for speed
    "spinning": threads.SPIN_RUN,  # "run", "always" or "never": see infer.threads
}

# ONNX Runtime's session settings that compute below the graph's precision, set on every
# session (int8 aside) and read back from it. Of these only the first lowers by default (1.32):
# DequantizeLinear of int8/int4 weights feeding a MatMul is fused into MatMulNBits, which at its
# default accuracy level 4 quantizes the activations to int8 (measured 0.5% relative error on a
# weight-compressed encoder); level 1 computes in fp32. The others are off by default and stay
# off: flush-to-zero, tanh-approximated Gelu, bf16 fast-math GEMMs (arm64 builds only).
_LEVEL = "session.qdq_matmulnbits_accuracy_level"
_INT8_LEVEL = "4"  # int8 activations: precision="int8" on a weight-compressed model
_EXACT = {
    _LEVEL: "1",
    "session.set_denormal_as_zero": "0",
    "optimization.enable_gelu_approximation": "0",
    "mlas.enable_gemm_fastmath_arm64_bfloat16": "0",
}

_logging_routed = False
_logging_lock = threading.Lock()


@register
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    runtime = "onnxruntime"
    install = 'pip install "infer-engine[cpu]" (or "infer-engine[gpu]" for CUDA/TensorRT)'

    def _probe(self) -> BackendInfo:
        try:
            import onnxruntime as ort
        except ImportError as e:
            return BackendInfo(
                self.name, False, reason=f"onnxruntime is not installed ({e})", install=self.install
            )
        available = set(ort.get_available_providers())
        devices: list[Device] = [cpu()]
        notes = []
        hw = probe_hardware()
        if available & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
            gpus = [d for d in hw.devices if d.kind == "cuda"]
            devices += gpus
            if not gpus:
                notes.append("this build has CUDA providers but " + "; ".join(hw.notes))
        if "CoreMLExecutionProvider" in available:
            devices += [
                d
                for d in hw.devices
                if d.kind in ("ane", "gpu") and d.capabilities.vendor == "Apple"
            ]
        providers = ", ".join(sorted(available))
        return BackendInfo(
            self.name,
            True,
            ort.__version__,
            tuple(devices),
            reason="; ".join([f"providers: {providers}", *notes]),
            install=self.install,
        )

    def providers(self) -> set[str]:
        import onnxruntime as ort

        return set(ort.get_available_providers())

    def precisions(self, device: Device, variant: str | None = None) -> Mapping[str, str]:
        variant = variant or "cpu"
        if variant == "cpu":
            # No fp16: the CPU provider takes an fp16 graph but casts its nodes back to float
            # (InsertCastTransformer; measured with 1.32 on a 4-conv CNN: one Cast left after
            # optimization, fp32's latency), which is fp32 with fp16-rounded weights.
            return {"fp32": NATIVE, "int8": GRAPH}
        if variant in ("cuda", "tensorrt"):
            return {"fp32": NATIVE, "fp16": GRAPH, "int8": GRAPH}
        if variant == "coreml":
            return {"fp32": NATIVE, "fp16": GRAPH}
        return {"fp32": NATIVE, "fp16": HINT, "int8": GRAPH}  # openvino

    def int8_quantizer(self, device: Device, variant: str | None = None) -> str:
        # TensorRT takes only symmetric int8; OpenVINO fuses NNCF's placement best (measured in
        # benchmarks/precision_int8.py); the CPU provider's QLinear kernels want uint8 activations.
        if variant in ("cuda", "tensorrt"):
            return "onnxruntime-symmetric"
        return "nncf" if variant == "openvino" else "onnxruntime"

    def supports(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        provider, kinds = PROVIDERS[variant or "cpu"]
        if provider not in self.providers():
            hint = _PROVIDER_INSTALL.get(variant or "cpu", "")
            return f"{provider} is not in this onnxruntime build" + (f" ({hint})" if hint else "")
        if device.kind not in kinds:
            return f"{provider} does not drive {device.kind} devices"
        return super().supports(model, device, options, variant)

    def unsupported_ops(
        self, model: Model, device: Device, variant: str | None = None
    ) -> list[str] | None:
        """Ops with no kernel (at the model's opsets and types) in the CPU provider, which every
        provider falls back to, or in the variant's own (ONNX Runtime's kernel registry)."""
        from ._ort_ops import unsupported

        return unsupported(model, {"CPUExecutionProvider", PROVIDERS[variant or "cpu"][0]})

    def runtime_int8(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        if (
            options.precision != "int8"
            or model.format is not ModelFormat.ONNX
            or model.float_activations
        ):
            return None
        n = len(_onnx.compressed_matmuls(model.proto.graph))
        if not n:
            return None
        return (
            f"ONNX Runtime MatMulNBits with int8 activations (accuracy level {_INT8_LEVEL}), "
            f"where it fuses DequantizeLinear into {n} MatMul{'s' * (n != 1)} over int8 weights"
        )

    def miscomputes(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> str | None:
        if (variant or "cpu") != "cpu":
            return None  # measured on the CPU provider only
        return _onnx_rules.first(model, _CPU_RULES, f"ONNX Runtime {self.probe().version}") or None

    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> Session:
        import onnxruntime as ort

        variant = variant or "cpu"
        own = options.for_backend(self.name, _OPTIONS)
        _route_logging(ort)
        so = ort.SessionOptions()
        so.log_severity_level = 1 if log.isEnabledFor(logging.DEBUG) else 3
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[own["graph_optimization_level"]]
        if own["spinning"] not in threads.SPINNING:
            raise OptionError(
                f"backend_options['onnxruntime']['spinning'] must be one of "
                f"{', '.join(map(repr, threads.SPINNING))}, got {own['spinning']!r}"
            )
        budget = threads.share(options.threads, own["spinning"])
        if budget.threads:
            so.intra_op_num_threads = budget.threads
        if budget.spinning == threads.SPIN_RUN:
            # Threads spin within a run, and stop when the last concurrent run returns.
            so.add_session_config_entry("session.force_spinning_stop", "1")
        elif budget.spinning == threads.SPIN_NEVER:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if own["inter_op_threads"]:
            so.inter_op_num_threads = int(own["inter_op_threads"])
        if own["execution_mode"] == "parallel":
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.enable_profiling = bool(own["enable_profiling"])
        for dim, value in dict(own["free_dimension_overrides"]).items():
            so.add_free_dimension_override_by_name(dim, int(value))
        exact = _EXACT
        if options.precision == "int8":  # the graph's int8; MatMulNBits' where it is measured
            on_the_fly = self.runtime_int8(model, device, options)
            exact = {_LEVEL: _INT8_LEVEL if on_the_fly else _EXACT[_LEVEL]}
        for key, value in exact.items():
            so.add_session_config_entry(key, value)
        providers = self._providers(variant, device, options, model)
        source = str(model.path) if model.path is not None else model.data
        if variant == "coreml" and options.cache and model.path is None:
            source = _with_coreml_cache_key(model)
        try:
            sess = ort.InferenceSession(source, so, providers=providers)
        except Exception as e:
            raise CompileError(
                f"onnxruntime could not load {model!r} with {providers[0][0]}: {e}"
            ) from e
        _check_exact(sess, exact, model)
        claimed = _claimed_nodes(sess)
        primary = PROVIDERS[variant][0]
        total = sum(claimed.values())
        if variant != "cpu" and total and claimed.get(primary, 0) == 0:
            raise CompileError(
                f"{primary} claimed none of the {total} nodes: the model would run entirely on the CPU"
            )
        share = ", ".join(
            f"{p.replace('ExecutionProvider', '')} {n}/{total}" for p, n in claimed.most_common()
        )
        return OnnxRuntimeSession(
            sess,
            backend=self.name,
            device=device,
            options=options,
            precision=model.precision or options.precision,
            details={
                "providers": sess.get_providers(),
                "nodes": dict(claimed),
                "summary": f"nodes: {share}",
                "threads": str(budget),
                "precision_settings": dict(exact),
            },
        )

    def _providers(
        self, variant: str, device: Device, options: Options, model: Model
    ) -> list[tuple[str, dict]]:
        cache = Cache(options.cache_dir)
        index = device.index or 0
        chain: list[tuple[str, dict]] = []
        if variant == "tensorrt":
            trt: dict[str, Any] = {"device_id": index}
            if options.cache:
                folder = cache.folder("ort-tensorrt", model=model.digest, device=device.identity)
                trt.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(folder),
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(folder),
                )
            if options.precision == "int8":
                trt["trt_int8_enable"] = True  # explicit Q/DQ graphs need it in TensorRT 10
            profiles = _trt_profiles(options.shapes)
            trt.update(profiles)
            chain.append(("TensorrtExecutionProvider", trt))
            chain.append(("CUDAExecutionProvider", {"device_id": index}))
        elif variant == "cuda":
            chain.append(("CUDAExecutionProvider", {"device_id": index}))
        elif variant == "coreml":
            coreml = {
                "ModelFormat": "MLProgram",
                "MLComputeUnits": _COREML_UNITS.get(device.kind, "ALL"),
            }
            if options.cache:
                # The provider never checks a cached compile against the model, so the folder
                # is keyed by the model's content and the onnxruntime version that compiled it.
                folder = cache.folder(
                    "ort-coreml", model=model.digest, onnxruntime=self.probe().version
                )
                coreml["ModelCacheDirectory"] = str(folder)
            chain.append(("CoreMLExecutionProvider", coreml))
        elif variant == "openvino":
            ov = {
                "device_type": _OPENVINO_DEVICES.get(device.kind, "CPU"),
                "precision": "FP16" if options.precision == "fp16" else "FP32",
            }
            if options.cache:
                ov["cache_dir"] = str(cache.folder("ort-openvino", model=model.digest))
            chain.append(("OpenVINOExecutionProvider", ov))
        chain.append(("CPUExecutionProvider", {}))
        return chain


def _check_exact(sess: Any, exact: Mapping[str, str], model: Model) -> None:
    """Read the precision settings back from the session: raises CompileError where one differs."""
    kept = sess.get_session_options()
    for key, want in exact.items():
        try:
            seen = kept.get_session_config_entry(key)
        except Exception:  # not kept: the session did not take it
            seen = None
        if seen != want:
            raise CompileError(
                f"onnxruntime compiled {model!r} with {key}={seen!r} although {want!r} was set; "
                "refusing to run a precision not asked for"
            )


def _with_coreml_cache_key(model: Model) -> bytes:
    """The model's bytes carrying a COREML_CACHE_KEY entry.

    The CoreML provider names its cached compile by that metadata entry, or else by the
    model's path; a model given as bytes has no path, so without the key nothing is reused.
    """
    import onnx

    proto = model.proto
    if any(p.key == "COREML_CACHE_KEY" for p in proto.metadata_props):
        return model.data
    keyed = onnx.ModelProto()
    keyed.CopyFrom(proto)
    entry = keyed.metadata_props.add()
    entry.key = "COREML_CACHE_KEY"
    entry.value = model.digest  # 64 hex digits: the provider takes letters and digits, at most 64
    return keyed.SerializeToString()


def _trt_profiles(shapes: Mapping[str, Any]) -> dict[str, str]:
    """TensorRT EP profile strings from {"input": (min, opt, max)} shapes."""
    if not shapes:
        return {}
    mins: list[str] = []
    opts: list[str] = []
    maxs: list[str] = []
    for name, spec in shapes.items():
        triple = (
            spec
            if len(spec) == 3 and all(isinstance(s, (tuple, list)) for s in spec)
            else (spec,) * 3
        )
        for bucket, shape in zip((mins, opts, maxs), triple):
            bucket.append(f"{name}:{'x'.join(str(int(d)) for d in shape)}")
    return {
        "trt_profile_min_shapes": ",".join(mins),
        "trt_profile_opt_shapes": ",".join(opts),
        "trt_profile_max_shapes": ",".join(maxs),
    }


def _claimed_nodes(sess: Any) -> Counter:
    counts: Counter = Counter()
    try:
        for sub in sess.get_provider_graph_assignment_info():
            counts[sub.ep_name] += len(sub.get_nodes())
    except Exception:  # older onnxruntime: no assignment info
        pass
    return counts


def _route_logging(ort: Any) -> None:
    """Send ONNX Runtime's log through Python logging ('infer.backends.onnxruntime')."""
    global _logging_routed
    if _logging_routed or not hasattr(ort, "set_default_logger_callback"):
        return
    with _logging_lock:
        if _logging_routed:
            return
        levels = {
            0: logging.DEBUG,
            1: logging.DEBUG,
            2: logging.WARNING,
            3: logging.ERROR,
            4: logging.CRITICAL,
        }
        ort_log = logging.getLogger(__name__)

        def forward(severity: int, category: str, logid: str, location: str, message: str) -> None:
            ort_log.log(levels.get(severity, logging.INFO), "[ort %s] %s", category, message)

        ort.set_default_logger_callback(forward, 1 if log.isEnabledFor(logging.DEBUG) else 2)
        _logging_routed = True


def _spec(arg: Any) -> TensorSpec:
    try:
        return tensors.spec_from_type_string(arg.name, arg.type, arg.shape)
    except KeyError:  # an element type infer does not know: handed through as ORT returns it
        return TensorSpec(arg.name, None, np.dtype(object))


class OnnxRuntimeSession(Session):
    def __init__(self, sess: Any, **kw: Any) -> None:
        super().__init__(
            inputs=[_spec(a) for a in sess.get_inputs()],
            outputs=[_spec(a) for a in sess.get_outputs()],
            **kw,
        )
        self._sess = sess
        # The C session behind the public wrapper: its `run` repeats, in Python, checks that
        # Session.run has already made, and costs ~1 us a call. Fall back if it ever moves.
        inner = getattr(sess, "_sess", None)
        self._call = inner.run if inner is not None and hasattr(inner, "run") else sess.run
        # bfloat16, float8, int4, ... cross ORT's Python API only as raw OrtValues.
        self._raw_io = any(
            s.kind == "tensor" and s.dtype not in _NUMPY_BRIDGE
            for s in (*self.inputs, *self.outputs)
        )
        if self._raw_io:
            self._run = self._run_ortvalues  # type: ignore[method-assign]
        self._generic_binding = any(
            s.dtype == object or tensors.packed_bits(s.dtype) for s in (*self.inputs, *self.outputs)
        )

    def _run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        names = outputs or self._output_names
        return dict(zip(names, self._call(names, feeds, None)))

    def _run_ortvalues(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        values = {}
        for name, arr in feeds.items():
            if arr.dtype in _NUMPY_BRIDGE:
                values[name] = ort.OrtValue.ortvalue_from_numpy(arr)
            else:
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    list(arr.shape), dtype_info(arr.dtype).onnx
                )
                raw = tensors.pack(arr)
                if raw.size:
                    ctypes.memmove(value.data_ptr(), raw.ctypes.data, raw.size)
                values[name] = value
        names = outputs or self._output_names
        results = self._sess.run_with_ort_values(names, values)
        return {name: _to_numpy(value) for name, value in zip(names, results)}

    def _bind(self, plan: OutputPlan) -> Binding:
        """ONNX Runtime's own IOBinding (see OnnxRuntimeBinding); models with strings,
        sequences or packed int4/float4 tensors take the generic copying binding."""
        if self._generic_binding:
            return super()._bind(plan)
        return OnnxRuntimeBinding(self, plan)

    def _binds_device_outputs(self) -> bool:
        return self.device.kind == "cuda" and not self._generic_binding

    def _kv_cache(self, roles: Roles) -> KVCache:
        """Past and present in OrtValues bound with IOBinding, on the model's device."""
        if self._raw_io:
            return super()._kv_cache(roles)  # bfloat16 / float8 I/O: the host loop converts
        return OrtKVCache(self, roles)

    def _close(self) -> None:
        self._sess = self._call = None


def _to_numpy(value: Any) -> Any:
    if not value.is_tensor():
        return value.numpy()
    dtype = dtype_info(value.data_type()).numpy
    if dtype in _NUMPY_BRIDGE:
        return value.numpy()
    size = value.tensor_size_in_bytes()
    raw = (
        np.frombuffer((ctypes.c_uint8 * size).from_address(value.data_ptr()), np.uint8)
        if size
        else np.empty(0, np.uint8)
    )
    return tensors.unpack(raw, dtype, value.shape())


class OnnxRuntimeBinding(Binding):
    """ONNX Runtime's IOBinding: inputs bound where they are, outputs written by the runtime
    straight into buffers allocated once per input signature.

    On the first run with new input shapes the runtime allocates the outputs; their shapes
    size the buffers (numpy arrays on the host, OrtValues on a GPU) bound from then on. An
    output whose shape depends on the input values (NonZero, NMS) is detected when the
    runtime refuses its buffer; it is then left to the runtime and copied out each run.
    Device inputs (CUDA arrays, read through `infer.device_array`) are bound by pointer on
    CUDA devices; the CPU provider refuses them with an InputError. Device outputs come back
    as `infer.device_array.DeviceArray`s over the runtime's buffers.
    """

    def __init__(self, session: OnnxRuntimeSession, plan: OutputPlan) -> None:
        gpu = session.device.kind == "cuda"
        super().__init__(session, plan, device_inputs=gpu)
        import onnxruntime as ort

        self._ort = ort
        sess = session._sess
        self._io = sess.io_binding()
        # The C binding and run: the Python wrappers re-check WebGPU graph capture every
        # call (~0.5 us); fall back to them if these ever move.
        c_io, c_sess = getattr(self._io, "_iobinding", None), getattr(sess, "_sess", None)
        if c_io is not None and c_sess is not None and hasattr(c_sess, "run_with_iobinding"):
            self._run_bound = functools.partial(c_sess.run_with_iobinding, c_io, None)
            self._bind_numpy = c_io.bind_input  # (name, array): the array's memory, no copy
        else:
            self._run_bound = functools.partial(sess.run_with_iobinding, self._io)
            self._bind_numpy = self._io.bind_cpu_input
        self._where = ("cuda", session.device.index or 0) if gpu else ("cpu", 0)
        self._specs = {s.name: s for s in session.inputs}
        self._names = [o.name for o in session.outputs]
        self._dtypes = {o.name: o.dtype for o in session.outputs}
        self._bound: dict[str, object] = {}  # input name -> the object bound, kept alive
        self._shapes: dict[str, tuple[int, ...]] = {}  # input name -> shape bound
        self._signature: tuple[tuple[int, ...], ...] | None = None
        self._results: dict[str, Any] = {}  # output name -> what run returns
        self._owned: dict[str, Any] = {}  # output name -> OrtValue bound (kept alive)
        self._dynamic: set[str] = set()  # outputs whose shape depends on input values
        self._views: dict[str, DeviceView] = {}  # input name -> device input bound in place

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        bound, shapes = self._bound, self._shapes
        # The usual loop feeds the very numpy arrays bound last time, refilled in place: they
        # need no binding again.
        same = self._signature is not None and len(feeds) == len(bound)
        if same:
            for name, value in feeds.items():
                if (
                    type(value) is not np.ndarray
                    or bound.get(name) is not value
                    or shapes[name] != value.shape
                ):
                    same = False
                    break
        if not same:
            reshaped = False
            for name, value in feeds.items():
                if type(value) is not np.ndarray:  # a device array: viewed and bound every run
                    before = shapes.get(name)
                    self._bind_input(name, value)
                    reshaped |= shapes[name] != before
                elif bound.get(name) is not value:
                    reshaped |= shapes.get(name) != value.shape
                    self._bind_input(name, value)
                elif shapes[name] != value.shape:  # reshaped in place
                    reshaped = True
                    self._bind_input(name, value)
            if reshaped or self._signature is None:
                signature = tuple(shapes[n] for n in sorted(shapes))
                if signature != self._signature:
                    self._signature = None
                    self._rebind_outputs()
                    self._signature = signature
                    return dict(self._results)
        if self._dynamic:
            return self._run_dynamic()
        try:
            self._run_bound()
        except RuntimeError as e:
            if not _buffer_refused(e):
                raise
            # An output's shape depends on the input values: find which, and leave those to
            # the runtime from now on.
            old_shapes = {n: getattr(v, "shape", None) for n, v in self._results.items()}
            self._rebind_outputs()
            self._dynamic = {
                n
                for n, v in self._results.items()
                if n not in self.plan.given and getattr(v, "shape", None) != old_shapes.get(n)
            }
            log.debug("binding on onnxruntime: outputs %s are sized by input values", self._dynamic)
        return dict(self._results)

    # -- inputs ---------------------------------------------------------------------------------

    def _bind_input(self, name: str, value: Any) -> None:
        if type(value) is not np.ndarray:  # FeedCheck passes only device arrays through
            self._bind_device_input(name, value)
            return
        if value.dtype in _NUMPY_BRIDGE:
            self._bind_numpy(name, value)  # self._bound keeps the array alive
        else:  # bfloat16, float8: same bytes as ml_dtypes' arrays, bound by pointer
            onnx_type = dtype_info(value.dtype).onnx
            self._io.bind_input(name, "cpu", 0, onnx_type, list(value.shape), value.ctypes.data)
        self._release(name)
        self._bound[name] = value
        self._shapes[name] = value.shape

    def _bind_device_input(self, name: str, value: Any) -> None:
        kind, index = self._where  # on the CPU the feed check has refused device arrays
        view = device_view(self._specs[name], value, device=index)
        try:
            onnx_type = dtype_info(view.dtype).onnx
            self._io.bind_input(name, kind, index, onnx_type, list(view.shape), view.ptr)
        except BaseException:
            view.close()
            raise
        self._release(name)
        self._views[name] = view
        self._bound[name] = value
        self._shapes[name] = view.shape

    def _release(self, name: str) -> None:
        """Let go of the device input bound before under `name` (DLPack's deleter runs)."""
        view = self._views.pop(name, None)
        if view is not None:
            view.close()

    # -- outputs --------------------------------------------------------------------------------

    def _rebind_outputs(self) -> None:
        """Run once with runtime-allocated outputs, then size and bind this signature's buffers."""
        kind, index = self._where
        for name in self._names:
            target = self.plan.given.get(name)
            if target is None:
                self._io.bind_output(name, kind, index)
            else:
                self._bind_target(name, target)
        try:
            self._run_bound()
        except RuntimeError as e:
            if self.plan.given and _buffer_refused(e):
                raise self._misfit() from e
            raise
        produced = dict(zip(self._names, self._io.get_outputs()))
        # Read the host outputs before binding any buffer: onnxruntime <= 1.29 frees what it
        # allocated for the binding when an output is bound anew (the first run read zeros).
        first = {
            name: np.array(_to_numpy(value), copy=True)
            for name, value in produced.items()
            if not self.plan.device
            and name not in self.plan.given
            and name not in self._dynamic
            and value.is_tensor()
        }
        self._results.clear()
        self._owned.clear()
        for name in self._names:
            target = self.plan.given.get(name)
            value = produced[name]
            if target is not None:  # the caller's own array (a device one: what it gave)
                self._results[name] = target.source if isinstance(target, DeviceView) else target
                continue
            if name in self._dynamic or not value.is_tensor():
                self._results[name] = self._copy_out(value)
                continue
            shape = tuple(value.shape())
            if self.plan.device:
                self._owned[name] = value  # the runtime's buffer becomes the bound one
                self._io.bind_ortvalue_output(name, value)
                self._results[name] = self._device_result(value, shape)
            else:
                buf = np.empty(shape, self._dtypes[name])
                log.debug(
                    "binding on onnxruntime: output %r buffer allocated for %s",
                    name,
                    describe(shape, buf.dtype),
                )
                self._bind_host_output(name, buf)
                buf[...] = first[name]
                self._results[name] = buf

    def _misfit(self) -> InputError:
        """Which array given to bind() these inputs do not fit, and the shape they produce."""
        kind, index = self._where
        for name in self._names:
            self._io.bind_output(name, kind, index)
        self._run_bound()
        produced = dict(zip(self._names, self._io.get_outputs()))
        for name, target in self.plan.given.items():
            shape = tuple(produced[name].shape())
            if shape != tuple(target.shape):
                return target_mismatch(name, target, shape)
        return InputError("an output array given to bind() does not fit these inputs")

    def _bind_target(self, name: str, target: Any) -> None:
        if isinstance(target, DeviceView):
            self._io.bind_output(
                name, *self._where, dtype_info(target.dtype).onnx, list(target.shape), target.ptr
            )
        else:
            self._bind_host_output(name, target)

    def _bind_host_output(self, name: str, buf: np.ndarray) -> None:
        if buf.dtype in _NUMPY_BRIDGE:
            value = self._ort.OrtValue.ortvalue_from_numpy(buf)
            self._owned[name] = value
            self._io.bind_ortvalue_output(name, value)
        else:
            onnx_type = dtype_info(buf.dtype).onnx
            self._io.bind_output(name, "cpu", 0, onnx_type, list(buf.shape), buf.ctypes.data)

    def _device_result(self, value: Any, shape: tuple[int, ...]) -> DeviceArray:
        dtype = dtype_info(value.data_type()).numpy
        return DeviceArray(value.data_ptr(), shape, dtype, self._where[1], owner=value)

    def _copy_out(self, value: Any) -> Any:
        return _to_numpy(value) if value.is_tensor() else value.numpy()

    def _run_dynamic(self) -> dict[str, Any]:
        """Outputs sized by input values: the runtime allocates them; they are copied into
        buffers that are reused while the shape stays the same."""
        kind, index = self._where
        for name in self._dynamic:
            self._io.bind_output(name, kind, index)
        self._run_bound()
        produced = dict(zip(self._names, self._io.get_outputs()))
        for name in self._dynamic:
            fresh = self._copy_out(produced[name])
            old: Any = self._results.get(name)
            same = isinstance(old, np.ndarray) and isinstance(fresh, np.ndarray)
            if same and old.shape == fresh.shape and old.dtype == fresh.dtype:
                old[...] = fresh
            else:
                self._results[name] = fresh
        return dict(self._results)

    def _close(self) -> None:
        self._io.clear_binding_inputs()
        self._io.clear_binding_outputs()
        for name in list(self._views):
            self._release(name)
        self._bound.clear()
        self._owned.clear()
        self._results.clear()


def _buffer_refused(error: Exception) -> bool:
    """Whether ONNX Runtime refused a bound output buffer for its shape."""
    text = str(error)
    return any(
        part in text
        for part in (
            "pre-allocated",
            "computed output shape",
            "Shape mismatch attempting to re-use",
            "OrtValue shape verification failed",  # onnxruntime 1.24's words
        )
    )


class OrtKVCache(KVCache):
    """The past kept in OrtValues on the model's device (IOBinding), never copied in or out.

    Each step binds the presents to memory ONNX Runtime allocates where the model runs, and
    the next step binds those very OrtValues as its past. Only the logits come to the host (on
    CUDA, ONNX Runtime copies them out; the other inputs are copied in). A pair the model
    declares with one fixed length for past and present (GroupQueryAttention as
    onnxruntime-genai builds it) gets one buffer of that length, allocated once and bound as
    both: the model writes the new keys into it in place.
    """

    def __init__(self, session: OnnxRuntimeSession, roles: Roles) -> None:
        super().__init__(session, roles)
        import onnxruntime as ort

        self._ort = ort
        gpu = session.device.kind == "cuda"
        self._where = ("cuda", session.device.index or 0) if gpu else ("cpu", 0)
        self.where = f"OrtValues on {session.device}"
        if self.buffers:
            self.where += ", max-length buffers"
        self._sess = session._sess
        self._io = self._sess.io_binding()
        self._past: dict[str, Any] = {}  # past name -> OrtValue bound as that input
        self._batch = 0
        self._fed: dict[str, np.ndarray] = {}  # host inputs bound by pointer, kept alive
        self._logits = roles.logits
        self._all = [p for p in roles.kv if p.past not in self.buffers and p.present is not None]
        self._growing = self._all  # the first step binds every present, later ones not `once`
        self._later = [p for p in self._all if p.past not in self.once]

    def start(self, batch: int) -> None:
        self._io.clear_binding_inputs()
        self._io.clear_binding_outputs()
        self._past = {}
        self._batch = batch
        self._growing = self._all

    def _first(self, feeds: dict[str, np.ndarray]) -> None:
        """Bind the empty pasts (a shared buffer: zeros, the mask says what is filled)."""
        ort, (kind, index) = self._ort, self._where
        for name, empty in self.empty_pasts(self._batch, feeds).items():
            value = ort.OrtValue.ortvalue_from_numpy(empty, kind, index)
            self._past[name] = value
            self._io.bind_ortvalue_input(name, value)
        for p in self.roles.kv:
            if p.past in self.buffers and p.present is not None:
                self._io.bind_ortvalue_output(p.present, self._past[p.past])

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.session._check_open()
        io, (kind, index) = self._io, self._where
        if not self._past:
            self._first(feeds)
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)  # by pointer on the CPU; copied in on CUDA
        self._fed = feeds
        io.bind_output(self._logits, "cpu", 0)  # the one output that comes to the host
        for p in self._growing:
            io.bind_output(p.present, kind, index)
        self._sess.run_with_iobinding(io)
        outputs = io.get_outputs()  # in the order bound: logits, then the growing presents
        for p, value in zip(self._growing, outputs[1:]):
            self._past[p.past] = value
            io.bind_ortvalue_input(p.past, value)
        if self._growing is not self._later:
            self._growing = self._later
            io.clear_binding_outputs()  # pasts over the encoder stay as the first step made them
            for p in self.roles.kv:
                if p.past in self.buffers and p.present is not None:
                    io.bind_ortvalue_output(p.present, self._past[p.past])
        return outputs[0].numpy()

    def close(self) -> None:
        self._io.clear_binding_inputs()
        self._io.clear_binding_outputs()
        self._past = {}
        self._fed = {}
