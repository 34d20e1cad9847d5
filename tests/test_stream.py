"""Streamed datasets (harness.data.stream): a user's torch Dataset read in batches when a model
needs its samples, never stacked whole; the same results as the materialized dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness import inputs
from harness.data import load_dataset, make_folds
from harness.data import stream as stream_mod
from harness.data.registry import DatasetError
from harness.runner import run_case
from harness.spec import suite_from_dict

MODULE = "stream_usermods"

USER_MODULE = '''\
"""A user's torch Datasets that count what is read."""
import numpy as np
import torch
from sklearn.datasets import load_digits

READS = {"items": 0, "largest": 0}


class Digits(torch.utils.data.Dataset):
    def __init__(self, n, image):
        d = load_digits()
        self.X = d.data[:n].astype(np.float32)
        if image:
            self.X = self.X.reshape(-1, 1, 8, 8)
        self.y = d.target[:n]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        READS["items"] += 1
        return torch.from_numpy(self.X[i]), int(self.y[i])


def digits(n=400, image=False):
    return Digits(n, image)


class Tokens(torch.utils.data.Dataset):
    """Named inputs; the largest id occurs in the last sample only."""

    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.ids = rng.integers(1, 9, size=(n, 6))
        self.ids[-1, 0] = 40
        self.y = np.arange(n) % 2

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        ids = torch.as_tensor(self.ids[i])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, int(self.y[i])


def tokens(n=60):
    return Tokens(n)
'''


@pytest.fixture
def user_module(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path_factory.mktemp("stream-modules")
    (where / f"{MODULE}.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(where))
    return where


def _suite(stream: bool, *, image: bool, standardize: bool) -> object:
    return suite_from_dict(
        {
            "suite": {
                "name": "s",
                "dataset": f"{MODULE}:digits",
                "dataset_args": {"stream": stream, "image": image},
                "model": "harness.models:resnet" if image else "harness.models:mlp",
                "model_args": {"channels": [4, 8]} if image else {"hidden": [32]},
            },
            "cv": {"folds": 2, "standardize": standardize},
            "train": {"epochs": 2, "lr": 1e-2},
            "latency": {"batch": 16, "warmup": 1, "repeats": 2},
            "checks": {"examples": 5},
            "edge": {"sets": ["gaussian_noise:0.3", "hardest:0.1"]},
            "case": [
                {
                    "name": "p",
                    "prune": {"method": "structured" if image else "magnitude", "sparsity": 0.5},
                    "finetune": {"epochs": 1},
                }
            ],
        }
    )


HARDWARE = ("latency", "speedup", "energy_measured")


@pytest.mark.parametrize(("image", "standardize"), [(False, True), (True, True), (True, False)])
def test_a_streamed_dataset_gives_the_results_of_the_materialized_one(
    user_module: Path, image: bool, standardize: bool
) -> None:
    results = {}
    for stream in (False, True):
        suite = _suite(stream, image=image, standardize=standardize)
        results[stream] = run_case(suite, suite.cases[0])  # type: ignore[arg-type]
    a, b = results[False], results[True]
    names = [n for n in a.metrics if not any(h in n for h in HARDWARE)]
    assert names and set(names) <= set(b.metrics)
    assert {n: a.metrics[n].folds for n in names} == {n: b.metrics[n].folds for n in names}


def test_a_streamed_dataset_is_never_stacked_whole(user_module: Path) -> None:
    import stream_usermods  # type: ignore[import-not-found]

    stream_usermods.READS["items"] = 0
    ds = load_dataset(f"{MODULE}:digits", {"stream": True, "n": 400})
    assert inputs.is_lazy(ds.X) and len(ds.X) == 400
    assert stream_usermods.READS["items"] == 400  # one pass: labels, digest, checks
    assert ds.spec.shape == (64,) and ds.n_classes == 10
    with pytest.raises(TypeError, match="streamed view"):
        inputs.to_batch(ds.X)  # nothing makes tensors of the whole dataset
    folds = make_folds(ds, 4, seed=0)
    for fold in folds:
        assert inputs.is_lazy(fold.X_train) and len(fold.X_train) == 300
        assert isinstance(fold.X_val, np.ndarray) and fold.X_val.shape == (100, 64)
        rows = inputs.take(fold.X_train, np.array([0, 5, 7]))  # read on demand, scaled
        assert rows.shape == (3, 64) and abs(float(rows.mean())) < 5


def test_streamed_scaling_equals_the_materialized_scaling(user_module: Path) -> None:
    for args in ({"image": False}, {"image": True}):
        lazy = load_dataset(f"{MODULE}:digits", {**args, "stream": True})
        eager = load_dataset(f"{MODULE}:digits", {**args, "stream": False})
        pairs = zip(make_folds(lazy, 2, seed=0), make_folds(eager, 2, seed=0), strict=True)
        for f_lazy, f_eager in pairs:
            np.testing.assert_allclose(f_lazy.X_val, f_eager.X_val, rtol=1e-5, atol=1e-5)
            head = inputs.take(f_lazy.X_train, slice(0, 50))
            np.testing.assert_allclose(head, f_eager.X_train[:50], rtol=1e-5, atol=1e-5)


def test_named_token_inputs_stream_with_the_whole_vocabulary(user_module: Path) -> None:
    ds = load_dataset(f"{MODULE}:tokens", {"stream": True})
    assert inputs.is_lazy(ds.X)
    assert ds.kind == "tokens" or ds.spec.is_tokens
    assert ds.spec.vocab == 41  # the largest id is in the last sample: the scan saw it
    assert ds.spec.named["attention_mask"].dtype == "int64"
    batch = inputs.take(ds.X, slice(0, 4))
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].dtype == np.int64


def test_streaming_is_chosen_by_size_unless_said(
    user_module: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not inputs.is_lazy(load_dataset(f"{MODULE}:digits", {"n": 100}).X)  # small: in memory
    monkeypatch.setattr(stream_mod, "STREAM_ABOVE_BYTES", 1000)
    assert inputs.is_lazy(load_dataset(f"{MODULE}:digits", {"n": 101}).X)  # above the limit
    assert not inputs.is_lazy(load_dataset(f"{MODULE}:digits", {"n": 102, "stream": False}).X)


def test_bad_stream_settings_are_one_line(user_module: Path) -> None:
    with pytest.raises(DatasetError, match=r"^stream = 'yes': must be true or false$"):
        load_dataset(f"{MODULE}:digits", {"stream": "yes"})
    with pytest.raises(DatasetError, match="stream applies to a dataset function"):
        load_dataset("sklearn:digits", {"stream": True})
