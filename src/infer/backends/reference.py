"""The ONNX reference evaluator: always installed with onnx, slow, and the spec's own answer."""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import _onnx
from ..device import Device, cpu
from ..errors import CompileError, InputError, RuntimeFailure
from ..model import Model, ModelFormat
from ..options import Options, parse_size
from . import _ref_memory
from .base import GRAPH, NATIVE, Backend, BackendInfo, Session, register


@register
class ReferenceBackend(Backend):
    name = "reference"
    runtime = "onnx"
    install = "nothing: it ships with onnx"

    def _probe(self) -> BackendInfo:
        import onnx

        return BackendInfo(
            self.name,
            True,
            onnx.__version__,
            (cpu(),),
            reason='pure Python and slow; install "infer-engine[cpu]" for ONNX Runtime',
            install=self.install,
        )

    def precisions(self, device: Device, variant: str | None = None) -> Mapping[str, str]:
        # It evaluates whatever graph it is given, so transformed graphs run as they are.
        return {"fp32": NATIVE, "fp16": GRAPH, "int8": GRAPH}

    def unsupported_ops(
        self, model: Model, device: Device, variant: str | None = None
    ) -> list[str] | None:
        """The model's ops onnx.reference has no implementation of at the model's opsets (its
        op registry and the schemas' function bodies, and the ops corrected here)."""
        if model.format is not ModelFormat.ONNX:
            return None
        from .._ops import op_uses

        proto = model._skeleton
        corrected = {("", c.__name__) for c in _corrected_ops(_onnx.opset(proto) or 1)}
        missing: dict[str, None] = {}
        for use in op_uses(proto):
            if (use.domain, use.op) not in corrected and not _implemented(
                use.domain, use.op, use.version
            ):
                missing[f"{use.label} (opset {use.version})" if use.version else use.label] = None
        return list(missing)

    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> Session:
        import onnx
        from onnx.reference import ReferenceEvaluator

        own = options.for_backend(self.name, _OPTIONS)
        max_memory = parse_size(own["max_memory"], "backend_options['reference']['max_memory']")
        proto = model.proto
        # The evaluator runs whatever it is given and fails (or answers) at run time on graphs the
        # spec forbids (cycles, inputs nothing produces): the checker refuses those up front.
        try:
            # (by path where there is one: the checker reads >2 GB models only that way)
            onnx.checker.check_model(str(model.path) if model.path is not None else proto)
        except Exception as e:
            raise CompileError(f"{model!r} is not a valid ONNX model: {e}") from e
        try:
            evaluator = ReferenceEvaluator(proto, new_ops=_corrected_ops(_onnx.opset(proto) or 1))
        except Exception as e:
            raise CompileError(f"the ONNX reference evaluator cannot run {model!r}: {e}") from e
        for node in getattr(evaluator, "rt_nodes_", ()):
            node.run = _naming(node)
        inputs, outputs = model.inputs, model.outputs
        # onnx.reference's Optional op wraps its value in a list: these outputs are unwrapped.
        optional_tensors = frozenset(
            v.name
            for v in proto.graph.output
            if v.type.HasField("optional_type")
            and v.type.optional_type.elem_type.HasField("tensor_type")
        )
        return ReferenceSession(
            evaluator,
            optional_tensors=optional_tensors,
            graph=model._skeleton,
            max_memory=max_memory,
            backend=self.name,
            device=device,
            inputs=inputs,
            outputs=outputs,
            options=options,
            precision=model.precision or options.precision,
        )


class ReferenceSession(Session):
    def __init__(
        self,
        evaluator: Any,
        optional_tensors: frozenset[str] = frozenset(),
        graph: Any = None,
        max_memory: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self._evaluator = evaluator
        self._optional_tensors = optional_tensors
        self._lock = threading.Lock()  # the evaluator keeps per-run state on its op objects
        self._graph = graph  # the model without external data, for the memory estimate
        self._max_memory = max_memory  # None: what the machine has available at each run
        self._estimates: dict[tuple, int | None] = {}

    def _run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        names = outputs or self._output_names
        self._check_memory(feeds)
        # The kernels compute in numpy what the spec says, limits included: exp() overflowing to
        # inf, and Sigmoid's inf/inf in the branch np.where then drops, are not the caller's
        # business. Only here: numpy's warnings elsewhere in the process stay as they were.
        with self._lock, np.errstate(all="ignore"):
            try:
                results = self._evaluator.run(names, feeds)
            except _NodeFailure as e:
                raise RuntimeFailure(
                    f"{self.backend} failed to run on {self.device}: {e.node}: {_cause(e.error)}"
                ) from e.error
            except (TypeError, AttributeError) as e:
                raise RuntimeFailure(
                    f"{self.backend} failed to run on {self.device}: {_cause(e)}"
                ) from e
        # Sequences stay lists, maps dicts, and an empty optional None (as ONNX Runtime gives).
        out: dict[str, Any] = {}
        for n, r in zip(names, results):
            if n in self._optional_tensors and isinstance(r, list) and len(r) == 1:
                r = r[0]
            out[n] = r if r is None or isinstance(r, (list, dict)) else np.asarray(r)
        return out

    def _check_memory(self, feeds: dict[str, np.ndarray]) -> None:
        """Refuse a run that would hold more than the limit: the evaluator cannot bound itself."""
        if self._graph is None:
            return
        key = tuple(
            (k, v.shape, v.dtype.str) if isinstance(v, np.ndarray) else (k, type(v).__name__)
            for k, v in feeds.items()
        )
        if key not in self._estimates:
            if len(self._estimates) > 64:
                self._estimates.clear()
            self._estimates[key] = _ref_memory.estimate(self._graph, feeds)
        need = self._estimates[key]
        if not need or (self._max_memory is None and need < _SMALL_RUN):
            return
        limit = self._max_memory
        source = "backend_options['reference']['max_memory']"
        if limit is None:
            limit, source = _ref_memory.available(), "the memory available here"
        if limit is None or need <= limit:
            return
        shapes = ", ".join(
            f"{k} {list(v.shape)}" for k, v in feeds.items() if isinstance(v, np.ndarray)
        )
        raise InputError(
            f"the ONNX reference evaluator would hold at least {_gib(need)} for this run "
            f"({shapes}; it keeps every intermediate tensor), more than {source} "
            f"({_gib(limit)}); give smaller inputs, another backend, or a higher limit: "
            f"backend_options={{'reference': {{'max_memory': '{-(-need // 2**30) + 1}GiB'}}}}"
        )

    def _close(self) -> None:
        self._evaluator = None


_OPTIONS = {"max_memory": None}
"""backend_options["reference"]: max_memory, the most a run may hold (bytes, or "32GiB");
None: the memory available when the run starts."""
_SMALL_RUN = 64 << 20  # below this, a run is not weighed against the memory available


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@functools.cache
def _implemented(domain: str, op: str, version: int | None) -> bool:
    """Whether onnx.reference loads an implementation of the op at this opset, as its
    evaluator does for each node (a function body counts; no opset import does not)."""
    if version is None:
        return False
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import RuntimeContextError

    try:
        if domain == "":
            from onnx.reference.ops import load_op

            load_op(domain, op, version, evaluator_cls=ReferenceEvaluator)
            return True
        loaders = {
            "ai.onnx.ml": "onnx.reference.ops.aionnxml",
            "ai.onnx.preview": "onnx.reference.ops.aionnx_preview",
            "ai.onnx.preview.training": "onnx.reference.ops.aionnx_preview_training",
            "experimental": "onnx.reference.ops.experimental",
        }
        if domain not in loaders:
            return False
        importlib.import_module(loaders[domain]).load_op(domain, op, version)
        return True
    except RuntimeContextError:  # a function body that depends on the node: it builds one
        return True
    except Exception:  # no implementation (NotImplementedError, its RuntimeImplementationError)
        return False


_WRAPPED = re.compile(r"^Issues with types .*\(operator '([^']*)'\)\.?$", re.S)


class _NodeFailure(Exception):
    """A node's kernel failed: which node (the evaluator's own errors name none) and why."""

    def __init__(self, node: str, error: Exception) -> None:
        super().__init__(f"{node}: {error}")
        self.node, self.error = node, error


def _naming(node: Any) -> Any:
    """`node.run`, its failures raised as _NodeFailure naming the node and its op."""
    run, proto = node.run, node.onnx_node
    label = (
        f"node {proto.name!r} ({proto.op_type})"
        if proto.name
        else f"the {proto.op_type} node computing {next(iter(proto.output), '')!r}"
    )

    @functools.wraps(run)
    def named(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        except MemoryError:
            raise
        except Exception as e:
            raise _NodeFailure(label, e) from e

    return named


def _cause(e: BaseException) -> str:
    """What went wrong, without the layers onnx.reference wraps around it: each op that a
    failure passes through (a Loop, then its body's op) re-raises "Issues with types [<class
    'numpy.ndarray'>, ...] (operator 'Loop')" from the one below."""
    ops: list[str] = []
    while (found := _WRAPPED.match(str(e))) and e.__cause__ is not None:
        ops.append(found.group(1))
        e = e.__cause__
    where = f"in {' > '.join(ops)}: " if ops else ""
    return f"{where}{type(e).__name__}: {e}"


def _corrected_ops(opset: int = 1) -> list[type]:
    """Ops whose reference implementation in onnx <= 1.23 gives wrong answers, corrected here.

    BatchNormalization 9-13 picks test mode by the number of outputs; onnx's evaluator picks it
    by `momentum is None`, and since the schema defaults momentum to 0.9, every exported
    inference-mode BatchNormalization ran in training mode (onnx/onnx#8442, still open).
    Cast and CastLike to int4, uint4, int2 and uint2 round to the nearest integer (ties to even)
    and keep the low bits, as the spec says (onnx's docs/technical/int4.md); onnx's evaluator
    leaves it to ml_dtypes, which truncates toward zero and wrapped out-of-range values up to
    0.5 but gives 0 for them from 0.7 on (-9.0 -> int4: 7 with 0.5, 0 with 0.7).
    Squeeze before opset 13 squeezed negative axes one at a time, each shifting the next.
    Softmax, LogSoftmax and Hardmax before opset 13 normalize over the input flattened to 2-D
    at `axis` (default 1); onnx's evaluator uses the opset-13 rule (one axis, default -1) for
    every version, so an opset-9 classifier's Softmax over [N, 1000, 1, 1] gave all ones.
    """
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_batch_normalization import (
        _batchnorm_test_mode,
        _batchnorm_training_mode,
    )

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(
            self,
            x: np.ndarray,
            scale: np.ndarray,
            bias: np.ndarray,
            mean: np.ndarray,
            var: np.ndarray,
            epsilon: float | None = None,
            momentum: float | None = None,
            training_mode: int | None = None,
            is_test: int | None = None,
            spatial: int | None = None,
        ) -> tuple[np.ndarray, ...]:
            opset = self.run_params["opsets"].get("", 1)
            epsilon = 1e-5 if epsilon is None else epsilon
            momentum = 0.9 if momentum is None else momentum
            outputs = [name for name in self.onnx_node.output if name]
            if opset >= 14:
                training = bool(training_mode)
            elif opset >= 7:
                training = len(outputs) > 1
            else:
                training = not is_test
            if not training:
                return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=epsilon),)
            y, saved_mean, saved_var, running_mean, running_var = _batchnorm_training_mode(
                x, scale, bias, mean, var, momentum=momentum, epsilon=epsilon
            )
            if opset >= 14:
                return (y, running_mean, running_var)[: len(outputs)]
            return (y, running_mean, running_var, saved_mean, saved_var)[: len(outputs)]

    class _Normalizer(OpRun):
        """Softmax, LogSoftmax, Hardmax: before opset 13 they flatten the input to 2-D at `axis`
        (default 1) and normalize each row; from 13 on they work along `axis` (default -1).
        onnx's evaluator applies the opset-13 rule to every version."""

        op_domain = ""

        _along: Callable[[np.ndarray, int], np.ndarray]  # each op's kernel, a staticmethod

        def _run(self, x: np.ndarray, axis: int | None = None) -> tuple[np.ndarray]:
            opset = self.run_params["opsets"].get("", 1)
            if not any(a.name == "axis" for a in self.onnx_node.attribute):
                axis = 1 if opset < 13 else -1
            assert axis is not None  # the node's attribute or, without one, the opset's default
            if x.size == 0:
                return (x,)
            if opset >= 13:
                return (self._along(x, axis).astype(x.dtype),)
            axis = axis + x.ndim if axis < 0 else axis
            rows = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
            return (self._along(rows, 1).reshape(x.shape).astype(x.dtype),)

    class Softmax(_Normalizer):
        @staticmethod
        def _along(x: np.ndarray, axis: int) -> np.ndarray:
            e = np.exp(x - x.max(axis=axis, keepdims=True))
            return e / e.sum(axis=axis, keepdims=True)

    class LogSoftmax(_Normalizer):
        @staticmethod
        def _along(x: np.ndarray, axis: int) -> np.ndarray:
            shifted = x - x.max(axis=axis, keepdims=True)
            return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    class Hardmax(_Normalizer):
        @staticmethod
        def _along(x: np.ndarray, axis: int) -> np.ndarray:
            y = np.zeros_like(x)
            first = np.expand_dims(np.argmax(x, axis=axis), axis)
            np.put_along_axis(y, first, 1, axis=axis)
            return y

    ops: list[type] = [BatchNormalization, Softmax, LogSoftmax, Hardmax, *_subbyte_casts()]
    if opset < 13:

        class Squeeze(OpRun):
            """Squeeze 1-11 (axes an attribute): onnx's kernel squeezes one axis at a time in
            reverse order, so negative axes shift under it ([N, 1, 1] by [-2, -1] squeezed N)."""

            op_domain = ""

            def _run(self, data: np.ndarray, axes: Any = None) -> tuple[np.ndarray]:
                if axes is None or len(axes) == 0:
                    return (np.squeeze(data),)
                return (np.squeeze(data, axis=tuple(int(a) % data.ndim for a in axes)),)

        ops.append(Squeeze)
    if 10 <= opset < 19:
        # onnx <= 1.23 implements DequantizeLinear from opset 19 only; opsets 10-18 are the same
        # op with fewer types, and int8 Q/DQ graphs (transforms/precision.py) use them.
        # The evaluator fills in the newest schema's attribute defaults, so the newest kernel.
        from onnx.reference.ops import op_dequantize_linear as dq

        newest = max(
            (c for n, c in vars(dq).items() if n.startswith("DequantizeLinear_")),
            key=lambda c: int(c.__name__.rsplit("_", 1)[1]),
        )

        class DequantizeLinear(newest):  # type: ignore[valid-type,misc]
            op_domain = ""

        ops.append(DequantizeLinear)
    return ops


def _subbyte_casts() -> list[type]:
    """Cast and CastLike with the spec's rule for the sub-byte integer targets (int4, uint4,
    int2, uint2): round half to even, then wrap to the type's bits; other targets as onnx's."""
    import onnx
    from onnx.reference.ops import op_cast, op_cast_like

    def newest(module: Any, prefix: str) -> type:
        return max(
            (c for n, c in vars(module).items() if n.startswith(prefix)),
            key=lambda c: int(c.__name__.rsplit("_", 1)[1]),
        )

    widths = {"INT4": (4, True), "UINT4": (4, False), "INT2": (2, True), "UINT2": (2, False)}
    subbyte = {
        getattr(onnx.TensorProto, name): bits
        for name, bits in widths.items()
        if hasattr(onnx.TensorProto, name)
    }

    def cast(x: np.ndarray, to: int) -> np.ndarray | None:
        """x cast to the sub-byte type `to`, or None for any other target (onnx's cast then)."""
        if to not in subbyte:
            return None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(to)
        if not dtype.type.__module__.startswith("ml_dtypes"):
            return None  # an onnx whose evaluator has 4-bit types of its own casts them itself
        bits, signed = subbyte[to]
        span = 1 << bits
        if x.dtype.kind in "biu":
            whole = x.astype(np.int64)
        else:  # floats, ml_dtypes' floats and sub-byte ints: exact in float64
            with np.errstate(invalid="ignore"):
                v = np.fmod(np.rint(x.astype(np.float64)), span)
            whole = np.where(np.isfinite(v), v, 0).astype(np.int64)
        low = whole & (span - 1)
        if signed:
            low = np.where(low >= span // 2, low - span, low)
        return low.astype(np.int8).astype(dtype)

    cast_base = newest(op_cast, "Cast_")
    like_base = newest(op_cast_like, "CastLike_")

    def accepted(run: Callable[..., Any], attributes: dict[str, Any]) -> dict[str, Any]:
        """The attributes onnx's kernel takes: the evaluator passes every attribute of the
        schema to a `**attributes` kernel, and onnx's own may not name them all."""
        names = inspect.signature(run).parameters
        return {k: v for k, v in attributes.items() if k in names}

    class Cast(cast_base):  # type: ignore[valid-type,misc]
        op_domain = ""

        def _run(self, x: np.ndarray, to: int | None = None, **attributes: Any) -> Any:
            y = cast(x, int(to)) if to is not None else None
            if y is not None:
                return (y,)
            return super()._run(x, to=to, **accepted(super()._run, attributes))

    class CastLike(like_base):  # type: ignore[valid-type,misc]
        op_domain = ""

        def _run(self, x: np.ndarray, y: np.ndarray, **attributes: Any) -> Any:
            out = cast(x, onnx.helper.np_dtype_to_tensor_dtype(y.dtype))
            if out is not None:
                return (out,)
            return super()._run(x, y, **accepted(super()._run, attributes))

    return [Cast, CastLike]
