"""Property tests of feeds: whatever a caller passes to `run` (names, ranks, dtypes, shapes, non-
arrays), the engine either raises InputError or returns the right answer; never another
exception, never a wrong answer. On every CPU backend installed here."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import infer
from infer import selection
from infer.backends import base
from infer.model import ModelFormat

from .models import multi_io

INPUTS = ("a", "b", "mask")  # a: float32[N, 4], b: int64[N, 4], mask: bool[N, 4] (shared N)

DTYPES = [
    np.dtype(t)
    for t in (
        np.float32,
        np.float64,
        np.float16,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
        np.complex64,
    )
] + [np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.int4)]


def _backends() -> list[str]:
    """The backends of the selection table's CPU row that take ONNX (OpenVINO too, once there)."""
    names = dict.fromkeys(row.backend for row in selection.TABLE["cpu"])
    return [n for n in names if ModelFormat.ONNX in base.get(n).formats]


def _available(name: str) -> bool:
    return base.get(name).probe().available


@pytest.fixture(scope="module", params=_backends())
def engine(request):
    if not _available(request.param):
        pytest.skip(f"{request.param}: {base.get(request.param).probe().reason}")
    with infer.Engine.load(multi_io(), "cpu", backend=request.param, cache=False) as e:
        yield e


def _arrays(dtype: np.dtype, shape: tuple[int, ...]) -> st.SearchStrategy:
    if dtype.type.__module__ == "numpy":
        return hnp.arrays(
            dtype, shape, elements={"allow_nan": False} if dtype.kind in "fc" else None
        )
    return st.just(np.zeros(shape, np.float32).astype(dtype))  # ml_dtypes: the dtype is the point


shapes = st.one_of(
    st.tuples(st.integers(0, 5), st.just(4)),  # the right rank and width, N free (0 included)
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)


@st.composite
def values(draw):
    kind = draw(st.sampled_from(["array", "array", "array", "array", "list", "scalar", "junk"]))
    if kind == "array":
        dtype = draw(st.sampled_from(DTYPES))
        return draw(_arrays(dtype, draw(shapes)))
    if kind == "list":
        shape = draw(shapes)
        return np.zeros(shape, np.int64).tolist() if draw(st.booleans()) else [[1.0, 2.0], [3.0]]
    if kind == "scalar":
        return draw(st.one_of(st.integers(-5, 5), st.floats(allow_nan=False), st.booleans()))
    return draw(
        st.sampled_from(
            [None, "text", b"bytes", object(), {"x": 1}, np.array("s"), np.array([None])]
        )
    )


@st.composite
def near_valid(draw):
    """The right names and mostly the right shapes, with dtypes that may or may not cast."""
    n = draw(st.integers(0, 6))
    castable = {
        "a": [np.float32, np.float16, np.bool_],
        "b": [np.int64, np.int32, np.int8, np.uint32, np.uint8, np.bool_],
        "mask": [np.bool_],
    }
    lossy = {
        # integers into a float input: lossless, but refused without cast=True
        "a": [np.float64, np.int8, np.int16, np.uint8, np.int32, np.int64, np.complex64],
        "b": [np.uint64, np.float32, np.float16],
        "mask": [np.uint8, np.int8, np.float32],
    }
    out = {}
    for name in INPUTS:
        pool = castable[name] if draw(st.integers(0, 9)) else lossy[name]
        dtype = np.dtype(draw(st.sampled_from(pool)))
        shape = (n, 4) if draw(st.integers(0, 9)) else draw(shapes)
        out[name] = draw(_arrays(dtype, shape))
    return out


@st.composite
def anything(draw):
    names = draw(
        st.lists(st.sampled_from([*INPUTS, "A", "", "extra", "a "]), max_size=5, unique=True)
    )
    if draw(st.booleans()):
        names = list(INPUTS)  # the right names, so the value checks are reached
    return {n: draw(values()) for n in names}


feeds = st.one_of(near_valid(), near_valid(), anything())


def _expected(feed: dict) -> dict | None:
    """What the model computes for `feed`, or None if infer must refuse it (InputError)."""
    if set(feed) != set(INPUTS):
        return None
    want = {"a": np.float32, "b": np.int64, "mask": np.bool_}
    arrays = {}
    for name, value in feed.items():
        if value is None or isinstance(value, (str, bytes, dict)) or type(value) is object:
            return None
        given = value if isinstance(value, np.ndarray) else None
        try:
            arr = np.asarray(value)
        except ValueError:
            return None
        if given is None:  # Python data takes the model's dtype when the kinds agree
            if arr.dtype == object:
                return None
            if (
                arr.dtype.kind in "biu" and np.dtype(want[name]).kind in "biuf"
            ) or arr.dtype.kind == np.dtype(want[name]).kind:
                arr = arr.astype(want[name])
        if not np.can_cast(arr.dtype, want[name], "safe"):
            return None
        if arr.dtype.kind in "iu" and np.dtype(want[name]).kind == "f":
            return None  # an integer array into a float input needs cast=True
        arr = arr.astype(want[name])
        if arr.ndim != 2 or arr.shape[1] != 4:
            return None
        arrays[name] = arr
    if len({a.shape[0] for a in arrays.values()}) != 1:
        return None  # the inputs share the dimension N
    a, b, mask = arrays["a"], arrays["b"], arrays["mask"]
    return {
        "sum": a + b.astype(np.float32),
        "masked": np.where(mask, a, np.float32(0)),
        "count": b * 2,
    }


# A Python float such as 1e300 fed to a float32 input becomes inf, as numpy casts it (infer gives
# plain Python data the model's dtype); numpy warns about it, which is expected here.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(feed=feeds)
def test_feeds_give_input_errors_or_right_answers(engine, feed):
    expected = _expected(feed)
    event("valid feed" if expected is not None else "invalid feed")
    try:
        out = engine.run(feed)
    except infer.InputError:
        assert expected is None, (
            f"refused a valid feed: { {k: getattr(v, 'dtype', type(v)) for k, v in feed.items()} }"
        )
        return
    assert expected is not None, f"accepted an invalid feed: {feed!r}"
    assert set(out) == set(expected)
    if engine.backend == "openvino" and _beyond_int32(expected["count"]):
        # OpenVINO's CPU plugin computes int64 in int32 (nothing turns that off in 2026.4):
        # b and 2*b come back wrapped. test_openvino pins that limit; only `masked` is checked.
        event("openvino: int64 values beyond int32")
        expected = {"masked": expected["masked"]}
    for name, want in expected.items():
        assert out[name].dtype == want.dtype, name
        np.testing.assert_array_equal(out[name], want, err_msg=name)


def _beyond_int32(values: np.ndarray) -> bool:
    info = np.iinfo(np.int32)
    return bool(values.size) and bool((values.min() < info.min) | (values.max() > info.max))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(outputs=st.lists(st.sampled_from(["sum", "masked", "count", "nope", ""]), max_size=4))
def test_requested_outputs_are_checked(engine, outputs):
    feed = {
        "a": np.ones((2, 4), np.float32),
        "b": np.ones((2, 4), np.int64),
        "mask": np.ones((2, 4), bool),
    }
    if not outputs or set(outputs) - {"sum", "masked", "count"}:
        try:
            got = engine.run(feed, outputs)
        except infer.InputError:
            assert outputs and set(outputs) - {"sum", "masked", "count"}
            return
        assert not outputs and set(got) == {"sum", "masked", "count"}
        return
    got = engine.run(feed, outputs)
    assert list(got) == list(dict.fromkeys(outputs)) or set(got) == set(outputs)
