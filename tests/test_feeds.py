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


def test_profile_covers_every_shape_set():
    assert profile([{"x": (1, 3)}, {"x": (1, 3)}]) == {"x": (1, 3)}
    assert profile([{"x": (4, 3)}, {"x": (1, 3)}, {"x": (16, 3)}]) == {
        "x": ((1, 3), (4, 3), (16, 3))
    }
    # bench builds for every batch size it will run
    got = _profile(Model.load(demo.model()), None, (4, 1, 16), {})
    assert got == {"image": ((1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64))}
