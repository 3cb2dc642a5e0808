"""Optimization profiles: derived from the model and shapes=, and checked before each run."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer import InputError, OptionError
from infer.backends._trt_profiles import ProfileCheck, Range, derive, parse_shape, summary
from infer.tensors import TensorSpec

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


def spec(name, *shape, dtype=F32):
    return TensorSpec(name, tuple(shape), dtype)


def test_a_dynamic_first_dimension_is_the_batch():
    ranges = derive([spec("x", "N", 3, 32, 32)], {}, max_batch=8)
    assert ranges == {"x": Range((1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32))}


def test_throughput_tunes_for_the_largest_batch():
    ranges = derive([spec("x", None, 3)], {}, max_batch=16, hint="throughput")
    assert ranges["x"] == Range((1, 3), (16, 3), (16, 3))


def test_static_inputs_need_no_profile():
    assert derive([spec("x", 1, 3, 8, 8), spec("k", 4, dtype=I64)], {}, max_batch=8) == {}


def test_a_batch_name_means_the_batch_in_every_input():
    ranges = derive([spec("mask", 7, "B"), spec("ids", "B", 7, dtype=I64)], {}, max_batch=4)
    assert ranges["ids"] == Range((1, 7), (1, 7), (4, 7))
    assert ranges["mask"] == Range((7, 1), (7, 1), (7, 4))  # "B" learnt from ids' first axis


def test_given_shapes_are_taken_as_min_opt_max():
    ranges = derive(
        [spec("x", "N", 3, "H", "W")],
        {"x": ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128))},
        max_batch=8,
    )
    assert ranges["x"] == Range((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128))
    assert str(ranges["x"]) == "min 1x3x32x32, opt 2x3x64x64, max 4x3x128x128"


def test_one_shape_fixes_the_input():
    ranges = derive([spec("x", "N", 3, "H", "W")], {"x": [2, 3, 40, 50]}, max_batch=8)
    assert ranges["x"].fixed and ranges["x"].min == (2, 3, 40, 50)
    assert str(ranges["x"]) == "2x3x40x50"


def test_names_given_in_shapes_settle_other_inputs():
    ranges = derive(
        [spec("audio", "N", "T"), spec("lengths", "N", "T", dtype=I64)],
        {"audio": ((1, 100), (1, 400), (2, 1600))},
        max_batch=8,
    )
    assert ranges["lengths"] == Range((1, 100), (1, 400), (2, 1600))


def test_numpy_integers_are_accepted():
    r = parse_shape("x", (np.int64(1), np.int32(3)))
    assert r.min == (1, 3) and all(type(d) is int for d in r.min)


def test_open_dimensions_ask_for_shapes_by_name():
    with pytest.raises(OptionError) as e:
        derive([spec("x", "N", 3, "H", "W"), spec("y", 2, None)], {}, max_batch=8)
    text = str(e.value)
    assert "input 'x'" in text and "2 ('H'), 3 ('W')" in text
    assert "input 'y'" in text and "dimension(s) 1" in text
    assert "shapes={'x': (min_shape, opt_shape, max_shape)}" in text
    assert "(N, 3, ?, ?)" in text


def test_unknown_rank_asks_for_a_shape():
    with pytest.raises(OptionError, match="input 'x' has no known rank"):
        derive([TensorSpec("x", None, F32)], {}, max_batch=8)


@pytest.mark.parametrize(
    "value, match",
    [
        ("1x3", "must be a shape"),
        ((1.5, 3), "must be a shape"),
        ((True, 3), "must be a shape"),
        (((1, 3), (2, 3), (4, 3, 1)), "same rank"),
        (
            ((4, 3), (2, 3), (8, 3)),
            r"dimension 0 must satisfy 0 <= min <= opt <= max, got min 4, opt 2",
        ),
        ((-1, 3), "0 <= min"),
    ],
)
def test_bad_shapes_are_option_errors(value, match):
    with pytest.raises(OptionError, match=match):
        derive([spec("x", "N", 3)], {"x": value}, max_batch=8)


def test_shapes_must_fit_the_model():
    specs = [spec("x", "N", 3, 32, 32)]
    with pytest.raises(OptionError, match=r"rank 2, but input 'x' is float32\[N, 3, 32, 32\]"):
        derive(specs, {"x": (1, 3)}, max_batch=8)
    with pytest.raises(
        OptionError, match=r"dimension 1 of input 'x' is fixed at 3.*range given is 1\.\.4"
    ):
        derive(specs, {"x": ((1, 1, 32, 32), (1, 3, 32, 32), (1, 4, 32, 32))}, max_batch=8)
    with pytest.raises(
        OptionError, match=r"unknown input\(s\) \['z'\].*x: float32\[N, 3, 32, 32\]"
    ):
        derive(specs, {"z": (1, 2)}, max_batch=8)


def test_a_name_cannot_take_two_ranges():
    with pytest.raises(OptionError, match=r"dimension 'T' is 1\.\.10 for 'a' but 1\.\.20 for 'b'"):
        derive(
            [spec("a", 1, "T"), spec("b", 1, "T")],
            {"a": ((1, 1), (1, 5), (1, 10)), "b": ((1, 1), (1, 5), (1, 20))},
            max_batch=8,
        )


def test_summary_text():
    ranges = derive([spec("x", "N", 3), spec("y", 5)], {}, max_batch=2)
    assert summary(ranges) == "x: min 1x3, opt 1x3, max 2x3"
    assert summary({}) == "static shapes"


def test_feeds_inside_the_profile_pass_and_outside_say_why():
    check = ProfileCheck(
        [derive([spec("x", "N", 3, 32, 32)], {}, max_batch=8)],
        advice="Load with max_batch=N",
    )
    assert check.fitting({"x": (8, 3, 32, 32)}) == (0,)
    with pytest.raises(InputError) as e:
        check.fitting({"x": (9, 3, 32, 32)})
    text = str(e.value)
    assert "input 'x' has shape [9, 3, 32, 32]" in text
    assert "(min 1x3x32x32, opt 1x3x32x32, max 8x3x32x32)" in text
    assert "dimension 0 is 9, above 8" in text and text.endswith("Load with max_batch=N")
    with pytest.raises(InputError, match="dimension 2 is 16, below 32"):
        check.fitting({"x": (1, 3, 16, 32)})


def test_accepted_signatures_are_remembered():
    check = ProfileCheck([{"x": Range((1, 2), (1, 2), (4, 2))}])
    check.fitting({"x": (3, 2)})
    assert check._seen == {((3, 2),): (0,)}
    check.profiles = []  # a remembered signature no longer looks at the profiles
    assert check.fitting({"x": (3, 2)}) == (0,)


def test_several_profiles_pick_those_that_hold_the_shapes():
    small = {"x": Range((1, 4), (1, 4), (2, 4))}
    large = {"x": Range((2, 4), (8, 4), (8, 4))}
    check = ProfileCheck([small, large])
    assert check.fitting({"x": (1, 4)}) == (0,)
    assert check.fitting({"x": (2, 4)}) == (0, 1)
    assert check.fitting({"x": (5, 4)}) == (1,)
    with pytest.raises(InputError, match="none of the engine's 2 profiles covers it"):
        check.fitting({"x": (9, 4)})


def test_no_dynamic_inputs_means_every_shape_fits():
    assert ProfileCheck([]).fitting({}) == (0,)


dims = st.integers(1, 6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(dims, dims, dims), min_size=1, max_size=4), st.integers(0, 7))
def test_a_derived_profile_holds_exactly_its_box(triples, probe):
    lo = tuple(min(t) for t in triples)
    hi = tuple(max(t) for t in triples)
    opt = tuple(sorted(t)[1] for t in triples)
    r = parse_shape("x", (lo, opt, hi))
    check = ProfileCheck([{"x": r}])
    shape = tuple(probe % (h + 2) for h in hi)
    inside = all(a <= d <= b for a, d, b in zip(lo, shape, hi))
    if inside:
        assert check.fitting({"x": shape}) == (0,)
    else:
        with pytest.raises(InputError):
            check.fitting({"x": shape})
    assert r.holds(opt) and r.holds(lo) and r.holds(hi)
