"""The artifact cache under faults: a builder killed mid-write, processes racing for one key, and
entries damaged on disk. Real processes, real SIGKILL.

Run this file directly to act as one cache client: `python test_reliability_cache.py MODE ROOT DIR`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infer.cache import META, Cache, Key

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and flock are POSIX")

KEY = Key.of("fault-test", model="abc123", backend="onnxruntime 1.32.0", precision="fp16")
PAYLOAD = b"artifact " * 100_000  # ~0.9 MB, written in chunks


def _build(folder: Path, *, ready: Path | None = None, log: Path | None = None) -> dict:
    """Write the artifact in chunks; `ready` is created half-way (then the builder lingers)."""
    if log is not None:
        with open(log, "a") as f:  # O_APPEND: one line per build, whichever process builds
            f.write(f"{os.getpid()}\n")
    with open(folder / "model.bin", "wb") as f:
        half = len(PAYLOAD) // 2
        f.write(PAYLOAD[:half])
        f.flush()
        if ready is not None:
            ready.touch()
            time.sleep(60)  # killed here
        f.write(PAYLOAD[half:])
    if log is not None:
        time.sleep(0.3)  # keep the lock long enough for the racers to queue on it
    return {"builder": os.getpid()}


def _client(mode: str, root: Path, work: Path) -> None:
    cache = Cache(root)
    if mode == "killed-in-build":
        cache.get_or_build(KEY, lambda d: _build(d, ready=work / "ready"))
    elif mode == "killed-in-meta":
        import infer.cache as cache_module

        def half_meta(path: Path, data: dict) -> None:
            text = json.dumps(data)
            with open(path, "w") as f:
                f.write(text[: len(text) // 2])
                f.flush()
            (work / "ready").touch()
            time.sleep(60)  # killed here

        cache_module._write_json = half_meta
        cache.get_or_build(KEY, _build)
    elif mode == "race":
        go = work / "go"
        while not go.exists():  # all racers start together
            time.sleep(0.005)
        entry, built = cache.get_or_build(KEY, lambda d: _build(d, log=work / "builds.log"))
        data = (entry.file("model.bin")).read_bytes()
        print(json.dumps({"built": built, "path": str(entry.path), "ok": data == PAYLOAD}))
    else:
        raise SystemExit(f"unknown mode {mode}")


def _spawn(mode: str, root: Path, work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, mode, str(root), str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"client exited early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "client never reached the point to kill it at"
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["killed-in-build", "killed-in-meta"])
def test_a_builder_killed_mid_write_leaves_no_entry_that_loads(tmp_path, mode):
    root, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    proc = _spawn(mode, root, work)
    _wait_for(work / "ready", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()

    cache = Cache(root)
    assert cache.get(KEY) is None
    assert cache.get(KEY, verify=False) is None
    assert cache.entries() == []
    leftovers = list((root / KEY.kind).glob(f".{KEY.digest}.*.tmp"))
    assert leftovers, "the half-written build should be in a temporary folder"
    assert not (root / KEY.kind / KEY.digest).exists()

    # The dead builder's lock died with it: the next build neither waits nor sees its debris.
    start = time.monotonic()
    entry, built = cache.get_or_build(KEY, _build)
    assert time.monotonic() - start < 10
    assert built
    assert entry.file("model.bin").read_bytes() == PAYLOAD
    assert not list((root / KEY.kind).glob(f".{KEY.digest}.*.tmp"))
    assert cache.get(KEY) is not None


def test_four_processes_building_one_key_build_once(tmp_path):
    root, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    procs = [_spawn("race", root, work) for _ in range(4)]
    time.sleep(0.5)  # let them all import and wait at the start line
    (work / "go").touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    builds = (work / "builds.log").read_text().split()
    assert len(builds) == 1, f"built {len(builds)} times by {builds}"
    assert sorted(r["built"] for r in results) == [False, False, False, True]
    assert len({r["path"] for r in results}) == 1
    assert all(r["ok"] for r in results)
    entry = Cache(root).get(KEY)
    assert entry is not None and entry.meta["builder"] == int(builds[0])


def _flip_byte(entry_path: Path) -> None:
    p = entry_path / "model.bin"
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x40
    p.write_bytes(bytes(data))


def _truncate(entry_path: Path) -> None:
    p = entry_path / "model.bin"
    p.write_bytes(p.read_bytes()[:1000])


def _same_size_rewrite(entry_path: Path) -> None:
    p = entry_path / "model.bin"
    p.write_bytes(b"X" * p.stat().st_size)


def _delete_artifact(entry_path: Path) -> None:
    (entry_path / "model.bin").unlink()


def _garbage_meta(entry_path: Path) -> None:
    (entry_path / META).write_text('{"files": ')


def _meta_lies(entry_path: Path) -> None:
    meta = json.loads((entry_path / META).read_text())
    meta["files"]["model.bin"]["sha256"] = "0" * 64
    (entry_path / META).write_text(json.dumps(meta))


def _delete_meta(entry_path: Path) -> None:
    (entry_path / META).unlink()


@pytest.mark.parametrize(
    "damage",
    [
        _flip_byte,
        _truncate,
        _same_size_rewrite,
        _delete_artifact,
        _garbage_meta,
        _meta_lies,
        _delete_meta,
    ],
)
def test_a_damaged_entry_is_detected_and_rebuilt(tmp_path, damage):
    cache = Cache(tmp_path / "cache")
    entry, built = cache.get_or_build(KEY, _build)
    assert built
    damage(entry.path)
    assert cache.get(KEY) is None
    rebuilt, built = cache.get_or_build(KEY, _build)
    assert built, "a damaged entry must be rebuilt, not served"
    assert rebuilt.file("model.bin").read_bytes() == PAYLOAD
    again, built = cache.get_or_build(KEY, _build)
    assert not built and again.path == rebuilt.path


def test_a_build_that_raises_leaves_nothing(tmp_path):
    cache = Cache(tmp_path / "cache")

    def failing(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"half")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="converter crashed"):
        cache.get_or_build(KEY, failing)
    assert cache.get(KEY) is None
    assert not any((tmp_path / "cache" / KEY.kind).iterdir()) or all(
        p.suffix == ".lock" for p in (tmp_path / "cache" / KEY.kind).iterdir()
    )


if __name__ == "__main__":
    _client(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
