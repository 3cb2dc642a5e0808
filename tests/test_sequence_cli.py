"""The tools run a sequence model with no --shape: run, bench, build (and compare) size its
dimensions, expressions included, and feed it what it sees."""

from __future__ import annotations

import os
import subprocess
import sys

import onnx
import pytest

from . import models


def infer_cli(*args: object, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "INFER_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture()
def decoder(tmp_path):
    path = tmp_path / "decoder.onnx"
    onnx.save(models.tiny_decoder(positions=128), path)
    return path


def test_run_sizes_a_decoder_s_decode_step(decoder, tmp_path):
    r = infer_cli("run", decoder, "--device", "cpu", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "decode: 1 token after 127" in r.stderr
    assert "[1, 128]" in r.stdout  # the mask: past 127 + 1 new token


def test_run_takes_the_dims_an_expression_names(decoder, tmp_path):
    r = infer_cli(
        "run",
        decoder,
        "--shape",
        "past_sequence_length=0",
        "--shape",
        "sequence_length=5",
        tmp_path=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "[1, 5, 50]" in r.stdout  # logits of a 5-token prompt


def test_bench_and_build_run_a_decoder_with_no_shape(decoder, tmp_path):
    r = infer_cli("bench", decoder, "--duration", "0.2", "-b", "onnxruntime", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "attention_mask 1x128" in r.stdout.replace("\n", " ")
    r = infer_cli("build", decoder, "--device", "cpu", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "could not run" not in r.stdout
    assert "decode: 1 token after 127" in r.stdout.replace("\n", " ")
    assert "checked: one run" in r.stdout


def test_compare_a_decoder_at_its_decode_step(decoder, tmp_path):
    r = infer_cli("compare", decoder, "-b", "onnxruntime,openvino", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    flat = " ".join(r.stdout.split())
    assert "attention_mask: int64[1, 128]" in flat
    assert "past_key_values.0.key: float32[1, 2, 127, 4]" in flat
    assert "PASS" in r.stdout


@pytest.mark.parametrize("name", ["llama", "bert"])
@pytest.mark.parametrize("command", ["run", "bench", "build", "compare"])
def test_the_tools_take_an_export_with_no_shape(name, command, tmp_path):
    from . import sequence_models as sm

    extra = {
        "run": ["--device", "cpu"],
        "bench": ["--duration", "0.2", "-b", "onnxruntime,openvino"],
        "build": ["--device", "cpu"],
        "compare": ["-b", "onnxruntime,openvino"],
    }[command]
    r = infer_cli(command, sm.path(name), *extra, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "could not run" not in r.stdout + r.stderr
