"""The runner: pruning-identified exemplars and McNemar's counts from hand-built fold
predictions, and real (tiny) runs on sklearn's digits with repeated k-fold and edge-case sets."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.data import load_dataset, make_folds
from harness.metricnames import parse as parse_metric
from harness.results import CaseResult, MetricSummary
from harness.runner import DenseCache, FoldResult, exemplars, run_case, run_fold
from harness.spec import SuiteSpec, suite_from_dict
from harness.training import predict_logits

# --------------------------------------------------------------------------------------------
# pruning-identified exemplars


def _fold(val_idx: list[int], dense: list[int], pruned: list[int]) -> FoldResult:
    return FoldResult(
        metrics={},
        val_idx=np.asarray(val_idx),
        dense_pred=np.asarray(dense),
        pruned_pred=np.asarray(pruned),
        confusion_dense=np.zeros((3, 3), dtype=np.int64),
        confusion_pruned=np.zeros((3, 3), dtype=np.int64),
        layer_sparsity={},
        pruned=torch.nn.Linear(2, 3),
    )


# six samples, three classes, two repeats of 2-fold CV: every sample is validated twice
Y = np.array([0, 1, 2, 1, 0, 2])
# per sample: (dense prediction, pruned prediction) in repeat 1 and in repeat 2
#   0: (0,0) (0,0)  agree                                   -> not an exemplar
#   1: (1,2) (1,2)  dense mode 1 (right), pruned mode 2       -> exemplar; b += 2
#   2: (2,1) (2,0)  pruned votes tie 0/1 -> 0 (lower class)   -> exemplar; b += 2
#   3: (0,1) (2,1)  dense votes tie 0/2 -> 0, pruned mode 1   -> exemplar; c += 2
#   4: (1,0) (0,1)  both tie 0/1 -> 0 and 0                   -> not an exemplar; c += 1, b += 1
#   5: (2,0) (1,0)  dense tie 1/2 -> 1, pruned mode 0         -> exemplar; b += 1 (repeat 1 only)
PIE_FOLDS = [
    _fold([0, 1, 2], dense=[0, 1, 2], pruned=[0, 2, 1]),  # repeat 1
    _fold([3, 4, 5], dense=[0, 1, 2], pruned=[1, 0, 0]),
    _fold([5, 3, 1], dense=[1, 2, 1], pruned=[0, 1, 2]),  # repeat 2, another order
    _fold([4, 2, 0], dense=[0, 2, 0], pruned=[1, 0, 0]),
]


def test_exemplars_by_hand() -> None:
    pie = exemplars(PIE_FOLDS, Y, 3)
    assert pie["ids"] == [1, 2, 3, 5]
    assert pie["count"] == 4
    assert pie["rate"] == pytest.approx(4 / 6)
    # modal predictions on the exemplars: dense (1, 2, 0, 1) vs truth (1, 2, 1, 2)
    assert pie["dense_accuracy"] == pytest.approx(2 / 4)
    # pruned (2, 0, 1, 0) vs truth (1, 2, 1, 2)
    assert pie["pruned_accuracy"] == pytest.approx(1 / 4)
    # McNemar over the 12 (fold, sample) pairs: b dense right / pruned wrong, c the reverse
    assert (pie["mcnemar_b"], pie["mcnemar_c"]) == (6, 3)
    json.dumps(pie)  # plain Python types: goes into results and baselines as is


def test_exemplars_with_one_repeat_are_the_disagreements() -> None:
    pie = exemplars(PIE_FOLDS[:2], Y, 3)
    assert pie["ids"] == [1, 2, 3, 4, 5]  # every sample where the single predictions differ
    assert pie["rate"] == pytest.approx(5 / 6)
    assert (pie["mcnemar_b"], pie["mcnemar_c"]) == (3, 2)  # b: samples 1, 2, 5; c: 3, 4


def test_exemplars_rate_counts_only_validated_samples_and_none_without_exemplars() -> None:
    y = np.append(Y, 1)  # sample 6 is never validated
    assert exemplars(PIE_FOLDS, y, 3)["rate"] == pytest.approx(4 / 6)
    same = [_fold([0, 1, 2], [0, 1, 2], [0, 1, 2]), _fold([3, 4, 5], [1, 1, 0], [1, 1, 0])]
    pie = exemplars(same, Y, 3)
    assert pie["ids"] == [] and pie["count"] == 0 and pie["rate"] == 0.0
    assert pie["dense_accuracy"] is None and pie["pruned_accuracy"] is None
    assert (pie["mcnemar_b"], pie["mcnemar_c"]) == (0, 0)


# --------------------------------------------------------------------------------------------
# the runner on real data

EDGE_NAMES = ["gaussian_noise_0", "hardest", "blur"]
RUN_SUITE = """\
[suite]
name = "repeated-cv"
dataset = "sklearn:digits"
model = "harness.models:mlp"
model_args = { hidden = [32] }
seed = 0

[cv]
folds = 2
repeats = 2

[train]
epochs = 2
lr = 1e-2

[latency]
batch = 8
warmup = 0
repeats = 1

[edge]
sets = ["gaussian_noise:0", "hardest", "blur"]

[[case]]
name = "mag-70"
prune = { method = "magnitude", sparsity = 0.7 }

[[case]]
name = "no-edge"
prune = { method = "magnitude", sparsity = 0.7 }
edge = []
"""


@pytest.fixture(scope="module")
def run_suite() -> SuiteSpec:
    return suite_from_dict(tomllib.loads(RUN_SUITE), "<repeated-cv>")


@pytest.fixture(scope="module")
def run_result(run_suite: SuiteSpec) -> CaseResult:
    return run_case(run_suite, run_suite.cases[0])


def test_run_case_measures_every_edge_set(run_result: CaseResult) -> None:
    k = 4  # 2 folds x 2 repeats
    for name in EDGE_NAMES:
        for model in ("dense", "pruned"):
            for metric in ("accuracy", "f1_macro"):
                key = f"{model}.edge.{name}.{metric}"
                assert parse_metric(key).name == key
                summary = run_result.metrics[key]
                assert len(summary.folds) == k
                assert all(0.0 <= v <= 1.0 for v in summary.folds), key
                assert all(key in fold for fold in run_result.folds)
    # noise with sigma 0 is the validation fold itself
    for model in ("dense", "pruned"):
        for metric in ("accuracy", "f1_macro"):
            assert (
                run_result.metrics[f"{model}.edge.gaussian_noise_0.{metric}"].folds
                == run_result.metrics[f"{model}.{metric}"].folds
            )
    # the hardest samples for the dense model are the ones it gets wrong
    hard = run_result.metrics["dense.edge.hardest.accuracy"].folds
    clean = run_result.metrics["dense.accuracy"].folds
    assert all(h < c for h, c in zip(hard, clean, strict=True))


def test_case_without_edge_sets_has_no_edge_metrics(run_suite: SuiteSpec) -> None:
    result = run_case(run_suite, run_suite.cases[1])
    assert not [k for k in result.metrics if ".edge." in k]
    assert result.spec_hash != run_suite.spec_hash(run_suite.cases[0])


def test_repeats_give_repeats_times_k_folds_and_exemplars(run_result: CaseResult) -> None:
    n = 1797
    assert len(run_result.folds) == 4
    assert len(run_result.metrics["pruned.accuracy"].folds) == 4
    assert run_result.dataset["n_test"] + run_result.dataset["n_train"] == n
    assert run_result.dataset["n_test"] in (898, 899)
    ids = run_result.pie["ids"]
    assert ids == sorted(set(ids)) and all(0 <= i < n for i in ids)
    rate = run_result.metrics["pie_rate"]
    assert rate.folds == () and 0.0 <= rate.mean <= 1.0
    assert rate.mean == pytest.approx(len(ids) / n)
    assert run_result.metrics["pie_count"].mean == len(ids)
    assert run_result.metrics["pie_count"].folds == ()
    for model in ("dense", "pruned"):
        present = f"{model}.pie_accuracy" in run_result.metrics
        assert present is bool(ids)
        if present:
            assert 0.0 <= run_result.metrics[f"{model}.pie_accuracy"].mean <= 1.0
    # McNemar: b - c = (dense right) - (pruned right) over all (fold, sample) pairs
    ds = load_dataset("sklearn:digits")
    sizes = [len(f.val_idx) for f in make_folds(ds, 2, seed=0, repeats=2)]
    assert sum(sizes) == 2 * n
    dense = run_result.metrics["dense.accuracy"].folds
    pruned = run_result.metrics["pruned.accuracy"].folds
    diff = sum(s * (d - p) for s, d, p in zip(sizes, dense, pruned, strict=True))
    assert run_result.pie["mcnemar_b"] - run_result.pie["mcnemar_c"] == round(diff)
    json.dumps(run_result.to_dict())


def test_folds_and_exemplars_agree_with_run_fold(
    run_suite: SuiteSpec, run_result: CaseResult
) -> None:
    ds = load_dataset("sklearn:digits")
    folds = make_folds(ds, 2, seed=run_suite.cv_seed, repeats=2)
    # the second repeat is another split of the same samples
    assert not np.array_equal(np.sort(folds[0].val_idx), np.sort(folds[2].val_idx))
    results = []
    for fold, metrics in zip(folds, run_result.folds, strict=True):
        fr = run_fold(run_suite, run_suite.cases[0], ds, fold)
        pruned_pred = predict_logits(fr.pruned, fold.X_val).argmax(1)
        assert np.array_equal(pruned_pred, fr.pruned_pred)
        assert (fr.dense_pred == fold.y_val).mean() == metrics["dense.accuracy"]
        assert (pruned_pred == fold.y_val).mean() == metrics["pruned.accuracy"]
        expected = float((fr.dense_pred != pruned_pred).mean())
        assert metrics["disagreement_rate"] == expected
        assert fr.metrics["disagreement_rate"] == expected
        results.append(fr)
    pie = exemplars(results, ds.y, ds.n_classes)
    assert {k: pie[k] for k in ("ids", "mcnemar_b", "mcnemar_c")} == run_result.pie


def _deterministic(result: CaseResult) -> dict[str, MetricSummary]:
    return {k: v for k, v in result.metrics.items() if not parse_metric(k).hardware_bound}


def test_two_runs_give_identical_metrics(run_suite: SuiteSpec, run_result: CaseResult) -> None:
    again = run_case(run_suite, run_suite.cases[0])  # no cache: the dense models train again
    assert _deterministic(again) == _deterministic(run_result)
    assert "speedup" in run_result.metrics and "speedup" not in _deterministic(run_result)
    assert again.pie == run_result.pie
    assert again.dataset == run_result.dataset


def test_a_shared_dense_cache_gives_the_same_metrics_without_training_again(
    run_suite: SuiteSpec, run_result: CaseResult
) -> None:
    cache = DenseCache()
    first = run_case(run_suite, run_suite.cases[0], cache=cache)
    folds = run_suite.folds * run_suite.repeats
    assert (cache.misses, cache.hits, len(cache)) == (folds, 0, folds)
    second = run_case(run_suite, run_suite.cases[0], cache=cache)
    assert (cache.misses, cache.hits) == (folds, folds)
    assert _deterministic(first) == _deterministic(second) == _deterministic(run_result)


def test_the_dense_cache_drops_the_least_recently_used_beyond_its_bound(
    run_suite: SuiteSpec,
) -> None:
    full = DenseCache()
    run_case(run_suite, run_suite.cases[0], cache=full)
    per_fold = full.nbytes // len(full)
    small = DenseCache(max_bytes=per_fold)  # room for one fold's dense model
    run_case(run_suite, run_suite.cases[0], cache=small)
    assert len(small) == 1 and small.nbytes <= per_fold
    ds = load_dataset(run_suite.dataset, run_suite.dataset_args)
    last = make_folds(ds, run_suite.folds, seed=run_suite.cv_seed, repeats=run_suite.repeats)[-1]
    assert small.get(small.key(run_suite, ds, last)) is not None  # the last one used is kept


def test_a_case_with_its_own_model_args_trains_and_prunes_that_model() -> None:
    suite = suite_from_dict(
        {
            "suite": {"dataset": "sklearn:digits", "model_args": {"hidden": [8]}},
            "cv": {"folds": 2},
            "train": {"epochs": 1},
            "latency": {"batch": 8, "warmup": 0, "repeats": 1},
            "checks": {"properties": False, "differential": False},
            "case": [
                {"name": "small", "prune": {"method": "magnitude", "sparsity": 0.5}},
                {
                    "name": "wide",
                    "prune": {"method": "magnitude", "sparsity": 0.5},
                    "model_args": {"hidden": [32]},
                },
            ],
        }
    )
    cache = DenseCache()
    small = run_case(suite, suite.case("small"), cache=cache)
    wide = run_case(suite, suite.case("wide"), cache=cache)
    assert small.value("dense.params") == 64 * 8 + 8 + 8 * 10 + 10
    assert wide.value("dense.params") == 64 * 32 + 32 + 32 * 10 + 10
    assert cache.misses == 4 and cache.hits == 0  # two dense models per fold, none shared
    assert wide.spec_hash == suite.spec_hash(suite.case("wide")) != small.spec_hash


# --------------------------------------------------------------------------------------------
# a pretrained dense model: a checkpoint, epochs = 0, raw features


def _pretrained_suite(tmp_path: Path, checkpoint: str | None, **cv: Any) -> SuiteSpec:
    data: dict[str, Any] = {
        "suite": {"dataset": "sklearn:digits", "model_args": {"hidden": [16]}, "name": "pre"},
        "cv": {"folds": 2, **cv},
        "train": {"epochs": 0},
        "latency": {"batch": 8, "warmup": 0, "repeats": 1},
        "checks": {"properties": False, "differential": False},
        "case": [{"name": "mag", "prune": {"method": "magnitude", "sparsity": 0.5}}],
    }
    if checkpoint is not None:
        data["dense"] = {"checkpoint": checkpoint}
    return suite_from_dict(data, source=str(tmp_path / "pre.toml"))


def _trained_state(tmp_path: Path) -> dict[str, torch.Tensor]:
    from harness.models import mlp
    from harness.spec import TrainSpec
    from harness.training import fit

    ds = load_dataset("sklearn:digits")
    torch.manual_seed(3)
    model = mlp(64, 10, hidden=(16,))
    fit(model, ds.X / 16, ds.y, TrainSpec(epochs=3, lr=1e-2), seed=3)  # trained on x / 16
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_a_checkpoint_is_the_dense_model_of_every_fold_untrained(tmp_path: Path, fmt: str) -> None:
    state = _trained_state(tmp_path)
    if fmt == "pt":
        torch.save(state, tmp_path / "dense.pt")
    else:
        from safetensors.torch import save_file

        save_file(state, str(tmp_path / "dense.safetensors"))
    suite = _pretrained_suite(tmp_path, f"dense.{fmt}", standardize=False)
    cache = DenseCache()
    result = run_case(suite, suite.cases[0], cache=cache)
    ds = load_dataset(suite.dataset)
    for fold in make_folds(ds, 2, seed=0, standardize=False):
        np.testing.assert_array_equal(fold.X_train, ds.X[fold.train_idx])  # raw features
        entry = cache.get(cache.key(suite, ds, fold))
        assert entry is not None
        for name, tensor in state.items():  # the dense weights are the checkpoint's, untrained
            assert torch.equal(entry.state[name], tensor), name
    assert result.dataset["checkpoint"] == cache.key(suite, ds, fold)[3]
    assert result.value("dense.accuracy") > 0.5  # x / 16 vs raw 0..16: the scale it needs


def test_epochs_zero_uses_the_factory_model_as_it_is(tmp_path: Path) -> None:
    suite = _pretrained_suite(tmp_path, None)
    cache = DenseCache()
    run_case(suite, suite.cases[0], cache=cache)
    ds = load_dataset(suite.dataset)
    fold = make_folds(ds, 2, seed=0)[0]
    entry = cache.get(cache.key(suite, ds, fold))
    assert entry is not None
    from harness.models import mlp

    torch.manual_seed(suite.seed * 1000 + fold.index)  # the seed the runner builds with
    fresh = mlp(64, 10, hidden=(16,))
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(entry.state[name], tensor), name


@pytest.mark.parametrize(
    ("write", "problem"),
    [
        (None, "checkpoint not found: "),
        (lambda p: p.write_bytes(b"not a checkpoint"), "not a readable checkpoint"),
        (lambda p: torch.save([1, 2], p), "not a state_dict"),
        (lambda p: torch.save({"0.weight": torch.zeros(3, 3)}, p), "does not fit the model"),
    ],
)
def test_a_bad_checkpoint_is_one_line_at_its_key(tmp_path: Path, write: Any, problem: str) -> None:
    from harness.resolution import resolve
    from harness.spec import SpecError

    if write is not None:
        write(tmp_path / "dense.pt")
    suite = _pretrained_suite(tmp_path, "dense.pt")
    with pytest.raises(SpecError) as info:
        resolve(suite)
    assert info.value.key == "dense.checkpoint" and info.value.value == "dense.pt"
    assert problem in info.value.problem and "\n" not in str(info.value)


def test_a_checkpoint_case_warns_once_that_folds_may_be_seen_data(tmp_path: Path) -> None:
    from harness.session import Recorder, Settings, check_case

    torch.save(_trained_state(tmp_path), tmp_path / "dense.pt")
    suite = _pretrained_suite(tmp_path, "dense.pt", standardize=False)
    settings = Settings(baselines=tmp_path / "baselines", regen=True)
    recorder = Recorder(settings)
    for _ in range(2):
        recorder.add(check_case(suite, suite.cases[0], settings))
    (line,) = recorder.messages  # once per session, not once per case
    assert line.startswith("pre: the dense model is the checkpoint dense.pt; if it was trained")
