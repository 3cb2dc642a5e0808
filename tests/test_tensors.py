"""The dtype table, TensorSpec, feed validation and sub-byte packing."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

from infer import InputError, TensorSpec
from infer.tensors import (
    DTYPES,
    FeedValidator,
    describe,
    describe_specs,
    dims,
    dtype_info,
    pack,
    unpack,
)


def test_table_covers_onnx_types_and_round_trips():
    onnx_codes = {code for code in TensorProto.DataType.values() if code != TensorProto.UNDEFINED}
    assert {row.onnx for row in DTYPES} == onnx_codes
    for row in DTYPES:
        assert dtype_info(row.onnx) is row
        assert dtype_info(row.ort) is row
        if row.name != "object":
            assert dtype_info(row.numpy) is row
            assert np.dtype(helper.tensor_dtype_to_np_dtype(row.onnx)) == row.numpy


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("tensor(float)", "float32"),
        ("f16", "float16"),
        ("HALF", "float16"),
        ("BF16", "bfloat16"),
        ("bf16", "bfloat16"),
        ("FLOAT32", "float32"),
        ("tensor(float8e4m3fn)", "float8_e4m3fn"),
        (ml_dtypes.int4, "int4"),
        (TensorProto.INT64, "int64"),
        (np.dtype("<U3"), "object"),
        ("boolean", "bool"),
    ],
)
def test_lookup_by_any_runtime_name(key, name):
    assert dtype_info(key).name == name


def test_unknown_dtype():
    with pytest.raises(KeyError, match="unknown element type"):
        dtype_info("tensor(nonsense)")


def test_spec_repr_and_dims():
    spec = TensorSpec("x", ("N", 3, None), np.dtype(np.float32))
    assert repr(spec) == "TensorSpec('x', [N, 3, ?], float32)"
    assert not spec.is_static and TensorSpec("y", (1, 2), np.dtype(np.int64)).is_static
    assert dims([1, "batch", -1, None, "?", ""]) == (1, "batch", None, None, None, None)
    assert dims(None) is None


def _validator(*specs, cast=False):
    return FeedValidator(list(specs), cast=cast)


F32 = np.dtype(np.float32)


def test_valid_feeds_pass_through_without_copy():
    v = _validator(TensorSpec("x", ("N", 3), F32))
    x = np.ones((2, 3), np.float32)
    assert v({"x": x})["x"] is x
    assert v({"x": x})["x"] is x  # second call takes the cached fast path


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        (
            {"y": np.ones((1, 3), np.float32)},
            r"unknown input\(s\) \['y'\]; missing input\(s\) \['x'\]",
        ),
        ({}, r"missing input\(s\) \['x'\]"),
        (
            {"x": np.ones((3,), np.float32)},
            r"input 'x': expected rank 2 \(float32\[N, 3\]\), got rank 1",
        ),
        (
            {"x": np.ones((1, 4), np.float32)},
            r"input 'x': dimension 1 must be 3 .* got shape \[1, 4\]",
        ),
        (
            {"x": np.ones((1, 3), np.float64)},
            r"expected dtype float32 .* got float64; .* pass cast=True",
        ),
        ({"x": np.ones((1, 3), np.complex64)}, r"expected dtype float32 .* got complex64$"),
        ({"x": [[1, 2], [3]]}, "got list that numpy cannot convert"),
        ({"x": [["a", object()]]}, "ragged or non-numeric"),
        ([np.ones((1, 3))], "feeds must be a dict"),
    ],
)
def test_bad_feeds_name_the_tensor(feeds, match):
    v = _validator(TensorSpec("x", ("N", 3), F32))
    with pytest.raises(InputError, match=match):
        v(feeds)


def test_widening_within_a_kind_happens_lossy_ones_need_cast():
    v = _validator(TensorSpec("x", (2,), F32), TensorSpec("i", (2,), np.dtype(np.int64)))
    out = v({"x": np.array([1, 2], np.float16), "i": np.array([1, 2], np.int32)})
    assert out["x"].dtype == np.float32 and out["x"].tolist() == [1.0, 2.0]
    assert out["i"].dtype == np.int64 and out["i"].tolist() == [1, 2]
    with pytest.raises(InputError, match="cast=True"):
        v({"x": np.array([1.5, 2.5], np.float64), "i": np.array([1, 2])})
    lossy = _validator(TensorSpec("x", (2,), F32), cast=True)
    assert lossy({"x": np.array([1.5, 2.5], np.float64)})["x"].dtype == np.float32
    with pytest.raises(InputError, match="expected dtype int64"):  # float -> int is never implied
        _validator(TensorSpec("i", (2,), np.dtype(np.int64)), cast=True)(
            {"i": np.array([1.5, 2.5])}
        )


def test_an_integer_image_into_a_float_input_is_refused_unless_cast():
    """A uint8 image widened to float32 runs, on values 255x too large: refused, in words
    that say what was probably meant; cast=True widens it as it is."""
    v = _validator(TensorSpec("images", ("N", 3, 4, 4), F32))
    frame = np.full((1, 3, 4, 4), 200, np.uint8)
    with pytest.raises(InputError) as e:
        v({"images": frame})
    msg = str(e.value)
    assert "input 'images' is float32" in msg and "got uint8" in msg
    assert "not yet normalized" in msg and "x / 255.0" in msg
    assert "infer.Preprocess.image" in msg and "cast=True" in msg
    out = _validator(TensorSpec("images", ("N", 3, 4, 4), F32), cast=True)({"images": frame})
    assert out["images"].dtype == np.float32 and out["images"].max() == 200.0
    with pytest.raises(InputError, match=r"input 'x' is float32 .* got int64: .*cast=True"):
        _validator(TensorSpec("x", (2,), F32))({"x": np.array([1, 2], np.int64)})


def test_python_data_takes_the_model_dtype():
    v = _validator(TensorSpec("x", ("N", 3), F32), TensorSpec("k", (), np.dtype(np.int64)))
    out = v({"x": [[1, 2, 3]], "k": 7})
    assert out["x"].dtype == np.float32 and out["k"].dtype == np.int64 and out["k"].shape == ()


def test_non_contiguous_is_made_contiguous():
    v = _validator(TensorSpec("x", (3, 2), F32))
    x = np.ones((2, 3), np.float32).T
    out = v({"x": x})["x"]
    assert out.flags.c_contiguous and np.array_equal(out, x)
    assert v({"x": x})["x"].flags.c_contiguous  # also on the second call


def test_shared_symbol_must_agree_across_inputs():
    v = _validator(TensorSpec("a", ("N", 4), F32), TensorSpec("b", ("N", 2), F32))
    v({"a": np.ones((3, 4), np.float32), "b": np.ones((3, 2), np.float32)})
    with pytest.raises(
        InputError, match=r"input 'b': dimension 0 is 'N' = 5, but input 'a' has 'N' = 3"
    ):
        v({"a": np.ones((3, 4), np.float32), "b": np.ones((5, 2), np.float32)})


def test_unknown_rank_accepts_any_shape():
    v = _validator(TensorSpec("x", None, F32))
    assert v({"x": np.ones((1, 2, 3, 4), np.float32)})["x"].ndim == 4


def test_strings():
    v = _validator(TensorSpec("s", ("N",), np.dtype(object)))
    out = v({"s": np.array(["a", "bc"])})["s"]
    assert out.dtype == object and out.tolist() == ["a", "bc"]


@pytest.mark.parametrize(
    "dtype",
    [
        ml_dtypes.int4,
        ml_dtypes.uint4,
        ml_dtypes.float4_e2m1fn,
        ml_dtypes.int2,
        ml_dtypes.uint2,
        ml_dtypes.bfloat16,
        ml_dtypes.float8_e4m3fn,
        np.float32,
    ],
)
@pytest.mark.parametrize("shape", [(0,), (1,), (5,), (2, 3), (4, 4)])
def test_pack_round_trip(dtype, shape):
    rng = np.random.default_rng(0)
    # ml_dtypes' sub-byte ints have numpy kind "V": ask iinfo (random normals would overflow
    # uint4, which ml_dtypes >= 0.7 turns into 0 with a warning).
    try:
        info = ml_dtypes.iinfo(dtype)
    except ValueError:
        info = None
    if info is not None:
        values = rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dtype)
    else:
        values = rng.standard_normal(shape).astype(dtype)
    packed = pack(values)
    assert packed.dtype == np.uint8
    restored = unpack(packed, values.dtype, shape)
    assert restored.dtype == values.dtype and restored.shape == values.shape
    assert np.array_equal(restored.view(np.uint8), values.view(np.uint8))


def test_int4_packing_matches_onnx():
    values = np.array([1, -3, 7], dtype=ml_dtypes.int4)
    assert pack(values).tolist() == [0xD1, 0x07]  # low nibble first, as ONNX stores it


def test_describe_specs_lists_name_and_type_in_order():
    specs = [
        TensorSpec("images", ("N", 3, None, 224), np.float32),
        TensorSpec("scale", (), np.dtype(ml_dtypes.bfloat16)),
        TensorSpec("tokens", None, np.int64),
    ]
    assert describe(specs[0].shape, specs[0].dtype) == "float32[N, 3, ?, 224]"
    assert describe_specs(specs) == (
        "images: float32[N, 3, ?, 224], scale: bfloat16[], tokens: int64?"
    )
    assert describe_specs(iter(specs[2:])) == "tokens: int64?"
    assert describe_specs([]) == ""


def test_shared_dimension_names_checked_on_every_signature():
    """Inputs sharing a dimension name (every sequence model's batch) take the fast path once
    their signature passed, and a new signature is checked in full again."""
    from infer.tensors import FeedValidator

    specs = [
        TensorSpec("ids", ("batch", "seq"), np.dtype(np.int64)),
        TensorSpec("mask", ("batch", "seq"), np.dtype(np.int64)),
    ]
    check = FeedValidator(specs)
    good = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    assert check(good) is not good  # checked in full: a new dict
    assert check(good) is good  # the fast path returns the feeds as given
    with pytest.raises(InputError, match="'seq' = 4, but input 'ids' has 'seq' = 5"):
        check({"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 4), np.int64)})
    widened = check({"ids": np.zeros((2, 5), np.int32), "mask": np.ones((2, 5), np.int64)})
    assert widened["ids"].dtype == np.int64
    again = check({"ids": np.zeros((2, 5), np.int32), "mask": np.ones((2, 5), np.int64)})
    assert again["ids"].dtype == np.int64  # a cast signature never takes the fast path
