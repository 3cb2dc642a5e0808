"""infer.bench: what it measures and reports, on real backends (timings kept short)."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest

import infer
from infer import demo
from infer.bench import BenchReport, Stats, benchmark, targets
from infer.cli._plot import plot
from infer.feeds import random_feeds
from infer.model import Model

from . import models

PNG = b"\x89PNG\r\n\x1a\n"


EVENTS: list[tuple[str, str, float, float]] = []


@pytest.fixture(scope="module")
def report() -> BenchReport:
    events = EVENTS
    r = benchmark(
        demo.model(),
        device="cpu",
        backends=["onnxruntime", "reference"],
        batches=(1, 2),
        duration=0.2,
        warmup=0.05,
        progress=lambda *e: events.append(e),
        name="demo",
    )
    return r


def test_every_backend_and_batch_is_measured(report):
    assert [(m.backend, m.batch) for m in report.results] == [
        ("onnxruntime[cpu]", 1),
        ("onnxruntime[cpu]", 2),
        ("reference", 1),
        ("reference", 2),
    ]
    for m in report.results:
        assert m.ok, m.error
        assert m.runs >= 3 and m.warmup_runs >= 1 and len(m.samples_ms) == m.runs
        lat = m.latency
        assert 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.max
        assert lat.mean == pytest.approx(sum(m.samples_ms) / m.runs)
        assert m.throughput == pytest.approx(m.runs * m.batch / m.seconds)
        assert m.load_cold_s > 0 and m.load_warm_s > 0
        assert m.device == "cpu:0" and m.precision == "fp32"
    assert report.auto == "onnxruntime[cpu]"
    assert report.best(1).backend == "onnxruntime[cpu]"  # ~0.1 ms against ~100 ms


def test_progress_reports_each_phase(report):
    events = EVENTS
    phases = {(label, phase.split(" b=")[0]) for label, phase, _, _ in events}
    for label in ("onnxruntime[cpu]", "reference"):
        for phase in ("load (cold)", "load (warm)", "warm-up", "measure", "done"):
            assert (label, phase) in phases
    for _, _, done, total in events:
        assert 0 <= done <= total + 1e-9
        assert total == pytest.approx(2 * (0.05 + 0.2))


def test_json_has_the_fields(report):
    data = json.loads(json.dumps(report.to_dict()))
    assert data["batches"] == [1, 2] and data["auto"] == "onnxruntime[cpu]"
    row = data["results"][0]
    assert set(row["latency_ms"]) == {"p50", "p90", "p99", "mean", "std", "min", "max"}
    assert set(row["load_s"]) == {"cold", "warm"} and row["throughput"] > 0
    assert "samples_ms" not in row
    assert len(report.to_dict(samples=True)["results"][0]["samples_ms"]) == row["runs"]
    env = data["environment"]
    assert env["backends"]["onnxruntime"] and env["cores"] >= 1


def test_plot_writes_a_png(report, tmp_path):
    path = plot(report, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == PNG
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600


def test_concurrency_keeps_requests_in_flight():
    r = benchmark(
        models.relu(),
        device="cpu",
        backends="onnxruntime",
        concurrency=3,
        duration=0.2,
        warmup=0.05,
    )
    (m,) = r.results
    assert m.ok and m.concurrency == 3 and m.runs >= 3
    assert m.throughput == pytest.approx(m.runs / m.seconds)


def test_fixed_batch_models_say_why_a_batch_cannot_run():
    r = benchmark(
        models.cnn(batch=1),
        device="cpu",
        backends="onnxruntime",
        batches=(1, 4),
        duration=0.1,
        warmup=0,
    )
    ok, bad = r.results
    assert ok.ok and ok.batch == 1
    assert not bad.ok and "no input has a dynamic first dimension" in bad.error


def test_targets_all_and_named():
    model = Model.load(models.relu())
    found, skipped = targets(model, "cpu")
    assert [t.backend for t in found][:1] == ["onnxruntime[cpu]"]
    assert "reference" in [t.backend for t in found]
    found, _ = targets(model, "cpu", backends=["reference"])
    assert [(t.backend, t.device) for t in found] == [("reference", "cpu:0")]
    # a precision a backend cannot run leaves it out, with its reason
    found, skipped = targets(model, "cpu", precision="bf16")
    assert "onnxruntime[cpu]" not in [t.backend for t in found]
    reasons = {s.backend: s for s in skipped}
    assert reasons["onnxruntime[cpu]"].verdict == "unsupported"
    assert "not bf16" in reasons["onnxruntime[cpu]"].reason
    with pytest.raises(infer.OptionError, match="'nope' is not known"):
        targets(model, "cpu", backends=["nope"])


def test_nothing_to_run_is_an_error():
    with pytest.raises(infer.BackendUnavailable, match="no backend here can run"):
        # OpenVINO runs bf16 on CPUs that have it: leave it out so that nothing here can.
        benchmark(
            models.relu(),
            device="cpu",
            precision="bf16",
            backends=["onnxruntime", "reference"],
            duration=0.1,
        )


def test_bad_arguments():
    with pytest.raises(infer.OptionError, match="duration"):
        benchmark(models.relu(), duration=0)
    with pytest.raises(infer.OptionError, match="batch sizes"):
        benchmark(models.relu(), batches=[0])
    with pytest.raises(infer.OptionError, match="concurrency"):
        benchmark(models.relu(), concurrency=0)


def test_stats():
    s = Stats.of([0.001] * 98 + [0.002, 0.010])
    assert s.p50 == pytest.approx(1.0) and s.max == pytest.approx(10.0)
    assert s.p90 == pytest.approx(1.0) and 1.0 < s.p99 < 10.0


def test_run_time_failures_are_reported_not_hung(real_model):
    # Silero VAD rejects random 1-sample audio inside its STFT: a real runtime failure.
    r = benchmark(
        real_model("silero_vad"), device="cpu", backends="onnxruntime", duration=0.1, warmup=0
    )
    (m,) = r.results
    assert not m.ok and "Pad" in m.error and m.latency is None


@pytest.mark.timeout(60)
def test_concurrent_loop_surfaces_errors(real_model):
    from infer.bench import _loop_concurrent

    with infer.Engine.load(real_model("silero_vad"), backend="onnxruntime") as engine:
        feeds = random_feeds(engine.inputs, seed=0)
        with pytest.raises(infer.RuntimeFailure, match="Pad"):
            _loop_concurrent(engine, feeds, 0.2, 3, 2, lambda s: None)
    closed = infer.Engine.load(models.relu())
    closed.close()
    with pytest.raises(infer.EngineClosed):
        _loop_concurrent(closed, {"x": np.ones((1, 3), np.float32)}, 0.2, 3, 2, lambda s: None)
