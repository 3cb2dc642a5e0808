"""The ONNX reference evaluator: always installed with onnx, slow, and the spec's own answer."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..device import Device, cpu
from ..errors import CompileError
from ..model import Model
from ..options import Options
from ..tensors import spec_from_value_info
from .base import GRAPH, NATIVE, Backend, BackendInfo, Session, register


@register
class ReferenceBackend(Backend):
    name = "reference"
    install = "nothing: it ships with onnx"

    def _probe(self) -> BackendInfo:
        import onnx

        return BackendInfo(
            self.name,
            True,
            onnx.__version__,
            (cpu(),),
            reason='pure Python and slow; install "infer[cpu]" for ONNX Runtime',
            install=self.install,
        )

    def precisions(self, device: Device, variant: str | None = None) -> Mapping[str, str]:
        # It evaluates whatever graph it is given, so transformed graphs run as they are.
        return {"fp32": NATIVE, "fp16": GRAPH, "int8": GRAPH}

    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None = None
    ) -> Session:
        from onnx.reference import ReferenceEvaluator

        proto = model.proto
        try:
            evaluator = ReferenceEvaluator(proto)
        except Exception as e:
            raise CompileError(f"the ONNX reference evaluator cannot run {model!r}: {e}") from e
        initializers = {t.name for t in proto.graph.initializer}
        inputs = [spec_from_value_info(v) for v in proto.graph.input if v.name not in initializers]
        outputs = [spec_from_value_info(v) for v in proto.graph.output]
        return ReferenceSession(
            evaluator,
            backend=self.name,
            device=device,
            inputs=inputs,
            outputs=outputs,
            options=options,
            precision=options.precision,
        )


class ReferenceSession(Session):
    def __init__(self, evaluator: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self._evaluator = evaluator
        self._lock = threading.Lock()  # the evaluator keeps per-run state on its op objects

    def _run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        names = outputs or self._output_names
        with self._lock:
            results = self._evaluator.run(names, feeds)
        return {
            n: np.asarray(r) if not isinstance(r, (list, dict)) else r
            for n, r in zip(names, results)
        }

    def _close(self) -> None:
        self._evaluator = None
