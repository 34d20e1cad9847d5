"""A fixed test split: data no fold trains on, that every fold's dense and pruned models are
measured on (``[cv] test``), and the bootstrap confidence intervals of its metrics.

A pretrained model is usually validated on a held-out test set, not by k-fold alone: the k folds
split the fine-tuning data (for calibration, pruning and fine-tuning), the test split stays the
same for every fold. ``test`` is a dataset reference (``npz:heldout.npz``, any name of
:mod:`harness.data.registry`; labels matched to the dataset's class names) or a fraction of the
dataset held out with scikit-learn's ``StratifiedShuffleSplit`` (seeded: same data, same split).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness import inputs
from harness.data.registry import GENERIC_ARGS, Dataset, DatasetError, load_dataset

BOOTSTRAP_RESAMPLES = 1000
CI_LEVEL = 0.95


@dataclass(frozen=True, eq=False)
class TestSplit:
    """The held-out inputs (raw, as the dataset holds them) and class indices."""

    X: Any  # harness.inputs.Inputs
    y: np.ndarray
    source: str  # "npz:heldout.npz" or "20 % held out (seed 0)"
    digest: str


def split_test(
    ds: Dataset, test: str | float, *, seed: int, base: Path, args: Mapping[str, Any] | None = None
) -> tuple[Dataset, TestSplit]:
    """The dataset the folds split and the fixed test split.

    Raises :class:`DatasetError` (one line) when the test data do not fit the dataset: another
    sample shape or dtype (of any named input), a label that is not one of its classes, a class
    too rare to hold out a stratified fraction of, a split that leaves a class without samples.
    The returned dataset's :attr:`~Dataset.spec` covers the test split's inputs (token
    vocabularies included), so models built for it take them.
    """
    if isinstance(test, str):
        from harness.data.edge import map_labels

        # the suite's generic dataset_args (shape, kind) apply to the test data too
        generic = {k: v for k, v in (args or {}).items() if k in GENERIC_ARGS}
        other = load_dataset(test, generic, base)
        if _layout(other.spec) != _layout(ds.spec):  # named fields too, not just the main one
            raise DatasetError(
                f"test split {test}: samples are {other.spec.describe()}, the dataset's are "
                f"{ds.spec.describe()}"
            )
        try:  # by class name; integers are class indices when no name is a number (as edge files)
            mapping = map_labels(np.asarray(other.class_names), ds, f"test split {test}")
        except ValueError as err:
            raise DatasetError(str(err)) from None
        both = replace(ds, digest=_digest(ds.digest, other.digest))  # the data measured on
        # the models are built for the test split's token ids too (an embedding that has them)
        _keep_spec(both, _covering(ds.spec, other.spec))
        return both, TestSplit(other.X, mapping[other.y], test, other.digest)
    from sklearn.model_selection import StratifiedShuffleSplit

    n_test = int(np.ceil(test * len(ds.y)))
    if n_test < ds.n_classes or len(ds.y) - n_test < ds.n_classes:
        raise DatasetError(
            f"test = {test}: holds out {n_test} of {len(ds.y)} samples; both parts need at least "
            f"one sample of each of the {ds.n_classes} classes"
        )
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    if counts.min() < 2:
        rare = ds.class_names[int(counts.argmin())]
        raise DatasetError(
            f"test = {test}: class {rare!r} has {int(counts.min())} sample; a stratified "
            "held-out split needs at least two of each class"
        )
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=test, random_state=seed)
    keep, held = next(splitter.split(np.zeros((len(ds.y), 1)), ds.y))
    keep, held = np.sort(keep), np.sort(held)
    rest = replace(
        ds,
        X=ds.X.subset(keep) if inputs.is_lazy(ds.X) else _frozen(inputs.take(ds.X, keep)),
        y=_frozen(ds.y[keep]),
        digest=_digest(ds.digest, f"{test!r}", str(seed)),
    )
    # what one sample looks like is the whole dataset's: a token id that only the held-out rows
    # hold is still in the vocabulary the models are built for
    _keep_spec(rest, ds.spec)
    source = f"{test:.0%} held out (seed {seed})"
    return rest, TestSplit(
        _frozen(inputs.take(ds.X, held)), _frozen(ds.y[held]), source, _digest(rest.digest, "test")
    )


def _layout(spec: inputs.InputSpec) -> tuple[Any, ...]:
    """What must match between the dataset and its test split: the main input's shape and
    dtype, and the name, shape and dtype of every named input."""
    return (spec.shape, spec.dtype, tuple((k, v.shape, v.dtype) for k, v in spec.fields))


def _covering(spec: inputs.InputSpec, other: inputs.InputSpec) -> inputs.InputSpec:
    """``spec`` (same layout as ``other``) with every token vocabulary widened to ``other``'s."""

    def vocab(a: int | None, b: int | None) -> int | None:
        return max(a, b) if a is not None and b is not None else a

    fields = tuple((k, _covering(v, other.named[k])) for k, v in spec.fields)
    return replace(spec, vocab=vocab(spec.vocab, other.vocab), fields=fields)


def _keep_spec(ds: Dataset, spec: inputs.InputSpec) -> None:
    """Set the (cached) :attr:`Dataset.spec` of a dataset made by ``replace``."""
    ds.__dict__["spec"] = spec


def _digest(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _frozen(X: Any) -> Any:
    for a in X.values() if isinstance(X, Mapping) else [X]:
        a.setflags(write=False)
    return X


def bootstrap_mean_ci(
    y: np.ndarray, preds: list[np.ndarray], n_classes: int, metric: str, *, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap CI (:data:`CI_LEVEL`) of a metric's mean over the folds' models,
    resampling the test split's samples (the same resample for every fold: the folds' models
    are measured on one test set). ``metric``: ``accuracy`` or ``f1_macro``. Vectorized over
    the resamples with confusion counts (no per-resample scikit-learn call)."""
    rng = np.random.default_rng(seed)
    n = len(y)
    idx = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    values = np.zeros(BOOTSTRAP_RESAMPLES)
    for pred in preds:
        values += _metric(y[idx], pred[idx], n_classes, metric)
    values /= len(preds)
    alpha = (1 - CI_LEVEL) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def _metric(y: np.ndarray, pred: np.ndarray, k: int, metric: str) -> np.ndarray:
    """``metric`` of every row of ``(resamples, n)`` labels and predictions."""
    if metric == "accuracy":
        return np.asarray((y == pred).mean(axis=1))
    rows = np.arange(len(y))[:, None]
    tp = np.zeros((len(y), k))
    true = np.zeros((len(y), k))
    predicted = np.zeros((len(y), k))
    np.add.at(true, (rows, y), 1)
    np.add.at(predicted, (rows, pred), 1)
    np.add.at(tp, (rows, y), (y == pred).astype(float))
    denom = true + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return np.asarray(f1.mean(axis=1))  # zero_division=0, as scikit-learn's f1_macro
