"""The artifact cache: keys, atomic entries, checksums, locking."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infer.cache import META, Cache, Key, default_root


def _write(payload: bytes):
    def build(folder: Path) -> dict:
        (folder / "artifact.bin").write_bytes(payload)
        return {"note": "built"}

    return build


def test_key_is_readable_and_sensitive_to_every_part():
    key = Key.of("onnx-fp16", model="abc", keep_io=True, blocked=["Resize"])
    assert dict(key.parts) == {"model": "abc", "keep_io": "true", "blocked": '["Resize"]'}
    assert key.digest == Key.of("onnx-fp16", blocked=["Resize"], keep_io=True, model="abc").digest
    for other in (
        Key.of("onnx-fp16", model="abd", keep_io=True, blocked=["Resize"]),
        Key.of("onnx-fp16", model="abc", keep_io=False, blocked=["Resize"]),
        Key.of("onnx-int8", model="abc", keep_io=True, blocked=["Resize"]),
    ):
        assert other.digest != key.digest


def test_build_once_then_hit(tmp_path):
    cache = Cache(tmp_path / "c")
    key = Key.of("test", model="m1")
    entry, built = cache.get_or_build(key, _write(b"payload"))
    assert built and entry.file("artifact.bin").read_bytes() == b"payload"
    meta = json.loads((entry.path / META).read_text())
    assert meta["key"] == {"model": "m1"} and meta["note"] == "built" and meta["kind"] == "test"
    assert meta["files"]["artifact.bin"]["size"] == 7
    again, built_again = cache.get_or_build(key, lambda folder: pytest.fail("must not rebuild"))
    assert not built_again and again.path == entry.path


def test_root_is_private(tmp_path):
    cache = Cache(tmp_path / "private")
    cache.get_or_build(Key.of("test", n=1), _write(b"x"))
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700


def test_truncated_entry_is_rebuilt(tmp_path):
    cache = Cache(tmp_path)
    key = Key.of("test", model="m")
    entry, _ = cache.get_or_build(key, _write(b"0123456789"))
    entry.file("artifact.bin").write_bytes(b"01234")
    assert cache.get(key) is None  # damaged: reported as a miss and removed
    rebuilt, built = cache.get_or_build(key, _write(b"0123456789"))
    assert built and rebuilt.file("artifact.bin").read_bytes() == b"0123456789"


def test_same_size_corruption_is_caught_by_checksum(tmp_path):
    cache = Cache(tmp_path)
    key = Key.of("test", model="m")
    entry, _ = cache.get_or_build(key, _write(b"0123456789"))
    entry.file("artifact.bin").write_bytes(b"0123456780")
    assert cache.get(key) is None


def test_failed_build_leaves_nothing(tmp_path):
    cache = Cache(tmp_path)
    key = Key.of("test", model="m")

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("builder died")

    with pytest.raises(RuntimeError, match="builder died"):
        cache.get_or_build(key, broken)
    assert cache.get(key) is None
    assert not [p for p in (tmp_path / "test").iterdir() if p.is_dir()]


def test_list_and_clear(tmp_path):
    cache = Cache(tmp_path)
    for i in range(3):
        cache.get_or_build(Key.of("a", n=i), _write(b"x" * i))
    cache.get_or_build(Key.of("b", n=0), _write(b"y"))
    assert len(cache.entries()) == 4 and len(cache.entries("a")) == 3
    assert sum(e.size for e in cache.entries("a")) == 0 + 1 + 2
    assert cache.clear("a") == 3 and len(cache.entries()) == 1
    assert cache.clear() == 1 and cache.entries() == []


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("INFER_CACHE_DIR", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"
    monkeypatch.delenv("INFER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "infer"


def test_racing_processes_build_once(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from infer.cache import Cache, Key

        def build(folder):
            with open({str(tmp_path / "builds.log")!r}, "a") as log:
                log.write("built\\n")
            time.sleep(0.5)
            (folder / "artifact.bin").write_bytes(b"payload")

        entry, _ = Cache({str(tmp_path / "cache")!r}).get_or_build(Key.of("race", model="m"), build)
        assert entry.file("artifact.bin").read_bytes() == b"payload"
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert (tmp_path / "builds.log").read_text().count("built") == 1
