"""The int8 accuracy budget and its search (transforms/int8_search.py, budget.py, _qdq.py), on
generated models with real ONNX Runtime and OpenVINO.

The search measures on the backend; speed is measured in every search but required only where a
test says so (timing on a shared machine is no test of correctness: min_speedup=None
elsewhere). Speed-ups are benchmarks/precision_int8.py's business."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import Budget, Calibration, OptionError, PrecisionError
from infer.budget import score_outputs
from infer.transforms import _qdq

from . import models
from .precision_data import image_feeds

needs_nncf = pytest.mark.skipif(
    importlib.util.find_spec("nncf") is None,
    reason="NNCF is not installed (pip install nncf): the NNCF quantizer is optional",
)
NO_SPEED = {"min_speedup": None}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "cache"))


def outlier_cnn(seed: int = 0) -> onnx.ModelProto:
    """A CNN whose tensor "wide" carries one channel 1000x larger than the others, scaled back
    by the next Conv ("conv3"): the float model is ordinary, but one int8 range over "wide"
    rounds its other channels away. Keeping conv3 in float (it alone reads "wide") fixes it.

    input: float32[N, 3, 16, 16] -> logits: float32[N, 10]."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.4
    w2[0] *= 1000.0
    w3 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.4
    w3[:, 0] /= 1000.0
    fc = rng.standard_normal((10, 8)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(w3, "w3"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(np.array([-1, 8], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["wide"], name="conv2"),
        helper.make_node("Conv", ["wide", "w3"], ["c3"], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["pool"], name="pool"),
        helper.make_node("Reshape", ["pool", "flat"], ["features"], name="reshape"),
        helper.make_node("Gemm", ["features", "fc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(count: int, seed: int) -> list[np.ndarray]:
    return image_feeds(count, 16, seed)


def _load(model, calibration, **kw) -> infer.Engine:
    kw.setdefault("device", "cpu")
    kw.setdefault("backend", "onnxruntime")
    return infer.Engine.load(model, precision="int8", calibration=calibration, **kw)


def _agreement(engine: infer.Engine, fp32: infer.Engine, feeds) -> float:
    return float(np.mean([(engine(x).argmax(1) == fp32(x).argmax(1)).mean() for x in feeds]))


def test_the_outlier_model_needs_the_search():
    """The premise: quantized whole, the outlier model loses its top-1; in float it does not."""
    model = outlier_cnn()
    plain = _load(model, Calibration(_feeds(40, 0), budget=None))
    fp32 = infer.Engine.load(model, device="cpu", backend="onnxruntime")
    assert _agreement(plain, fp32, _feeds(40, 1)) < 0.9


def test_a_budget_that_holds_returns_a_cached_mixed_graph_with_the_kept_nodes_named():
    model = outlier_cnn()
    validation = _feeds(40, 1)
    # 95%: the other layers' rounding flips a near-tie or two; "wide" flips nearly all.
    budget = Budget(validation=validation, max_drop=0.05, **NO_SPEED)
    calib = Calibration(_feeds(40, 0), budget=budget)
    stages: set[str] = set()
    engine = _load(model, calib, progress=lambda s, d, t: stages.add(s))
    report = engine.precision_report
    assert isinstance(report, infer.Int8Report) and report.met, report
    assert report.kept == (("conv3", "Conv"),), report
    assert report.validation == 40 and not report.held_out
    assert report.speedup is not None and report.speedup > 0  # measured, not required here
    assert "budget met" in engine.precision
    assert "1 node kept in float" in engine.precision
    assert {"int8 quantize", "int8 rank"} <= stages

    # The cached graph: conv3 reads float tensors, the other convolutions stay quantized.
    (entry,) = infer.cache.entries("onnx-int8-search")
    graph = onnx.load(str(entry.file("model.onnx"))).graph
    producer = {o: n for n in graph.node for o in n.output}
    conv3 = next(n for n in graph.node if n.name == "conv3")
    assert all(
        producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in conv3.input
    )
    conv1 = next(n for n in graph.node if n.name == "conv1")
    assert any(
        producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
        for i in conv1.input
    )

    fp32 = infer.Engine.load(model, device="cpu", backend="onnxruntime")
    assert _agreement(engine, fp32, _feeds(40, 2)) >= 0.95  # on feeds it never saw

    # The next load reads the result: no search, the same graph and report.
    stages.clear()
    again = _load(model, calib, progress=lambda s, d, t: stages.add(s))
    assert not any(s.startswith("int8") for s in stages)
    assert again.precision_report == report
    assert len(infer.cache.entries("onnx-int8-search")) == 1


def test_large_graphs_are_ranked_by_blocks_first(monkeypatch):
    from infer.transforms import int8_search

    monkeypatch.setattr(int8_search, "BLOCKS", 3)  # the outlier CNN's 8 groups: 3 blocks
    budget = Budget(validation=_feeds(40, 1), max_drop=0.05, **NO_SPEED)
    engine = _load(outlier_cnn(), Calibration(_feeds(40, 0), budget=budget))
    report = engine.precision_report
    assert report.met and ("conv3", "Conv") in report.kept, report
    assert any(t.startswith("ranked 3 of 3 blocks and") for t in report.tried), report.tried


def test_the_validation_data_and_budget_are_part_of_the_key():
    model = outlier_cnn()
    data = _feeds(20, 0)
    _load(model, Calibration(data, budget=Budget(validation=_feeds(10, 1), **NO_SPEED)))
    _load(model, Calibration(data, budget=Budget(validation=_feeds(10, 3), **NO_SPEED)))
    _load(
        model,
        Calibration(data, budget=Budget(validation=_feeds(10, 3), max_drop=0.5, **NO_SPEED)),
    )
    assert len(infer.cache.entries("onnx-int8-search")) == 3


def _exact(outputs, reference) -> float:
    """A metric only fp32 itself meets: minus the L2 distance of the logits from fp32's."""
    return -float(
        np.sqrt(sum(np.sum((o["logits"] - r["logits"]) ** 2) for o, r in zip(outputs, reference)))
    )


def test_an_impossible_budget_raises_with_the_figures():
    """An int8 graph (one node with weights at least stays int8: all in float would be the fp32
    model, slower) never matches fp32 exactly."""
    model = models.cnn(channels=8, size=16, depth=2)
    budget = Budget(metric=_exact, max_drop=1e-9, validation=_feeds(6, 1), **NO_SPEED)
    with pytest.raises(PrecisionError) as caught:
        _load(model, Calibration(_feeds(12, 0), budget=budget))
    text = str(caught.value)
    assert (
        "does not meet its budget" in text and "metric drop" in text and "budget <= 1e-09" in text
    )
    report = caught.value.report
    assert isinstance(report, infer.Int8Report) and not report.met
    assert report.figures[0].value > 1e-9
    assert "not met even with" in report.stopped or "time limit" in report.stopped
    # The same failure is cached: the second load raises at once, with the same figures.
    start = time.perf_counter()
    with pytest.raises(PrecisionError) as again:
        _load(model, Calibration(_feeds(12, 0), budget=budget))
    assert again.value.report == report
    assert time.perf_counter() - start < report.search_s


def test_accept_best_takes_the_best_graph_and_says_the_budget_is_missed():
    model = outlier_cnn()
    budget = Budget(max_drop=0.0, time_limit=0.0, accept_best=True, **NO_SPEED)
    engine = _load(model, Calibration(_feeds(40, 0), budget=budget))
    assert "budget NOT met" in engine.precision
    assert not engine.precision_report.met


def test_the_search_obeys_its_time_bound():
    model = models.cnn(channels=32, size=64, depth=4)  # 11 groups: more than 0.1 s to search
    limit = 0.1
    budget = Budget(
        metric=_exact,
        max_drop=1e-9,
        time_limit=limit,
        validation=image_feeds(30, 64, 1),
        **NO_SPEED,
    )
    with pytest.raises(PrecisionError) as caught:
        _load(model, Calibration(image_feeds(16, 64, 0), budget=budget))
    report = caught.value.report
    assert "time limit of 0.1 s reached" in report.stopped, report
    one = report.search_s / max(report.evaluations, 1)  # a generous bound on one evaluation
    assert report.bounded_s <= limit + 2 * one, report


def test_speed_is_part_of_the_budget_and_selection_falls_back(caplog):
    """min_speedup=1e6 cannot be met: every int8-capable CPU backend measures, fails, and the
    load says so with each backend's figures."""
    model = outlier_cnn()
    budget = Budget(min_speedup=1e6, validation=_feeds(4, 1))
    with pytest.raises(PrecisionError) as caught:
        infer.Engine.load(
            model,
            device="cpu",
            backend=["onnxruntime", "openvino"],
            precision="int8",
            calibration=Calibration(_feeds(8, 0), budget=budget),
        )
    text = str(caught.value)
    assert "no backend runs int8" in text
    assert "onnxruntime[cpu] on cpu:0: failed" in text and "openvino on cpu" in text
    assert "x the speed of fp32" in text and "budget >= 1e+06x" in text


def test_the_default_budget_guards_plain_int8():
    """Plain calibration=feeds: the default Budget() measures on held-out feeds (1 in 5). On
    this tiny model int8 may also be slower than fp32 (then it raises): either way it says so."""
    try:
        report = _load(outlier_cnn(), _feeds(40, 0)).precision_report
    except PrecisionError as e:
        report = e.report
        assert "does not meet its budget" in str(e)
    assert report is not None and report.held_out and report.validation == 8
    assert report.budget.startswith("argmax agreement >= 99.0% on score outputs")
    assert ">= 1x the speed of fp32" in report.budget
    assert report.speedup is not None


def test_budget_none_quantizes_without_measuring():
    engine = _load(outlier_cnn(), Calibration(_feeds(8, 0), budget=None))
    assert engine.precision_report is None
    assert engine.precision == "int8 (QDQ, minmax, 8 samples)"


def test_a_metric_over_outputs_and_labels():
    model = outlier_cnn()
    fp32 = infer.Engine.load(model, device="cpu", backend="onnxruntime")
    validation = _feeds(30, 1)
    labels = [int(fp32(x).argmax()) for x in validation]
    seen = []

    def top1(outputs, labels):
        seen.append(len(outputs))
        return float(np.mean([o["logits"].argmax() == y for o, y in zip(outputs, labels)]))

    budget = Budget(metric=top1, labels=labels, validation=validation, max_drop=0.02, **NO_SPEED)
    engine = _load(model, Calibration(_feeds(30, 0), budget=budget))
    report = engine.precision_report
    assert report.met and report.figures[0].kind == "metric" and report.figures[0].value <= 0.02
    assert 30 in seen  # called on the validation feeds


@needs_nncf
def test_the_search_runs_on_openvino_with_nncf():
    model = outlier_cnn()
    budget = Budget(validation=_feeds(40, 1), **NO_SPEED)
    engine = _load(model, Calibration(_feeds(40, 0), budget=budget), backend="openvino")
    report = engine.precision_report
    assert report.backend == "openvino" and report.met, report
    assert "nncf" in report.quantized
    fp32 = infer.Engine.load(model, device="cpu", backend="openvino")
    assert _agreement(engine, fp32, _feeds(40, 2)) >= 0.95


def test_budget_settings_are_checked():
    with pytest.raises(OptionError, match="labels belong to validation feeds"):
        Budget(metric=lambda o, y: 0.0, labels=[1])
    with pytest.raises(OptionError, match="labels are read by a metric"):
        Budget(labels=[1], validation=[np.zeros(1)])
    with pytest.raises(OptionError, match="max_drop must be a number >= 0"):
        Budget(max_drop=-0.1)
    with pytest.raises(OptionError, match="holdout must be in"):
        Budget(holdout=1.0)
    with pytest.raises(OptionError, match=r"must be an infer\.Budget or None"):
        Calibration([], budget=0.01)
    with pytest.raises(OptionError, match=r"\['nope'\] are not outputs"):
        _load(outlier_cnn(), Calibration(_feeds(10, 0), budget=Budget(outputs=["nope"])))
    with pytest.raises(OptionError, match="there are 1: give more calibration feeds"):
        _load(outlier_cnn(), _feeds(1, 0))


def test_score_outputs_are_classifier_and_per_step_scores():
    def graph(shape, op="Identity", axis=-1):
        node = helper.make_node(op, ["x"], ["y"], **({"axis": axis} if op == "Softmax" else {}))
        g = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        )
        return helper.make_model(g)

    assert score_outputs(graph(["N", 10])) == {"y"}  # classifier logits
    assert score_outputs(graph(["N", "T", 6625], "Softmax")) == {"y"}  # CTC per-step scores
    assert score_outputs(graph(["N", "T", 6625])) == set()  # no softmax: not known to be scores
    assert score_outputs(graph(["N", 19, "H", "W"], "Softmax", 1)) == set()  # not the last axis
    assert score_outputs(graph([1, 1, "H", "W"])) == set()  # a detector's map
    assert score_outputs(graph(["N", "C"])) == set()  # the class count is not fixed


def test_reverting_every_group_gives_back_the_float_graph(tmp_path):
    from infer.model import Model
    from infer.options import Options
    from infer.transforms import precision

    model = Model.load(models.cnn(channels=8, size=16, depth=2))
    options = Options(precision="int8", calibration=_feeds(4, 0))
    precision.quantize(model, options, Calibration(_feeds(4, 0)), "onnxruntime", tmp_path)
    quantized = onnx.load(str(tmp_path / precision.MODEL_FILE))
    float_graph = onnx.load(str(tmp_path / precision.FLOAT_FILE))
    groups = _qdq.groups(quantized.graph)
    names = sorted({n for g in groups for n in g.nodes})
    assert {"Conv_0", "Conv_3", "Gemm_8"} <= set(names)
    back = _qdq.revert(quantized, float_graph, names)
    assert not [n.op_type for n in back.graph.node if n.op_type in _qdq.QDQ_OPS]
    onnx.checker.check_model(back)
    import onnxruntime as ort

    x = _feeds(1, 5)[0]
    got = ort.InferenceSession(back.SerializeToString()).run(None, {"input": x})[0]
    want = ort.InferenceSession(models.cnn(channels=8, size=16, depth=2).SerializeToString()).run(
        None, {"input": x}
    )[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
