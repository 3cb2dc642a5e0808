"""Token ids outside the embedding table are an InputError on every backend, before the run:
ONNX Runtime raised a RuntimeFailure of its own, the reference evaluator an IndexError, and
OpenVINO answered a row of zeros (a plausible, wrong embedding) without a word."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import InputError

from . import models

ov = pytest.importorskip(
    "openvino", reason="openvino is not installed (pip install infer-engine[openvino])"
)

VOCAB = 100
BACKENDS = [None, "onnxruntime", "openvino", "reference"]  # None: the default choice
BAD = [VOCAB, VOCAB + 7, 2**40, -VOCAB - 1]  # the spec's Gather takes [-n, n-1]


def _ids(bad: int) -> np.ndarray:
    return np.array([[1, 5, bad, 7], [2, 3, 4, 9]], np.int64)


def _message(bad: int) -> str:
    return rf"input 'input_ids': value {bad} is outside \[-{VOCAB}, {VOCAB - 1}\]"


def test_openvino_alone_answers_an_id_past_the_table_with_zeros():
    # Why the check is infer's: OpenVINO itself says nothing.
    model = models.encoder(vocab=VOCAB, int8_weights=False)
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model.SerializeToString(), ov.Tensor(np.empty(0, np.uint8))), "CPU"
    )
    compiled({"input_ids": _ids(VOCAB)})  # no error


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_id_outside_the_table_is_an_input_error_on_every_backend(backend):
    with infer.Engine.load(models.encoder(vocab=VOCAB), device="cpu", backend=backend) as engine:
        assert engine.roles.bounds == {"input_ids": VOCAB}
        for bad in BAD:
            with pytest.raises(InputError, match=_message(bad)):
                engine.run({"input_ids": _ids(bad)})
            with pytest.raises(InputError, match=_message(bad)):
                engine.submit({"input_ids": _ids(bad)}).result()
            with engine.bind() as b, pytest.raises(InputError, match=_message(bad)):
                b.run({"input_ids": _ids(bad)})
        # the ends of the range run, negatives included, and agree with their positive twins
        low = engine.run({"input_ids": _ids(-VOCAB)})["last_hidden_state"]
        high = engine.run({"input_ids": _ids(0)})["last_hidden_state"]
        np.testing.assert_allclose(low, high, rtol=1e-5, atol=1e-5)
        assert engine.run({"input_ids": _ids(VOCAB - 1)})["last_hidden_state"].shape == (2, 4, 64)


def test_ids_cast_from_int32_are_checked_too():
    with (
        infer.Engine.load(models.encoder(vocab=VOCAB), device="cpu", backend="openvino") as engine,
        pytest.raises(InputError, match=_message(VOCAB)),
    ):
        engine.run({"input_ids": _ids(VOCAB).astype(np.int32)})


def _quantized_table() -> onnx.ModelProto:
    """ids -> Unsqueeze -> Gather from an int8 table dequantized in the graph (weight-compressed
    embeddings): the bound is found through both."""
    table = numpy_helper.from_array(
        np.random.default_rng(0).integers(-127, 128, (30, 8)).astype(np.int8), "table.q"
    )
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "table.scale")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["table.q", "table.scale"], ["table"]),
            helper.make_node("Unsqueeze", ["ids", "axes"], ["ids3"]),
            helper.make_node("Gather", ["table", "ids3"], ["y"]),
        ],
        "qtable",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "batch", "sequence", 8])],
        [table, scale, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dequantized_table_bounds_its_ids(backend):
    with infer.Engine.load(_quantized_table(), device="cpu", backend=backend) as engine:
        with pytest.raises(InputError, match=r"input 'ids': value 30 is outside \[-30, 29\]"):
            engine.run({"ids": np.array([[0, 30]], np.int64)})
        assert engine.run({"ids": np.array([[0, 29]], np.int64)})["y"].shape == (1, 1, 2, 8)


def test_a_model_without_bounds_keeps_the_plain_check():
    from infer.backends._feed_check import BoundedFeedCheck

    with infer.Engine.load(models.relu(), device="cpu", backend="onnxruntime") as engine:
        assert not isinstance(engine._session._feeds, BoundedFeedCheck)
