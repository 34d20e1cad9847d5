"""The on-disk cache: round trips, verification of every read, LRU bound, concurrent processes,
and a root that cannot be written. Real files under ``tmp_path``, no mocks."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cache import (
    FORMAT,
    CacheError,
    DiskCache,
    code_digest,
    key_digest,
)

KEY = {"model": "mlp", "fold": "0"}
TENSORS = {
    "weight": torch.randn(4, 3),
    "index": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    "mask": torch.tensor([True, False, True]),
    "empty": torch.empty(0, 5),
}
META = {"metrics": {"f1_macro": 0.75}, "epochs": 3, "note": "dense"}


def entry_path(root: Path, kind: str, key: Mapping[str, str]) -> Path:
    """Where the documented layout puts an entry."""
    digest = key_digest(key)
    return root / kind / digest[:2] / f"{digest}.safetensors"


def assert_same(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def test_round_trip_of_tensors_and_meta(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    strided = torch.randn(3, 4).t()  # not contiguous: stored as a contiguous copy
    cache.put("dense", KEY, {**TENSORS, "strided": strided}, META)
    assert entry_path(tmp_path, "dense", KEY).is_file()

    entry = cache.get("dense", KEY)
    assert entry is not None
    assert_same(entry.tensors, {**TENSORS, "strided": strided})
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in entry.tensors.values())
    assert entry.meta == META
    assert (cache.hits, cache.misses, cache.corrupt) == (1, 0, 0)
    assert cache.nbytes() == entry_path(tmp_path, "dense", KEY).stat().st_size


def test_meta_only_entry_and_kinds_are_apart(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.put("scores", KEY, {}, {"score": 1.5})
    entry = cache.get("scores", KEY)
    assert entry is not None and entry.tensors == {} and entry.meta == {"score": 1.5}
    assert cache.get("dense", KEY) is None  # same key, another kind


def test_miss_on_unknown_key_and_missing_root(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "never-made")
    assert cache.get("dense", KEY) is None
    assert cache.nbytes() == 0
    cache.put("dense", KEY, TENSORS, META)
    assert cache.get("dense", {**KEY, "fold": "1"}) is None
    assert (cache.hits, cache.misses, cache.corrupt) == (0, 2, 0)


def test_last_put_wins(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.put("dense", KEY, {"x": torch.zeros(3)}, {"v": 1})
    cache.put("dense", KEY, {"x": torch.ones(3)}, {"v": 2})
    entry = cache.get("dense", KEY)
    assert entry is not None and entry.meta == {"v": 2}
    assert torch.equal(entry.tensors["x"], torch.ones(3))
    assert list(tmp_path.rglob("*.tmp")) == []


def _craft(scratch: Path, path: Path, key: Mapping[str, str], fmt: str) -> None:
    """At ``path``, a well-formed entry for ``key`` in format ``fmt``, checksum and all."""
    valid = DiskCache(scratch)
    valid.put("k", key, TENSORS, META)
    data = entry_path(valid.root, "k", key).read_bytes()
    tensors = safetensors.torch.load(data)
    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + size])["__metadata__"]
    metadata["format"] = fmt
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    valid.clear()


@pytest.mark.parametrize(
    ("stored_key", "fmt"),
    [({**KEY, "fold": "1"}, FORMAT), ({**KEY, "extra": ""}, FORMAT), (KEY, "harness-cache/0")],
    ids=["other-value", "extra-field", "other-format"],
)
def test_a_file_for_another_key_or_format_is_corrupt(
    tmp_path: Path, stored_key: dict[str, str], fmt: str
) -> None:
    cache = DiskCache(tmp_path / "cache")
    path = entry_path(cache.root, "dense", KEY)
    _craft(tmp_path / "scratch", path, stored_key, fmt)
    assert cache.get("dense", KEY) is None
    assert (cache.misses, cache.corrupt) == (1, 1)
    assert not path.exists()


def _truncate(data: bytes) -> bytes:
    return data[: len(data) - 7]


def _flip_payload(data: bytes) -> bytes:
    flipped = data[:-1] + bytes([data[-1] ^ 0x01])  # the last byte is tensor data
    safetensors.torch.load(flipped)  # still well-formed: only the checksum can tell
    return flipped


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        lambda data: data[:5],  # not even the header's length
        _flip_payload,
        lambda data: b"this is not a safetensors file, just some text\n" * 3,
        lambda data: b"",
        lambda data: data.replace(b'"__metadata__"', b'"__metadata_x"'),
    ],
    ids=["truncated", "truncated-header", "flipped-byte", "garbage", "empty", "no-metadata"],
)
def test_a_damaged_file_is_deleted_then_rewritten(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    cache = DiskCache(tmp_path)
    cache.put("dense", KEY, TENSORS, META)
    path = entry_path(tmp_path, "dense", KEY)
    path.write_bytes(damage(path.read_bytes()))

    assert cache.get("dense", KEY) is None
    assert (cache.hits, cache.misses, cache.corrupt) == (0, 1, 1)
    assert not path.exists()

    cache.put("dense", KEY, TENSORS, META)
    entry = cache.get("dense", KEY)
    assert entry is not None and entry.meta == META
    assert_same(entry.tensors, TENSORS)


def test_eviction_drops_the_least_recently_used(tmp_path: Path) -> None:
    def put(cache: DiskCache, name: str) -> None:
        cache.put("dense", {"name": name}, {"x": torch.zeros(256)}, {})
        time.sleep(0.02)  # mtimes a filesystem can tell apart

    probe = DiskCache(tmp_path / "probe")
    put(probe, "a")
    size = probe.nbytes()
    cache = DiskCache(tmp_path / "cache", max_bytes=3 * size)
    for name in "abc":
        put(cache, name)
    assert cache.get("dense", {"name": "a"}) is not None  # a is now the most recent
    time.sleep(0.02)
    put(cache, "d")  # over the bound: b goes (oldest access), not a
    present = {n for n in "abcd" if entry_path(cache.root, "dense", {"name": n}).exists()}
    assert present == {"a", "c", "d"}
    assert cache.nbytes() <= cache.max_bytes


def test_the_entry_just_written_stays_even_over_the_bound(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=10)
    cache.put("dense", {"name": "a"}, {"x": torch.zeros(64)}, {})
    cache.put("dense", {"name": "b"}, {"x": torch.zeros(64)}, {})
    assert cache.get("dense", {"name": "a"}) is None
    assert cache.get("dense", {"name": "b"}) is not None


def test_eviction_removes_stale_temporary_files(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.put("dense", KEY, TENSORS, META)
    shard = entry_path(tmp_path, "dense", KEY).parent
    stale, fresh = shard / ".x.safetensors.1.ab.tmp", shard / ".y.safetensors.2.cd.tmp"
    stale.write_bytes(b"left by a dead writer")
    fresh.write_bytes(b"being written")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    cache.put("dense", {"other": "key"}, TENSORS, META)
    assert not stale.exists() and fresh.exists()


def test_clear_removes_entries_only(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not the cache's")
    cache = DiskCache(tmp_path)
    cache.put("dense", KEY, TENSORS, META)
    cache.put("scores", KEY, {}, META)
    cache.clear()
    assert cache.nbytes() == 0 and cache.get("dense", KEY) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def _blocked_by_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("in the way")
    return tmp_path / "file"


def _blocked_below(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "dense").write_text("in the way of the kind's directory")
    return tmp_path / "root"


def _read_only(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only directories")
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    return root


@pytest.mark.parametrize("make_root", [_blocked_by_a_file, _blocked_below, _read_only])
def test_an_unwritable_root_warns_once_and_carries_on(
    tmp_path: Path, make_root: Callable[[Path], Path]
) -> None:
    cache = DiskCache(make_root(tmp_path))
    with pytest.warns(RuntimeWarning, match="cannot write under") as record:
        cache.put("dense", KEY, TENSORS, META)
        cache.put("dense", {"other": "key"}, TENSORS, META)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert cache.get("dense", KEY) is None
    assert cache.nbytes() == 0


@pytest.mark.parametrize("max_bytes", [-1, 1.5, "1GB", True])
def test_a_bad_max_size_is_one_clear_line(tmp_path: Path, max_bytes: object) -> None:
    with pytest.raises(CacheError, match=r"max_bytes .* got") as info:
        DiskCache(tmp_path, max_bytes=max_bytes)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_bad_kind_key_or_meta_raise(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    with pytest.raises(CacheError, match="kind"):
        cache.get("../escape", KEY)
    with pytest.raises(CacheError, match="key must map str to str"):
        cache.put("dense", {"fold": 0}, TENSORS, META)  # type: ignore[dict-item]
    with pytest.raises(CacheError, match="meta must be JSON"):
        cache.put("dense", KEY, TENSORS, {"tensor": torch.zeros(1)})
    assert cache.nbytes() == 0


def test_code_digest_is_a_stable_sha256() -> None:
    digest = code_digest()
    assert digest == code_digest()
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_key_digest_ignores_order_only() -> None:
    assert key_digest({"a": "1", "b": "2"}) == key_digest({"b": "2", "a": "1"})
    assert key_digest({"a": "1"}) != key_digest({"a": "1", "b": ""})
    assert key_digest({"a": "1,b"}) != key_digest({"a": "1", "b": ""})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5))
def test_any_text_key_round_trips(tmp_path: Path, key: dict[str, str]) -> None:
    cache = DiskCache(tmp_path)  # shared by the examples: different keys never collide
    tensors = {"x": torch.arange(len(key) + 1, dtype=torch.float32)}
    cache.put("prop", key, tensors, {"key": key})
    entry = cache.get("prop", key)
    assert entry is not None and entry.meta == {"key": key}
    assert_same(entry.tensors, tensors)


# Concurrency: processes write and read shared and own keys of a small cache, so they also
# evict each other's entries; every entry read must be whole and the one asked for.
_OPS = 100
_WORKERS = 4


def _payload(name: str, version: int) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    tensors = {"x": torch.full((256,), version, dtype=torch.int64), "y": torch.ones(version % 7)}
    return tensors, {"name": name, "version": version}


_start: Any = None  # a worker's barrier: no process starts before all have imported torch


def _init_worker(barrier: Any) -> None:
    global _start
    _start = barrier


def _worker(args: tuple[str, int, int]) -> tuple[float, float, int]:
    root, index, max_bytes = args
    rng = random.Random(index)
    cache = DiskCache(root, max_bytes=max_bytes)
    names = ["shared-0", "shared-1", "shared-2", *(f"own-{index}-{j}" for j in range(3))]
    _start.wait()
    began = time.monotonic()
    for _ in range(_OPS):
        name = rng.choice(names)
        if rng.random() < 0.5:
            cache.put("dense", {"name": name}, *_payload(name, rng.randrange(1000)))
            continue
        entry = cache.get("dense", {"name": name})
        if entry is not None:
            assert entry.meta["name"] == name, entry.meta
            assert_same(entry.tensors, _payload(name, entry.meta["version"])[0])
    assert cache.corrupt == 0
    return began, time.monotonic(), cache.hits


def test_concurrent_processes_never_see_a_wrong_or_partial_entry(tmp_path: Path) -> None:
    size = len(safetensors.torch.save(_payload("shared-0", 999)[0])) + 300  # with metadata
    max_bytes = 5 * size  # 15 names: constant eviction
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(_WORKERS)
    with context.Pool(_WORKERS, initializer=_init_worker, initargs=(barrier,)) as pool:
        runs = pool.map(_worker, [(str(tmp_path), i, max_bytes) for i in range(_WORKERS)])
    assert max(began for began, _, _ in runs) < min(ended for _, ended, _ in runs)  # overlapped
    assert sum(hits for _, _, hits in runs) > 0

    cache = DiskCache(tmp_path, max_bytes=max_bytes)
    assert 0 < cache.nbytes() <= max_bytes
    names = [f"shared-{j}" for j in range(3)]
    names += [f"own-{i}-{j}" for i in range(_WORKERS) for j in range(3)]
    for name in names:
        entry = cache.get("dense", {"name": name})
        if entry is not None:
            assert_same(entry.tensors, _payload(name, entry.meta["version"])[0])
    assert cache.hits == len(list(tmp_path.glob("dense/??/*.safetensors"))) > 0
    assert cache.corrupt == 0
    assert list(tmp_path.rglob("*.tmp")) == []
