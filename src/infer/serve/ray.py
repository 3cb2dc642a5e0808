"""Ray: batch inference over a cluster with Ray Data, and online serving with Ray Serve.

    ds.map_batches(infer.ray.Predictor, fn_constructor_kwargs={"model": "m.onnx", "device": "cpu"},
                   concurrency=4, batch_size=64)
    # Ray >= 2.51 spells concurrency=4 as compute=ray.data.ActorPoolStrategy(size=4)

    app = infer.ray.deployment("m.onnx", device="cpu", num_replicas=2)
    handle = ray.serve.run(app)

Each Ray actor (or Serve replica) loads its Engine once. Ray itself is imported only by
`deployment()`: the Predictor is a plain class that Ray instantiates on its workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import batching
from ..engine import Engine
from ..errors import InputError, ModelError, OptionError
from ..model import Model, ModelSource
from ..tensors import TensorSpec, describe
from . import _specs


class Predictor:
    """A Ray Data callable class: one Engine per actor, one engine run per batch.

    model, device and the other keyword arguments are those of `Engine.load` (backend=,
    precision=, preprocess=, cast=, ...). Pass them through `fn_constructor_kwargs`.

    columns: {model input: column} where they differ (default: each input reads the column of
        its own name).
    outputs: the model outputs to compute (default: all); each becomes a column of that name.
    keep: the input batch's other columns (ids, labels, ...) that pass through to the output;
        True (default) keeps every column that is not a model input, False none, or a list.

    Batches may come as Ray's "numpy" format (dict of arrays, the default) or "pandas".
    A model whose inputs have a dynamic leading (batch) dimension runs each batch at once;
    one without runs row by row, each row given its own leading axis where the model has one
    of size 1.
    """

    def __init__(
        self,
        model: ModelSource,
        device: str = "auto",
        *,
        columns: Mapping[str, str] | None = None,
        outputs: Sequence[str] | None = None,
        keep: bool | Sequence[str] = True,
        **load_options: Any,
    ) -> None:
        self.engine = Engine.load(model, device, **load_options)
        names = [s.name for s in self.engine.inputs]
        columns = dict(columns or {})
        unknown = sorted(set(columns) - set(names))
        if unknown:
            raise OptionError(f"columns names unknown model input(s) {unknown}; inputs: {names}")
        self.columns = {n: columns.get(n, n) for n in names}
        self.outputs = list(outputs) if outputs is not None else None
        self.keep = keep if isinstance(keep, bool) else list(keep)
        self.batched = batching.has_batch_axis(self.engine.inputs, self.engine.outputs)

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        batch = _as_columns(batch)
        missing = sorted(c for c in self.columns.values() if c not in batch)
        if missing:
            raise InputError(
                f"batch has no column(s) {missing} for the model's inputs; its columns are "
                f"{sorted(batch)} (map inputs to columns with columns={{input: column}})"
            )
        feeds = {n: _stack(batch[c], n) for n, c in self.columns.items()}
        out = self.engine.run(feeds, self.outputs) if self.batched else self._row_by_row(feeds)
        result = {k: v for k, v in batch.items() if self._keeps(k)}
        result.update(out)
        return result

    def _keeps(self, column: str) -> bool:
        if self.keep is True:
            return column not in self.columns.values()
        return bool(self.keep) and column in self.keep  # type: ignore[operator]

    def _row_by_row(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(feeds.values())))
        specs = {s.name: s for s in self.engine.inputs}
        runs = [
            self.engine.run(
                {n: _row(v[i], specs[n]) for n, v in feeds.items()},
                self.outputs,
            )
            for i in range(count)
        ]
        return {name: _collect([r[name] for r in runs]) for name in runs[0]} if runs else {}

    def __repr__(self) -> str:
        return f"<infer.ray.Predictor {self.engine!r}>"


def _as_columns(batch: Any) -> dict[str, Any]:
    if isinstance(batch, Mapping):
        return dict(batch)
    if hasattr(batch, "columns") and hasattr(batch, "to_numpy"):  # a pandas DataFrame
        return {c: batch[c].to_numpy() for c in batch.columns}
    raise InputError(
        f"a batch must be a dict of column -> array or a pandas DataFrame, got "
        f"{type(batch).__name__}; use batch_format='numpy' or 'pandas'"
    )


def _stack(column: Any, name: str) -> np.ndarray:
    """A column as one array: Ray hands tensor columns of ragged or pandas data as an object
    array of per-row arrays."""
    arr = np.asarray(column)
    if arr.dtype == object and arr.size and isinstance(arr.flat[0], np.ndarray):
        try:
            return np.stack(list(arr))
        except ValueError as e:
            raise InputError(
                f"input {name!r}: the rows of its column differ in shape ({e}); batch rows of "
                "equal shape, or use a model without a batch axis, which runs row by row"
            ) from e
    return arr


def _row(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """One row as the model takes it: with a leading axis of 1 when the model has one."""
    value = np.asarray(value)
    if spec.shape is not None and len(spec.shape) == value.ndim + 1 and spec.shape[0] in (1, None):
        return value[None]
    if spec.shape is not None and len(spec.shape) != value.ndim:
        raise InputError(
            f"input {spec.name!r}: a row has shape {list(value.shape)}, the model takes "
            f"{describe(spec.shape, spec.dtype)}"
        )
    return value


def _collect(values: list[np.ndarray]) -> np.ndarray:
    """Per-row outputs as one column: stacked when their shapes agree, else an object array."""
    first = values[0]
    if all(v.shape == first.shape for v in values):
        if first.ndim and first.shape[0] == 1:
            return np.concatenate(values)
        return np.stack(values)
    out = np.empty(len(values), object)
    out[:] = values
    return out


# -- Ray Serve ----------------------------------------------------------------------------------


def deployment(
    model: ModelSource,
    device: str = "auto",
    *,
    name: str = "infer",
    num_replicas: int = 1,
    max_batch_size: int = 16,
    batch_wait_timeout_s: float = 0.001,
    ray_actor_options: Mapping[str, Any] | None = None,
    **load_options: Any,
) -> Any:
    """A Ray Serve application serving `model`: pass it to `ray.serve.run`.

    Each replica loads one Engine (`device` and `load_options` as for Engine.load). Calls
    through a DeploymentHandle take {input: array} and return {output: array}; HTTP requests
    take JSON {"inputs": {input: nested list}} and answer {"outputs": {output: nested list}}.
    Concurrent calls are merged by the engine's own batcher (infer.Batching: up to
    `max_batch_size` rows, waiting at most `batch_wait_timeout_s`) when the model has a dynamic
    batch dimension; a bad request fails alone.
    """
    from ray import serve

    _specs.check_count("num_replicas", num_replicas, 1)
    _specs.check_count("max_batch_size", max_batch_size, 1)
    config = batching.Batching(max_batch=max_batch_size, max_delay_ms=batch_wait_timeout_s * 1e3)

    @serve.deployment(
        name=name, num_replicas=num_replicas, ray_actor_options=dict(ray_actor_options or {})
    )
    class InferDeployment:
        def __init__(self) -> None:
            self.engine = _batched_engine(model, device, config, load_options)
            self.specs = {s.name: s for s in self.engine.inputs}

        async def __call__(self, request: Any) -> Any:
            if not callable(getattr(request, "json", None)):  # a handle call: {input: array}
                if not isinstance(request, Mapping):
                    raise InputError(
                        f"expected a dict of input name -> array, got {type(request).__name__}"
                    )
                return await self.engine.arun({k: np.asarray(v) for k, v in request.items()})
            payload = await request.json()  # an HTTP request (starlette)
            given = payload.get("inputs", payload) if isinstance(payload, dict) else None
            if not isinstance(given, dict):
                raise InputError('the request body must be JSON {"inputs": {input: array}}')
            feeds = {
                k: np.asarray(v, self.specs[k].dtype) if k in self.specs else np.asarray(v)
                for k, v in given.items()
            }
            out = await self.engine.arun(feeds)
            return {"outputs": {k: v.tolist() for k, v in out.items()}}

    return InferDeployment.bind()


def _batched_engine(
    model: ModelSource, device: str, config: batching.Batching, load_options: Mapping[str, Any]
) -> Engine:
    """The engine, batching concurrent calls where the model has a batch axis."""
    source = Model.load(model)
    try:
        batched = batching.has_batch_axis(source.inputs, source.outputs)
    except ModelError:  # a runtime's own format: its inputs are known once compiled
        batched = True
    if batched:
        try:
            return Engine.load(source, device, batching=config, **load_options)
        except batching.NoBatchAxis:  # the compiled model fixed its batch (shapes=, say)
            pass
    return Engine.load(source, device, **load_options)
