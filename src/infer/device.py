"""Devices: parsing the strings users write, and probing the hardware this machine has.

Probing reads the operating system and the vendors' management libraries (NVML, the CUDA
driver) when they are installed; it never imports an inference runtime. Devices that only a
runtime can see (OpenVINO's GPU/NPU plugins) are added by that backend's probe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field

from .errors import OptionError

log = logging.getLogger(__name__)

KINDS = ("auto", "cpu", "cuda", "gpu", "npu", "ane")
"""Device kinds a user can ask for. "gpu" is any GPU (NVIDIA first); "ane" the Apple Neural Engine."""

_FORMS = '"auto", "cpu", "cuda", "cuda:N", "gpu", "gpu:N", "npu", "ane"'


@dataclass(frozen=True)
class Capabilities:
    """What a device can do, as far as the probe could tell."""

    vendor: str = ""
    isa: frozenset[str] = (
        frozenset()
    )  # CPU instruction-set extensions: avx2, avx512f, amx, neon, ...
    precisions: frozenset[str] = frozenset()  # fp32, fp16, bf16, int8 in hardware
    memory_bytes: int | None = None
    compute_capability: tuple[int, int] | None = None
    driver: str | None = None
    cores: int | None = None
    source: str = ""  # which probe found it


@dataclass(frozen=True)
class Device:
    """A device: a kind and an index; `name` and `capabilities` describe it but don't identify it."""

    kind: str
    index: int | None = None
    name: str = field(default="", compare=False)
    capabilities: Capabilities = field(default_factory=Capabilities, compare=False, repr=False)

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    def __repr__(self) -> str:
        index = "" if self.index is None else f", index={self.index}"
        name = f", name={self.name!r}" if self.name else ""
        return f"Device(kind={self.kind!r}{index}{name})"

    @classmethod
    def parse(cls, spec: str | Device) -> Device:
        """Parse "cpu", "cuda:1", "gpu", ... (case-insensitive); raises OptionError on anything else."""
        if isinstance(spec, Device):
            return spec
        if not isinstance(spec, str):
            raise OptionError(
                f"device must be a string such as {_FORMS}; got {type(spec).__name__}"
            )
        m = re.fullmatch(r"\s*([a-zA-Z]+)\s*(?::\s*(\d+))?\s*", spec)
        kind = m.group(1).lower() if m else ""
        if not m or kind not in KINDS:
            raise OptionError(f"device {spec!r} is not valid; use one of {_FORMS}")
        index = int(m.group(2)) if m.group(2) is not None else None
        if index is not None and kind in ("auto", "ane"):
            raise OptionError(f"device {spec!r}: {kind!r} takes no index; use one of {_FORMS}")
        if kind == "cpu" and index not in (None, 0):
            raise OptionError(f"device {spec!r}: there is one CPU device, 'cpu' (or 'cpu:0')")
        return cls(kind, index)

    def matches(self, other: Device) -> bool:
        """Whether the concrete device `other` satisfies this request."""
        if self.kind == "auto":
            return True
        kinds = ("cuda", "gpu") if self.kind == "gpu" else (self.kind,)
        if other.kind not in kinds:
            return False
        return self.index is None or self.index == (other.index or 0)

    @property
    def identity(self) -> str:
        """Text that changes when the hardware does: part of every cache key built for a device."""
        c = self.capabilities
        parts = [str(self), self.name]
        if c.compute_capability:
            parts.append("sm{}{}".format(*c.compute_capability))
        if c.driver:
            parts.append(f"driver {c.driver}")
        return " | ".join(p for p in parts if p)


@dataclass(frozen=True)
class HardwareReport:
    """The devices the hardware probes found, and why a kind of device was not found."""

    devices: tuple[Device, ...]
    notes: tuple[str, ...]


@functools.cache
def probe_hardware() -> HardwareReport:
    """CPU, NVIDIA GPUs and Apple silicon on this machine (cached for the process)."""
    devices = [_probe_cpu()]
    notes: list[str] = []
    gpus, note = _probe_nvidia()
    devices.extend(gpus)
    if note:
        notes.append(note)
    devices.extend(_probe_apple())
    return HardwareReport(tuple(devices), tuple(notes))


def cpu() -> Device:
    return probe_hardware().devices[0]


_ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "asimd": "neon",
    "asimdhp": "fp16",
    "asimddp": "dotprod",
    "bf16": "bf16",
    "i8mm": "i8mm",
    "sve": "sve",
}


def _probe_cpu() -> Device:
    name, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        name = name or _sysctl("machdep.cpu.brand_string")
        if platform.machine() == "arm64":
            flags |= {"asimd"}
            if _sysctl("hw.optional.arm.FEAT_BF16") == "1":
                flags.add("bf16")
            if _sysctl("hw.optional.arm.FEAT_I8MM") == "1":
                flags.add("i8mm")
            if _sysctl("hw.optional.arm.FEAT_FP16") == "1":
                flags.add("asimdhp")
    isa = frozenset(v for k, v in _ISA_FLAGS.items() if k in flags)
    precisions = {"fp32", "int8"}
    if isa & {"avx512_bf16", "amx_bf16", "bf16"}:
        precisions.add("bf16")
    if isa & {"avx512_fp16", "fp16"}:
        precisions.add("fp16")
    caps = Capabilities(
        vendor=_cpu_vendor(name),
        isa=isa,
        precisions=frozenset(precisions),
        memory_bytes=_total_memory(),
        cores=os.cpu_count(),
        source="os",
    )
    return Device("cpu", 0, name or platform.processor() or platform.machine(), caps)


def _cpu_vendor(name: str) -> str:
    for vendor in ("Intel", "AMD", "Apple", "ARM", "Ampere"):
        if vendor.lower() in name.lower():
            return vendor
    return ""


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _sysctl(key: str) -> str:
    try:
        return subprocess.run(
            ["sysctl", "-n", key], capture_output=True, text=True, timeout=2, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _probe_nvidia() -> tuple[list[Device], str]:
    """NVIDIA GPUs through NVML (nvidia-ml-py), else the CUDA runtime (cuda-python)."""
    devices, nvml_note = _probe_nvml()
    if devices:
        return devices, ""
    devices, cuda_note = _probe_cuda_runtime()
    if devices:
        return devices, ""
    return [], f"no NVIDIA GPU: {nvml_note}; {cuda_note}"


def _gpu_precisions(cc: tuple[int, int] | None) -> frozenset[str]:
    if cc is None:
        return frozenset({"fp32"})
    p = {"fp32"}
    if cc >= (5, 3):
        p.add("fp16")
    if cc >= (6, 1):
        p.add("int8")
    if cc >= (8, 0):
        p.add("bf16")
    if cc >= (8, 9):
        p.add("fp8")
    return frozenset(p)


def _probe_nvml() -> tuple[list[Device], str]:
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"NVML did not start ({e})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h))
            mem = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
            caps = Capabilities(
                vendor="NVIDIA",
                precisions=_gpu_precisions(cc),
                memory_bytes=mem,
                compute_capability=cc,
                driver=driver,
                source="nvml",
            )
            out.append(Device("cuda", i, name, caps))
        return out, "" if out else "NVML sees no GPU"
    except Exception as e:
        return [], f"NVML query failed ({e})"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _probe_cuda_runtime() -> tuple[list[Device], str]:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return [], "cuda-python is not installed"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:
        return [], f"the CUDA runtime failed to load ({e})"
    if int(err) != 0:
        return [], f"cudaGetDeviceCount returned {_enum_name(err)}"
    err, driver = cudart.cudaDriverGetVersion()
    driver_text = f"{driver // 1000}.{driver % 1000 // 10}" if int(err) == 0 else None
    out = []
    for i in range(count):
        err, props = cudart.cudaGetDeviceProperties(i)
        if int(err) != 0:
            continue
        name = (
            props.name.decode(errors="replace").rstrip("\0")
            if isinstance(props.name, bytes)
            else str(props.name)
        )
        cc = (int(props.major), int(props.minor))
        caps = Capabilities(
            vendor="NVIDIA",
            precisions=_gpu_precisions(cc),
            memory_bytes=int(props.totalGlobalMem),
            compute_capability=cc,
            driver=driver_text,
            source="cuda-runtime",
        )
        out.append(Device("cuda", i, name, caps))
    return out, "" if out else "the CUDA runtime sees no GPU"


def _enum_name(value: object) -> str:
    return getattr(value, "name", str(value))


def _probe_apple() -> list[Device]:
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return []
    chip = _sysctl("machdep.cpu.brand_string") or "Apple silicon"
    gpu = Capabilities(vendor="Apple", precisions=frozenset({"fp32", "fp16"}), source="os")
    ane = Capabilities(vendor="Apple", precisions=frozenset({"fp16", "int8"}), source="os")
    return [Device("gpu", 0, f"{chip} GPU", gpu), Device("ane", None, f"{chip} Neural Engine", ane)]
