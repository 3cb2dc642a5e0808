"""I/O binding: bound runs equal unbound ones, buffers are reused (no allocation per call),
shape changes reallocate, caller-given outputs are written in place, device arrays are
recognised and refused where the backend reads host memory."""

from __future__ import annotations

import ctypes
import logging
import threading
import tracemalloc

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import infer
from infer import EngineClosed, InputError, OptionError, Preprocess
from infer.backends.base import HostBinding, parse_outputs
from infer.backends.onnxruntime import OnnxRuntimeBinding
from infer.binding import device_view, host_array
from infer.device_array import DeviceArray, DeviceView

from . import models


def _rng(seed=0):
    return np.random.default_rng(seed)


def _multi_feeds(n, seed=0):
    r = _rng(seed)
    return {
        "a": r.standard_normal((n, 4)).astype(np.float32),
        "b": r.integers(-5, 5, (n, 4)),
        "mask": r.random((n, 4)) > 0.5,
    }


def nonzero() -> object:
    """x: float32[N] -> y = NonZero(x): int64[1, count], its shape set by the values."""
    return models._model(
        [helper.make_node("NonZero", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1, "count"])],
    )


@pytest.fixture(params=["onnxruntime", "reference"])
def backend(request):
    return request.param


def test_bind_gives_the_backends_binding():
    with infer.Engine.load(models.relu(), backend="onnxruntime") as e, e.bind() as b:
        assert isinstance(b, OnnxRuntimeBinding)
    with infer.Engine.load(models.relu(), backend="reference") as e, e.bind() as b:
        assert isinstance(b, HostBinding)  # the generic default


def test_bound_runs_equal_unbound_runs(backend):
    with infer.Engine.load(models.multi_io(), backend=backend) as engine, engine.bind() as b:
        first = None
        for seed in range(5):
            feeds = _multi_feeds(3, seed)
            want = engine.run(feeds)
            got = b.run(feeds)
            assert list(got) == list(want)
            for name in want:
                assert got[name].dtype == want[name].dtype
                np.testing.assert_array_equal(got[name], want[name])
            if first is None:
                first = got
            else:  # the same buffers every run
                assert all(got[n] is first[n] for n in got)


def test_ort_binding_writes_in_place_and_allocates_nothing_per_call():
    width = 1 << 16  # 256 KiB in and out: a per-call allocation cannot hide under the bound
    engine = infer.Engine.load(models.relu(batch=1, width=width), backend="onnxruntime")
    x = _rng().standard_normal((1, width)).astype(np.float32)
    feeds = {"x": x}
    b = engine.bind()
    b.run(feeds)  # first run with these shapes sizes the buffers

    def peak_growth(call) -> tuple[int, int]:
        tracemalloc.start()
        try:
            for _ in range(1000):  # Python's free lists refill, now traced, then hold steady
                call()
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for i in range(100):
                x[0, :2] = (i, -i)
                call()
            after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak - before, after - before

    bound_peak, bound_kept = peak_growth(lambda: b.run(feeds))
    assert bound_peak < 4 * 1024, f"bound runs allocated {bound_peak} bytes"
    assert bound_kept < 1024
    # The control: handing back a fresh numpy output each call (what a copying binding does)
    # shows up. ONNX Runtime's own allocations don't (they bypass tracemalloc), hence also:
    copy_peak, _ = peak_growth(lambda: engine.run(feeds)["y"].copy())
    assert copy_peak >= x.nbytes
    y = b.run(feeds)["y"]
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert y is b.run(feeds)["y"]
    # ... the runtime writes straight into that numpy buffer: it is the bound OrtValue's memory.
    assert b._owned["y"].data_ptr() == y.ctypes.data


def test_shape_change_reallocates_and_says_so(backend, caplog):
    engine = infer.Engine.load(models.relu(), backend=backend)
    b = engine.bind()
    with caplog.at_level(logging.DEBUG, logger="infer"):
        y1 = b.run({"x": np.ones((2, 3), np.float32)})["y"]
        caplog.clear()
        assert b.run({"x": np.ones((2, 3), np.float32)})["y"] is y1
        assert not [r for r in caplog.records if "allocated" in r.getMessage()]
        y2 = b.run({"x": -np.ones((5, 3), np.float32)})["y"]
    assert [
        r for r in caplog.records if "allocated" in r.getMessage() and "[5, 3]" in r.getMessage()
    ]
    assert y2 is not y1 and y2.shape == (5, 3) and not y2.any()
    x = _rng().standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(b.run({"x": x})["y"], np.maximum(x, 0))


def test_returned_arrays_are_overwritten_unless_copied(backend):
    b = infer.Engine.load(models.relu(), backend=backend).bind()
    kept = b.run({"x": np.full((1, 3), 1, np.float32)})["y"]
    copied = b.run({"x": np.full((1, 3), 2, np.float32)}, copy=True)["y"]
    b.run({"x": np.full((1, 3), 3, np.float32)})
    assert kept[0, 0] == 3  # the bound buffer, valid until the next run
    assert copied[0, 0] == 2 and copied is not kept


def test_input_refilled_in_place_is_read_again():
    b = infer.Engine.load(models.relu(), backend="onnxruntime").bind()
    x = np.zeros((1, 3), np.float32)
    for value in (1.0, 2.0, -1.0, 7.0):
        x[...] = value
        assert b.run({"x": x})["y"][0, 0] == max(value, 0)


def test_input_reshaped_in_place_is_rebound():
    b = infer.Engine.load(models.relu(), backend="onnxruntime").bind()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert b.run({"x": x})["y"].shape == (2, 3)
    x.shape = (1, 6)  # same object, another shape: must not run with the old one
    with pytest.raises(InputError, match="dimension 1 must be 3"):
        b.run({"x": x})
    x.shape = (2, 3)
    np.testing.assert_array_equal(b.run({"x": x})["y"], np.arange(6).reshape(2, 3))


def test_outputs_into_preallocated_arrays(backend):
    engine = infer.Engine.load(models.multi_io(), backend=backend)
    total = np.empty((3, 4), np.float32)
    with engine.bind(outputs={"sum": total}) as b:
        for seed in range(3):
            feeds = _multi_feeds(3, seed)
            got = b.run(feeds)
            assert got["sum"] is total
            np.testing.assert_array_equal(total, engine.run(feeds)["sum"])
        with pytest.raises(InputError, match=r"output 'sum'.*\[4, 4\].*\[3, 4\]|does not fit"):
            b.run(_multi_feeds(4))


@pytest.mark.parametrize(
    "outputs, error, match",
    [
        ({"sum": np.empty((3, 4), np.float64)}, OptionError, "output 'sum' is float32"),
        ({"sum": np.empty((3, 5), np.float32)}, OptionError, r"has shape \[3, 5\]"),
        ({"sum": np.empty((4, 3), np.float32).T}, OptionError, "C-contiguous"),
        ({"total": np.empty((3, 4), np.float32)}, OptionError, r"unknown output\(s\) \['total'\]"),
        ({"sum": [[0.0] * 4] * 3}, OptionError, "must be a numpy or device array"),
        ("hosted", OptionError, "bind\\(outputs='hosted'\\) is not valid"),
        (["sum"], OptionError, "got list"),
    ],
)
def test_bad_outputs_argument(backend, outputs, error, match):
    engine = infer.Engine.load(models.multi_io(), backend=backend)
    with pytest.raises(error, match=match):
        engine.bind(outputs=outputs)


def test_device_outputs_on_the_cpu_are_host_arrays(backend):
    engine = infer.Engine.load(models.relu(), backend=backend)
    with engine.bind(outputs="device") as b:
        y = b.run({"x": np.ones((1, 3), np.float32)})["y"]
    assert isinstance(y, np.ndarray)


def test_bfloat16_outputs_are_bound():
    engine = infer.Engine.load(models.bf16_cast(), backend="onnxruntime")
    x = _rng().standard_normal(7).astype(np.float32)
    with engine.bind() as b:
        got = b.run({"x": x})
        assert got["y"].dtype == ml_dtypes.bfloat16
        want = engine.run({"x": x})
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_outputs_sized_by_values_are_followed():
    engine = infer.Engine.load(nonzero(), backend="onnxruntime")
    b = engine.bind()
    for values in ([1, 0, 2], [0, 0, 3], [1, 1, 1], [0, 0, 0], [5, 0, 5]):
        x = np.array(values, np.float32)
        np.testing.assert_array_equal(b.run({"x": x})["y"], np.array([np.nonzero(x)[0]]))


def test_one_binding_per_thread():
    engine = infer.Engine.load(models.cnn(), backend="onnxruntime")
    xs = [_rng(i).standard_normal((2, 3, 32, 32)).astype(np.float32) for i in range(4)]
    want = [engine.run({"input": x})["logits"] for x in xs]
    errors = []

    def work(i):
        try:
            with engine.bind() as b:
                for _ in range(30):
                    np.testing.assert_array_equal(b.run({"input": xs[i]})["logits"], want[i])
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_bound_preprocessed_frames():
    engine = infer.Engine.load(
        models.cnn(size=64), backend="onnxruntime", preprocess=Preprocess.image()
    )
    frames = _rng().integers(0, 256, (3, 1, 120, 160, 3), dtype=np.uint8)
    with engine.bind() as b:
        for f in frames:
            np.testing.assert_array_equal(b.run({"input": f})["logits"], engine(f))


def test_closed_binding_and_engine(backend):
    engine = infer.Engine.load(models.relu(), backend=backend)
    feeds = {"x": np.ones((1, 3), np.float32)}
    b = engine.bind()
    b.close()
    with pytest.raises(EngineClosed):
        b.run(feeds)
    b2 = engine.bind()
    engine.close()
    with pytest.raises(EngineClosed):
        b2.run(feeds)
    with pytest.raises(EngineClosed):
        engine.bind()


def test_bad_feeds_are_input_errors(backend):
    b = infer.Engine.load(models.relu(), backend=backend).bind()
    with pytest.raises(InputError, match=r"missing input\(s\) \['x'\]"):
        b.run({"z": np.ones((1, 3), np.float32)})
    with pytest.raises(InputError, match="expected dtype float32"):
        b.run({"x": np.ones((1, 3), np.complex64)})


# -- device arrays ------------------------------------------------------------------------------


class FakeCudaArray:
    """Only the CUDA array interface (as CuPy or Numba expose it); the memory is never read."""

    def __init__(self, shape, dtype, ptr=0x7F0000000000):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": np.dtype(dtype).str,
            "data": (ptr, False),
            "strides": None,
            "version": 3,
        }


class _DLManagedTensor(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_void_p),
        ("device_type", ctypes.c_int32),
        ("device_id", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("code", ctypes.c_uint8),
        ("bits", ctypes.c_uint8),
        ("lanes", ctypes.c_uint16),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.c_void_p),
        ("byte_offset", ctypes.c_uint64),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
    )


class FakeDLPackCuda:
    """A producer of DLPack capsules that say 'CUDA device 1' (as torch.cuda tensors do)."""

    def __init__(self, shape, code=2, bits=32):
        self._shape = (ctypes.c_int64 * len(shape))(*shape)
        self._tensor = _DLManagedTensor(
            0x7F0000001000, 2, 1, len(shape), code, bits, 1, self._shape, None, 16, None, None
        )
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = (
            ctypes.py_object,
            (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p),
        )
        self._new = new

    def __dlpack_device__(self):
        return (2, 1)

    def __dlpack__(self, stream=None):
        return self._new(ctypes.addressof(self._tensor), b"dltensor", None)


def test_device_inputs_are_checked_where_they_are_read():
    """device_view: what a GPU binding does before binding a device input by pointer (the
    arrays here only describe memory through their protocols; nothing reads it)."""
    session = infer.Engine.load(models.relu(), backend="onnxruntime")._session
    spec = session.inputs[0]
    view = device_view(spec, FakeCudaArray((2, 3), np.float32))
    assert isinstance(view, DeviceView)
    assert (view.ptr, view.shape, view.dtype) == (0x7F0000000000, (2, 3), np.float32)
    view.close()
    view = device_view(spec, FakeDLPackCuda((4, 3)))
    assert (view.ptr, view.shape, view.device) == (0x7F0000001010, (4, 3), 1)
    view.close()
    with pytest.raises(InputError, match=r"input 'x'.*holds float16.*cast it on the device"):
        device_view(spec, FakeCudaArray((1, 3), np.float16))
    with pytest.raises(InputError, match=r"input 'x': expected float32\[N, 3\].*shape \[1, 4\]"):
        device_view(spec, FakeCudaArray((1, 4), np.float32))
    strided = FakeCudaArray((2, 3), np.float32)
    strided.__cuda_array_interface__["strides"] = (4, 8)
    with pytest.raises(InputError, match="not C-contiguous"):
        device_view(spec, strided)


def test_host_dlpack_objects_are_viewed_not_copied():
    class HostTensor:  # a CPU tensor from some framework that speaks DLPack only
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    view = host_array(HostTensor(x))
    assert np.shares_memory(view, x)
    b = infer.Engine.load(models.relu(), backend="onnxruntime").bind()
    np.testing.assert_array_equal(b.run({"x": HostTensor(x - 3)})["y"], np.maximum(x - 3, 0))


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda: FakeCudaArray((1, 3), np.float32), "cuda"),
        (lambda: FakeDLPackCuda((1, 3)), "cuda:1"),
    ],
)
def test_cpu_backends_refuse_device_inputs_in_words(backend, make, where):
    b = infer.Engine.load(models.relu(), backend=backend).bind()
    with pytest.raises(
        InputError, match=rf"input 'x' is in {where} memory.*on cpu.*pass a numpy array"
    ):
        b.run({"x": make()})
    x = np.ones((1, 3), np.float32)  # and the binding still works with host arrays after
    np.testing.assert_array_equal(b.run({"x": x})["y"], x)


def test_device_output_arrays_are_refused_on_the_cpu(backend):
    engine = infer.Engine.load(models.relu(), backend=backend)
    with pytest.raises(OptionError, match="writes host memory only"):
        engine.bind(outputs={"y": FakeCudaArray((1, 3), np.float32)})


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu and an NVIDIA GPU (CUDAExecutionProvider)",
)
def test_cuda_device_outputs_stay_on_the_gpu():
    engine = infer.Engine.load(models.cnn(), device="cuda", backend="onnxruntime[cuda]")
    x = _rng().standard_normal((2, 3, 32, 32)).astype(np.float32)
    with engine.bind(outputs="device") as b:
        y = b.run({"input": x})["logits"]
        assert isinstance(y, DeviceArray) and y.device == 0
        assert y.__cuda_array_interface__["shape"] == (2, 10)
        np.testing.assert_allclose(y.numpy(), engine.run({"input": x})["logits"], rtol=1e-4)
        # and a device output fed back as a device input of the same engine's binding
        assert b.run({"input": x})["logits"] is y


def test_device_outputs_on_a_gpu_session_need_a_device_binding():
    """parse_outputs on a CUDA session (stood in for: no GPU here): 'device' is refused by
    bindings that write host memory only and accepted by those that can keep outputs there."""
    from types import SimpleNamespace

    from infer.device import Device
    from infer.tensors import TensorSpec

    gpu = SimpleNamespace(
        backend="somebackend",
        device=Device("cuda", 0),
        outputs=[TensorSpec("y", ("N", 3), np.dtype(np.float32))],
    )
    with pytest.raises(OptionError, match="returns host arrays only"):
        parse_outputs(gpu, "device")
    assert parse_outputs(gpu, "device", device_outputs=True).device
    assert not parse_outputs(gpu, "host", device_outputs=True).device
    plan = parse_outputs(gpu, {"y": FakeCudaArray((2, 3), np.float32)}, device_outputs=True)
    assert isinstance(plan.given["y"], DeviceView) and plan.given["y"].shape == (2, 3)
    with pytest.raises(OptionError, match=r"output 'y' is float32\[N, 3\].*float16"):
        parse_outputs(gpu, {"y": FakeCudaArray((2, 3), np.float16)}, device_outputs=True)


def test_a_binding_says_what_it_binds(backend):
    with infer.Engine.load(models.multi_io(), backend=backend) as e:
        total = np.empty((3, 4), np.float32)
        b = e.bind(outputs={"sum": total})
        text = repr(b)
        assert text.startswith(f"<{type(b).__name__} {backend} on cpu")
        assert "host outputs, into given arrays for ['sum']" in text
        b.close()
        assert repr(b).endswith("(closed)>")


def test_a_binding_keeps_its_engine_alive():
    import gc

    b = infer.Engine.load(models.relu(), backend="onnxruntime").bind()  # no engine reference
    gc.collect()
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(b.run({"x": x})["y"], x)
