"""One-shot check of infer's GPU paths on an NVIDIA machine. Installs nothing, downloads nothing.

Run from the repository root:  PYTHONPATH=src python3 benchmarks/gpu_check.py
(or benchmarks/gpu_check.sh). It reports what the machine has, then exercises, each in its own
section so one failure does not hide the rest:

  environment   Python, packages, nvidia-smi
  probe         infer's device probe of the real GPU, and every backend's verdict
  cuda          infer.cuda: device / pinned memory, copies, streams, events (+ bandwidth)
  torch         zero copy both ways with PyTorch (DLPack and __cuda_array_interface__)
  cupy          the same with CuPy
  pytest        the gpu-marked tests that this machine can run (the rest skip, saying why)
  tensorrt      if TensorRT imports: fp32 / fp16 builds, parity with ONNX Runtime on the CPU

It prints a table and writes gpu_check.json to $OUT (when set) and benchmarks/results/.
The whole run stays within about three minutes (`--budget`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.models

PACKAGES = (
    "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "ml_dtypes", "torch", "cupy-cuda13x",
    "cupy-cuda12x", "cupy", "cuda-python", "cuda-bindings", "cuda-core", "tensorrt",
    "tensorrt-cu12", "tensorrt-cu13", "nvidia-ml-py", "pytest", "hypothesis",
)  # fmt: skip


class Skip(Exception):
    """A section that cannot run here; the message says why."""


class Report:
    def __init__(self, budget: float) -> None:
        self.start = time.monotonic()
        self.budget = budget
        self.sections: dict[str, dict[str, Any]] = {}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def run(self, name: str, fn: Callable[[dict[str, Any]], str]) -> None:
        details: dict[str, Any] = {}
        t0 = time.monotonic()
        entry: dict[str, Any] = {"details": details}
        if self.left() < 5:
            entry.update(status="skipped", summary="out of time")
        else:
            try:
                entry.update(status="ok", summary=fn(details))
            except Skip as e:
                entry.update(status="skipped", summary=str(e))
            except Exception as e:
                entry.update(
                    status="failed",
                    summary=f"{type(e).__name__}: {e}"[:300],
                    error=traceback.format_exc(),
                )
        entry["seconds"] = round(time.monotonic() - t0, 2)
        self.sections[name] = entry
        print(
            f"[{entry['status']:>7}] {name:<12} {entry['seconds']:6.1f}s  {entry['summary']}",
            flush=True,
        )


# -- sections -------------------------------------------------------------------------------------


def environment(d: dict[str, Any]) -> str:
    d["python"] = sys.version.split()[0]
    d["platform"] = platform.platform()
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    d["packages"] = versions
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        d["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    try:
        import torch

        d["torch_cuda"] = {"available": torch.cuda.is_available(), "cuda": torch.version.cuda}
    except Exception as e:
        d["torch_cuda"] = f"not usable: {e}"
    has = [
        n
        for n in ("torch", "cupy-cuda13x", "cuda-bindings", "tensorrt", "onnxruntime")
        if n in versions
    ]
    missing = [n for n in ("tensorrt", "cuda-bindings", "torch") if n not in versions]
    return f"python {d['python']}; has {', '.join(has)}" + (
        f"; missing {', '.join(missing)}" if missing else ""
    )


def probe(d: dict[str, Any]) -> str:
    import infer
    from infer.device import probe_hardware

    hw = probe_hardware()
    gpus = [dev for dev in hw.devices if dev.kind == "cuda"]
    d["devices"] = [
        {
            "device": str(dev),
            "name": dev.name,
            "compute_capability": dev.capabilities.compute_capability,
            "memory_gib": round((dev.capabilities.memory_bytes or 0) / 2**30, 1),
            "driver": dev.capabilities.driver,
            "precisions": sorted(dev.capabilities.precisions),
            "source": dev.capabilities.source,
        }
        for dev in hw.devices
    ]
    d["notes"] = list(hw.notes)
    d["backends"] = {
        i.name: {"available": i.available, "version": i.version, "reason": i.reason, "devices": [str(x) for x in i.devices]}
        for i in infer.backends()
    }  # fmt: skip
    if not gpus:
        raise RuntimeError(f"infer's probe found no GPU: {'; '.join(hw.notes)}")
    g = gpus[0]
    trt = d["backends"]["tensorrt"]
    return (
        f"{g} {g.name} sm{''.join(map(str, g.capabilities.compute_capability or ()))} via "
        f"{g.capabilities.source}; tensorrt backend: "
        + ("available" if trt["available"] else f"unavailable ({trt['reason']})")
    )


def cuda_paths(d: dict[str, Any]) -> str:
    import numpy as np

    from infer import cuda

    why = cuda.unavailable()
    if why:
        raise Skip(why)
    cuda.set_device(0)
    n = 64 << 20
    data = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    pin_in, pin_out = cuda.HostMemory(n), cuda.HostMemory(n)
    pin_in.array(np.uint8, (n,))[:] = data
    a, b = cuda.DeviceMemory(n), cuda.DeviceMemory(n)
    s1, s2, ev = cuda.Stream(), cuda.Stream(), cuda.Event()
    cuda.copy_to_device(a.ptr, pin_in.ptr, n, s1.handle)
    ev.record(s1.handle)
    s2.wait(ev)
    cuda.copy_on_device(b.ptr, a.ptr, n, s2.handle)
    cuda.copy_to_host(pin_out.ptr, b.ptr, n, s2.handle)
    s2.synchronize()
    ok = bool(np.array_equal(pin_out.array(np.uint8, (n,)), data))
    d["round_trip_equal"] = ok
    d["pointer_device"] = cuda.pointer_device(a.ptr)

    def rate(fn: Callable[[], None], reps: int = 5) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return n / statistics.median(times) / 1e9

    def h2d_pinned() -> None:
        cuda.copy_to_device(a.ptr, pin_in.ptr, n, s1.handle)
        s1.synchronize()

    def d2h_pinned() -> None:
        cuda.copy_to_host(pin_out.ptr, a.ptr, n, s1.handle)
        s1.synchronize()

    def h2d_pageable() -> None:
        cuda.copy_to_device(a.ptr, data.ctypes.data, n, s1.handle)
        s1.synchronize()

    d["gb_per_s"] = {
        "h2d_pinned": round(rate(h2d_pinned), 1),
        "d2h_pinned": round(rate(d2h_pinned), 1),
        "h2d_pageable": round(rate(h2d_pageable), 1),
    }
    grow = cuda.Growable(cuda.HostMemory)
    first = grow.ensure(16).array(np.uint8, (16,))
    first[:] = 9
    grow.ensure(1 << 20)
    d["grown_view_kept"] = first.tolist() == [9] * 16
    for x in (s1, s2, ev):
        x.close()
    if not (ok and d["pointer_device"] == 0 and d["grown_view_kept"]):
        raise RuntimeError(f"mismatch: {d}")
    r = d["gb_per_s"]
    return f"64 MiB round trip equal; H2D pinned {r['h2d_pinned']} GB/s, pageable {r['h2d_pageable']} GB/s, D2H pinned {r['d2h_pinned']} GB/s"


def _our_array(data: Any) -> Any:
    from infer import cuda
    from infer.device_array import DeviceArray

    memory = cuda.DeviceMemory(data.nbytes)
    stream = cuda.Stream()
    cuda.copy_to_device(memory.ptr, data.ctypes.data, data.nbytes, stream.handle)
    stream.synchronize()
    return DeviceArray(memory.ptr, data.shape, data.dtype, 0, memory)


def _read_on_our_stream(value: Any) -> Any:
    """Copy a device array to the host on infer's own stream, after DLPack ordered it."""
    import numpy as np

    from infer import cuda, device_array

    stream = cuda.Stream()
    v = device_array.view(value, stream.handle)
    try:
        out = np.empty(v.shape, v.dtype)
        pinned = cuda.HostMemory(out.nbytes)
        cuda.copy_to_host(pinned.ptr, v.ptr, out.nbytes, stream.handle)
        stream.synchronize()
        out[...] = pinned.array(v.dtype, v.shape)
        return out
    finally:
        v.close()
        stream.close()


def torch_paths(d: dict[str, Any]) -> str:
    import numpy as np

    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch is not installed ({e})") from None
    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    from infer import cuda, device_array

    if cuda.unavailable():
        raise Skip(cuda.unavailable())
    data = np.arange(4096, dtype=np.float32).reshape(64, 64)
    arr = _our_array(data)
    via_cai = torch.as_tensor(arr, device="cuda")
    via_dlpack = torch.from_dlpack(arr)
    d["export_same_pointer"] = via_cai.data_ptr() == arr.ptr == via_dlpack.data_ptr()
    d["export_values_equal"] = bool(np.array_equal(via_dlpack.cpu().numpy(), data))
    # Import, with the ordering DLPack promises: torch writes on a side stream, infer reads on its own.
    # DLPack orders the producer's *current* stream before ours, so export while it is current.
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        big = torch.randn(4096, 4096, device="cuda")
        y = big @ big  # long enough that an unordered read would see stale memory
        y = y[:64, :64].contiguous()
        got = _read_on_our_stream(y)
    torch.cuda.synchronize()
    d["import_ordered_equal"] = bool(np.array_equal(got, y.cpu().numpy()))
    d["is_device_array"] = device_array.is_device_array(y) and not device_array.is_device_array(
        y.cpu()
    )
    if not all(
        d[k]
        for k in (
            "export_same_pointer",
            "export_values_equal",
            "import_ordered_equal",
            "is_device_array",
        )
    ):
        raise RuntimeError(f"zero copy with torch failed: {d}")
    return f"torch {torch.__version__}: DeviceArray -> torch (CAI, DLPack) shares memory; torch -> infer read in stream order"


def cupy_paths(d: dict[str, Any]) -> str:
    import numpy as np

    try:
        import cupy as cp
    except ImportError as e:
        raise Skip(f"cupy is not installed ({e})") from None
    from infer import cuda

    if cuda.unavailable():
        raise Skip(cuda.unavailable())
    data = np.arange(1000, dtype=np.int32)
    arr = _our_array(data)
    d["export_same_pointer"] = cp.asarray(arr).data.ptr == arr.ptr == cp.from_dlpack(arr).data.ptr
    d["export_values_equal"] = bool(np.array_equal(cp.asnumpy(cp.from_dlpack(arr)), data))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        x = cp.arange(1 << 22, dtype=cp.float32)
        for _ in range(20):
            x = cp.sin(x) + 1
        got = _read_on_our_stream(x[:256])
    d["import_ordered_equal"] = bool(np.array_equal(got, cp.asnumpy(x[:256])))
    if not all(d.values()):
        raise RuntimeError(f"zero copy with cupy failed: {d}")
    return f"cupy {cp.__version__}: both directions share memory and keep stream order"


def pytest_gpu(d: dict[str, Any], report: Report) -> str:
    try:
        import pytest  # noqa: F401
    except ImportError as e:
        raise Skip(f"pytest is not installed ({e})") from None
    files = [
        "tests/test_tensorrt_gpu.py",
        "tests/test_tensorrt_arrays.py",
        "tests/test_tensorrt_backend.py",
        "tests/test_binding.py",  # device-array detection and refusal with real CUDA tensors
    ]
    timeout = max(20.0, min(150.0, report.left() - 45))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *files,
        "-q",
        "-rsfE",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-W",
        "ignore::pytest.PytestConfigWarning",
    ]
    try:
        out = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        tail = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        d["output_tail"] = tail[-4000:]
        raise RuntimeError(f"pytest ran past {timeout:.0f} s") from None
    text = out.stdout + out.stderr
    d["returncode"] = out.returncode
    d["output_tail"] = text[-6000:]
    counts = {
        k: int(v)
        for v, k in re.findall(
            r"(\d+) (passed|failed|skipped|errors?|xfailed)",
            text.splitlines()[-1] if text.strip() else "",
        )
    }
    d["counts"] = counts
    d["skips"] = sorted({m.strip() for m in re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", text)})
    d["failures"] = re.findall(r"^(?:FAILED|ERROR) (.*)$", text, re.M)
    summary = (
        ", ".join(f"{v} {k}" for k, v in counts.items()) or text.strip().splitlines()[-1][:200]
    )
    if out.returncode not in (0, 5):
        raise RuntimeError(f"{summary}; failing: {d['failures'][:5]}")
    return summary


def tensorrt_paths(d: dict[str, Any], report: Report) -> str:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise Skip(f"tensorrt is not installed here ({e})") from None
    import numpy as np
    import onnxruntime as ort
    from tests.models import cnn

    import infer

    d["version"] = trt.__version__
    d["builder_flags"] = sorted(trt.BuilderFlag.__members__)
    model = cnn(channels=32, size=64, depth=4)
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    results = {}
    precisions = ["fp32"]
    if importlib.util.find_spec("infer.transforms.precision") is not None:
        precisions.append("fp16")
    else:
        d["fp16"] = "skipped: infer.transforms.precision is not in this tree"
    for precision in precisions:
        if report.left() < 25:
            results[precision] = "skipped: out of time"
            continue
        t0 = time.perf_counter()
        with infer.Engine.load(
            model, device="cuda", backend="tensorrt", precision=precision
        ) as engine:
            load_s = time.perf_counter() - t0
            got = engine.run({"input": x})["logits"]
            times = []
            for _ in range(50):
                t1 = time.perf_counter()
                engine.run({"input": x})
                times.append(time.perf_counter() - t1)
            results[precision] = {
                "load_s": round(load_s, 2),
                "max_abs_diff_vs_ort_cpu": float(np.abs(got - ref).max()),
                "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                "run_ms_p50": round(statistics.median(times) * 1e3, 3),
                "summary": engine.details.get("summary"),
            }
    d["builds"] = results
    fp32 = results.get("fp32")
    if not isinstance(fp32, dict) or fp32["max_abs_diff_vs_ort_cpu"] > 1e-3:
        raise RuntimeError(f"fp32 parity with ONNX Runtime failed: {fp32}")
    return f"TensorRT {trt.__version__}: " + "; ".join(
        f"{p} max|diff| {r['max_abs_diff_vs_ort_cpu']:.2e}, run {r['run_ms_p50']} ms"
        if isinstance(r, dict)
        else f"{p} {r}"
        for p, r in results.items()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=170.0, help="seconds for the whole run")
    args = parser.parse_args()
    report = Report(args.budget)
    print(f"infer GPU check from {ROOT} (budget {args.budget:.0f} s)", flush=True)
    report.run("environment", environment)
    report.run("probe", probe)
    report.run("cuda", cuda_paths)
    report.run("torch", torch_paths)
    report.run("cupy", cupy_paths)
    report.run("pytest", lambda d: pytest_gpu(d, report))
    report.run("tensorrt", lambda d: tensorrt_paths(d, report))

    print()
    print(f"{'section':<12} {'status':<8} {'secs':>6}  summary")
    print("-" * 100)
    for name, s in report.sections.items():
        print(f"{name:<12} {s['status']:<8} {s['seconds']:>6.1f}  {s['summary']}")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.monotonic() - report.start, 1),
        "sections": report.sections,
    }
    targets = [ROOT / "benchmarks" / "results" / "gpu_check.json"]
    if os.environ.get("OUT"):
        targets.insert(0, Path(os.environ["OUT"]) / "gpu_check.json")
    for target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(result, indent=1, default=str))
            print(f"wrote {target}")
        except OSError as e:
            print(f"could not write {target}: {e}")
    failed = [n for n, s in report.sections.items() if s["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
