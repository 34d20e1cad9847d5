"""A content-addressed cache of tensors and JSON meta on disk, shared by processes.

Each entry is one safetensors file, ``<root>/<kind>/<first 2 hex>/<key digest>.safetensors``;
its string metadata holds the cache format, the key and the meta (canonical JSON) and a sha256
of the payload (the meta and every tensor's name, dtype, shape and bytes).

- Atomic: a put writes a temporary file next to the entry, syncs it and renames it over the
  entry, so readers see the old file or the new one, never part of one; the last writer wins.
- Verified: a get checks the format, that the stored key is exactly the requested key and the
  checksum. A file that fails (truncated, flipped, unparseable, another key) is deleted and
  counted as corrupt, and the get is a miss: the caller recomputes.
- Bounded: after a put, least recently used entries (oldest mtime; a hit refreshes it) are
  deleted until the cache holds at most ``max_bytes``, never the entry just written. Eviction
  takes ``<root>/.lock``, and removes temporary files left for over an hour by dead writers.
- Computed once: :meth:`DiskCache.lock` is a per-entry lock (``<root>/.locks/``) a caller holds
  while it computes an entry, so concurrent processes that need it wait and load it.
- Never in the way: a root that cannot be read is a miss; one that cannot be written warns once
  per :class:`DiskCache` and the caller carries on without caching.

The code of the harness is not part of a key by itself: callers add :func:`code_digest` (or
anything else an entry depends on) to their keys.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError

from harness._util import HarnessError, name_problem, one_line, shown

__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_MAX_BYTES",
    "CacheError",
    "DiskCache",
    "Entry",
    "code_digest",
    "key_digest",
]

DEFAULT_DIR = Path(".harness") / "cache"
DEFAULT_MAX_BYTES = 4 * 1024**3
FORMAT = "harness-cache/1"

_SUFFIX = ".safetensors"
_TMP_SUFFIX = ".tmp"
_STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died
_ENTRY_LOCK_TIMEOUT_S = 3600.0  # longer than this, the holder is stuck: compute without it
_LOCK_TIMEOUT_S = 10.0  # beyond this, another process is evicting: leave it to that one


class CacheError(HarnessError):
    """A cache used wrongly: a bad size, kind, key or meta (one line naming the value)."""


@dataclass(frozen=True, eq=False)
class Entry:
    """What a hit returns: CPU tensors of its own (no file behind them) and the meta as JSON
    gives it back (tuples come back as lists)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


@functools.cache
def code_digest() -> str:
    """sha256 hex of the harness's own code: every ``.py`` file of the installed package, by
    sorted relative path, with its bytes. Any change to the code changes it; computed once."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for rel in sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py")):
        data = (package / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _key_json(key: Mapping[str, str]) -> str:
    if not isinstance(key, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in key.items()
    ):
        raise CacheError(f"cache key must map str to str, got {shown(key)}")
    return json.dumps(dict(key), sort_keys=True, separators=(",", ":"))


def key_digest(key: Mapping[str, str]) -> str:
    """sha256 hex of the canonical JSON (sorted keys, ASCII) of ``key``."""
    return hashlib.sha256(_key_json(key).encode()).hexdigest()


def _payload_digest(meta_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of the meta and of each tensor's name, dtype, shape and bytes, by name."""
    h = hashlib.sha256(meta_json.encode() + b"\0")
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


class _Corrupt(Exception):
    """A file that is not a valid entry for the requested key."""


def _encode(key_json: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> bytes:
    try:
        meta_json = json.dumps(dict(meta), sort_keys=True)
    except (TypeError, ValueError) as err:
        raise CacheError(f"cache meta must be JSON: {one_line(str(err))}") from err
    copies = {
        name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        for name, t in tensors.items()
    }
    metadata = {
        "format": FORMAT,
        "key": key_json,
        "meta": meta_json,
        "sha256": _payload_digest(meta_json, copies),
    }
    return safetensors.torch.save(copies, metadata=metadata)


def _decode(data: bytes, key_json: str) -> Entry:
    try:
        if len(data) < 8 or 8 + (size := int.from_bytes(data[:8], "little")) > len(data):
            raise _Corrupt("truncated header")
        metadata = json.loads(data[8 : 8 + size])["__metadata__"]
        if metadata["format"] != FORMAT or metadata["key"] != key_json:
            raise _Corrupt("another format or key")
        tensors = safetensors.torch.load(data)
        meta = json.loads(metadata["meta"])
        if _payload_digest(metadata["meta"], tensors) != metadata["sha256"]:
            raise _Corrupt("checksum")
    except (SafetensorError, ValueError, KeyError, TypeError) as err:
        raise _Corrupt(str(err)) from err
    if not isinstance(meta, dict):
        raise _Corrupt("meta is not an object")
    return Entry(tensors=tensors, meta=meta)


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a synced temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
    try:
        with tmp.open("xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the error that got us here
            tmp.unlink(missing_ok=True)
        raise


class DiskCache:
    """Entries of tensors and meta under ``root``, at most ``max_bytes`` of files.

    Parameters
    ----------
    root : Path or str, default ``.harness/cache``
        Directory of the cache, made absolute now (a later ``chdir`` does not move it) and
        created on the first put.
    max_bytes : int, default 4 GiB
        Bound on the size of the entries' files after each put.

    Attributes
    ----------
    hits, misses, corrupt : int
        Gets of this object that found an entry, that did not, and the files they found
        corrupt and deleted (each also a miss).
    """

    def __init__(self, root: Path | str = DEFAULT_DIR, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise CacheError(
                f"cache max_bytes must be a whole number of bytes >= 0, got {shown(max_bytes)}"
            )
        self.root = Path(root).absolute()
        self.max_bytes = max_bytes
        self.hits = self.misses = self.corrupt = 0
        self._warned = False

    def _path(self, kind: str, key: Mapping[str, str]) -> Path:
        """The file of the entry ``key`` of ``kind`` (which need not exist)."""
        if not isinstance(kind, str) or (problem := name_problem(kind)) is not None:
            raise CacheError(f"cache kind {shown(kind)}: {problem or 'use a str'}")
        digest = key_digest(key)
        return self.root / kind / digest[:2] / f"{digest}{_SUFFIX}"

    def get(self, kind: str, key: Mapping[str, str]) -> Entry | None:
        """The entry ``key`` of ``kind``, or None: missing, unreadable or corrupt (deleted)."""
        path = self._path(kind, key)
        try:
            with path.open("rb") as fh:
                seen = os.fstat(fh.fileno())
                data = fh.read()
        except OSError:
            self.misses += 1
            return None
        try:
            entry = _decode(data, _key_json(key))
        except _Corrupt:
            self.misses += 1
            self.corrupt += 1
            with contextlib.suppress(OSError):  # gone already, or not ours to delete
                now = path.stat()
                if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino):  # not rewritten since
                    path.unlink()
            return None
        self.hits += 1
        with contextlib.suppress(OSError):  # evicted meanwhile, or a read-only cache
            os.utime(path)
        return entry

    def put(
        self,
        kind: str,
        key: Mapping[str, str],
        tensors: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any],
    ) -> None:
        """Store ``tensors`` (as contiguous CPU copies) and ``meta`` (JSON) as ``key`` of
        ``kind``, then evict down to ``max_bytes``. A cache that cannot be written warns once
        and stores nothing; bad arguments raise :class:`CacheError`."""
        path = self._path(kind, key)
        data = _encode(_key_json(key), tensors, meta)
        try:
            _write_atomic(path, data)
            self._evict(keep=path)
        except OSError as err:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    one_line(
                        f"harness cache: cannot write under {self.root} ({err}); "
                        "carrying on without caching"
                    ),
                    RuntimeWarning,
                    stacklevel=2,
                )

    @contextlib.contextmanager
    def lock(self, kind: str, key: Mapping[str, str], *, wait: bool = True) -> Iterator[bool]:
        """Hold the lock of one entry (``<root>/.locks/<key digest>.lock``) for the block: the
        processes that would compute the same entry take turns, so the first computes it and
        the others find it. A lock that cannot be taken (an unwritable root; held longer than
        an hour) is not waited for: the block runs without it.

        Yields True when the block may compute the entry; False only with ``wait=False`` when
        another process holds the lock now (it is computing the entry: do other work first)."""
        self._path(kind, key)  # checks the kind and key
        path = self.root / ".locks" / f"{key_digest(key)}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            held = FileLock(path, timeout=_ENTRY_LOCK_TIMEOUT_S if wait else 0)
            held.acquire()
        except Timeout:
            yield wait
            return
        except OSError:
            yield True
            return
        try:
            yield True
        finally:
            held.release()

    def nbytes(self) -> int:
        """Bytes of all entries' files (temporary files not included)."""
        return sum(size for _, size, _ in self._entries())

    def clear(self) -> None:
        """Delete every entry and temporary file, and the directories they leave empty; files
        that are not the cache's stay (``root`` may be shared)."""
        for pattern in (f"*/??/*{_SUFFIX}", f"*/??/.*{_TMP_SUFFIX}"):
            for path in self.root.glob(pattern):
                with contextlib.suppress(OSError):
                    path.unlink()
        for directory in [*self.root.glob("*/??/"), *self.root.glob("*/")]:
            with contextlib.suppress(OSError):  # not empty, or gone
                directory.rmdir()

    def _entries(self) -> list[tuple[int, int, Path]]:
        """(mtime in ns, size, path) of every entry, without those that vanish meanwhile."""
        found: list[tuple[int, int, Path]] = []
        for path in self.root.glob(f"*/??/*{_SUFFIX}"):
            with contextlib.suppress(OSError):
                st = path.stat()
                found.append((st.st_mtime_ns, st.st_size, path))
        return found

    def _evict(self, keep: Path) -> None:
        """Delete stale temporary files, then least recently used entries but ``keep`` until
        the cache fits; other processes may evict at the same time."""
        stale = time.time() - _STALE_TMP_S
        for tmp in self.root.glob(f"*/??/.*{_TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < stale:
                    tmp.unlink()
        if self.nbytes() <= self.max_bytes:
            return
        try:
            with FileLock(str(self.root / ".lock"), timeout=_LOCK_TIMEOUT_S):
                entries = sorted(self._entries())  # under the lock: after others' evictions
                total = sum(size for _, size, _ in entries)
                for _, size, path in entries:
                    if total <= self.max_bytes:
                        break
                    if path != keep:
                        path.unlink(missing_ok=True)
                        total -= size
        except Timeout:
            return
