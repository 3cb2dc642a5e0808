"""The shapes a real user's run takes, everywhere a tool makes inputs (issue 25): `compare`,
int8 calibration from a folder of images, a fused letterbox without a size, and the sizes
`run` gives a text line's direction classifier. Models of the kinds users bring: a YOLO-shaped
detector with `imgsz` metadata, a CTC text recognizer, a token encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import infer
from infer import feeds
from infer.feeds import read_samples, representative_shapes
from infer.model import Model

from . import encoder_models, models


def infer_cli(*args: object) -> subprocess.CompletedProcess[str]:
    """`python -m infer ARGS` in a fresh process, as a user runs it (wide, no colours)."""
    return subprocess.run(
        [sys.executable, "-m", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    out = {}
    for name, proto in (
        ("yolo", models.yolo(imgsz=320)),
        ("rec", models.text_recognizer()),
        ("enc", encoder_models.encoder(vocab=60, token_types=True, max_positions=512)),
    ):
        out[name] = tmp_path / f"{name}.onnx"
        onnx.save(proto, out[name])
    return out


def _pictures(folder: Path, sizes=((200, 150), (130, 170), (256, 256), (90, 60))) -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


# -- item 2: compare sizes its feeds as run and bench do ----------------------------------------


def test_compare_cli_sizes_the_inputs_as_run_does_and_prints_them(files, tmp_path):
    # The detector at its metadata's 320x320 (at 1x1 OpenVINO cannot reshape it and ONNX
    # Runtime cannot run it); every backend here takes it, so all are compared.
    report = tmp_path / "c.json"
    det = infer_cli("compare", files["yolo"], "--device", "cpu", "--json", report)
    assert det.returncode == 0, det.stdout + det.stderr
    assert "images: float32[1, 3, 320, 320]" in det.stdout
    assert "note: images[2] ('height') = 320: from the model's metadata 'imgsz'" in det.stdout
    data = json.loads(report.read_text())
    assert {"onnxruntime[cpu]", "openvino", "reference"} <= {r["label"] for r in data["runners"]}
    assert data["feeds"][0]["shape"] == [1, 3, 320, 320] and data["passed"] is True
    # the recognizer at a text line's 48x320, the encoder at a 128-token sequence
    rec = infer_cli("compare", files["rec"], "-b", "onnxruntime,openvino")
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert "x: float32[1, 3, 48, 320]" in rec.stdout and "text-line recognizer" in rec.stdout
    enc = infer_cli("compare", files["enc"], "-b", "onnxruntime,openvino")
    assert enc.returncode == 0, enc.stdout + enc.stderr
    assert (
        "input_ids: int64[1, 128], token_type_ids: int64[1, 128], attention_mask: int64[1, 128]"
        in enc.stdout
    )
    assert "('sequence_length') = 128: a sequence model's encode" in enc.stdout
    # --shape wins
    short = infer_cli(
        "compare", files["enc"], "-b", "onnxruntime,openvino", "--shape", "sequence_length=7"
    )
    assert short.returncode == 0, short.stdout + short.stderr
    assert "input_ids: int64[1, 7]" in short.stdout and "('sequence_length') =" not in short.stdout


def test_compare_in_python_sizes_the_inputs_as_run_does():
    enc = Model.load(encoder_models.encoder(max_positions=512))
    want, _ = representative_shapes(enc.inputs, model=enc)
    result = infer.compare(enc, ["onnxruntime", "reference"])
    assert (
        dict((n, s) for n, s, _ in result.feeds)
        == want
        == {
            "input_ids": (1, 128),
            "attention_mask": (1, 128),
        }
    )
    assert any("('sequence_length') = 128" in n for n in result.notes), result.notes
    assert result.to_dict()["notes"] == list(result.notes)
    # explicit shapes win, and given arrays keep theirs
    result = infer.compare(enc, ["onnxruntime", "reference"], shapes={"sequence_length": 9})
    assert [s for _, s, _ in result.feeds] == [(1, 9), (1, 9)]
    ids = np.ones((2, 5), np.int64)
    result = infer.compare(enc, ["onnxruntime", "reference"], {"input_ids": ids})
    assert [s for _, s, _ in result.feeds] == [(2, 5), (2, 5)]
    # the detector's default list: OpenVINO compiled at 320x320, compared with the rest
    det = infer.compare(models.yolo(imgsz=320), device="cpu")
    assert det.passed and "openvino" in [r.label for r in det.runners], det.skipped
    assert det.feeds[0][1] == (1, 3, 320, 320)


def test_compare_leaves_out_each_backend_that_cannot_take_the_shapes(files):
    # At 1x1 no backend takes the detector: each is left out with why (OpenVINO's failed
    # reshape among them, not the whole command's error), and too few remain to compare.
    result = infer_cli("compare", files["yolo"], "--device", "cpu", "--shape", "images=1x3x1x1")
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "compare needs at least two backends" in err and "left out:" in err
    assert "openvino on " in err and "cannot reshape" in err
    assert "onnxruntime[cpu] on cpu:0: failed: could not run the feeds (images 1x3x1x1)" in err
    assert "reference on cpu:0: failed: could not run the feeds (images 1x3x1x1)" in err
    assert "Traceback" not in err


def test_openvino_shapes_a_node_cannot_take_are_a_compile_error():
    # Shapes that fit the inputs but not the graph (the detector's Concat at 1x1): the model
    # fails to compile there, which compare leaves out; shapes that contradict a fixed
    # dimension stay the caller's mistake (test_openvino).
    pytest.importorskip("openvino")
    with pytest.raises(infer.CompileError, match=r"cannot reshape .* \(1, 3, 1, 1\)"):
        infer.Engine.load(models.yolo(), "cpu", backend="openvino", shapes={"images": (1, 3, 1, 1)})
    with pytest.raises(infer.OptionError, match=r"cannot reshape .* does not fit"):
        infer.Engine.load(
            models.yolo(), "cpu", backend="openvino", shapes={"images": (1, 4, 32, 32)}
        )


# -- item 5: int8 calibration images at the size run uses ----------------------------------------


def test_build_int8_resizes_calibration_images_to_the_models_size(files, tmp_path):
    calib = _pictures(tmp_path / "calib")
    result = infer_cli(
        "build", files["yolo"], "-p", "int8", "-b", "onnxruntime", "--calibration", calib,
        "--no-budget",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"calibration: 4 samples from {calib} (images resized to 320x320: from the model's "
        "metadata 'imgsz')" in result.stderr
    )
    assert "checked: one run on random inputs" in result.stdout, result.stderr
    # --shape still wins
    result = infer_cli(
        "build", files["yolo"], "-p", "int8", "-b", "onnxruntime", "--calibration", calib,
        "--no-budget", "--shape", "images=1x3x256x256",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(images resized to 256x256: the shape given)" in result.stderr


def test_read_samples_sizes_images_as_run_does(tmp_path):
    calib = _pictures(tmp_path / "calib")
    yolo = Model.load(models.yolo(imgsz=320))
    samples = read_samples(calib, yolo.inputs, model=yolo)
    assert [s["images"].shape for s in samples] == [(1, 3, 320, 320)] * 4
    assert feeds.sample_image_size(yolo.inputs, model=yolo) == (
        (320, 320),
        "from the model's metadata 'imgsz'",
    )
    # without metadata, a detector's size; a shape given wins; a fixed size is the model's
    plain = Model.load(models.yolo(imgsz=None))
    assert read_samples(calib, plain.inputs, model=plain)[0]["images"].shape == (1, 3, 640, 640)
    given = read_samples(calib, yolo.inputs, {"height": 96, "width": 128}, model=yolo)
    assert given[0]["images"].shape == (1, 3, 96, 128)
    assert feeds.sample_image_size(yolo.inputs, {"height": 96, "width": 128}, model=yolo) == (
        (96, 128),
        "the shape given",
    )
    fixed = Model.load(models.cnn(size=32))
    assert feeds.sample_image_size(fixed.inputs, model=fixed) == (
        (32, 32),
        "the model's input size",
    )
    assert (
        feeds.sample_image_size(
            Model.load(encoder_models.encoder(vocab=60, token_types=True, max_positions=512)).inputs
        )
        is None
    )


# -- item 6: a fused letterbox without a size takes the metadata's -----------------------------


def test_letterbox_without_a_size_takes_the_models_metadata_size():
    pre = infer.Preprocess.image(resize="letterbox")
    with infer.Engine.load(models.yolo(imgsz=320), "cpu", preprocess=pre) as engine:
        assert engine.preprocess["images"].size == (320, 320)
        out = engine.run({"images": np.zeros((1, 200, 300, 3), np.uint8)})
        assert out["output0"].shape == (1, 84, 160 * 160)
    # where nothing says, the error names the argument and the keys looked for
    with pytest.raises(infer.OptionError, match=r"give size=\(height, width\)") as e:
        infer.Engine.load(models.yolo(imgsz=None), "cpu", preprocess=pre)
    assert "imgsz" in str(e.value) and "not fixed" in str(e.value)


def test_letterbox_size_from_a_dimension_named_in_the_metadata():
    proto = models.yolo(imgsz=None)
    onnx.helper.set_model_props(proto, {"height": "256", "width": "384"})
    pre = infer.Preprocess.image(resize="letterbox")
    with infer.Engine.load(proto, "cpu", backend="onnxruntime", preprocess=pre) as engine:
        assert engine.preprocess["images"].size == (256, 384)


# -- smaller: the PP-OCR direction classifier is a text line -------------------------------------


def test_text_direction_classifier_is_sized_as_a_text_line(real_model, tmp_path):
    # ch_ppocr_mobile_v2.0_cls declares x: [?, 3, ?, ?] -> [?, 2]: two classes (0 or 180
    # degrees) of a text line, which PP-OCR feeds at 48x192, not a 224x224 picture.
    path = real_model("ocr_cls")
    cls = Model.load(path)
    got, notes = representative_shapes(cls.inputs, model=cls)
    assert got == {"x": (1, 3, 48, 192)}
    assert "direction classifier" in notes[1], notes
    ran = infer_cli("run", path, "-b", "onnxruntime", "--save", tmp_path / "out")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "x[2] (?) = 48: a text line's direction classifier" in ran.stderr
    assert "float32  [1, 3, 48, 192]" in ran.stdout, ran.stdout
