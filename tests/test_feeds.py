"""infer.feeds: the inputs the tools make, read and shape."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from infer import InputError, TensorSpec, demo
from infer.bench import _profile
from infer.feeds import (
    parse_shape,
    parse_shapes,
    profile,
    random_feeds,
    read_inputs,
    read_samples,
    representative_shapes,
    resolve_shapes,
)
from infer.model import Model


def spec(name: str, shape, dtype=np.float32) -> TensorSpec:
    return TensorSpec(name, shape, np.dtype(dtype))


def test_parse_shape():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape("1,3, 8") == (1, 3, 8)
    assert parse_shape("") == () and parse_shape("7") == (7,)
    with pytest.raises(InputError, match="shape 'ax3' is not valid"):
        parse_shape("ax3")
    assert parse_shapes(["x=2x3", "N = 4"]) == {"x": (2, 3), "N": (4,)}
    with pytest.raises(InputError, match="expected NAME=SHAPE"):
        parse_shapes(["2x3"])


def test_resolve_shapes_by_input_and_by_dimension_name():
    specs = [spec("a", ("N", 3, "H")), spec("b", ("N", None)), spec("c", (2,))]
    shapes, notes = resolve_shapes(specs, {"N": 4, "b": (4, 7)})
    assert shapes == {"a": (4, 3, 1), "b": (4, 7), "c": (2,)}
    assert notes == ["a[2] ('H') = 1"]
    # arrays at hand size the dimensions they name
    shapes, notes = resolve_shapes(specs, {}, arrays={"a": np.zeros((5, 3, 9))})
    assert shapes["a"] == (5, 3, 9) and shapes["b"] == (5, 1)
    assert notes == ["b[1] (?) = 1"]


def test_resolve_shapes_errors():
    specs = [spec("x", ("N", 3))]
    with pytest.raises(InputError, match="no input or dimension is called 'y'"):
        resolve_shapes(specs, {"y": (1,)})
    with pytest.raises(InputError, match=r"does not fit the input float32\[N, 3\]"):
        resolve_shapes(specs, {"x": (1, 4)})
    with pytest.raises(InputError, match="does not fit"):
        resolve_shapes(specs, {"x": (1, 3, 1)})
    with pytest.raises(InputError, match="'N' is a dimension name, so it takes one size"):
        resolve_shapes(specs, {"N": (1, 2)})
    with pytest.raises(InputError, match="input 'r' has no known rank"):
        resolve_shapes([spec("r", None)])


def test_random_feeds_are_seeded_and_typed():
    specs = [
        spec("f", ("N", 2)),
        spec("h", (3,), np.float16),
        spec("bf", (3,), ml_dtypes.bfloat16),
        spec("i", (50,), np.int64),
        spec("b", (50,), np.bool_),
        spec("s", (2,), object),
    ]
    a = random_feeds(specs, {"N": 3}, seed=1)
    b = random_feeds(specs, {"N": 3}, seed=1)
    c = random_feeds(specs, {"N": 3}, seed=2)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].dtype == dict((s.name, s.dtype) for s in specs)[name]
    assert not np.array_equal(a["f"], c["f"])
    assert a["f"].shape == (3, 2) and a["f"].min() >= 0 and a["f"].max() < 1
    assert set(np.unique(a["i"])) <= {0, 1} and a["b"].any() and not a["b"].all()
    assert a["s"].tolist() == ["a", "a"]
    given = np.full((4, 2), 9, np.float32)
    d = random_feeds(specs[:1], seed=1, given={"f": given})
    assert d["f"] is given
    with pytest.raises(InputError, match=r"unknown input\(s\) \['zz'\]"):
        random_feeds(specs[:1], given={"zz": given})


def test_read_inputs(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(3))
    np.savez(tmp_path / "all.npz", a=np.ones(2), b=np.zeros(1))
    got = read_inputs(
        [f"x={tmp_path / 'x.npy'}", str(tmp_path / "all.npz"), "sr=16000", "v=[1.5, 2]"]
    )
    assert got["x"].tolist() == [0, 1, 2] and got["a"].tolist() == [1, 1]
    assert got["sr"] == 16000 and got["v"].tolist() == [1.5, 2.0]
    with pytest.raises(InputError, match=r"cannot\ be\ read\ as\ \.npy"):
        read_inputs([f"x={tmp_path / 'missing.npy'}"])
    with pytest.raises(InputError, match=r"neither\ a\ \.npy/\.npz\ file\ nor\ a\ number"):
        read_inputs(["x=hello"])
    with pytest.raises(InputError, match=r"expected\ NAME=FILE\.npy"):
        read_inputs(["plain.npy"])


def test_read_samples_npy_npz_and_images(tmp_path):
    one = [spec("x", ("N", 3, 8, 8))]
    folder = tmp_path / "npy"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", np.full((3, 8, 8), i, np.float32))
    samples = read_samples(folder, one)
    assert [s["x"].shape for s in samples] == [(1, 3, 8, 8)] * 3  # batch dim added
    assert [float(s["x"].mean()) for s in samples] == [0.0, 1.0, 2.0]
    assert len(read_samples(folder, one, limit=2)) == 2

    two = [spec("a", (2,)), spec("b", (1,))]
    with pytest.raises(InputError, match=r"give\ each\ sample\ as\ an\ \.npz"):
        read_samples(folder, two)
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "s.npz", a=np.ones(2, np.float32), b=np.zeros(1, np.float32))
    assert sorted(read_samples(npz, two)[0]) == ["a", "b"]
    np.savez(npz / "t.npz", a=np.ones(2, np.float32))
    with pytest.raises(InputError, match="do not match the inputs"):
        read_samples(npz, two)

    from PIL import Image

    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(images / "red.png")
    (x,) = read_samples(images, one)
    assert x["x"].shape == (1, 3, 8, 8) and x["x"].dtype == np.float32
    assert x["x"][0, 0].min() == pytest.approx(1.0) and x["x"][0, 1].max() == 0.0
    nhwc = read_samples(images, [spec("x", (1, 8, 8, 3))])[0]["x"]
    assert nhwc.shape == (1, 8, 8, 3)
    with pytest.raises(InputError, match="not an NCHW or NHWC image"):
        read_samples(images, [spec("x", (1, 16))])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"holds\ no\ \.npy,\ \.npz\ or\ image\ files"):
        read_samples(empty, one)


def test_read_samples_images_take_the_size_of_the_shape_given(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 10), (0, 255, 0)).save(tmp_path / "green.png")
    one = [spec("x", ("N", 3, "H", "W"))]
    (x,) = read_samples(tmp_path, one, {"x": (1, 3, 6, 4)})
    assert x["x"].shape == (1, 3, 6, 4)
    # A shape that is not the input's (an int, the wrong rank, a fixed dim changed) is refused
    # in words, not by an IndexError.
    for wrong in (3, (6, 4), (1, 4, 6, 4)):
        with pytest.raises(InputError, match=r"does not fit the input"):
            read_samples(tmp_path, one, {"x": wrong})


def test_profile_covers_every_shape_set():
    assert profile([{"x": (1, 3)}, {"x": (1, 3)}]) == {"x": (1, 3)}
    assert profile([{"x": (4, 3)}, {"x": (1, 3)}, {"x": (16, 3)}]) == {
        "x": ((1, 3), (4, 3), (16, 3))
    }
    # bench builds for every batch size it will run
    got = _profile(Model.load(demo.model()), None, (4, 1, 16), {})
    assert got == {"image": ((1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64))}


def _meta_model(inputs, outputs, metadata=None):
    """A one-Identity model per input with the given value infos and metadata_props."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", [i[0]], [o[0]]) for i, o in zip(inputs, outputs)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(proto, dict(metadata or {}))
    return Model.load(proto)


def test_representative_shapes_of_real_models(real_model):
    want = {
        "ocr_det": {"x": (1, 3, 640, 640)},  # outputs a map: a detector
        "ocr_rec": {"x": (1, 3, 48, 320)},  # outputs [N, T, 6625]: a text-line recognizer
        "ocr_cls": {"x": (1, 3, 48, 192)},  # outputs [N, 2]: a text line's direction
        "orientation": {"x": (1, 3, 224, 224)},  # fixed 224x224, batch 1
    }
    for key, shapes in want.items():
        model = Model.load(real_model(key))
        got, notes = representative_shapes(model.inputs, model=model)
        assert got == shapes, key
        assert any("the batch dimension" in n for n in notes), notes
    det = Model.load(real_model("ocr_det"))
    _, notes = representative_shapes(det.inputs, model=det)
    assert "x[2] ('p2o.DynamicDimension.1') = 640: a detector's input size" in notes[1]
    # every size a real run of the model takes: the detector runs at it
    from infer import Engine

    with Engine.load(det, backend="onnxruntime") as engine:
        feeds = random_feeds(engine.inputs, representative_shapes(det.inputs, model=det)[0])
        assert engine.run(feeds)["sigmoid_0.tmp_0"].shape == (1, 1, 640, 640)


def test_representative_shapes_one_value_per_named_dim():
    specs = [spec("a", ("batch", "sequence")), spec("b", ("batch", "sequence", 8))]
    shapes, notes = representative_shapes(specs)
    assert shapes == {"a": (1, 128), "b": (1, 128, 8)}
    assert notes == [
        "a[0], b[0] ('batch') = 1: the batch dimension",
        "a[1], b[1] ('sequence') = 128: a typical sequence length",
    ]
    # a batch dim that is not first in another input still gets the one value
    specs = [spec("x", ("N", 4)), spec("state", (2, "N", 16))]
    assert representative_shapes(specs)[0] == {"x": (1, 4), "state": (2, 1, 16)}


def test_representative_shapes_given_arrays_metadata_then_kinds():
    specs = [spec("images", ("batch", 3, "height", "width")), spec("t", ("batch", None))]
    # shapes given win (a dim name, or an input's whole shape; a triple's opt)
    got, _ = representative_shapes(specs, {"height": 320, "t": ((1, 2), (1, 5), (1, 9))})
    assert got == {"images": (1, 3, 320, 224), "t": (1, 5)}
    # example arrays size the dims they name
    got, _ = representative_shapes(specs, arrays={"images": np.zeros((2, 3, 64, 96))})
    assert got == {"images": (2, 3, 64, 96), "t": (2, 1)}
    # an unnamed dim nothing sizes is 1, and the note says so
    _, notes = representative_shapes(specs)
    assert "t[1] (?) = 1: nothing says how large" in notes
    # the model's metadata, as Ultralytics writes it (imgsz, and a dim's own name)
    yolo = _meta_model(
        [("images", ["batch", 3, "height", "width"])],
        [("boxes", ["batch", 84, "anchors"])],
        {"imgsz": "[480, 800]", "batch": "2", "names": "{0: 'person'}"},
    )
    got, notes = representative_shapes(yolo.inputs, model=yolo)
    assert got == {"images": (2, 3, 480, 800)}
    assert "images[2] ('height') = 480: from the model's metadata 'imgsz'" in notes
    # without metadata: its outputs are boxes, so a detector's size
    plain = _meta_model(
        [("images", ["batch", 3, "height", "width"])], [("boxes", ["batch", 84, "anchors"])]
    )
    assert representative_shapes(plain.inputs, model=plain)[0] == {"images": (1, 3, 640, 640)}
    # metadata naming an input gives its whole shape
    named = _meta_model([("x", ["N", 16])], [("y", ["N", 16])], {"x": "4x16"})
    assert representative_shapes(named.inputs, model=named)[0] == {"x": (4, 16)}
    # NHWC images, and a fixed height: a text line
    nhwc = [spec("img", (1, None, None, 3))]
    assert representative_shapes(nhwc)[0] == {"img": (1, 224, 224, 3)}
    line = [spec("img", (None, 3, 32, None))]
    assert representative_shapes(line)[0] == {"img": (1, 3, 32, 320)}
    # the errors are resolve_shapes'
    with pytest.raises(InputError, match="no input or dimension is called 'y'"):
        representative_shapes(specs, {"y": (1,)})
