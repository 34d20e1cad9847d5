"""The fixed test split (``[cv] test``, harness.data.split): a held-out fraction (stratified,
disjoint, seeded) or a dataset file (labels by class name), refused in one line when it does not
fit; the bootstrap confidence intervals of its metrics; real runs that report ``*.test.*``
metrics, and the pretrained suite, whose dense model is the checkpoint and never trains."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from harness.data import Dataset, load_dataset, make_folds
from harness.data.registry import DatasetError
from harness.data.split import _metric, bootstrap_mean_ci, split_test
from harness.inputs import InputSpec
from harness.metricnames import MetricRef
from harness.spec import SpecError, SuiteSpec, suite_from_dict

ROOT = Path(__file__).resolve().parents[1]
MODULE = "split_usermods"

USER_MODULE = '''\
import numpy as np


def named(n=40, length=6, vocab=9, seed=0):
    """Token ids and a mask; the largest id only in sample 0."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab - 1, size=(n, length))
    ids[0, 0] = vocab - 1
    mask = np.ones((n, length), dtype=np.int64)
    return {"X": {"input_ids": ids, "attention_mask": mask}, "y": np.arange(n) % 2}


def held_out():
    """Named inputs of the same layout with larger ids: a test split of `named`."""
    ids = np.arange(60).reshape(10, 6) % 30 + 1
    mask = np.ones((10, 6), dtype=np.int64)
    return {"X": {"input_ids": ids, "attention_mask": mask}, "y": np.arange(10) % 2}
'''

SUITE = """\
[suite]
name = "split"
dataset = "{dataset}"
model = "harness.models:mlp"
model_args = {{ hidden = [16] }}
seed = 0

[cv]
folds = 2
test = {test}

[train]
epochs = 2
lr = 1e-2

[latency]
batch = 16
warmup = 1
repeats = 2

[checks]
properties = false
differential = false

[[case]]
name = "magnitude-50"
prune = {{ method = "magnitude", sparsity = 0.5 }}
"""


def _one_line(message: str) -> str:
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message
    return message


def _rows(where: Path, counts: tuple[int, ...] = (50, 30, 20), features: int = 4) -> Dataset:
    """``rows.npz``: class ``c`` has ``counts[c]`` samples; feature 0 is the row's index."""
    y = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    y = y[rng.permutation(len(y))]
    X = rng.normal(size=(len(y), features))
    X[:, 0] = np.arange(len(y))
    np.savez(where / "rows.npz", X=X, y=y)
    return load_dataset("npz:rows.npz", base=where)


def _suite(where: Path, dataset: str, test: str) -> SuiteSpec:
    return suite_from_dict(
        tomllib.loads(SUITE.format(dataset=dataset, test=test)), str(where / "s.toml")
    )


def _resolve_error(where: Path, dataset: str, test: str) -> SpecError:
    from harness.resolution import resolve

    with pytest.raises(SpecError) as info:
        resolve(_suite(where, dataset, test))
    _one_line(str(info.value))
    assert info.value.key == "cv.test"
    assert str(info.value).startswith(f"{where / 's.toml'}: cv.test = ")
    return info.value


# --------------------------------------------------------------------------------------------
# a held-out fraction


def test_fraction_split_is_stratified_disjoint_and_covers_every_row(tmp_path: Path) -> None:
    ds = _rows(tmp_path)
    rest, test = split_test(ds, 0.2, seed=0, base=tmp_path)
    kept, held = rest.X[:, 0].astype(int), test.X[:, 0].astype(int)
    assert len(held) == 20 and len(kept) == 80
    assert not set(kept) & set(held)
    assert sorted([*kept, *held]) == list(range(100))
    np.testing.assert_array_equal(rest.y, ds.y[kept])  # rows keep their labels
    np.testing.assert_array_equal(test.y, ds.y[held])
    assert np.bincount(test.y).tolist() == [10, 6, 4]  # 20 % of every class
    assert np.bincount(rest.y).tolist() == [40, 24, 16]
    assert rest.class_names == ds.class_names and rest.spec == ds.spec
    assert not rest.X.flags.writeable and not test.X.flags.writeable
    assert not test.y.flags.writeable
    assert test.source == "20% held out (seed 0)"
    assert len({ds.digest, rest.digest, test.digest}) == 3

    again_rest, again = split_test(ds, 0.2, seed=0, base=tmp_path)
    np.testing.assert_array_equal(again.X, test.X)
    np.testing.assert_array_equal(again_rest.X, rest.X)
    assert (again_rest.digest, again.digest) == (rest.digest, test.digest)

    other_rest, other = split_test(ds, 0.2, seed=1, base=tmp_path)
    assert set(other.X[:, 0].astype(int)) != set(held)
    assert np.bincount(other.y).tolist() == [10, 6, 4]
    assert other_rest.digest != rest.digest and other.digest != test.digest
    assert split_test(ds, 0.3, seed=0, base=tmp_path)[0].digest != rest.digest


@pytest.mark.parametrize(
    ("counts", "test", "problem"),
    [
        (
            (50, 30, 20),
            "0.01",
            "test = 0.01: holds out 1 of 100 samples; both parts need at least one sample of "
            "each of the 3 classes",
        ),
        (
            (50, 30, 20),
            "0.99",
            "test = 0.99: holds out 99 of 100 samples; both parts need at least one sample of "
            "each of the 3 classes",
        ),
        (
            (50, 30, 1),
            "0.3",
            "test = 0.3: class '2' has 1 sample; a stratified held-out split needs at least two "
            "of each class",
        ),
    ],
)
def test_fraction_split_that_cannot_be_made_is_one_line(
    tmp_path: Path, counts: tuple[int, ...], test: str, problem: str
) -> None:
    ds = _rows(tmp_path, counts)
    with pytest.raises(DatasetError) as info:
        split_test(ds, float(test), seed=0, base=tmp_path)
    assert _one_line(str(info.value)) == problem
    err = _resolve_error(tmp_path, "npz:rows.npz", test)
    assert str(err).endswith(problem)


@pytest.mark.parametrize("test", ["0", "1", "1.5", "-0.2", '""', '"  "'])
def test_test_values_that_are_neither_a_fraction_nor_a_dataset(tmp_path: Path, test: str) -> None:
    with pytest.raises(SpecError) as info:
        _suite(tmp_path, "sklearn:wine", test)
    assert info.value.key == "cv.test"
    _one_line(str(info.value))


# --------------------------------------------------------------------------------------------
# a dataset file


def test_file_split_maps_labels_by_class_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = np.array(["cat", "dog", "eel"])
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(30, 4)), y=names[np.arange(30) % 3])
    test_labels = np.array(["eel", "cat", "eel", "cat", "eel"])
    X_test = rng.normal(size=(5, 4))
    np.savez(tmp_path / "t.npz", X=X_test, y=test_labels)
    ds = load_dataset("npz:d.npz", base=tmp_path)
    assert ds.class_names == ("cat", "dog", "eel")
    both, test = split_test(ds, "npz:t.npz", seed=0, base=tmp_path)
    np.testing.assert_array_equal(test.y, [2, 0, 2, 0, 2])  # the dataset's indices, not the file's
    np.testing.assert_array_equal(test.X, X_test.astype(np.float32))
    assert test.source == "npz:t.npz"
    assert both.X is ds.X and both.y is ds.y  # the folds split the whole dataset
    assert both.digest != ds.digest  # but results say which test data they were measured on
    np.savez(tmp_path / "t2.npz", X=X_test + 1, y=test_labels)
    assert split_test(ds, "npz:t2.npz", seed=0, base=tmp_path)[0].digest != both.digest

    # numeric class names: "3" and 3.0 are class "3"
    digits = load_dataset("sklearn:digits")
    np.savez(tmp_path / "d3.npz", X=digits.X[:6], y=np.array([3.0, 7.0, 3.0, 7.0, 7.0, 3.0]))
    _, test = split_test(digits, "npz:d3.npz", seed=0, base=tmp_path)
    np.testing.assert_array_equal(test.y, [3, 7, 3, 7, 7, 3])

    # integers are class indices when no class name is a number, as for edge-set files
    np.savez(tmp_path / "idx.npz", X=X_test, y=np.array([2, 0, 1, 0, 2]))
    _, test = split_test(ds, "npz:idx.npz", seed=0, base=tmp_path)
    np.testing.assert_array_equal(test.y, [2, 0, 1, 0, 2])


def test_file_split_with_an_unknown_label_is_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = np.array(["cat", "dog", "eel"])
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(30, 4)), y=names[np.arange(30) % 3])
    np.savez(tmp_path / "t.npz", X=rng.normal(size=(4, 4)), y=np.array(["cat", "fox"] * 2))
    err = _resolve_error(tmp_path, "npz:d.npz", '"npz:t.npz"')
    assert str(err).endswith(
        "test split npz:t.npz: label 'fox' is not a class of npz:d.npz (classes: cat, dog, eel)"
    )


def test_file_split_of_another_sample_shape_is_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(30, 4)), y=np.arange(30) % 3)
    np.savez(tmp_path / "t.npz", X=rng.normal(size=(6, 5)), y=np.arange(6) % 3)
    err = _resolve_error(tmp_path, "npz:d.npz", '"npz:t.npz"')
    assert str(err).endswith(
        "test split npz:t.npz: samples are float32[5], the dataset's are float32[4]"
    )
    np.savez(tmp_path / "img.npz", X=rng.normal(size=(6, 1, 2, 2)), y=np.arange(6) % 3)
    err = _resolve_error(tmp_path, "npz:d.npz", '"npz:img.npz"')
    assert str(err).endswith(
        "test split npz:img.npz: samples are float32[1x2x2], the dataset's are float32[4]"
    )
    missing = _resolve_error(tmp_path, "npz:d.npz", '"npz:nope.npz"')
    assert "data file not found" in str(missing)


def test_file_split_of_other_named_inputs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"{MODULE}.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_dataset(f"{MODULE}:named")
    # one array of token ids where the models take input_ids and attention_mask
    np.savez(tmp_path / "ids.npz", X=np.ones((6, 6), dtype=np.int64), y=np.arange(6) % 2)
    with pytest.raises(DatasetError) as info:
        split_test(ds, "npz:ids.npz", seed=0, base=tmp_path, args={"kind": "tokens"})
    assert _one_line(str(info.value)) == (
        "test split npz:ids.npz: samples are int64[6], the dataset's are "
        "{input_ids: int64[6], attention_mask: int64[6]}"
    )


def test_the_models_are_built_for_the_test_splits_token_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from harness import inputs
    from harness.models import transformer

    (tmp_path / f"{MODULE}.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_dataset(f"{MODULE}:named")
    assert ds.spec.vocab == 9

    def runs(spec: InputSpec, X: Any) -> None:  # the reference transformer embeds every id
        model = transformer(spec, 2, d_model=8, heads=2, layers=1, mlp=8)
        with torch.no_grad():
            out = inputs.forward(model, inputs.to_batch(inputs.map_arrays(X, np.array)))
        assert out.shape == (inputs.count(X), 2)

    # a held-out fraction: the whole dataset's vocabulary, also when only held-out rows hold
    # its largest id (sample 0)
    only_held_out = 0
    for seed in range(6):
        rest, test = split_test(ds, 0.25, seed=seed, base=tmp_path)
        assert rest.spec == ds.spec
        only_held_out += int(rest.X["input_ids"].max() < 8)
        runs(rest.spec, test.X)
    assert only_held_out > 0
    # a file whose ids go beyond the dataset's: the vocabulary covers them
    both, test = split_test(ds, f"{MODULE}:held_out", seed=0, base=tmp_path)
    assert both.spec.vocab == 31 and both.spec.named["input_ids"].vocab == 31
    assert both.spec.named["attention_mask"].vocab == 2
    runs(both.spec, test.X)


# --------------------------------------------------------------------------------------------
# bootstrap confidence intervals


def _predictions(n: int, k: int, folds: int, accuracy: float, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    preds = []
    for _ in range(folds):
        wrong = rng.random(n) > accuracy
        preds.append(np.where(wrong, (y + rng.integers(1, k, size=n)) % k, y))
    return y, preds


def _mean_over_folds(y: np.ndarray, preds: list[np.ndarray], k: int, metric: str) -> float:
    if metric == "accuracy":
        return float(np.mean([accuracy_score(y, p) for p in preds]))
    return float(
        np.mean([f1_score(y, p, labels=range(k), average="macro", zero_division=0) for p in preds])
    )


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_bootstrap_ci_is_deterministic_contains_the_mean_and_shrinks(metric: str) -> None:
    y, preds = _predictions(300, 5, 3, 0.8, seed=0)
    low, high = bootstrap_mean_ci(y, preds, 5, metric, seed=0)
    assert bootstrap_mean_ci(y, preds, 5, metric, seed=0) == (low, high)
    assert bootstrap_mean_ci(y, preds, 5, metric, seed=1) != (low, high)
    assert 0 <= low < _mean_over_folds(y, preds, 5, metric) < high <= 1
    assert 0.03 < high - low < 0.2
    y_big, preds_big = _predictions(2700, 5, 3, 0.8, seed=0)
    big_low, big_high = bootstrap_mean_ci(y_big, preds_big, 5, metric, seed=0)
    assert big_low < _mean_over_folds(y_big, preds_big, 5, metric) < big_high
    # 9 times the samples: about a third of the width
    assert 0.2 < (big_high - big_low) / (high - low) < 0.5


def test_bootstrap_resamples_the_same_rows_for_every_fold() -> None:
    y, (pred,) = _predictions(200, 4, 1, 0.7, seed=2)
    one = bootstrap_mean_ci(y, [pred], 4, "accuracy", seed=5)
    three = bootstrap_mean_ci(y, [pred, pred, pred], 4, "accuracy", seed=5)
    assert three == pytest.approx(one, abs=1e-12)  # independent resamples would differ
    perfect = bootstrap_mean_ci(y, [y.copy()], 4, "f1_macro", seed=0)
    assert perfect == (1.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_vectorized_metrics_equal_sklearn(data: st.DataObject) -> None:
    k = data.draw(st.integers(2, 6), label="k")
    n = data.draw(st.integers(1, 25), label="n")
    labels = st.lists(st.integers(0, k - 1), min_size=n, max_size=n)
    y = np.array(data.draw(labels, label="y"))
    pred = np.array(data.draw(labels, label="pred"))
    rows = data.draw(st.integers(1, 4), label="resamples")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    idx = np.random.default_rng(seed).integers(0, n, size=(rows, n))
    accuracy = _metric(y[idx], pred[idx], k, "accuracy")
    f1 = _metric(y[idx], pred[idx], k, "f1_macro")
    for r in range(rows):
        yr, pr = y[idx[r]], pred[idx[r]]
        assert accuracy[r] == pytest.approx(accuracy_score(yr, pr), abs=1e-12)
        expected = f1_score(yr, pr, labels=range(k), average="macro", zero_division=0)
        assert f1[r] == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------
# real runs


def test_a_run_with_a_held_out_fraction_reports_test_metrics_with_cis(tmp_path: Path) -> None:
    from harness.runner import run_case

    suite = _suite(tmp_path, "sklearn:digits", "0.25")
    result = run_case(suite, suite.cases[0])
    m = result.metrics
    for model in ("dense", "pruned"):
        for metric in ("accuracy", "f1_macro"):
            name = MetricRef.on_test(model, metric).name
            assert name == f"{model}.test.{metric}"
            summary = m[name]
            assert len(summary.folds) == 2 and summary.ci is not None
            low, high = summary.ci
            assert 0 <= low <= summary.mean <= high <= 1
            assert high - low < 0.2
            assert summary.to_dict()["ci"] == [low, high]
            json.dumps(summary.to_dict())
        for k in (0, 9):  # per class, without a CI
            recall = m[MetricRef.on_test(model, "recall", k).name]
            assert len(recall.folds) == 2 and recall.ci is None
    assert m["dense.test.accuracy"].mean > 0.5  # the dense model learned on the other rows
    assert m["dense.accuracy"].ci is None  # the k-fold metrics have none
    test = result.dataset["test"]
    assert test["source"] == "25% held out (seed 0)"
    assert test["rows"] == math.ceil(0.25 * 1797) == 450
    assert result.dataset["rows"] == 1797 - 450
    assert result.dataset["n_test"] + result.dataset["n_train"] == 1347
    assert (
        result.dataset_digest == result.dataset["digest"] != load_dataset("sklearn:digits").digest
    )


def test_the_pretrained_suite_never_trains_the_dense_model() -> None:
    import torch
    from safetensors.torch import load_file

    from harness.models import mlp
    from harness.runner import DenseCache, run_case
    from harness.spec import ChecksSpec, LatencySpec, load_suite

    suite = load_suite(ROOT / "suites" / "digits_pretrained.toml")
    assert suite.train.epochs == 0 and not suite.standardize and suite.folds == 3
    case = next(c for c in suite.cases if c.name == "magnitude-80")
    # less work, the same claim: no edge sets or checks, short timings and fine-tuning
    suite = dataclasses.replace(
        suite,
        edge=(),
        checks=ChecksSpec(properties=False, differential=False),
        latency=LatencySpec(batch=16, warmup=1, repeats=2),
    )
    assert case.finetune is not None
    case = dataclasses.replace(case, finetune=dataclasses.replace(case.finetune, epochs=1))
    cache = DenseCache()
    result = run_case(suite, case, cache=cache)

    checkpoint = load_file(str(ROOT / "suites" / "data" / "digits_mlp_pretrained.safetensors"))
    ds = load_dataset(suite.dataset, suite.dataset_args, suite.base_dir)
    assert isinstance(suite.test, str)
    args = {k: v for k, v in suite.dataset_args.items() if k in ("shape", "kind")}
    ds, test = split_test(ds, suite.test, seed=suite.split_seed, base=suite.base_dir, args=args)
    folds = make_folds(ds, suite.folds, seed=suite.cv_seed, standardize=False)
    assert len(cache) == 3 and cache.misses == 3
    for fold in folds:
        entry = cache.get(cache.key(suite, ds, fold))
        assert entry is not None
        assert set(entry.state) == set(checkpoint)
        for name, tensor in checkpoint.items():
            assert torch.equal(entry.state[name], tensor), f"fold {fold.index}: {name} trained"

    # every fold's dense model is the checkpoint: one test accuracy, the checkpoint's own
    model = mlp(64, 10, hidden=(128, 64))
    model.load_state_dict(checkpoint)
    with torch.no_grad():
        pred = model(torch.as_tensor(np.array(test.X))).argmax(1).numpy()
    accuracy = float((pred == test.y).mean())
    folds_accuracy = result.metrics["dense.test.accuracy"].folds
    assert len(folds_accuracy) == 3 and set(folds_accuracy) == {accuracy}
    assert len(set(result.metrics["dense.test.f1_macro"].folds)) == 1
    assert accuracy > 0.9
    assert result.dataset["test"]["source"] == "npz:data/digits_test.npz"
    assert result.dataset["test"]["rows"] == len(test.y) == 450
    assert "checkpoint" in result.dataset
