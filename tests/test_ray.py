"""`infer.ray`: the Ray Data predictor and the Ray Serve deployment, on a real local Ray."""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import infer
import infer.ray

from . import models
from .net import free_ports

ray = pytest.importorskip("ray", reason="needs ray (the [ray] extra)")
pytest.importorskip("ray.data", reason="needs ray[data] (the [ray] extra)")

CNN = models.cnn(size=16).SerializeToString()  # small enough to ship to every actor


def cnn_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def vector_model() -> onnx.ModelProto:
    """x: float32[3] -> y = x + x: no batch axis, so it runs row by row."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "vec",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class TaggedPredictor(infer.ray.Predictor):
    """Tags each row with the identity of the Predictor (so of the engine) that computed it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tag = uuid.uuid4().hex

    def __call__(self, batch):
        out = super().__call__(batch)
        out["engine"] = np.array([self.tag] * len(out["logits"]))
        return out


@pytest.fixture(scope="module")
def local_ray():
    # Workers cannot import this test module by name: ship TaggedPredictor by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 2**20,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_map_batches_equals_engine_run(local_ray):
    x = cnn_rows(300).astype(np.float64)  # float64 rows: cast=True must reach each actor
    ds = ray.data.from_items([{"id": i, "input": x[i]} for i in range(300)])
    rows = ds.map_batches(
        TaggedPredictor,
        fn_constructor_kwargs={"model": CNN, "device": "cpu", "cast": True},
        compute=ray.data.ActorPoolStrategy(size=2),
        batch_size=64,
    ).take_all()
    assert len(rows) == 300
    assert set(rows[0]) == {"id", "logits", "engine"}  # the input column is replaced
    order = np.argsort([r["id"] for r in rows])
    logits = np.stack([rows[i]["logits"] for i in order])
    with infer.Engine.load(CNN, "cpu", cast=True) as engine:
        want = engine.run({"input": x})["logits"]
    np.testing.assert_allclose(logits, want, rtol=1e-6, atol=1e-6)
    engines = {r["engine"] for r in rows}
    assert 1 <= len(engines) <= 2, "one engine per actor, loaded once for all its batches"


def test_predictor_options_pass_through_to_engine_load():
    predictor = infer.ray.Predictor(CNN, "cpu", backend="onnxruntime", precision="fp32")
    assert predictor.engine.backend == "onnxruntime" and predictor.batched
    with pytest.raises(infer.InputError, match="cast=True"):
        predictor({"input": cnn_rows(2).astype(np.float64)})


def test_predictor_columns_keep_and_outputs():
    predictor = infer.ray.Predictor(
        models.multi_io(), "cpu", columns={"a": "features"}, outputs=["sum"], keep=["label"]
    )
    rng = np.random.default_rng(1)
    batch = {
        "features": rng.standard_normal((5, 4)).astype(np.float32),
        "b": rng.integers(0, 5, (5, 4)),
        "mask": rng.random((5, 4)) > 0.5,
        "label": np.arange(5),
        "other": np.zeros(5),
    }
    out = predictor(batch)
    assert set(out) == {"label", "sum"}
    np.testing.assert_array_equal(out["sum"], batch["features"] + batch["b"].astype(np.float32))
    with pytest.raises(infer.InputError, match=r"no column\(s\) \['features'\]"):
        predictor({"a": batch["features"], "b": batch["b"], "mask": batch["mask"]})
    with pytest.raises(infer.OptionError, match="unknown model input"):
        infer.ray.Predictor(models.multi_io(), "cpu", columns={"nope": "x"})


def test_predictor_takes_pandas_batches():
    pd = pytest.importorskip("pandas")
    predictor = infer.ray.Predictor(models.relu(), "cpu", keep=False)
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    out = predictor(pd.DataFrame({"x": list(x), "id": [7, 8]}))
    assert set(out) == {"y"}
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))


def test_models_without_a_batch_axis_run_row_by_row():
    vec = infer.ray.Predictor(vector_model(), "cpu")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(vec({"x": x, "id": np.arange(4)})["y"], 2 * x)
    single = infer.ray.Predictor(models.relu(batch=1), "cpu")  # fixed batch of 1
    out = single({"x": -x})
    assert out["y"].shape == (4, 3) and not out["y"].any()


@pytest.mark.slow
def test_serve_deployment_batches_handle_and_http_calls(local_ray):
    from ray import serve

    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app = infer.ray.deployment(
            CNN, device="cpu", name="cnn", max_batch_size=8, batch_wait_timeout_s=0.05
        )
        handle = serve.run(app, name="cnn", route_prefix="/cnn")
        x = cnn_rows(12, seed=3)
        with infer.Engine.load(CNN, "cpu") as engine:
            want = engine.run({"input": x})["logits"]

        bad = {"input": np.zeros((1, 3, 8, 8), np.float32)}  # wrong size: must fail alone
        calls = [handle.remote({"input": x[i : i + 1]}) for i in range(12)]
        failing = handle.remote(bad)
        got = np.concatenate([c.result(timeout_s=60)["logits"] for c in calls])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        with pytest.raises(Exception, match="dimension 2 must be 16"):
            failing.result(timeout_s=60)

        def post(rows: np.ndarray) -> np.ndarray:
            body = json.dumps({"inputs": {"input": rows.tolist()}}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/cnn",
                data=body,
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                return np.array(json.load(response)["outputs"]["logits"], np.float32)

        with ThreadPoolExecutor(3) as pool:
            parts = list(pool.map(post, [x[0:2], x[2:3], x[3:6]]))
        np.testing.assert_allclose(np.concatenate(parts), want[:6], rtol=1e-5, atol=1e-5)
    finally:
        serve.shutdown()
