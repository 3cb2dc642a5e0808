"""A decoder's KV cache inside OpenVINO: the model made stateful over its past/present pairs
(OpenVINO's make-stateful transformation), in the shape its CPU plugin fuses into its attention
kernel, and the infer request that keeps the past between steps (`OpenVinoKVCache`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CompileError
from ..sequence import Roles
from ._ov_tensors import to_tensor
from .base import KVCache, Session

REORDER = "beam_idx"
"""The input a stateful decoder takes to pick, per row, which past row it continues: what the
CPU plugin's fusion of a stateful KV cache into its attention kernel looks for (the pattern
optimum-intel exports: state -> Gather(beam_idx) -> Concat -> ScaledDotProductAttention)."""


def reorder_input(ov_model: Any, cache: KVCache) -> None:
    """Put a Gather over the batch by `beam_idx` (int32 [batch]) in front of every past, so that
    the stateful model has the pattern the CPU plugin fuses (measured, 2026.4: without it the
    runtime model keeps Concat and no ScaledDotProductAttention; with it, fused). The decoder
    feeds arange(batch): every row continues its own past."""
    import openvino as ov
    import openvino.opset13 as ops

    if any(REORDER in port.get_names() for port in ov_model.inputs):
        return
    beam = ops.parameter([-1], ov.Type.i32, name=REORDER)
    beam.output(0).get_tensor().set_names({REORDER})
    for pair in cache.roles.kv:
        axis = cache.batch_axis(pair)
        if axis is None:
            raise CompileError(f"past input {pair.past!r}: no batch axis to reorder")
        param = ov_model.input(pair.past).get_node()
        consumers = list(param.output(0).get_target_inputs())
        gather = ops.gather(param, beam, ops.constant(np.int64(axis)))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    ov_model.add_parameters([beam])
    ov_model.validate_nodes_and_infer_types()


def initial_states(ov_model: Any, cache: KVCache, states: Mapping[str, str]) -> None:
    """Give each state (ReadValue) an initial value of zeros with the batch of the ids and an
    empty past: the transformation leaves batch 0, and the CPU plugin's fused attention over a
    state wants an initializer to read (measured, 2026.4: without one its compile fails)."""
    import openvino.opset13 as ops

    ids = ov_model.input(cache.roles.ids)
    batch = ops.gather(ops.shape_of(ids, "i64"), ops.constant(np.array([0], np.int64)), 0)
    by_past = {p.past: p for p in cache.roles.kv}
    for op in ov_model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        name = op.get_variable_id()
        past = next((past for prefix, past in states.items() if name.startswith(prefix)), None)
        pair = by_past.get(past) if past is not None else None
        if pair is None:
            raise CompileError(f"the stateful model has a state {name!r} of no past")
        axis = cache.batch_axis(pair)
        shape = list(cache.past_shape(pair, 1))
        parts = [
            batch if i == axis else ops.constant(np.array([d], np.int64))
            for i, d in enumerate(shape)
        ]
        zero = ops.constant(np.zeros((), cache.specs[pair.past].dtype))
        op.set_arguments([ops.broadcast(zero, ops.concat(parts, 0))])
    ov_model.validate_nodes_and_infer_types()


class OpenVinoKVCache(KVCache):
    """The past inside one infer request of the stateful compiled model: each step's presents
    stay in its states, nothing crosses to numpy but the logits.

    The transformation leaves each state's initial value with batch 0 (measured, 2026.4), so
    `start` resets the states and sets each to an empty past of the batch.
    """

    def __init__(
        self,
        session: Session,
        roles: Roles,
        compiled: Any,
        states: Mapping[str, str],
        kv_precision: str | None = None,
    ) -> None:
        """states: the name each state's variable starts with -> the past it holds;
        kv_precision: the KV-cache precision the compiled model reports."""
        super().__init__(session, roles)
        import openvino as ov

        self._ov = ov
        self._request = compiled.create_infer_request()
        self._inputs = {n for port in compiled.inputs for n in port.get_names()}
        self._logits = compiled.output(roles.logits)
        by_past = {p.past: p for p in roles.kv}
        self._pairs = [(prefix, by_past[past]) for prefix, past in states.items()]
        self._kept: list[Any] = []
        self._reorder: Any = None  # arange(batch) for the beam_idx input
        self.where = "OpenVINO state" + (f", KV {kv_precision}" if kv_precision else "")

    def start(self, batch: int) -> None:
        req = self._request
        req.reset_state()
        if REORDER in self._inputs:
            self._reorder = self._ov.Tensor(np.arange(batch, dtype=np.int32))
        for state in req.query_state():
            pair = next((p for prefix, p in self._pairs if state.name.startswith(prefix)), None)
            if pair is None:
                raise CompileError(f"the stateful model has a state {state.name!r} of no pair")
            dtype = self.specs[pair.past].dtype
            state.state = self._ov.Tensor(np.zeros(self.past_shape(pair, batch), dtype))

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.session._check_open()
        req = self._request
        self._kept = []
        for name, arr in feeds.items():
            if name in self._inputs:
                tensor = to_tensor(self._ov, arr)
                req.set_tensor(name, tensor)
                self._kept.append(tensor)
        if self._reorder is not None:
            req.set_tensor(REORDER, self._reorder)
        req.infer()
        return req.get_tensor(self._logits).data.copy()

    def close(self) -> None:
        self._request = None
        self._kept = []
