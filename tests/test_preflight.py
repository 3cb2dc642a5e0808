"""selection.preflight: the one answer to "which backends can take this model here, and why not
the others", and the tools (inspect, bench, compare, `infer devices`) that ask it."""

from __future__ import annotations

import json

import infer
from infer import bench, demo, selection
from infer.device import Device
from infer.inspect import support
from infer.model import Model
from infer.options import Options

from . import models
from .test_cli import _restore_logging, cli  # noqa: F401 - the fixture applies here too


def test_one_verdict_per_row_in_table_order():
    model = Model.load(models.relu())
    verdicts = selection.preflight(model, "cpu")
    rows = selection.candidates(Device.parse("cpu"))
    assert [a.row for a in verdicts] == rows
    assert all(isinstance(a, infer.Attempt) for a in verdicts)
    by_label = {a.backend: a for a in verdicts}
    assert by_label["onnxruntime[cpu]"].eligible and by_label["onnxruntime[cpu]"].device == "cpu:0"
    # Core ML reads packages only: an ONNX model passes it over
    assert by_label["coreml"].verdict in ("skipped", "unavailable")
    # a name restricts the rows as Engine.load(backend=...) does
    assert [a.backend for a in selection.preflight(model, "cpu", backend="reference")] == [
        "reference"
    ]
    # None: every row on its own kind of device (what inspect lists)
    everywhere = selection.preflight(model)
    assert {a.row.kind for a in everywhere} >= {"cpu", "cuda", "gpu", "npu", "ane"}
    assert all(a.row.kind != "auto" for a in everywhere)


def test_the_tools_give_preflights_verdicts():
    # bf16: ONNX Runtime's CPU provider refuses it, a real refusal every tool must report alike
    model = Model.load(models.relu())
    options = Options(precision="bf16")
    refused = next(
        a for a in selection.preflight(model, "cpu", options) if a.backend == "onnxruntime[cpu]"
    )
    assert refused.verdict == "unsupported" and "not bf16" in refused.reason

    listed = {a.backend: a for a in support(model, options)}
    assert listed["onnxruntime[cpu]"] == refused
    found, skipped = bench.targets(model, "cpu", precision="bf16")
    assert refused in skipped and all(isinstance(a, infer.Attempt) for a in found + skipped)
    assert "onnxruntime[cpu]" not in [a.backend for a in found]
    compared = infer.compare(model, device="cpu")
    eligible = [a.backend for a in selection.preflight(model, "cpu") if a.eligible]
    assert [r.label for r in compared.runners] == eligible

    # `infer devices` asks it about its probe model, device by device
    probe = Model.load(demo.model())
    data = json.loads(cli("devices", "--json").stdout)
    cpu = next(d for d in data["devices"] if d["kind"] == "cpu")
    asked = {
        a.backend: a
        for a in selection.preflight(probe, Device("cpu", cpu["index"]))
        if a.row.kind == "cpu"
    }
    for verdict in cpu["backends"]:
        if verdict["backend"] in asked:
            a = asked[verdict["backend"]]
            assert verdict["ok"] == a.eligible
            assert verdict["reason"] == (None if a.eligible else a.reason)
