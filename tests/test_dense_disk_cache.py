"""The runner on the disk cache (harness.cache): dense models trained once are loaded by other
caches (other processes, later sessions) with identical results; a corrupt entry is retrained;
a change to anything in the key misses; fold results are reused only when opted in; a process
pool shares the controller's cache."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from harness import cache as disk_cache
from harness.cache import DiskCache
from harness.executors import ProcessExecutor
from harness.metricnames import parse as parse_metric
from harness.results import CaseResult
from harness.runner import DenseCache, run_case
from harness.spec import SuiteSpec, suite_from_dict

SUITE = """\
[suite]
name = "disk-cache"
dataset = "sklearn:breast_cancer"
model_args = { hidden = [16] }
seed = 1

[cv]
folds = 2

[train]
epochs = 2
lr = 1e-2

[latency]
batch = 8
warmup = 0
repeats = 1

[checks]
properties = false
differential = false

[[case]]
name = "mag-50"
prune = { method = "magnitude", sparsity = 0.5 }

[[case]]
name = "mag-80"
prune = { method = "magnitude", sparsity = 0.8 }
"""


@pytest.fixture(scope="module")
def suite() -> SuiteSpec:
    return suite_from_dict(tomllib.loads(SUITE), "<disk-cache>")


def quality(result: CaseResult) -> list[dict[str, float]]:
    return [
        {k: v for k, v in fold.items() if not parse_metric(k).hardware_bound}
        for fold in result.folds
    ]


def test_a_second_session_loads_the_dense_models(suite: SuiteSpec, tmp_path: Path) -> None:
    first = DenseCache(disk=DiskCache(tmp_path))
    a = run_case(suite, suite.cases[0], cache=first)
    assert (first.trained, first.disk_hits) == (2, 0)
    second = DenseCache(disk=DiskCache(tmp_path))  # a new session: nothing in memory
    b = run_case(suite, suite.cases[0], cache=second)
    assert (second.trained, second.disk_hits) == (0, 2)
    assert quality(a) == quality(b)
    c = run_case(suite, suite.cases[1], cache=second)  # the next case: from memory
    # before each serial case the cache claims the dense models (loaded from disk once), and
    # each fold then finds its model in memory: 2 hits for the first case, 2 for this one
    assert (second.trained, second.disk_hits, second.hits) == (0, 2, 4)
    assert quality(c) == quality(run_case(suite, suite.cases[1]))  # as if trained here


def test_a_corrupt_dense_entry_is_retrained(suite: SuiteSpec, tmp_path: Path) -> None:
    run_case(suite, suite.cases[0], cache=DenseCache(disk=DiskCache(tmp_path)))
    entries = sorted((tmp_path / "dense").glob("*/*.safetensors"))
    assert len(entries) == 2
    data = bytearray(entries[0].read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in the weights
    entries[0].write_bytes(bytes(data))
    disk = DiskCache(tmp_path)
    again = DenseCache(disk=disk)
    result = run_case(suite, suite.cases[0], cache=again)
    assert (again.trained, again.disk_hits, disk.corrupt) == (1, 1, 1)
    assert quality(result) == quality(run_case(suite, suite.cases[0]))


def test_other_code_or_numerics_level_misses(
    suite: SuiteSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_case(suite, suite.cases[0], cache=DenseCache(disk=DiskCache(tmp_path)))
    monkeypatch.setattr(disk_cache, "code_digest", lambda: "another commit of the harness")
    changed = DenseCache(disk=DiskCache(tmp_path))
    run_case(suite, suite.cases[0], cache=changed)
    assert (changed.trained, changed.disk_hits) == (2, 0)


def test_fold_results_are_reused_only_when_opted_in(suite: SuiteSpec, tmp_path: Path) -> None:
    plain = DenseCache(disk=DiskCache(tmp_path))
    first = run_case(suite, suite.cases[0], cache=plain, keep_models=True)
    assert not (tmp_path / "fold").exists()  # off by default
    opted = DenseCache(disk=DiskCache(tmp_path), results=True)
    stored = run_case(suite, suite.cases[0], cache=opted, keep_models=True)
    assert len(list((tmp_path / "fold").glob("*/*.safetensors"))) == 2
    reused_disk = DiskCache(tmp_path)
    reused = run_case(
        suite, suite.cases[0], cache=DenseCache(disk=reused_disk, results=True), keep_models=True
    )
    assert reused_disk.hits == 2  # both folds from the cache, no dense model loaded either
    assert reused.folds == stored.folds  # every metric, latency included: the stored run's
    assert quality(reused) == quality(first)
    assert reused.pie == first.pie and reused.confusion == first.confusion
    for a, b in zip(reused.pruned_states, first.pruned_states, strict=True):
        assert all(a[k].equal(b[k]) for k in b)
    other = run_case(suite, suite.cases[1], cache=DenseCache(disk=reused_disk, results=True))
    assert quality(other) != quality(first)  # another spec: its own entries


def test_a_process_pool_shares_the_controllers_cache(suite: SuiteSpec, tmp_path: Path) -> None:
    pool = ProcessExecutor(workers=2)
    try:
        cache = DenseCache(disk=DiskCache(tmp_path))
        pooled = run_case(suite, suite.cases[0], cache=cache, executor=pool)
        assert len(list((tmp_path / "dense").glob("*/*.safetensors"))) == 2  # by the children
        here = DenseCache(disk=DiskCache(tmp_path))
        serial = run_case(suite, suite.cases[0], cache=here)
        assert (here.trained, here.disk_hits) == (0, 2)
        assert quality(pooled) == quality(serial)
    finally:
        pool.close()


def test_a_model_another_process_is_training_is_left_for_later(
    suite: SuiteSpec, tmp_path: Path
) -> None:
    """Two processes starting one suite divide its dense models: the one that finds a fold's
    entry locked trains the next fold meanwhile, then loads the locked one; results unchanged."""
    from filelock import FileLock

    from harness import runner

    disk = DiskCache(tmp_path)
    cache = DenseCache(disk=disk)
    prepared = runner._prepared(suite)
    first = runner._disk_key(cache.key(suite, prepared.ds, prepared.folds[0]))
    lock_path = tmp_path / ".locks" / f"{disk_cache.key_digest(first)}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path):  # "another process" is training fold 0's model
        runner._claim_dense(suite, prepared, cache, None, None)
        assert (cache.trained, len(cache)) == (1, 1)  # fold 1's, without waiting for fold 0
    result = run_case(suite, suite.cases[0], cache=cache)
    assert cache.trained == 2  # fold 0's, once its lock was free (nobody stored it here)
    assert quality(result) == quality(run_case(suite, suite.cases[0]))
