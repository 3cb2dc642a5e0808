"""On-disk artifact cache: transformed models, TensorRT plans, runtime cache folders, choices.

Each entry is a folder named by the sha256 of its key, holding the artifact files and a
`meta.json` sidecar with the key's named parts and a checksum of every file. Entries are
built in a temporary folder and renamed into place, under a per-key file lock, so a reader
never sees half an entry and racing processes build once. A checksum mismatch (a truncated
or edited entry) is treated as a miss: the entry is removed and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CacheError

log = logging.getLogger(__name__)

META = "meta.json"
_LOCK_TIMEOUT_S = 3600.0


def default_root() -> Path:
    """`$INFER_CACHE_DIR`, else `$XDG_CACHE_HOME/infer`, else `~/.cache/infer`."""
    env = os.environ.get("INFER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "infer"


KINDS: dict[str, str] = {
    "backend-choice": "the measured default's verdicts: which backend won a model's race",
    "calibration": "int8 calibration ranges (activations' min/max or histograms)",
    "coreml-compiled": "Core ML packages compiled for this Mac",
    "onnx-fp16": "fp16 ONNX graphs",
    "onnx-int8": "int8 Q/DQ ONNX graphs as quantized, before any accuracy check",
    "onnx-int8-search": "the int8 graphs the accuracy budget's search kept (precision='int8' "
    "loads these)",
    "onnx-preprocess": "ONNX graphs with preprocessing fused in",
    "openvino": "OpenVINO's compiled models (its CACHE_DIR)",
    "ort-coreml": "ONNX Runtime's CoreML provider's compiled models",
    "ort-openvino": "ONNX Runtime's OpenVINO provider's compiled models",
    "ort-tensorrt": "ONNX Runtime's TensorRT provider's engines and timing caches",
    "tensorrt-plan": "TensorRT plans built from ONNX",
    "tensorrt-plan-info": "what a TensorRT plan file was built for",
    "tensorrt-timing": "TensorRT timing caches",
}
"""Every kind of entry infer writes, and what it holds (`infer cache clear --kind` takes these)."""

_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _check_kind(kind: str) -> str:
    """A kind names a folder under the root: refuse anything that could leave it ("..", "a/b")."""
    if not isinstance(kind, str) or not _KIND.fullmatch(kind) or ".." in kind:
        raise CacheError(
            f"cache kind {kind!r} is not valid: use letters, digits, '.', '_' and '-' only"
        )
    return kind


@dataclass(frozen=True)
class Key:
    """A cache key: a kind ("onnx-fp16", "tensorrt-plan", ...) and named parts, readable in meta.json."""

    kind: str
    parts: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, kind: str, **parts: Any) -> Key:
        return cls(_check_kind(kind), tuple(sorted((k, _text(v)) for k, v in parts.items())))

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.kind.encode())
        for k, v in self.parts:
            h.update(b"\0" + k.encode() + b"\0" + v.encode())
        return h.hexdigest()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Entry:
    """A complete cache entry."""

    path: Path
    meta: Mapping[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", ""))

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.meta.get("files", {}).values())

    @property
    def key(self) -> dict[str, str]:
        """The named parts of the key this entry was built for."""
        return dict(self.meta.get("key", {}))

    def __repr__(self) -> str:
        return f"Entry({self.kind!r}, {self.size} bytes, {str(self.path)!r})"


class Cache:
    """The artifact cache under one root folder (created 0700)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cache folder {str(self.root)!r} cannot be created: {e}") from e

    def _folder(self, key: Key) -> Path:
        return self.root / _check_kind(key.kind) / key.digest

    # -- read ---------------------------------------------------------------------------------

    def get(self, key: Key, *, verify: bool = True) -> Entry | None:
        """The entry for `key`, or None if absent or damaged (a damaged one is removed)."""
        folder = self._folder(key)
        meta = _read_meta(folder)
        if meta is None:
            return None
        if verify and not _verify(folder, meta):
            log.warning("cache entry %s is damaged (checksum mismatch); removing it", folder)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return Entry(folder, meta)

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Every complete entry (not verified), newest first."""
        if kind is not None:
            _check_kind(kind)
        if not self.root.is_dir():
            return []
        out = []
        kinds = [self.root / kind] if kind else [p for p in self.root.iterdir() if p.is_dir()]
        for kdir in kinds:
            if not kdir.is_dir():
                continue
            for folder in kdir.iterdir():
                meta = _read_meta(folder) if folder.is_dir() else None
                if meta is not None:
                    out.append(Entry(folder, meta))
        return sorted(out, key=lambda e: e.meta.get("created", 0), reverse=True)

    # -- write --------------------------------------------------------------------------------

    def get_or_build(
        self,
        key: Key,
        build: Callable[[Path], Mapping[str, Any] | None],
        *,
        verify: bool = True,
    ) -> tuple[Entry, bool]:
        """The entry for `key`, building it if needed; returns (entry, built_now).

        `build(folder)` writes the artifact files into an empty temporary folder and may return
        extra metadata to store. Only one process builds a given key at a time; the others wait
        on the lock and then read what it built.
        """
        entry = self.get(key, verify=verify)
        if entry is not None:
            return entry, False
        self._ensure_root()
        kdir = self.root / _check_kind(key.kind)
        kdir.mkdir(mode=0o700, exist_ok=True)
        with _locked(kdir / f"{key.digest}.lock"):
            entry = self.get(key, verify=verify)
            if entry is not None:
                return entry, False
            _remove_stale(kdir, key.digest)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key.digest}.", suffix=".tmp", dir=kdir))
            try:
                extra = build(tmp) or {}
                meta = {
                    "kind": key.kind,
                    "key": dict(key.parts),
                    "digest": key.digest,
                    "created": time.time(),
                    "files": _checksums(tmp),
                    **dict(extra),
                }
                _write_json(tmp / META, meta)
                final = self._folder(key)
                if final.exists():  # damaged entry that get() could not remove
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return Entry(final, meta), True

    def folder(self, kind: str, **parts: Any) -> Path:
        """A persistent folder that a runtime manages itself (e.g. OpenVINO's CACHE_DIR)."""
        key = Key.of(kind, **parts)
        self._ensure_root()
        path = self.root / kind / key.digest
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def remove(self, entry: Entry) -> None:
        shutil.rmtree(entry.path, ignore_errors=True)

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry (of one kind); returns how many folders were removed."""
        if kind is not None:
            _check_kind(kind)
        if not self.root.is_dir():
            return 0
        targets = [self.root / kind] if kind else [p for p in self.root.iterdir() if p.is_dir()]
        count = 0
        for kdir in targets:
            if kdir.is_dir():
                count += sum(1 for p in kdir.iterdir() if p.is_dir())
                shutil.rmtree(kdir, ignore_errors=True)
        return count


def entries(kind: str | None = None, root: str | os.PathLike | None = None) -> list[Entry]:
    """Every entry of the cache (of one kind: "onnx-int8", "onnx-fp16", "calibration", ...),
    newest first; `root` defaults to $INFER_CACHE_DIR or ~/.cache/infer."""
    return Cache(root).entries(kind)


def clear(kind: str | None = None, root: str | os.PathLike | None = None) -> int:
    """Remove every entry (of one kind); returns how many were removed."""
    return Cache(root).clear(kind)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        with open(folder / META, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("files"), dict) else None


def _checksums(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != META:
            out[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    return out


def _verify(folder: Path, meta: Mapping[str, Any]) -> bool:
    for name, info in meta["files"].items():
        p = folder / name
        try:
            if p.stat().st_size != info["size"] or _sha256(p) != info["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def _remove_stale(kdir: Path, digest: str) -> None:
    """Temporary folders of this key left by a builder that died (we hold the lock now)."""
    for p in kdir.glob(f".{digest}.*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def file_lock(path: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on `path` across processes and threads, for a file that a runtime keeps
    in a `Cache.folder` and several builders update (a TensorRT timing cache, say)."""
    return _locked(Path(path))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path`, across processes and threads."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, path)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _acquire(fd: int, path: Path) -> None:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise CacheError(f"timed out waiting for cache lock {str(path)!r}") from None
                time.sleep(0.05)

else:
    import fcntl

    def _acquire(fd: int, path: Path) -> None:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CacheError(f"timed out waiting for cache lock {str(path)!r}") from None
                time.sleep(0.02)
