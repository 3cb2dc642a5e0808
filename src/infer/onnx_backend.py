"""infer as an ONNX backend: `onnx.backend.base.Backend` / `BackendRep` over `Engine`.

This is the interface the official ONNX backend test suite drives. The module itself is a
backend, as `onnxruntime.backend` is (its functions load with `Engine.load`'s defaults), and
`InferBackend.with_options` fixes load options::

    import onnx.backend.test
    import infer.onnx_backend
    from infer.onnx_backend import InferBackend

    suite = onnx.backend.test.BackendTest(infer.onnx_backend, __name__)
    suite = onnx.backend.test.BackendTest(InferBackend.with_options(backend="onnxruntime"))

`prepare(model, device="CPU", **options)` loads the model with `Engine.load`; `options` are
`Engine.load`'s keywords (`backend=`, `precision=`, `backend_options=`, ...). ONNX's device
strings ("CPU", "CUDA", "CUDA:1") map to infer's ("cpu", "cuda", "cuda:1").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from .engine import Engine
from .errors import InputError, OptionError
from .model import ModelFormat

# Keywords the ONNX test runner passes to `prepare` that are not load options: the tolerances
# it compares with (set per test through `BackendTest(test_kwargs=...)`).
_RUNNER_KEYWORDS = frozenset({"rtol", "atol"})

_DEVICES = {"CPU": "cpu", "CUDA": "cuda"}


def infer_device(device: str) -> str:
    """infer's device string for an ONNX backend device string ("CPU", "CUDA:1")."""
    kind, _, index = str(device).strip().partition(":")
    name = _DEVICES.get(kind.upper())
    if name is None:
        raise OptionError(f"ONNX device {device!r} is not valid; use 'CPU', 'CUDA' or 'CUDA:<n>'")
    return f"{name}:{index}" if index else name


class InferRep(BackendRep):
    """A prepared model: an `Engine`, run with inputs given by position or by name."""

    def __init__(self, engine: Engine, input_order: Sequence[str]) -> None:
        self.engine = engine
        known = {s.name for s in engine.inputs}
        # The model's own input order (initializers left out), which positional inputs follow.
        self.input_names = [n for n in input_order if n in known] + [
            s.name for s in engine.inputs if s.name not in input_order
        ]
        self.output_names = [s.name for s in engine.outputs]
        self._outputs = namedtupledict("Outputs", self.output_names)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run once; `inputs` is a list (model input order), a dict, or one array.

        Returns a named tuple of the outputs in model order (indexable by name too).
        """
        feeds = self._feeds(inputs)
        out = self.engine.run(feeds)
        return self._outputs(*(out[n] for n in self.output_names))

    def _feeds(self, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, Mapping):
            return dict(inputs)
        if isinstance(inputs, np.ndarray) or not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if len(inputs) > len(self.input_names):
            raise InputError(
                f"{len(inputs)} inputs given, the model takes {len(self.input_names)}: "
                f"{self.input_names}"
            )
        return dict(zip(self.input_names, inputs))

    def close(self) -> None:
        self.engine.close()


class InferBackend(Backend):
    """The ONNX backend API over infer. Subclass it (or use `with_options`) to fix load options."""

    options: ClassVar[Mapping[str, Any]] = {}
    """`Engine.load` keywords every `prepare` uses unless it is given its own."""

    @classmethod
    def with_options(cls, **options: Any) -> type[InferBackend]:
        """A backend class whose `prepare` loads with these `Engine.load` keywords by default."""
        merged = {**cls.options, **options}
        label = merged.get("backend") or "auto"
        name = f"InferBackend[{label}]"
        return type(name, (cls,), {"options": merged, "__module__": cls.__module__})

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> InferRep:
        """Load `model` (ModelProto, path or bytes) on `device` with `Engine.load` keywords."""
        options = {**cls.options, **{k: v for k, v in kwargs.items() if k not in _RUNNER_KEYWORDS}}
        options.setdefault("device", infer_device(device))
        engine = Engine.load(model, **options)
        proto = engine.model.proto if engine.model.format is ModelFormat.ONNX else None
        order: list[str] = []
        if proto is not None:
            inits = {t.name for t in proto.graph.initializer}
            order = [v.name for v in proto.graph.input if v.name not in inits]
        return InferRep(engine, order)

    @classmethod
    def run_model(
        cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any
    ) -> tuple[Any, ...]:
        rep = cls.prepare(model, device, **kwargs)
        try:
            return rep.run(inputs)
        finally:
            rep.close()

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Run one node: it is wrapped in a one-node model whose inputs are typed from `inputs`.

        `opset_version` (a keyword) picks the default-domain opset; the newest onnx knows
        otherwise. `outputs_info` [(dtype, shape)] types the outputs where inference cannot.
        """
        opset = kwargs.pop("opset_version", None)
        model = one_node_model(node, inputs, outputs_info, opset)
        return cls.run_model(model, inputs, device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            wanted = infer_device(device)
        except OptionError:
            return False
        if wanted == "cpu":
            return True
        from .device import Device
        from .selection import devices

        request = Device.parse(wanted)
        return any(request.matches(d) for d in devices())


# The module as a backend: onnx's BackendTest and callers of onnxruntime.backend call these.
is_compatible = InferBackend.is_compatible
prepare = InferBackend.prepare
run_model = InferBackend.run_model
run = InferBackend.run_model  # onnxruntime.backend's name for run_model
run_node = InferBackend.run_node
supports_device = InferBackend.supports_device


def one_node_model(
    node: onnx.NodeProto,
    inputs: Any,
    outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
    opset: int | None = None,
) -> onnx.ModelProto:
    """A model holding only `node`, its graph inputs typed from the `inputs` arrays."""
    names = [n for n in node.input if n]
    values = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    if isinstance(inputs, Mapping):
        names = list(inputs)
    if len(values) != len(names):
        raise InputError(
            f"node {node.op_type!r} takes inputs {names}, but {len(values)} values were given"
        )
    graph_inputs = [_value_info(n, v) for n, v in zip(names, values)]
    outs = [n for n in node.output if n]
    if outputs_info:
        graph_outputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(d)), s)
            for n, (d, s) in zip(outs, outputs_info)
        ]
    else:
        graph_outputs = [helper.make_empty_tensor_value_info(n) for n in outs]
    domain = node.domain or ""
    opsets = [helper.make_opsetid("", opset or onnx.defs.onnx_opset_version())]
    if domain not in ("", "ai.onnx"):
        opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph([node], f"run_node_{node.op_type}", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=opsets)
    if not outputs_info:
        inferred = onnx.shape_inference.infer_shapes(model)
        by_name = {v.name: v for v in inferred.graph.value_info}
        for out in model.graph.output:
            if out.name in by_name:
                out.CopyFrom(by_name[out.name])
    return model


def _value_info(name: str, value: Any) -> onnx.ValueInfoProto:
    if isinstance(value, list):
        elem = np.asarray(value[0]) if value else np.zeros(0, np.float32)
        return helper.make_value_info(
            name,
            helper.make_sequence_type_proto(
                helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(elem.dtype), None)
            ),
        )
    arr = np.asarray(value)
    dtype = np.dtype(object) if arr.dtype.kind in "US" else arr.dtype
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(dtype), list(arr.shape)
    )
