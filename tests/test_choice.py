"""The measured default: race the backends that take the model, keep the fastest whose outputs
agree with the table's first, cache the verdict; in the background, switch without losing or
mixing a request (choice.choose, _race, _switch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import infer
from infer import _race, _switch, choice, selection
from infer.backends import base
from infer.cache import Cache

from . import models

ROOT = Path(__file__).resolve().parents[1]
X = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _verdicts(cache_dir):
    return Cache(cache_dir).entries(_race.KIND)


# -- measured at load ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", [{"backend": "fastest"}, {"choose": "measure"}])
def test_a_race_at_load_times_every_timed_row_and_caches_the_verdict(tmp_path, how):
    with infer.Engine.load(models.cnn(), device="cpu", cache_dir=tmp_path, **how) as first:
        raced = {a.backend: a for a in first.selection if "ms median" in a.reason}
        assert set(raced) == {"onnxruntime[cpu]", "openvino"}  # the reference is not raced
        assert "reference" not in {a.backend for a in first.selection}
        chosen = next(a for a in first.selection if a.verdict == "selected")
        loser = next(a for a in raced.values() if a is not chosen)
        assert chosen.reason.startswith("fastest that agrees with onnxruntime[cpu] (a race at ")
        assert "input 1x3x32x32" in chosen.reason and "difference" in chosen.reason
        assert loser.verdict == "skipped" and "slower than" in loser.reason
        assert not first.choosing
        want = first.run({"input": X})
    (entry,) = _verdicts(tmp_path)
    saved = json.loads(entry.file("choice.json").read_text())
    assert saved["winner"] == chosen.backend
    assert {e["label"] for e in saved["entries"]} == set(raced)
    assert entry.meta["median_ms"].keys() == set(raced)  # what `infer cache list` shows
    with infer.Engine.load(models.cnn(), device="cpu", cache_dir=tmp_path, **how) as second:
        again = {a.backend: a for a in second.selection}
        assert again[chosen.backend].verdict == "selected"
        assert "(a cached race at input 1x3x32x32)" in again[chosen.backend].reason
        assert again[loser.backend].seconds is None  # not compiled: the verdict said so
        _close(second.run({"input": X})["logits"], want["logits"])
    assert len(_verdicts(tmp_path)) == 1


def test_the_verdict_is_raced_again_when_a_runtime_or_the_model_changes(tmp_path, monkeypatch):
    def load(proto):
        with infer.Engine.load(proto, device="cpu", choose="measure", cache_dir=tmp_path) as e:
            return next(a for a in e.selection if a.verdict == "selected").reason

    assert "(a race at" in load(models.cnn())
    assert "(a cached race at" in load(models.cnn())
    assert "(a race at" in load(models.cnn(seed=1))  # other weights: another model
    ov = base.get("openvino")
    monkeypatch.setattr(type(ov), "fingerprint", lambda self: "openvino, upgraded")
    assert "(a race at" in load(models.cnn())  # an upgraded runtime may be faster now
    assert len(_verdicts(tmp_path)) == 3


def test_a_verdict_whose_winner_no_longer_compiles_is_raced_again(tmp_path):
    from infer.device import Device
    from infer.model import Model
    from infer.options import Options

    pending = choice.Pending(
        Model.load(models.cnn()), Device.parse("cpu"), Options(cache_dir=tmp_path), None
    )
    gone = _race.Entry("coreml", "cpu", median_ms=0.1, runs=1, difference=0.0, agrees=True)
    stale = _race.Verdict("coreml", "onnxruntime[cpu]", (gone,), {"input": (1, 3, 32, 32)}, 0.1)
    _race.write(pending.cache, pending.key, stale)  # a winner this machine cannot compile
    with infer.Engine.load(models.cnn(), device="cpu", choose="measure", cache_dir=tmp_path) as e:
        chosen = next(a for a in e.selection if a.verdict == "selected")
        assert "(a race at" in chosen.reason and chosen.backend != "coreml"
    (entry,) = _verdicts(tmp_path)
    assert json.loads(entry.file("choice.json").read_text())["winner"] == chosen.backend


def _cheap_wrong_model() -> onnx.ModelProto:
    """The CNN's signature, answered by a mean over the image and one small product: much
    faster, and a different answer."""
    w = np.random.default_rng(5).standard_normal((3, 10)).astype(np.float32)
    return models._model(
        [
            helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["logits"]),
        ],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w")],
    )


def test_a_faster_backend_that_disagrees_is_passed_over_with_the_numbers():
    slow = infer.Engine.load(models.cnn(channels=64, depth=4), backend="onnxruntime")
    fast_wrong = infer.Engine.load(_cheap_wrong_model(), backend="onnxruntime")
    try:
        verdict = _race.run(
            [
                _race.Candidate("reference-row", "cpu:0", slow._session),
                _race.Candidate("fast-but-wrong", "cpu:0", fast_wrong._session),
            ],
            {"input": X},
            "fp32",
        )
    finally:
        slow.close()
        fast_wrong.close()
    ref, wrong = verdict.entries
    assert wrong.median_ms < ref.median_ms  # it is faster...
    assert not wrong.agrees and wrong.difference > _race.TOLERANCE["fp32"]
    assert "disagrees with reference-row on output 'logits'" in wrong.note
    assert verdict.winner == "reference-row"  # ...and does not win
    assert ref.agrees and ref.difference == 0.0


def test_agreement_is_relative_to_each_outputs_scale():
    y = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32) * 1000
    assert _race.agreement({"y": y}, {"y": y + 0.01})[0] < _race.TOLERANCE["fp32"]
    assert _race.agreement({"y": y}, {"y": y + 50})[0] > _race.TOLERANCE["fp32"]
    # A map of near-zero probabilities (a detector on a page without text): rounding of the
    # size of the numbers is no disagreement; a real difference still is.
    tiny = np.random.default_rng(2).random((1, 1, 32, 32)).astype(np.float32) * 8e-6
    assert _race.agreement({"p": tiny}, {"p": tiny + 1e-7})[0] < _race.TOLERANCE["fp32"]
    assert _race.agreement({"p": tiny}, {"p": tiny + 1e-3})[0] > _race.TOLERANCE["fp32"]
    ids = np.arange(6)
    assert _race.agreement({"i": ids}, {"i": ids + 1})[0] == float("inf")  # integers: exact
    nan = y.copy()
    nan[0, 0] = np.nan
    assert _race.agreement({"y": y}, {"y": nan})[0] == float("inf")
    assert _race.agreement({"y": y}, {"y": y[:2]})[0] == float("inf")


def test_example_feeds_and_representative_shapes_size_the_race(tmp_path):
    dynamic = models.cnn(size="S")  # a classifier with open height and width
    with infer.Engine.load(dynamic, device="cpu", choose="measure", cache_dir=tmp_path) as e:
        chosen = next(a for a in e.selection if a.verdict == "selected")
        assert "input 1x3x224x224" in chosen.reason  # a classifier's usual size, not 64 or 1
    example = {"input": np.random.default_rng(2).random((2, 3, 40, 56), dtype=np.float32)}
    with infer.Engine.load(
        dynamic, device="cpu", choose="measure", example=example, cache_dir=tmp_path
    ) as e:
        chosen = next(a for a in e.selection if a.verdict == "selected")
        assert "input 2x3x40x56" in chosen.reason


# -- the off switch -----------------------------------------------------------------------------


def test_first_keeps_the_table_order_and_times_nothing(tmp_path):
    with infer.Engine.load(models.cnn(), device="cpu", choose="first", cache_dir=tmp_path) as e:
        assert not e.choosing
        assert [a.verdict for a in e.selection] == ["selected"]
        assert e.selection[0].backend == "onnxruntime[cpu]"
        assert e.settle(0)  # nothing to wait for
        for _ in range(20):
            e.run({"input": X})
    assert _verdicts(tmp_path) == []


def test_choose_is_checked():
    with pytest.raises(infer.OptionError, match="choose 'fast' is not valid"):
        infer.Engine.load(models.relu(), choose="fast")


# -- in the background --------------------------------------------------------------------------


def test_the_default_answers_at_once_and_a_model_run_once_never_races(tmp_path):
    engine = infer.Engine.load(models.cnn(), device="cpu", cache_dir=tmp_path)
    assert engine.backend == "onnxruntime" and engine.choosing
    assert [a.verdict for a in engine.selection] == ["selected"]  # nothing else compiled yet
    engine.run({"input": X})
    watch = engine._watch
    assert watch is not None and watch._thread is None
    engine.close()
    assert _verdicts(tmp_path) == []


def test_a_busy_engine_races_on_its_real_feeds_and_settles(tmp_path, monkeypatch):
    monkeypatch.setattr(_switch, "RACE_AFTER_S", 0.0)
    feeds = {"x": np.random.default_rng(3).standard_normal((5, 3)).astype(np.float32)}
    with infer.Engine.load(models.relu(), device="cpu", cache_dir=tmp_path) as engine:
        for _ in range(_switch.MIN_RUNS + 1):
            np.testing.assert_array_equal(engine.run(feeds)["y"], np.maximum(feeds["x"], 0))
        assert engine.settle(timeout=120)
        assert not engine.choosing
        chosen = next(a for a in engine.selection if a.verdict == "selected")
        assert "(a race at x 5x3)" in chosen.reason  # the shapes the user ran
        assert {a.backend for a in engine.selection} >= {"onnxruntime[cpu]", "openvino"}
        assert engine.backend == chosen.backend.split("[")[0]
        np.testing.assert_array_equal(engine.run(feeds)["y"], np.maximum(feeds["x"], 0))
    assert len(_verdicts(tmp_path)) == 1
    with infer.Engine.load(models.relu(), device="cpu", cache_dir=tmp_path) as again:
        assert not again.choosing  # the cached verdict: nothing left to race
        assert again.backend == engine.backend


def test_a_switch_under_threads_loses_no_request_and_mixes_no_outputs():
    """Four threads run and submit distinct inputs while the engine switches from ONNX Runtime
    to an OpenVINO session: every request is answered, each with its own rows."""
    rng = np.random.default_rng(4)
    xs = [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(16)]
    with infer.Engine.load(models.cnn(), backend="onnxruntime") as plain:
        want = [plain.run({"input": x})["logits"] for x in xs]
    engine = infer.Engine.load(models.cnn(), device="cpu", choose="first")
    incumbent = engine._session
    bound = engine.bind()  # a binding on the session the switch retires keeps working
    other = infer.Engine.load(models.cnn(), backend="openvino")
    newcomer = other._session
    answered: list[tuple[int, np.ndarray]] = []
    errors: list[BaseException] = []
    go = threading.Barrier(5)

    def worker(k: int) -> None:
        go.wait()
        try:
            for round in range(12):
                i = (k * 5 + round) % len(xs)
                if round % 2:
                    out = engine.submit({"input": xs[i]}).result(timeout=60)
                else:
                    out = engine.run({"input": xs[i]})
                answered.append((i, out["logits"]))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    go.wait()
    attempts = [infer.Attempt("openvino", "cpu:0", "selected", "switched by the test")]
    engine._chosen(choice.Chosen(newcomer, attempts))
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(answered) == 4 * 12
    for i, got in answered:
        _close(got, want[i])
    assert engine.backend == "openvino" and engine.selection == tuple(attempts)
    assert not incumbent.closed  # the binding made on it is still open
    _close(bound.run({"input": xs[0]})["logits"], want[0])
    bound.close()
    assert incumbent.closed  # retired once its binding closed
    engine.close()
    assert newcomer.closed


def test_an_exit_during_a_background_race_is_clean(tmp_path):
    script = tmp_path / "race_at_exit.py"
    script.write_text(
        "import numpy as np\n"
        "import infer\n"
        "from tests import models\n"
        "e = infer.Engine.load(models.cnn(channels=64, size=96), device='cpu')\n"
        "x = np.zeros((1, 3, 96, 96), np.float32)\n"
        "e.run({'input': x}); e.run({'input': x})\n"
        "e._watch.start()  # the race compiles and times while the script ends\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "INFER_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_rows_that_build_for_minutes_are_left_to_the_background_race(tmp_path, monkeypatch):
    """On a GPU, TensorRT's first load builds a plan for minutes: the background choice starts
    on a quick row (ONNX Runtime's CUDA provider) and builds TensorRT in its race. The same
    rows, played here by the CPU's: ONNX Runtime marked as a row that builds."""
    from dataclasses import replace

    rows = list(selection.TABLE["cpu"])
    rows[0] = replace(rows[0], builds=True)
    monkeypatch.setitem(selection.TABLE, "cpu", tuple(rows))
    with infer.Engine.load(models.cnn(), device="cpu", cache_dir=tmp_path) as engine:
        assert engine.backend == "openvino" and engine.choosing  # nothing built yet
        deferred = next(a for a in engine.selection if a.backend == "onnxruntime[cpu]")
        assert deferred.verdict == "deferred" and "background race" in deferred.reason
        engine.run({"input": X})
        assert engine.settle(timeout=120)
        raced = {a.backend for a in engine.selection if "ms median" in a.reason}
        assert raced == {"onnxruntime[cpu]", "openvino"}
        chosen = next(a for a in engine.selection if a.verdict == "selected")
        # the most conformant row (the table's first) is the one outputs are compared with
        assert "agrees with onnxruntime[cpu]" in chosen.reason


def test_a_race_that_cannot_run_falls_back_to_table_order(tmp_path):
    wrong = {"input": np.zeros((1, 3, 8, 8), np.float32)}  # the CNN takes 32x32 images
    with infer.Engine.load(
        models.cnn(), device="cpu", choose="measure", example=wrong, cache_dir=tmp_path
    ) as e:
        chosen = next(a for a in e.selection if a.verdict == "selected")
        assert chosen.backend == "onnxruntime[cpu]"
        assert "first in table order: the race could not run" in chosen.reason
        assert "dimension 2 must be 32" in chosen.reason
        _close(e.run({"input": X})["logits"], e.run({"input": X})["logits"])
    assert _verdicts(tmp_path) == []  # nothing measured, nothing kept
