"""Dataset registry (builtin sets, npz / csv files) and stratified folds with per-fold scaling."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from harness.data import Dataset, load_dataset, make_folds, registry
from harness.data.registry import DatasetError, names


def _check_invariants(ds: Dataset) -> None:
    assert ds.X.dtype == np.float32
    assert ds.y.dtype == np.int64
    assert ds.X.ndim >= 2 and len(ds.X) == len(ds.y)
    assert ds.sample_shape == ds.X.shape[1:]
    assert ds.n_features == int(np.prod(ds.X.shape[1:]))
    assert set(np.unique(ds.y)) == set(range(ds.n_classes))
    assert not ds.X.flags.writeable and not ds.y.flags.writeable
    assert np.isfinite(ds.X).all()
    raw = ds.X.tobytes()
    if ds.X.ndim != 2:  # shaped samples: the digest covers the shape too
        raw = f"|{ds.X.dtype}|{ds.X.shape}|".encode() + raw
    assert ds.digest == hashlib.sha256(raw + ds.y.tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# builtin datasets


@pytest.mark.parametrize(
    ("name", "shape", "n_classes", "kind"),
    [
        ("sklearn:digits", (1797, 64), 10, "image"),
        ("sklearn:breast_cancer", (569, 30), 2, "tabular"),
        ("sklearn:wine", (178, 13), 3, "tabular"),
    ],
)
def test_sklearn_datasets_load(
    name: str, shape: tuple[int, int], n_classes: int, kind: str
) -> None:
    ds = load_dataset(name)
    _check_invariants(ds)
    assert ds.name == name
    assert ds.X.shape == shape
    assert ds.n_classes == n_classes
    assert ds.kind == kind


def test_sklearn_class_names_come_from_the_bunch() -> None:
    assert load_dataset("sklearn:breast_cancer").class_names == ("malignant", "benign")
    assert load_dataset("sklearn:digits").class_names == tuple(str(i) for i in range(10))


def test_sklearn_datasets_take_no_args() -> None:
    with pytest.raises(DatasetError, match="takes no dataset_args"):
        load_dataset("sklearn:wine", {"n_samples": 3})


def test_names_lists_builtins_and_file_kinds() -> None:
    listed = names()
    for name in (
        "sklearn:digits",
        "sklearn:breast_cancer",
        "sklearn:wine",
        "mnist1d",
        "synthetic:classification",
        "npz:PATH",
        "csv:PATH",
        "module:callable",
    ):
        assert name in listed


def test_unknown_dataset_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("sklearn:iris")  # the harness's own namespaces are never user modules
    with pytest.raises(DatasetError, match="dataset module does not import"):
        load_dataset("nope:thing")
    with pytest.raises(DatasetError, match="data file not found"):
        load_dataset("csv:missing.csv", base=tmp_path)


def test_mnist1d_generated_offline_deterministic_and_leaves_numpy_rng_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("mnist1d must be generated offline")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    np.random.seed(1234)
    before = np.random.get_state()
    registry._load.cache_clear()  # generate it here, twice
    first = load_dataset("mnist1d", base=tmp_path / "a")
    after = np.random.get_state()
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]
    registry._load.cache_clear()
    second = load_dataset("mnist1d", base=tmp_path / "b")
    assert first is not second

    _check_invariants(first)
    assert first.X.shape == (5000, 40)
    assert first.n_classes == 10
    assert first.kind == "signal"
    assert first.digest == second.digest
    np.testing.assert_array_equal(first.X, second.X)


def test_mnist1d_rejects_unknown_args() -> None:
    with pytest.raises(DatasetError, match="unknown mnist1d dataset_args: bogus"):
        load_dataset("mnist1d", {"bogus": 1})


def test_synthetic_classification_defaults_and_args() -> None:
    ds = load_dataset("synthetic:classification")
    _check_invariants(ds)
    assert ds.X.shape == (1000, 20) and ds.n_classes == 3 and ds.kind == "tabular"

    args = {
        "n_samples": 150,
        "n_features": 6,
        "n_informative": 3,
        "n_classes": 4,
        "random_state": 3,
    }
    small = load_dataset("synthetic:classification", args)
    _check_invariants(small)
    assert small.X.shape == (150, 6)
    assert small.n_classes == 4
    assert small.class_names == ("0", "1", "2", "3")
    other = load_dataset("synthetic:classification", {**args, "random_state": 4})
    assert other.digest != small.digest


def test_synthetic_classification_bad_args() -> None:
    with pytest.raises(DatasetError, match="make_classification rejected"):
        load_dataset("synthetic:classification", {"not_an_arg": 1})


# --------------------------------------------------------------------------------------------
# files


def test_npz_file_with_string_labels_relative_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 2, 3))
    y = np.array(["b", "a", "c"] * 4)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    ds = load_dataset("npz:data.npz", base=tmp_path)
    _check_invariants(ds)
    assert ds.X.shape == (12, 2, 3) and ds.kind == "signal"  # npz keeps its shape: C x L
    np.testing.assert_allclose(ds.X, X.astype(np.float32))
    flat = load_dataset("npz:data.npz", {"shape": [6]}, base=tmp_path)
    assert flat.X.shape == (12, 6) and flat.spec.shape == (6,)
    np.testing.assert_allclose(flat.X, X.reshape(12, 6).astype(np.float32))
    assert ds.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(ds.y, [1, 0, 2] * 4)

    absolute = load_dataset(f"npz:{tmp_path / 'data.npz'}")
    assert absolute.digest == ds.digest


def test_npz_lowercase_x_and_missing_y(tmp_path: Path) -> None:
    np.savez(tmp_path / "lower.npz", x=np.eye(4), y=np.array([0, 1, 0, 1]))
    assert load_dataset("npz:lower.npz", base=tmp_path).X.shape == (4, 4)
    np.savez(tmp_path / "bad.npz", X=np.eye(4))
    with pytest.raises(DatasetError, match="needs arrays 'X' and 'y'"):
        load_dataset("npz:bad.npz", base=tmp_path)


ROWS = ["1.5,2,cat", "0,-1,dog", "3,4.25,cat", "2,2,bird"]


def test_csv_with_and_without_header_string_labels(tmp_path: Path) -> None:
    (tmp_path / "plain.csv").write_text("\n".join(ROWS) + "\n", encoding="utf-8")
    (tmp_path / "header.csv").write_text("\n".join(["a,b,label", *ROWS]) + "\n", encoding="utf-8")
    plain = load_dataset("csv:plain.csv", base=tmp_path)
    header = load_dataset("csv:header.csv", base=tmp_path)
    for ds in (plain, header):
        _check_invariants(ds)
        assert ds.X.shape == (4, 2)
        np.testing.assert_array_equal(
            ds.X, np.array([[1.5, 2], [0, -1], [3, 4.25], [2, 2]], dtype=np.float32)
        )
        assert ds.class_names == ("bird", "cat", "dog")
        np.testing.assert_array_equal(ds.y, [1, 2, 1, 0])
    assert plain.digest == header.digest


def test_csv_numeric_labels(tmp_path: Path) -> None:
    (tmp_path / "n.csv").write_text("0.5,1\n0.25,3\n1.0,1\n", encoding="utf-8")
    ds = load_dataset("csv:n.csv", base=tmp_path)
    assert ds.class_names == ("1", "3")
    np.testing.assert_array_equal(ds.y, [0, 1, 0])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1,2,a\n3,b\n", "row 2 has 2 columns, expected 3"),
        ("1,x,a\n3,4,b\n", "non-numeric feature"),
        ("a,b,label\n", "no data rows"),
        ("1,2,a\n3,4,a\n", "at least two classes"),
        ("1,nan,a\n3,4,b\n", "NaN or infinity"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "bad.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset("csv:bad.csv", base=tmp_path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# folds

IMBALANCED = {
    "n_samples": 203,
    "n_features": 6,
    "n_informative": 4,
    "n_classes": 3,
    "weights": [0.6, 0.3, 0.1],
    "random_state": 1,
}


@pytest.fixture(scope="module")
def imbalanced() -> Dataset:
    return load_dataset("synthetic:classification", IMBALANCED)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_stratified(imbalanced: Dataset, k: int) -> None:
    counts = np.bincount(imbalanced.y)
    folds = make_folds(imbalanced, k, seed=0)
    assert len(folds) == k
    for fold in folds:
        val_counts = np.bincount(fold.y_val, minlength=len(counts))
        assert np.all(np.abs(val_counts - counts / k) <= 1), (val_counts, counts / k)


def test_folds_partition_the_data(imbalanced: Dataset) -> None:
    n = len(imbalanced.y)
    folds = make_folds(imbalanced, 4, seed=7)
    seen = np.concatenate([f.val_idx for f in folds])
    assert sorted(seen.tolist()) == list(range(n))  # every sample validates exactly once
    for i, fold in enumerate(folds):
        assert fold.index == i
        assert not set(fold.train_idx) & set(fold.val_idx)
        assert sorted([*fold.train_idx, *fold.val_idx]) == list(range(n))
        np.testing.assert_array_equal(fold.y_train, imbalanced.y[fold.train_idx])
        np.testing.assert_array_equal(fold.y_val, imbalanced.y[fold.val_idx])
        assert fold.X_train.dtype == np.float32 and fold.X_val.dtype == np.float32
        assert fold.X_train.shape == (len(fold.train_idx), imbalanced.n_features)


def test_folds_deterministic_per_seed(imbalanced: Dataset) -> None:
    a = make_folds(imbalanced, 3, seed=11)
    b = make_folds(imbalanced, 3, seed=11)
    c = make_folds(imbalanced, 3, seed=12)
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa.val_idx, fb.val_idx)
        np.testing.assert_array_equal(fa.X_train, fb.X_train)
        np.testing.assert_array_equal(fa.X_val, fb.X_val)
    assert any(not np.array_equal(fa.val_idx, fc.val_idx) for fa, fc in zip(a, c, strict=True))


def test_scaler_fitted_on_training_fold_only(imbalanced: Dataset) -> None:
    for fold in make_folds(imbalanced, 3, seed=0):
        np.testing.assert_allclose(fold.X_train.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(fold.X_train.std(axis=0), 1, atol=1e-4)
        assert not np.allclose(fold.X_val.mean(axis=0), 0, atol=1e-4)
        scaler = StandardScaler().fit(imbalanced.X[fold.train_idx])
        np.testing.assert_allclose(
            fold.X_val, scaler.transform(imbalanced.X[fold.val_idx]), rtol=1e-5, atol=1e-5
        )


def _hand_dataset(X: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(
        "hand",
        X.astype(np.float32),
        y.astype(np.int64),
        tuple(str(c) for c in np.unique(y)),
        "tabular",
        "x",
    )


def test_validation_rows_do_not_leak_into_training_scaling() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = np.arange(60) % 3
    before = make_folds(_hand_dataset(X, y), 3, seed=5)
    changed = X.copy()
    row = before[0].val_idx[0]
    changed[row] = [1e3, -1e3, 5e2, 7.0]
    after = make_folds(_hand_dataset(changed, y), 3, seed=5)
    np.testing.assert_array_equal(before[0].train_idx, after[0].train_idx)
    np.testing.assert_array_equal(before[0].X_train, after[0].X_train)
    assert not np.array_equal(before[0].X_val, after[0].X_val)
    # the other folds train on that row: their scaling changes
    assert not np.array_equal(before[1].X_train, after[1].X_train)


def test_constant_features_are_left_at_zero() -> None:
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=40), np.full(40, 3.0)])
    y = np.arange(40) % 2
    for fold in make_folds(_hand_dataset(X, y), 2, seed=0):
        assert np.all(fold.X_train[:, 1] == 0)
        assert np.all(fold.X_val[:, 1] == 0)


# --------------------------------------------------------------------------------------------
# the user's own data: csv label columns, module:callable datasets


def test_csv_label_column_by_name_or_index_and_header_option(tmp_path: Path) -> None:
    rows = ["species,a,b", "bird,1.5,2", "cat,0,-1", "bird,3,4.25", "dog,2,2"]
    (tmp_path / "first.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    by_name = load_dataset("csv:first.csv", {"label": "species"}, tmp_path)
    by_index = load_dataset("csv:first.csv", {"label": 0}, tmp_path)
    for ds in (by_name, by_index):
        np.testing.assert_array_equal(
            ds.X, np.array([[1.5, 2], [0, -1], [3, 4.25], [2, 2]], dtype=np.float32)
        )
        assert ds.class_names == ("bird", "cat", "dog")
    assert by_name.digest == by_index.digest
    (tmp_path / "bare.csv").write_text("\n".join(rows[1:]) + "\n", encoding="utf-8")
    bare = load_dataset("csv:bare.csv", {"label": 0, "header": False}, tmp_path)
    assert bare.digest == by_name.digest  # no header row: text labels do not make one
    assert load_dataset("csv:bare.csv", {"label": 0}, tmp_path).digest == by_name.digest


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({}, "non-numeric feature .*the label is the last column; set dataset_args.label"),
        ({"label": "kind"}, r"label = 'kind': no such column \(species, a, b\)"),
        ({"label": 3}, "label = 3: the file has 3 columns"),
        ({"label": 1.5}, "label = 1.5: must be a column name or index"),
        ({"header": "yes"}, "header = 'yes': must be true or false"),
        ({"sep": ";"}, r"unknown csv dataset_args: sep \(known: label, header\)"),
    ],
)
def test_csv_label_errors_are_one_line(tmp_path: Path, args: dict, match: str) -> None:
    (tmp_path / "f.csv").write_text("species,a,b\nbird,1,2\ncat,3,4\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset("csv:f.csv", args, tmp_path)
    assert "\n" not in str(info.value)


USER_DATA = """
import numpy as np
import torch


def arrays(n=60, classes=3):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    return rng.normal(size=(n, 4)) + y[:, None], y


def named(n=60):
    X, y = arrays(n)
    return {"X": X, "y": y, "class_names": ["a", "b", "c"], "kind": "signal"}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n):
        self.X, self.y = arrays(n)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.as_tensor(self.X[i], dtype=torch.float32), torch.tensor(self.y[i])


def torch_dataset(n=60):
    return Pairs(n)


def broken():
    raise RuntimeError("no data today")


def wrong():
    return 42
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_data_mod.py").write_text(USER_DATA, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_data_mod"


def test_a_callable_dataset_returns_arrays_a_mapping_or_a_torch_dataset(user_module: str) -> None:
    plain = load_dataset(f"{user_module}:arrays", {"n": 60})
    named = load_dataset(f"{user_module}:named", {"n": 60})
    pairs = load_dataset(f"{user_module}:torch_dataset", {"n": 60})
    assert plain.X.shape == (60, 4) and plain.class_names == ("0", "1", "2")
    assert named.class_names == ("a", "b", "c") and named.kind == "signal"
    np.testing.assert_array_equal(plain.X, pairs.X)
    np.testing.assert_array_equal(plain.y, pairs.y)
    assert plain.digest == named.digest == pairs.digest  # the same data, however delivered
    assert load_dataset(f"{user_module}:arrays", {"n": 30}).X.shape == (30, 4)


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("broken", r"broken\(\) failed \(RuntimeError: no data today\)"),
        ("wrong", "returned int; expected"),
        ("absent", "no such callable"),
    ],
)
def test_a_callable_dataset_that_fails_is_one_line(user_module: str, ref: str, match: str) -> None:
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(f"{user_module}:{ref}")
    assert "\n" not in str(info.value)
    with pytest.raises(DatasetError, match="dataset module does not import"):
        load_dataset("no_such_user_module:load")
