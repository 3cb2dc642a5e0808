"""Device arrays: recognising them (CAI, DLPack), checking them as feeds, and exporting ours.

There is no GPU here, so producers are faked only at the protocol boundary: objects that
expose `__cuda_array_interface__`, or `__dlpack__` capsules over host memory that claim a
CUDA device. NumPy is a real DLPack consumer and producer for the CPU, which exercises the
same capsule code. The GPU tests repeat this with PyTorch and CuPy on a real device.
"""

from __future__ import annotations

import ctypes
import gc
import weakref

import ml_dtypes
import numpy as np
import pytest

from infer import InputError
from infer import device_array as da
from infer.backends._feed_check import FeedCheck
from infer.binding import device_shape, device_view
from infer.cuda import CudaError
from infer.device import probe_hardware
from infer.tensors import TensorSpec


class CAI:
    """An object exposing only `__cuda_array_interface__` (as Numba, CuPy and torch do)."""

    def __init__(
        self, shape, typestr="<f4", *, strides=None, ptr=0x7F0000, stream=None, version=3, mask=None
    ):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, False),
            "strides": strides,
            "version": version,
        }
        if stream is not None:
            self.__cuda_array_interface__["stream"] = stream
        if mask is not None:
            self.__cuda_array_interface__["mask"] = mask


class CpuTensor:
    """Like a CPU torch tensor: the CAI attribute exists on the type but raises."""

    @property
    def __cuda_array_interface__(self):
        raise AttributeError("Can't get __cuda_array_interface__ on non-CUDA tensor")

    def __array__(self, dtype=None, copy=None):
        return np.zeros(2, np.float32)


class DLPackOnly:
    """A DLPack producer that says its memory is on a CUDA device (host memory underneath)."""

    def __init__(self, array, device=(da.DL_CUDA, 0), with_shape=True):
        self.array = array
        self.device = device
        self.streams = []
        if with_shape:
            self.shape = array.shape

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        return da.to_dlpack(
            self.array.ctypes.data, self.array.shape, self.array.dtype, self.device, self.array
        )


def exports() -> int:
    gc.collect()
    return len(da._exports)


# -- recognising ------------------------------------------------------------------------------


def test_what_counts_as_a_device_array():
    assert da.is_device_array(CAI((2, 3)))
    assert da.is_device_array(DLPackOnly(np.zeros(3, np.float32)))
    assert not da.is_device_array(np.zeros(3))
    assert not da.is_device_array(CpuTensor())
    assert not da.is_device_array([1.0, 2.0])
    assert not da.is_device_array(DLPackOnly(np.zeros(3), device=(da.DL_CPU, 0)))
    assert da.is_device_array(DLPackOnly(np.zeros(3), device=(da.DL_CUDA_MANAGED, 0)))


def test_feeds_with_device_arrays_are_routed():
    check = FeedCheck([TensorSpec("x", (2,), F64)], cast=False, reader=None)
    host = np.zeros(2)
    assert check({"x": host})["x"] is host
    device = CAI((2,), "<f8")
    assert check({"x": device})["x"] is device  # passed through, to be read in place
    with pytest.raises(InputError, match="feeds must be a dict"):
        check([CAI((2,))])  # not a dict: the validator reports it


def test_a_cai_view():
    v = da.view(CAI((2, 3), "<f2", ptr=0x1000, stream=7))
    assert (v.ptr, v.shape, v.dtype, v.stream, v.device) == (0x1000, (2, 3), np.float16, 7, None)
    assert v.contiguous and v.nbytes == 12
    assert da.view(CAI((2, 3), stream=7, version=2)).stream is None  # streams came with v3


def test_cai_strides_decide_contiguity():
    assert da.view(CAI((2, 3), strides=(12, 4))).contiguous
    assert not da.view(CAI((2, 3), strides=(4, 8))).contiguous  # a transpose
    assert da.view(CAI((1, 3), strides=(999, 4))).contiguous  # size-1 dims carry any stride
    assert da.view(CAI((0, 3), strides=(4, 8))).contiguous


def test_bad_cai_arrays_are_refused():
    with pytest.raises(ValueError, match="masked"):
        da.view(CAI((2,), mask=CAI((2,), "|b1")))
    with pytest.raises(ValueError, match="stream 0"):
        da.view(CAI((2,), stream=0))
    with pytest.raises(ValueError, match="big-endian"):
        da.view(CAI((2,), ">f4"))


def test_a_dlpack_view_takes_the_consumer_stream_and_releases_the_tensor():
    host = np.arange(6, dtype=np.int32).reshape(2, 3)
    producer = DLPackOnly(host, device=(da.DL_CUDA, 1))
    before = exports()
    v = da.view(producer, stream=0xBEEF)
    assert producer.streams == [0xBEEF]
    assert (v.ptr, v.shape, v.dtype, v.device, v.stream) == (
        host.ctypes.data,
        (2, 3),
        np.int32,
        1,
        None,
    )
    assert v.source is producer
    assert exports() == before + 1  # held until the consumer is done
    v.close()
    v.close()  # idempotent
    assert exports() == before


def test_a_numpy_dlpack_capsule_is_read_with_its_strides():
    base = np.zeros((4, 6), np.int64)[:, ::2]

    class NumpyProducer:
        def __dlpack_device__(self):
            return base.__dlpack_device__()

        def __dlpack__(self, **kw):
            return base.__dlpack__()

    with pytest.raises(TypeError, match="not a CUDA device array"):
        da.view(NumpyProducer())  # host memory is not a device array...
    v = da._from_dlpack(NumpyProducer(), None)  # ...but its capsule is read the same way
    assert v.shape == (4, 3) and v.strides == (48, 16) and not v.contiguous
    assert v.ptr == base.ctypes.data and v.device is None
    v.close()


def test_dlpack_is_preferred_to_cai():
    """PyTorch offers both, and only DLPack carries the stream to order the producer's work."""
    host = np.zeros((2, 2), np.float32)

    class Both(DLPackOnly):
        __cuda_array_interface__ = CAI((2, 2)).__cuda_array_interface__

    producer = Both(host)
    v = da.view(producer, stream=42)
    assert producer.streams == [42] and v.ptr == host.ctypes.data
    v.close()


# -- our arrays, exported -----------------------------------------------------------------------


def test_numpy_consumes_our_capsules_without_a_copy():
    class Owner:
        pass

    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    owner = Owner()
    owner.data = data
    alive = weakref.ref(owner)

    class Producer:
        def __init__(self, owner):
            self.owner = owner

        def __dlpack_device__(self):
            return (da.DL_CPU, 0)

        def __dlpack__(self, **kw):
            return da.to_dlpack(
                data.ctypes.data, data.shape, data.dtype, (da.DL_CPU, 0), self.owner
            )

    before = exports()
    out = np.from_dlpack(Producer(owner))
    del owner
    gc.collect()
    assert np.shares_memory(out, data) and out.tolist() == data.tolist()
    assert alive() is not None  # the consumer's array keeps our memory alive
    del out
    assert exports() == before and alive() is None


def test_an_unconsumed_capsule_releases_its_tensor():
    data = np.zeros(3, np.uint8)
    before = exports()
    capsule = da.to_dlpack(data.ctypes.data, data.shape, data.dtype, (da.DL_CUDA, 0), data)
    assert exports() == before + 1
    del capsule
    assert exports() == before


@pytest.mark.parametrize(
    "dtype",
    [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
     np.float16, np.float32, np.float64, np.bool_, ml_dtypes.bfloat16],
)  # fmt: skip
def test_every_dtype_survives_the_round_trip(dtype):
    host = np.ones((2, 2), dtype)
    v = da.view(DLPackOnly(host))
    assert v.dtype == np.dtype(dtype) and v.shape == (2, 2)
    v.close()


def test_a_device_array_speaks_both_protocols():
    memory = bytearray(64)
    ptr = ctypes.addressof((ctypes.c_char * 64).from_buffer(memory))
    arr = da.DeviceArray(ptr, (2, 4), np.float32, 1, memory)
    assert arr.__cuda_array_interface__ == {
        "shape": (2, 4),
        "typestr": "<f4",
        "data": (ptr, False),
        "strides": None,
        "version": 3,
        "stream": None,
    }
    assert arr.__dlpack_device__() == (da.DL_CUDA, 1)
    assert (arr.ndim, arr.size, arr.nbytes, len(arr)) == (2, 8, 32, 2)
    assert repr(arr) == "DeviceArray(shape=[2, 4], dtype=float32, device='cuda:1')"

    class Wrapper:  # a consumer sees the array through its protocol only
        shape = (2, 4)

        def __dlpack_device__(self):
            return arr.__dlpack_device__()

        def __dlpack__(self, stream=None):
            return arr.__dlpack__(stream=stream)

    v = da.view(Wrapper(), stream=5)
    assert (v.ptr, v.shape, v.dtype, v.device) == (ptr, (2, 4), np.float32, 1)
    v.close()
    with pytest.raises(BufferError, match="without copying"):
        arr.__dlpack__(copy=True)
    with pytest.raises(BufferError, match="cuda:1"):
        arr.__dlpack__(dl_device=(da.DL_CUDA, 0))


@pytest.mark.skipif(
    any(d.kind == "cuda" for d in probe_hardware().devices), reason="this machine has a GPU"
)
def test_copying_a_device_array_to_the_host_needs_cuda():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    arr = da.DeviceArray(0x1000, (2,), np.float32, 0, None)
    with pytest.raises(CudaError, match=r"cudaMemcpy\(D2H\) failed"):
        arr.numpy()


# -- device arrays as feeds -------------------------------------------------------------------


F32, I64, F64 = np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.float64)
SPECS = [TensorSpec("x", ("N", 3), F32), TensorSpec("ids", ("N",), I64)]


@pytest.fixture
def feeds():
    """The edge's one feed check, as a session that reads device arrays in place has it."""
    return FeedCheck(SPECS, cast=False, reader=None)


def test_host_feeds_beside_device_arrays_are_validated_as_usual(feeds):
    x = CAI((2, 3))
    checked = feeds({"x": x, "ids": np.array([1, 2], np.int32)})
    assert checked["x"] is x
    assert checked["ids"].dtype == np.int64  # the lossless cast every backend does
    with pytest.raises(InputError, match=r"expected dtype int64.*got float64"):
        feeds({"x": x, "ids": np.array([1.0, 2.0])})


def test_missing_or_unknown_inputs_read_as_everywhere_else(feeds):
    with pytest.raises(InputError, match=r"missing input\(s\) \['ids'\]"):
        feeds({"x": CAI((2, 3))})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['y'\]"):
        feeds({"x": CAI((2, 3)), "ids": np.zeros(2, np.int64), "y": CAI((1,))})


def test_device_shapes_are_checked_before_anything_runs(feeds):
    x = SPECS[0]
    assert device_shape(x, CAI((5, 3))) == (5, 3)
    with pytest.raises(
        InputError,
        match=r"input 'x': expected rank 2 \(float32\[N, 3\]\), got a device array of shape \[5\]",
    ):
        device_shape(x, CAI((5,)))
    with pytest.raises(InputError, match=r"dimension 1 must be 3 .* shape \[5, 4\]"):
        device_shape(x, CAI((5, 4)))
    with pytest.raises(InputError, match=r"dimension 1 must be 3 .* shape \[5, 4\]"):
        feeds({"x": CAI((5, 4)), "ids": np.zeros(5, np.int64)})  # the check runs it
    assert device_shape(x, DLPackOnly(np.zeros((2, 3), np.float32))) == (2, 3)
    with pytest.raises(InputError, match="without a shape attribute"):
        device_shape(x, DLPackOnly(np.zeros((2, 3), np.float32), with_shape=False))


def test_device_arrays_must_already_match(feeds):
    x = SPECS[0]
    device_view(x, CAI((2, 3)), device=0).close()
    with pytest.raises(InputError, match=r"float32\[N, 3\].*holds float16.*cast it on the device"):
        device_view(x, CAI((2, 3), "<f2"), device=0)
    with pytest.raises(InputError, match=r"not C-contiguous \(strides \[4, 8\] bytes"):
        device_view(x, CAI((2, 3), strides=(4, 8)), device=0)
    other = DLPackOnly(np.zeros((2, 3), np.float32), device=(da.DL_CUDA, 1))
    with pytest.raises(InputError, match="input 'x' is on cuda:1, but this engine runs on cuda:0"):
        device_view(x, other, device=0)
