"""Device strings and the hardware probe."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import infer
from infer import Device, OptionError
from infer.device import probe_hardware


@pytest.mark.parametrize(
    ("text", "kind", "index"),
    [
        ("auto", "auto", None),
        ("cpu", "cpu", None),
        ("CPU:0", "cpu", 0),
        ("cuda", "cuda", None),
        ("cuda:1", "cuda", 1),
        (" gpu : 2 ", "gpu", 2),
        ("npu", "npu", None),
        ("ane", "ane", None),
    ],
)
def test_parse(text, kind, index):
    d = Device.parse(text)
    assert (d.kind, d.index) == (kind, index)
    assert Device.parse(d) is d


@pytest.mark.parametrize(
    "text", ["tpu", "cuda:-1", "cuda:x", "", "ane:0", "auto:1", "cpu:1", "cuda:0:1"]
)
def test_parse_rejects_naming_the_string(text):
    with pytest.raises(OptionError, match=re.escape(f"device {text!r}")):
        Device.parse(text)


def test_parse_error_lists_valid_forms():
    with pytest.raises(
        OptionError, match='"auto", "cpu", "cuda", "cuda:N", "gpu", "gpu:N", "npu", "ane"'
    ):
        Device.parse("tpu")


def test_parse_rejects_non_strings():
    with pytest.raises(OptionError, match="must be a string"):
        Device.parse(0)


def test_matches():
    cuda0 = Device("cuda", 0)
    assert Device.parse("gpu").matches(cuda0) and Device.parse("gpu:0").matches(cuda0)
    assert not Device.parse("gpu:1").matches(cuda0)
    assert Device.parse("auto").matches(cuda0) and not Device.parse("cpu").matches(cuda0)
    assert Device.parse("cpu").matches(Device("cpu", 0))


def test_equality_ignores_description():
    assert Device("cuda", 0, "A") == Device("cuda", 0, "B")
    assert str(Device("cuda", 1)) == "cuda:1" and str(Device("ane")) == "ane"


def test_cpu_probe():
    report = probe_hardware()
    cpu = report.devices[0]
    assert cpu.kind == "cpu" and cpu.index == 0 and cpu.name
    assert {"fp32", "int8"} <= cpu.capabilities.precisions
    assert cpu.capabilities.cores and cpu.capabilities.memory_bytes
    flags = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2" in flags:
        assert "avx2" in cpu.capabilities.isa
    if " avx512_bf16" in flags:
        assert "bf16" in cpu.capabilities.precisions


def test_no_gpu_is_a_reason_not_an_error():
    report = probe_hardware()
    if any(d.kind == "cuda" for d in report.devices):
        pytest.skip("this machine has an NVIDIA GPU")
    assert report.notes and report.notes[0].startswith("no NVIDIA GPU:")


def test_devices_and_backends_lists():
    devices = infer.devices()
    assert devices[0].kind == "cpu"
    names = [b.name for b in infer.backends()]
    assert "onnxruntime" in names and names[-1] == "reference"
    for info in infer.backends():
        assert info.available or info.reason  # never unavailable without saying why
