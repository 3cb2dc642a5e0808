"""The TensorRT plan cache, its key, the sidecar metadata, the timing cache and builder options.

Plans here are fake bytes: only the cache layer is exercised (TensorRT cannot run here; the
GPU tests build and load real plans through the same functions).
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from infer import CompileError, OptionError
from infer.backends import _trt_build as build
from infer.backends._trt_profiles import Range
from infer.cache import Cache
from infer.device import Capabilities, Device
from infer.options import Options

H100 = Device(
    "cuda",
    0,
    "NVIDIA H100 80GB HBM3",
    Capabilities(
        vendor="NVIDIA", compute_capability=(9, 0), precisions=frozenset({"fp32", "fp16", "int8"})
    ),
)
PROFILE = {"x": Range((1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32))}


def key(**changes):
    parts = dict(
        model="a" * 64,
        tensorrt="10.13.0.35",
        device=H100,
        profiles=[PROFILE],
        precision="fp16",
        settings=build.Settings(),
    )
    parts.update(changes)
    return build.plan_key(**parts)


# -- key --------------------------------------------------------------------------------------


def test_the_same_inputs_give_the_same_key():
    assert key().digest == key().digest


@pytest.mark.parametrize(
    "change",
    [
        {"model": "b" * 64},
        {"tensorrt": "10.14.1.48"},
        {"device": replace(H100, name="NVIDIA H200")},
        {"device": replace(H100, capabilities=Capabilities(compute_capability=(8, 9)))},
        {"profiles": [{"x": Range((1, 3, 32, 32), (1, 3, 32, 32), (16, 3, 32, 32))}]},
        {"profiles": [{"x": Range((1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))}]},
        {"profiles": [PROFILE, PROFILE]},  # two contexts: two profiles
        {"precision": "int8"},
        {"settings": build.Settings(workspace=1 << 30)},
        {"settings": build.Settings(builder_optimization_level=5)},
        {"settings": build.Settings(tf32=True)},
        {"settings": build.Settings(precision_flags=True)},
        {"settings": build.Settings(version_compatible=True)},
        {"settings": build.Settings(hardware_compatible="AMPERE_PLUS")},
        {"settings": build.Settings(max_aux_streams=0)},
    ],
)
def test_any_component_changes_the_key(change):
    assert key(**change).digest != key().digest


def test_runtime_only_settings_do_not_change_the_plan():
    same = build.Settings(max_batch=64, contexts=4, timing_cache=False)
    assert key(settings=same).digest == key().digest  # max_batch/contexts reach it via profiles


def test_the_key_is_readable(tmp_path):
    def write(folder):
        (folder / build.PLAN).write_bytes(b"ftrt")

    entry, _ = Cache(tmp_path).get_or_build(key(), write)
    parts = entry.meta["key"]
    assert parts["gpu"] == "NVIDIA H100 80GB HBM3"
    assert parts["compute_capability"] == "9.0"
    assert parts["tensorrt"] == "10.13.0.35" and parts["precision"] == "fp16"
    assert json.loads(parts["profiles"]) == [
        {"x": [[1, 3, 32, 32], [1, 3, 32, 32], [8, 3, 32, 32]]}
    ]
    assert json.loads(parts["builder"])["tf32"] is False
    assert entry.kind == "tensorrt-plan"


# -- plan cache -------------------------------------------------------------------------------


class FakeRuntime:
    """Stands in for deserialize_cuda_engine: accepts plans that start with b'ftrt-ok'."""

    def __init__(self):
        self.calls = 0

    def __call__(self, plan: bytes):
        self.calls += 1
        return ("engine", plan) if plan.startswith(b"ftrt-ok") else None


class Builder:
    def __init__(self, payload=b"ftrt-ok plan", fail=False):
        self.payload = payload
        self.fail = fail
        self.calls = 0

    def __call__(self, folder: Path):
        self.calls += 1
        if self.fail:
            raise CompileError("the builder failed")
        (folder / build.PLAN).write_bytes(self.payload)
        return {"tensorrt": {"build_seconds": 1.5}}


def test_a_plan_is_built_once_then_loaded_from_the_cache(tmp_path):
    cache, builder, runtime = Cache(tmp_path), Builder(), FakeRuntime()
    engine, entry, built = build.load_or_build(cache, key(), builder, runtime)
    assert built and engine == ("engine", b"ftrt-ok plan") and builder.calls == 1
    engine, entry2, built = build.load_or_build(cache, key(), builder, runtime)
    assert not built and builder.calls == 1 and entry2.path == entry.path
    assert entry.meta["tensorrt"] == {"build_seconds": 1.5}
    assert entry.meta["files"][build.PLAN]["size"] == len(b"ftrt-ok plan")


def test_a_plan_that_no_longer_deserializes_is_removed_and_rebuilt(tmp_path):
    """Intact bytes TensorRT rejects (another TensorRT or GPU): detected at deserialize time."""
    cache, runtime = Cache(tmp_path), FakeRuntime()
    build.load_or_build(cache, key(), Builder(b"ftrt-stale"), lambda plan: ("engine", plan))
    rebuild = Builder()
    engine, entry, built = build.load_or_build(cache, key(), rebuild, runtime)
    assert built and rebuild.calls == 1 and engine[1] == b"ftrt-ok plan"
    assert (entry.path / build.PLAN).read_bytes() == b"ftrt-ok plan"


def test_a_damaged_plan_is_caught_by_its_checksum_and_rebuilt(tmp_path):
    cache, runtime = Cache(tmp_path), FakeRuntime()
    _, entry, _ = build.load_or_build(cache, key(), Builder(), runtime)
    plan = entry.path / build.PLAN
    plan.write_bytes(plan.read_bytes()[:5])  # truncated
    rebuild = Builder()
    _, _, built = build.load_or_build(cache, key(), rebuild, runtime)
    assert built and rebuild.calls == 1


def test_a_fresh_plan_that_cannot_be_loaded_is_an_error(tmp_path):
    with pytest.raises(CompileError, match="cannot deserialize the plan it has just built"):
        build.load_or_build(Cache(tmp_path), key(), Builder(b"ftrt-bad"), FakeRuntime())


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(CompileError, match="the builder failed"):
        build.load_or_build(cache, key(), Builder(fail=True), FakeRuntime())
    kind = tmp_path / "tensorrt-plan"
    assert [p.name for p in kind.iterdir() if not p.name.endswith(".lock")] == []
    assert cache.get(key()) is None


def test_racing_threads_build_once(tmp_path):
    cache, runtime = Cache(tmp_path), FakeRuntime()
    builder = Builder()
    gate = threading.Barrier(4)
    results = []

    def load():
        gate.wait()
        results.append(build.load_or_build(cache, key(), builder, runtime)[0])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builder.calls == 1 and len(results) == 4 and len(set(results)) == 1


# -- sidecar ----------------------------------------------------------------------------------


def test_the_sidecar_is_found_by_the_plans_sha256_and_never_touches_the_plan(tmp_path):
    cache = Cache(tmp_path)
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"ftrt-ok exported plan")
    before = plan.read_bytes()
    sha = build.sha256(before)
    info = {
        "inputs": [{"name": "x", "shape": ["N", 3], "dtype": "float32"}],
        "precision": "fp16",
        "profiles": [{"x": [[1, 3], [1, 3], [8, 3]]}],
    }
    entry = build.write_info(cache, sha, info)
    assert entry.kind == "tensorrt-plan-info" and entry.meta["plan_sha256"] == sha
    assert build.read_info(cache, sha) == info
    assert build.read_info(cache, build.sha256(b"another plan")) is None
    assert plan.read_bytes() == before  # metadata lives beside the plan, not in it


def test_a_damaged_sidecar_reads_as_none(tmp_path):
    cache = Cache(tmp_path)
    entry = build.write_info(cache, "f" * 64, {"precision": "fp32"})
    (entry.path / build.INFO).write_text("{not json")
    assert build.read_info(cache, "f" * 64) is None


# -- timing cache -----------------------------------------------------------------------------


class FakeTimingCache:
    """ITimingCache's combine/serialize over a set of tactic names (TensorRT cannot run here)."""

    def __init__(self, data: bytes):
        self.entries = set(filter(None, data.decode().split(",")))

    def combine(self, other, ignore_mismatch):
        self.entries |= other.entries
        return True

    def serialize(self):
        return ",".join(sorted(self.entries)).encode()


class FakeConfig:
    """The four IBuilderConfig calls the timing cache code makes."""

    def __init__(self, learns: str):
        self.learns = learns
        self.attached = None

    def create_timing_cache(self, data):
        if data == b"garbage":
            return None
        return FakeTimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.attached = cache
        return True

    def get_timing_cache(self):
        self.attached.entries.add(self.learns)  # what the build timed
        return self.attached


def test_timing_caches_are_merged_not_overwritten(tmp_path):
    path = tmp_path / "timing.cache"
    first, second = build._TimingCache(path), build._TimingCache(path)
    a, b = FakeConfig("conv-a"), FakeConfig("gemm-b")
    first.attach(a)
    second.attach(b)  # both start before either saves
    first.save(a)
    second.save(b)
    assert path.read_bytes() == b"conv-a,gemm-b"
    third = FakeConfig("x")
    build._TimingCache(path).attach(third)
    assert third.attached.entries == {"conv-a", "gemm-b"}
    assert not list(tmp_path.glob(".timing.*"))  # written atomically: no temp files left


def test_an_unreadable_timing_cache_starts_afresh(tmp_path):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"garbage")
    config = FakeConfig("conv")
    build._TimingCache(path).attach(config)
    assert config.attached.entries == set()


def test_timing_caches_are_kept_per_tensorrt_and_gpu(tmp_path):
    cache = Cache(tmp_path)
    one = build.timing_cache_path(cache, "10.13.0.35", H100)
    assert one == build.timing_cache_path(cache, "10.13.0.35", H100)
    assert one != build.timing_cache_path(cache, "10.14.0.0", H100)
    assert one != build.timing_cache_path(cache, "10.13.0.35", replace(H100, name="NVIDIA L4"))
    assert one.parent.is_dir()


# -- builder options --------------------------------------------------------------------------


def own(**given):
    return build.settings(
        Options(backend_options={"tensorrt": given}).for_backend("tensorrt", build.OPTIONS)
    )


def test_default_settings():
    s = own()
    assert s == build.Settings()
    assert s.max_batch == 8 and s.timing_cache and not s.tf32 and s.hardware_compatible is None


@pytest.mark.parametrize(
    "text, size",
    [
        ("4GiB", 4 << 30),
        ("512MB", 512 * 10**6),
        ("1.5 GiB", 3 << 29),
        ("2048", 2048),
        (1 << 20, 1 << 20),
    ],
)
def test_workspace_sizes(text, size):
    assert own(workspace=text).workspace == size


@pytest.mark.parametrize(
    "value, level",
    [
        (True, "AMPERE_PLUS"),
        ("ampere_plus", "AMPERE_PLUS"),
        ("same_compute_capability", "SAME_COMPUTE_CAPABILITY"),
        (False, None),
    ],
)
def test_hardware_compatibility_levels(value, level):
    assert own(hardware_compatible=value).hardware_compatible == level


@pytest.mark.parametrize(
    "given, match",
    [
        ({"workspace": "lots"}, r"\['workspace'\] must be a positive number of bytes"),
        ({"workspace": -1}, "workspace"),
        ({"max_batch": 0}, r"\['max_batch'\] must be an integer >= 1, got 0"),
        ({"max_batch": True}, "max_batch"),
        ({"contexts": 1.5}, "contexts"),
        ({"builder_optimization_level": -1}, "builder_optimization_level"),
        ({"tf32": "yes"}, r"\['tf32'\] must be True or False"),
        ({"hardware_compatible": "hopper"}, "hardware_compatible"),
        ({"batch": 4}, r"unknown option\(s\) \['batch'\]; tensorrt takes"),
    ],
)
def test_bad_options_name_the_option(given, match):
    with pytest.raises(OptionError, match=match):
        own(**given)
