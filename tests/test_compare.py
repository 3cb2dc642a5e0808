"""infer.compare: agreement across real backends, and real disagreements caught."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import infer
from infer import demo
from infer.compare import diff, parse_runner
from infer.feeds import random_feeds

from . import models


def perturbed(proto: onnx.ModelProto, name: str, delta: float) -> onnx.ModelProto:
    """A copy of `proto` with `delta` added to one element of the initializer `name`."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for i, t in enumerate(out.graph.initializer):
        if t.name == name:
            w = numpy_helper.to_array(t).copy()
            w.reshape(-1)[0] += delta
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, name))
            return out
    raise KeyError(name)


def test_backends_agree_on_the_demo_model():
    result = infer.compare(demo.model(), ["onnxruntime", "reference"], runs=2, device="cpu")
    assert result.passed and bool(result)
    assert result.baseline == "onnxruntime"
    assert [r.backend for r in result.runners] == ["onnxruntime", "reference"]
    (d,) = result.diffs
    assert (d.output, d.runner, d.shape, d.dtype) == ("logits", "reference", (1, 10), "float32")
    assert d.max_abs < 1e-4 and d.cosine > 0.999999 and d.top1 == 1.0
    assert d.elements == 20 and d.mismatched == 0  # two runs of [1, 10]
    assert result.runs == 2 and result.feeds == (("image", (1, 3, 64, 64), "float32"),)


def test_real_model_onnxruntime_vs_reference(real_model):
    result = infer.compare(
        real_model("ocr_cls"), ["onnxruntime", "reference"], shapes={"x": (2, 3, 48, 192)}
    )
    assert result.passed, result.failures()
    assert result.feeds[0][1] == (2, 3, 48, 192)
    assert all(d.top1 == 1.0 for d in result.diffs)


def test_a_perturbed_weight_fails_against_the_original():
    proto = models.cnn()
    with infer.Engine.load(perturbed(proto, "conv0.w", 0.5), backend="onnxruntime") as bad:
        result = infer.compare(proto, ["onnxruntime", bad], shapes={"N": 2})
        assert not bad.closed  # engines passed in stay the caller's
    assert not result.passed
    (d,) = result.failures()
    assert d.runner == "onnxruntime@fp32" and d.max_abs > 1e-3 and d.mismatched > 0
    assert d.cosine < 1.0
    # the same perturbation below the tolerance passes: the check is the tolerance, not "any change"
    with infer.Engine.load(perturbed(proto, "conv0.w", 1e-7), backend="onnxruntime") as tiny:
        assert infer.compare(proto, ["onnxruntime", tiny]).passed


def test_expected_outputs_are_the_baseline():
    proto = models.cnn()
    feeds = random_feeds(
        [infer.TensorSpec("input", ("N", 3, 32, 32), np.dtype(np.float32))], seed=3
    )
    with infer.Engine.load(proto) as engine:
        want = engine.run(feeds)
    good = infer.compare(proto, ["onnxruntime"], feeds, expected=want)
    assert good.passed and good.baseline == "expected"
    bad = infer.compare(perturbed(proto, "fc.w", 1.0), ["onnxruntime"], feeds, expected=want)
    assert not bad.passed
    assert bad.failures()[0].runner == "onnxruntime"


def test_engines_passed_in_are_not_closed():
    with (
        infer.Engine.load(models.relu()) as a,
        infer.Engine.load(models.relu(), backend="reference") as b,
    ):
        assert infer.compare(models.relu(), [a, b]).passed
        assert not a.closed and not b.closed


def test_partial_feeds_are_completed_with_seeded_random_inputs():
    a = np.ones((3, 4), np.float32)
    result = infer.compare(models.multi_io(), ["onnxruntime", "reference"], {"a": a}, seed=5)
    assert result.passed
    shapes = {n: s for n, s, _ in result.feeds}
    assert shapes == {"a": (3, 4), "b": (3, 4), "mask": (3, 4)}  # "N" follows the given input
    ints = [d for d in result.diffs if d.output == "count"]
    assert ints[0].dtype == "int64" and ints[0].top1 is None  # exact comparison for integers


def test_extra_criteria_cosine_and_top1():
    proto = models.cnn()
    with infer.Engine.load(perturbed(proto, "fc.w", 0.05), backend="onnxruntime") as near:
        loose = infer.compare(proto, ["onnxruntime", near], rtol=1.0, atol=1.0, shapes={"N": 8})
        assert loose.passed
        strict = infer.compare(
            proto, ["onnxruntime", near], rtol=1.0, atol=1.0, min_cosine=1.0, shapes={"N": 8}
        )
        assert not strict.passed and "cosine below 1.0" in strict.failures()[0].note


@pytest.mark.skipif(
    importlib.util.find_spec("infer.transforms.precision") is None,
    reason="fp16 needs infer.transforms.precision (issue 6: precision as graph transforms)",
)
def test_a_wrong_precision_fails_tight_tolerances():
    # The same model converted to fp16 by the shared transform, run by the reference evaluator.
    result = infer.compare(
        models.cnn(), ["onnxruntime", "reference@fp16"], rtol=1e-6, atol=1e-7, device="cpu"
    )
    assert not result.passed
    assert result.runners[1].precision.startswith("fp16")


def test_diff_numbers():
    want = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)
    got = want + np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    d = diff("y", [got], [want], rtol=0.0, atol=0.1)
    assert d.max_abs == pytest.approx(0.5) and d.max_rel == pytest.approx(0.5 / 3)
    assert d.mismatched == 1 and not d.passed and d.top1 == 1.0
    swapped = want[:, ::-1].copy()
    assert diff("y", [swapped], [want]).top1 == 0.0
    assert diff("y", [want], [want]).cosine == pytest.approx(1.0)
    # NaN matches NaN; NaN against a number is a failure, with a note
    nan = np.array([np.nan, 1.0])
    assert diff("y", [nan], [nan.copy()]).passed
    d = diff("y", [np.array([np.nan, 1.0])], [np.array([0.0, 1.0])])
    assert not d.passed and "NaN" in d.note
    # shapes and integers
    d = diff("y", [np.zeros((2, 3))], [np.zeros((3, 2))])
    assert not d.passed and "shape [2, 3] != [3, 2]" in d.note
    assert not diff("n", [np.array([1, 2])], [np.array([1, 3])], rtol=1.0, atol=5).passed
    assert diff("n", [np.array([True])], [np.array([True])]).passed


def test_parse_runner_and_option_errors():
    assert parse_runner("openvino@fp16") == ("openvino", "fp16")
    assert parse_runner("onnxruntime", "int8") == ("onnxruntime", "int8")
    with pytest.raises(infer.OptionError, match="precision 'fp8' is not valid"):
        parse_runner("onnxruntime@fp8")
    with pytest.raises(infer.OptionError, match="at least two backends"):
        infer.compare(models.relu(), ["onnxruntime"])
    with pytest.raises(infer.OptionError, match="is not known"):
        infer.compare(models.relu(), ["onnxruntime", "nope"])


def test_default_backends_are_every_one_that_can(tmp_path):
    result = infer.compare(models.relu(), device="cpu")
    labels = [r.label for r in result.runners]
    assert labels[0] == "onnxruntime[cpu]" and "reference" in labels
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is True and data["outputs"][0]["output"] == "y"


def _int64_doubling() -> onnx.ModelProto:
    """count = b * 2 in int64: OpenVINO computes it in int32 (`Backend.miscomputes` says so)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["b", "two"], ["count"])],
        "double64",
        [helper.make_tensor_value_info("b", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("count", TensorProto.INT64, ["N"])],
        [numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason="openvino is not installed")
def test_the_default_list_compares_a_backend_known_to_miscompute_and_says_so():
    feeds = {"b": np.array([3, 2**31 + 5], np.int64)}  # past int32: OpenVINO wraps
    result = infer.compare(_int64_doubling(), feeds=feeds, device="cpu")
    labels = [r.label for r in result.runners]
    assert "openvino" in labels  # compared, not left out
    why = result.known_wrong["openvino"]
    assert "int64 in int32" in why
    (off,) = [d for d in result.diffs if d.runner == "openvino"]
    assert not off.passed  # the difference is shown ...
    assert result.passed  # ... and held against no one: it was known
    assert result.to_dict()["runners"][labels.index("openvino")]["miscomputes"] == why


@pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason="openvino is not installed")
def test_compare_cli_names_the_known_miscompute(tmp_path):
    from .test_cli import cli

    path = tmp_path / "double64.onnx"
    onnx.save(_int64_doubling(), path)
    np.save(tmp_path / "b.npy", np.array([3, 2**31 + 5], np.int64))
    result = cli("compare", path, "--device", "cpu", "-i", f"b={tmp_path / 'b.npy'}")
    text = " ".join(result.stdout.split())
    assert "openvino is known to answer this model wrongly" in text, result.stdout
    assert "int64 in int32" in text and "off (known)" in text
    assert result.exit_code == 0, result.stdout
