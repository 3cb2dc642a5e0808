"""Model loading: sources, format sniffing, hashing and external-data safety."""

from __future__ import annotations

import os

import onnx
import pytest
from onnx import numpy_helper

from infer import ModelError, ModelFormat
from infer.model import Model, sniff

from . import models


def test_sources_agree(tmp_path):
    proto = models.relu()
    path = tmp_path / "relu.onnx"
    onnx.save(proto, path)
    from_path, from_bytes, from_proto = (
        Model.load(path),
        Model.load(path.read_bytes()),
        Model.load(proto),
    )
    for m in (from_path, from_bytes, from_proto):
        assert m.format is ModelFormat.ONNX
        assert m.proto.graph.node[0].op_type == "Relu"
    assert from_path.path == path and from_bytes.path is None
    assert from_path.name == "relu"
    assert from_bytes.digest == from_proto.digest  # same serialized content
    assert Model.load(from_path) is from_path


@pytest.mark.parametrize(
    ("head", "suffix", "expected"),
    [
        (b"ftrt\x00\x00\x00\x00", ".engine", ModelFormat.TENSORRT),
        (b"ptrt\x01\x02", "", ModelFormat.TENSORRT),
        (b'<?xml version="1.0"?>\n<net name="m" version="11">', ".xml", ModelFormat.OPENVINO),
        (b"\x08\x07\x12\x05", ".onnx", ModelFormat.ONNX),
        (b"\x08\x07\x12\x05", ".mlmodel", ModelFormat.COREML),
        (b"PK\x03\x04", ".onnx", None),
        (b'<?xml version="1.0"?><html>', ".xml", None),
    ],
)
def test_sniff(head, suffix, expected):
    assert sniff(head, suffix) is expected


def test_format_comes_from_content_not_suffix(tmp_path):
    onnx_named_plan = tmp_path / "model.engine"
    onnx.save(models.relu(), onnx_named_plan)
    assert Model.load(onnx_named_plan).format is ModelFormat.ONNX
    plan_named_onnx = tmp_path / "model.onnx"
    plan_named_onnx.write_bytes(b"ftrt" + bytes(60))
    assert Model.load(plan_named_onnx).format is ModelFormat.TENSORRT


def test_openvino_ir_needs_its_weights(tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_text('<?xml version="1.0"?>\n<net name="m" version="11"></net>')
    with pytest.raises(ModelError, match=r"m\.bin"):
        Model.load(xml)
    (tmp_path / "m.bin").write_bytes(b"\0" * 8)
    model = Model.load(xml)
    assert model.format is ModelFormat.OPENVINO and model.weights_path == tmp_path / "m.bin"


def test_mlpackage_folder(tmp_path):
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    (pkg / "Manifest.json").write_text("{}")
    assert Model.load(pkg).format is ModelFormat.COREML
    with pytest.raises(ModelError, match="not a Core ML"):
        Model.load(tmp_path)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("/no/such/model.onnx", "does not exist"),
        (b"garbage that is no model", "not a known format"),
        (12, "must be a path, bytes or onnx.ModelProto"),
        (onnx.ModelProto(), "not an ONNX model"),
        (b"\x08\x07", "not an ONNX model"),  # parses as an empty ModelProto: no graph
    ],
)
def test_bad_sources(source, match):
    with pytest.raises(ModelError, match=match):
        Model.load(source)


def test_truncated_file_is_a_model_error(tmp_path):
    data = models.cnn().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"cut\.onnx"):
        Model.load(path)


def _save_external(proto: onnx.ModelProto, folder, location: str = "weights.bin") -> None:
    onnx.save(
        proto,
        folder / "m.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )


def test_external_data_is_loaded_and_hashed(tmp_path):
    _save_external(models.cnn(), tmp_path)
    model = Model.load(tmp_path / "m.onnx")
    assert model.external_data == ((tmp_path / "weights.bin").resolve(),)
    weights = {t.name: numpy_helper.to_array(t) for t in model.proto.graph.initializer}
    assert weights["conv0.w"].shape == (16, 3, 3, 3)
    before = model.digest
    raw = bytearray((tmp_path / "weights.bin").read_bytes())
    raw[100] ^= 0xFF
    (tmp_path / "weights.bin").write_bytes(bytes(raw))
    assert Model.load(tmp_path / "m.onnx").digest != before


def _point_external_data_at(path, location: str) -> None:
    proto = onnx.load(path, load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, path)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    _save_external(models.cnn(), folder)
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    _point_external_data_at(folder / "m.onnx", location)
    with pytest.raises(ModelError, match="must be a relative path inside"):
        Model.load(folder / "m.onnx")


def test_external_data_symlink_leaving_the_folder_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    _save_external(models.cnn(), folder)
    outside = tmp_path / "outside.bin"
    os.replace(folder / "weights.bin", outside)
    os.symlink(outside, folder / "weights.bin")
    with pytest.raises(ModelError, match="must be a relative path inside"):
        Model.load(folder / "m.onnx")


def test_external_data_missing_file(tmp_path):
    _save_external(models.cnn(), tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="does not exist"):
        Model.load(tmp_path / "m.onnx")


def test_external_data_from_bytes_needs_a_path(tmp_path):
    _save_external(models.cnn(), tmp_path)
    with pytest.raises(ModelError, match="load it from its path"):
        Model.load((tmp_path / "m.onnx").read_bytes())


def test_digest_is_stable_and_content_sensitive():
    a, b = models.cnn(seed=0), models.cnn(seed=1)
    assert Model.load(a).digest == Model.load(models.cnn(seed=0)).digest
    assert Model.load(a).digest != Model.load(b).digest
    assert len(Model.load(a).digest) == 64
