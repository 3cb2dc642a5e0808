"""The TensorRT backend and its CUDA paths on a real NVIDIA GPU (marked `gpu`).

Three levels, each skipped with its reason where the machine lacks it:
- CUDA through cuda-python: device and pinned memory, copies, streams and events;
- zero copy with PyTorch and CuPy (CAI and DLPack, both directions);
- TensorRT itself: builds (fp32, fp16, int8), parity with ONNX Runtime on the CPU, dynamic
  shapes, the plan cache and plan files, device inputs and outputs, threads.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import json
import shutil
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import infer
from infer import InputError, OptionError
from infer import device_array as da
from infer.backends import base

from .models import cnn, relu

pytestmark = pytest.mark.gpu


def _cuda_reason() -> str | None:
    try:
        from infer import cuda
    except Exception as e:  # pragma: no cover
        return str(e)
    return cuda.unavailable()


CUDA_REASON = _cuda_reason()
needs_cuda = pytest.mark.skipif(
    CUDA_REASON is not None, reason=f"no usable CUDA here: {CUDA_REASON}"
)
TRT_INFO = base.get("tensorrt").probe()
needs_trt = pytest.mark.skipif(
    not TRT_INFO.available, reason=f"the tensorrt backend is unavailable: {TRT_INFO.reason}"
)
HAS_PRECISION_TRANSFORM = importlib.util.find_spec("infer.transforms.precision") is not None
needs_precision = pytest.mark.skipif(
    not HAS_PRECISION_TRANSFORM,
    reason="infer.transforms.precision (the shared fp16/int8 transform) is not in this tree",
)


def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch


def cupy():
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        pytest.skip(f"cupy cannot use the GPU: {e}")
    return cp


# -- CUDA ---------------------------------------------------------------------------------------


@needs_cuda
def test_the_hardware_probe_sees_the_gpu():
    gpus = [d for d in infer.devices() if d.kind == "cuda"]
    assert gpus, "the CUDA runtime works, so the probe must list a GPU"
    g = gpus[0]
    assert g.name and g.capabilities.compute_capability and g.capabilities.memory_bytes > 0
    assert "fp16" in g.capabilities.precisions


@needs_cuda
def test_memory_round_trip_through_pinned_staging_and_streams():
    from infer import cuda

    cuda.set_device(0)
    data = np.arange(1 << 20, dtype=np.float32)
    n = data.nbytes
    pinned_in, pinned_out = cuda.HostMemory(n), cuda.HostMemory(n)
    pinned_in.array(np.float32, data.shape)[:] = data
    a, b = cuda.DeviceMemory(n), cuda.DeviceMemory(n)
    first, second = cuda.Stream(), cuda.Stream()
    event = cuda.Event()
    cuda.copy_to_device(a.ptr, pinned_in.ptr, n, first.handle)
    event.record(first.handle)
    second.wait(event)  # the device-to-device copy must see the upload
    cuda.copy_on_device(b.ptr, a.ptr, n, second.handle)
    cuda.copy_to_host(pinned_out.ptr, b.ptr, n, second.handle)
    second.synchronize()
    np.testing.assert_array_equal(pinned_out.array(np.float32, data.shape), data)
    assert cuda.pointer_device(a.ptr) == 0
    assert cuda.pointer_device(data.ctypes.data) is None
    for thing in (a, b, pinned_in, pinned_out, first, second, event):
        (thing.close if hasattr(thing, "close") else thing.free)()


@needs_cuda
def test_grown_buffers_keep_handed_out_views_valid():
    from infer import cuda

    g = cuda.Growable(cuda.HostMemory)
    small = g.ensure(16)
    view = small.array(np.uint8, (16,))
    view[:] = 7
    del small
    bigger = g.ensure(1 << 16)  # reallocates; the old block lives on in `view`
    assert bigger.nbytes >= 1 << 16
    assert view.tolist() == [7] * 16
    g.free()


# -- zero copy ----------------------------------------------------------------------------------


def _device_array_with(data: np.ndarray):
    from infer import cuda

    memory = cuda.DeviceMemory(data.nbytes)
    stream = cuda.Stream()
    cuda.copy_to_device(memory.ptr, data.ctypes.data, data.nbytes, stream.handle)
    stream.synchronize()
    stream.close()
    return da.DeviceArray(memory.ptr, data.shape, data.dtype, 0, memory)


@needs_cuda
def test_our_device_arrays_go_to_torch_without_a_copy():
    torch = torch_cuda()
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    arr = _device_array_with(data)
    via_cai = torch.as_tensor(arr, device="cuda")
    via_dlpack = torch.from_dlpack(arr)
    assert via_cai.data_ptr() == arr.ptr == via_dlpack.data_ptr()
    np.testing.assert_array_equal(via_dlpack.cpu().numpy(), data)
    via_dlpack.add_(1)  # same memory: the change shows through every view
    torch.cuda.synchronize()
    np.testing.assert_array_equal(arr.numpy(), data + 1)


@needs_cuda
def test_our_device_arrays_go_to_cupy_without_a_copy():
    cp = cupy()
    data = np.arange(6, dtype=np.int64).reshape(2, 3)
    arr = _device_array_with(data)
    assert cp.asarray(arr).data.ptr == arr.ptr
    assert cp.from_dlpack(arr).data.ptr == arr.ptr
    np.testing.assert_array_equal(cp.asnumpy(cp.from_dlpack(arr)), data)


@needs_cuda
def test_torch_tensors_are_seen_in_place():
    torch = torch_cuda()
    from infer import cuda

    t = torch.arange(12, dtype=torch.float16, device="cuda").reshape(3, 4)
    assert da.is_device_array(t) and not da.is_device_array(t.cpu())
    stream = cuda.Stream()
    v = da.view(t, stream.handle)  # DLPack: torch orders its stream before ours
    assert (v.ptr, v.shape, v.dtype, v.device) == (t.data_ptr(), (3, 4), np.float16, 0)
    v.close()

    class CAIOnly:  # torch's CAI (version 2, no stream) when DLPack is not offered
        __cuda_array_interface__ = t.__cuda_array_interface__

    v = da.view(CAIOnly())
    assert (v.ptr, v.shape, v.dtype) == (t.data_ptr(), (3, 4), np.float16)
    transposed = da.view(t.t(), stream.handle)
    assert not transposed.contiguous
    transposed.close()


@needs_cuda
def test_cupy_arrays_are_seen_in_place():
    cp = cupy()
    from infer import cuda

    a = cp.arange(8, dtype=cp.int32)
    stream = cuda.Stream()  # alive while cupy orders its work before it
    v = da.view(a, stream.handle)
    assert (v.ptr, v.shape, v.dtype, v.device) == (a.data.ptr, (8,), np.int32, 0)
    v.close()

    class CAIOnly:
        __cuda_array_interface__ = a.__cuda_array_interface__

    v = da.view(CAIOnly())
    assert (v.ptr, v.shape) == (a.data.ptr, (8,))


# -- TensorRT -----------------------------------------------------------------------------------


def ort_cpu(model, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def images(batch, size=32, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def bind(engine, outputs="host"):
    """engine.bind() where the Engine has it; this backend's own session binding either way."""
    return engine.bind(outputs) if hasattr(engine, "bind") else engine._session.bind(outputs)


def load(model, **kw):
    kw.setdefault("device", "cuda")
    return infer.Engine.load(model, backend="tensorrt", **kw)


@needs_trt
def test_fp32_build_matches_onnxruntime_and_dynamic_batch():
    model = cnn()
    progress = []
    with load(model, progress=lambda stage, done, total: progress.append(stage)) as engine:
        assert engine.backend == "tensorrt" and engine.precision == "fp32"
        chosen = engine.selection[-1]
        assert chosen.verdict == "selected" and "profile: input: min 1x3x32x32" in chosen.reason
        for batch in (1, 3, 8):
            x = images(batch, seed=batch)
            np.testing.assert_allclose(
                engine.run({"input": x})["logits"],
                ort_cpu(model, {"input": x})["logits"],
                rtol=1e-3,
                atol=1e-4,
            )
        with pytest.raises(InputError, match=r"input 'input' has shape \[9, 3, 32, 32\].*above 8"):
            engine.run({"input": images(9)})
        assert engine.inputs[0].shape == ("N", 3, 32, 32)
    assert any(s.startswith("tensorrt:") for s in progress)


@needs_trt
def test_open_dimensions_need_shapes_and_take_them():
    model = cnn(size="S")
    with pytest.raises(OptionError, match="shapes="):
        load(model)
    shapes = {"input": ((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 96, 96))}
    with load(model, shapes=shapes) as engine:
        for size in (32, 48, 96):
            x = images(2, size)
            np.testing.assert_allclose(
                engine.run({"input": x})["logits"],
                ort_cpu(model, {"input": x})["logits"],
                rtol=1e-3,
                atol=1e-4,
            )
        with pytest.raises(InputError, match="dimension 2 is 128, above 96"):
            engine.run({"input": images(1, 128)})


@needs_trt
def test_the_plan_cache_reuses_and_rebuilds(tmp_path):
    model = cnn(seed=3)
    with load(model, cache_dir=tmp_path) as engine:
        assert engine.details["plan"].startswith("plan built")
        expect = engine.run({"input": images(2)})["logits"]
    with load(model, cache_dir=tmp_path) as engine:
        assert engine.details["plan"].startswith("plan from the cache")
        assert engine.details["build_seconds"] is None
    # Damage the plan (cut it in half) but keep the checksum right: only TensorRT can notice.
    (folder,) = [p for p in (tmp_path / "tensorrt-plan").iterdir() if p.is_dir()]
    plan = folder / "plan.engine"
    raw = plan.read_bytes()[: plan.stat().st_size // 2]
    plan.write_bytes(raw)
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"]["plan.engine"] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
    with load(model, cache_dir=tmp_path) as engine:
        assert engine.details["plan"].startswith("plan built")
        np.testing.assert_array_equal(engine.run({"input": images(2)})["logits"], expect)
    assert list((tmp_path / "tensorrt-timing").glob("*/timing.cache"))


@needs_trt
def test_a_plan_file_loads_as_it_is_with_its_sidecar(tmp_path):
    model = cnn(seed=4)
    with load(model, cache_dir=tmp_path) as engine:
        expect = engine.run({"input": images(3)})["logits"]
    cached = next((tmp_path / "tensorrt-plan").glob("*/plan.engine"))
    exported = tmp_path / "model.engine"
    shutil.copy(cached, exported)
    before = hashlib.sha256(exported.read_bytes()).hexdigest()
    with infer.Engine.load(exported, device="cuda", cache_dir=tmp_path) as engine:
        assert engine.backend == "tensorrt" and engine.details["sidecar"]
        assert engine.inputs[0].shape == ("N", 3, 32, 32)  # the names came from the sidecar
        np.testing.assert_array_equal(engine.run({"input": images(3)})["logits"], expect)
    assert hashlib.sha256(exported.read_bytes()).hexdigest() == before
    with pytest.raises(infer.InferError, match="precision was fixed"):
        infer.Engine.load(exported, device="cuda", backend="tensorrt", precision="fp16")


@needs_trt
@needs_precision
def test_fp16_from_the_graph():
    model = cnn(seed=5)
    with load(model, precision="fp16") as engine:
        assert engine.precision.startswith("fp16")
        x = images(4)
        got, want = engine.run({"input": x})["logits"], ort_cpu(model, {"input": x})["logits"]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


@needs_trt
@needs_precision
def test_int8_from_the_graph():
    model = cnn(seed=6)
    calibration = [{"input": images(4, seed=s)} for s in range(16)]
    with load(model, precision="int8", calibration=calibration) as engine:
        x = images(16, seed=99)
        got, want = engine.run({"input": x})["logits"], ort_cpu(model, {"input": x})["logits"]
        agree = (got.argmax(1) == want.argmax(1)).mean()
        assert agree >= 0.8, f"top-1 agreement {agree:.2f}"


@needs_trt
def test_precision_flags_are_feature_detected():
    import tensorrt as trt

    model = cnn(seed=7)
    options = {"tensorrt": {"precision_flags": True}}
    if not hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11
        with pytest.raises(OptionError, match="FP16 flag is unavailable in TensorRT"):
            load(model, precision="fp16", backend_options=options)
        return
    if not HAS_PRECISION_TRANSFORM:
        pytest.skip(
            "infer.transforms.precision (the shared fp16/int8 transform) is not in this tree"
        )
    with load(model, precision="fp16", backend_options=options) as engine:
        assert "FP16 flag" in engine.details["precision_mode"]


@needs_trt
def test_device_inputs_and_outputs_with_torch():
    torch = torch_cuda()
    model = cnn(seed=8)
    x = images(2)
    want = ort_cpu(model, {"input": x})["logits"]
    with load(model) as engine:
        t = torch.from_numpy(x).cuda()
        np.testing.assert_allclose(engine.run({"input": t})["logits"], want, rtol=1e-3, atol=1e-4)
        with bind(engine, "device") as b:
            out = b.run({"input": t})["logits"]
            assert isinstance(out, da.DeviceArray)
            logits = torch.as_tensor(out, device="cuda")
            assert logits.data_ptr() == out.ptr
            np.testing.assert_allclose(logits.cpu().numpy(), want, rtol=1e-3, atol=1e-4)
        target = torch.empty((2, 10), dtype=torch.float32, device="cuda")
        with bind(engine, {"logits": target}) as b:
            assert b.run({"input": t})["logits"] is target
            np.testing.assert_allclose(target.cpu().numpy(), want, rtol=1e-3, atol=1e-4)
        with pytest.raises(InputError, match="holds float16"):
            engine.run({"input": t.half()})
        with pytest.raises(InputError, match="not C-contiguous"):
            engine.run({"input": t.permute(0, 1, 3, 2)})


@needs_trt
def test_device_inputs_with_cupy():
    cp = cupy()
    model = cnn(seed=9)
    x = images(3)
    with load(model) as engine:
        got = engine.run({"input": cp.asarray(x)})["logits"]
        np.testing.assert_allclose(
            got, ort_cpu(model, {"input": x})["logits"], rtol=1e-3, atol=1e-4
        )


@needs_trt
def test_host_binding_reuses_its_buffers():
    with load(cnn(seed=10)) as engine, bind(engine) as b:
        first = b.run({"input": images(2)})["logits"]
        address = first.ctypes.data
        second = b.run({"input": images(2, seed=1)})["logits"]
        assert second.ctypes.data == address  # the bound (pinned) buffer, overwritten
        kept = b.run({"input": images(2)}, copy=True)["logits"]
        assert kept.ctypes.data != address


@needs_trt
def test_threads_and_submit_agree_with_serial_runs():
    model = cnn(seed=11)
    feeds = [{"input": images(1 + i % 4, seed=i)} for i in range(24)]
    with load(model, backend_options={"tensorrt": {"contexts": 2}}) as engine:
        assert engine.details["contexts"] == 2
        serial = [engine.run(f)["logits"] for f in feeds]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(lambda f: engine.run(f)["logits"], feeds))
        submitted = [fut.result()["logits"] for fut in [engine.submit(f) for f in feeds]]
    for a, b, c in zip(serial, threaded, submitted):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def nonzero_model() -> onnx.ModelProto:
    """x: float32[N] -> idx: int64[1, ?] = NonZero(Relu(x)): an output shape only the data decides."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["positive"]),
            helper.make_node("NonZero", ["positive"], ["idx"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [1, "K"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@needs_trt
def test_data_dependent_output_shapes():
    with load(nonzero_model(), backend_options={"tensorrt": {"max_batch": 64}}) as engine:
        for x in (np.array([1, -1, 2, 0, 3], np.float32), np.array([-1, -2], np.float32)):
            np.testing.assert_array_equal(
                engine.run({"x": x})["idx"], np.nonzero(x > 0)[0][None].astype(np.int64)
            )


@needs_trt
def test_static_model_and_closed_engine():
    with load(relu(batch=2)) as engine:
        x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
        np.testing.assert_array_equal(engine.run({"x": x})["y"], np.maximum(x, 0))
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(engine.run({"x": x})["y"]))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4
    with pytest.raises(infer.EngineClosed):
        engine.run({"x": x})
