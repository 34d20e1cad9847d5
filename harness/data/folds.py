"""Stratified k-fold splits (scikit-learn) with scaling fitted on the training fold only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from harness import inputs
from harness.data.registry import Dataset


class Scaler:
    """Standardization fitted on training inputs, per input kind: per feature for flat float
    rows ``(N, F)`` (scikit-learn's ``StandardScaler``), per channel (axis 1) for float samples
    of two or more axes (images ``C x H x W``, signals ``C x L``), none for integer inputs
    (token ids, attention masks). Constant features / channels are centred and left unscaled."""

    def __init__(self, X: inputs.Inputs) -> None:
        if inputs.is_lazy(X):  # a streamed training fold: one pass over its batches
            self._parts = _fit_streamed(X)
            return
        self._parts = (
            {k: self._fit(v) for k, v in X.items()} if isinstance(X, Mapping) else self._fit(X)
        )

    @staticmethod
    def _fit(a: np.ndarray) -> Any:
        if a.dtype.kind in "iu":
            return None
        if a.ndim == 2:
            return StandardScaler().fit(a)
        axes = (0, *range(2, a.ndim))
        mean = a.mean(axis=axes, dtype=np.float64, keepdims=True)[0]
        std = a.std(axis=axes, dtype=np.float64, keepdims=True)[0]
        return mean, np.where(std > 0, std, 1.0)

    @staticmethod
    def _apply(part: Any, a: np.ndarray) -> np.ndarray:
        if part is None:
            return np.array(a, dtype=a.dtype)
        if isinstance(part, StandardScaler):
            return np.asarray(part.transform(a)).astype(np.float32)
        mean, std = part
        return ((np.asarray(a, dtype=np.float64) - mean) / std).astype(np.float32)

    def transform(self, X: Any) -> Any:
        if inputs.is_lazy(X):  # scaled as its rows are read
            return X.with_transform(self.transform)
        if isinstance(X, Mapping):
            assert isinstance(self._parts, dict)
            return {k: self._apply(self._parts[k], v) for k, v in X.items()}
        return self._apply(self._parts, X)


def _fit_streamed(X: Any) -> Any:
    """The :class:`Scaler` parts of a streamed view, batch by batch: scikit-learn's
    ``StandardScaler.partial_fit`` for flat float rows, float64 sums per channel otherwise."""
    parts: dict[str, Any] = {}
    sums: dict[str, list[Any]] = {}
    for batch in X.batches():
        for k, a in batch.items() if isinstance(batch, Mapping) else [("", batch)]:
            if a.dtype.kind in "iu":
                parts[k] = None
            elif a.ndim == 2:
                parts.setdefault(k, StandardScaler()).partial_fit(a)
            else:
                axes = (0, *range(2, a.ndim))
                per = a[0].size // a.shape[1] * len(a)
                s = sums.setdefault(k, [0, 0.0, 0.0])
                s[0] += per
                s[1] = s[1] + a.sum(axis=axes, dtype=np.float64, keepdims=True)[0]
                s[2] = s[2] + (a.astype(np.float64) ** 2).sum(axis=axes, keepdims=True)[0]
    for k, (n, total, squares) in sums.items():
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
        parts[k] = (mean, np.where(std > 0, std, 1.0))
    return parts.get("") if set(parts) == {""} else parts


@dataclass(frozen=True, eq=False)
class Fold:
    """One fold: indices into the dataset and the scaled train / validation inputs."""

    index: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    X_train: Any  # harness.inputs.Inputs
    y_train: np.ndarray
    X_val: Any
    y_val: np.ndarray
    standardized: bool = True  # False: X_train / X_val are the raw inputs
    scaler: Scaler | None = None  # fitted on the training fold (None: not standardized)

    def scale(self, raw: inputs.Inputs) -> inputs.Inputs:
        """Raw inputs (as the dataset holds them) -> this fold's space."""
        if self.scaler is None:
            return inputs.map_arrays(raw, _as_stored)
        return self.scaler.transform(inputs.map_arrays(raw, _as_stored))


def _as_stored(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float32)


def make_folds(
    dataset: Dataset, k: int, *, seed: int, repeats: int = 1, standardize: bool = True
) -> list[Fold]:
    """Stratified, shuffled k-fold, ``repeats`` times; the scaler is fitted on each training fold
    only.

    Deterministic for a given ``seed``; repeat ``r`` shuffles with ``seed + r``, so the first
    repeat is the plain k-fold split. Inputs are standardized by :class:`Scaler` (per feature,
    per channel, or not at all for token ids) unless ``standardize`` is false (a pretrained
    model expects the inputs as it was trained on them). Folds are numbered ``r * k + i``.
    """
    splits = [
        split
        for r in range(repeats)
        for split in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + r).split(
            np.zeros((len(dataset.y), 1)), dataset.y
        )
    ]
    folds = []
    for i, (train_idx, val_idx) in enumerate(splits):
        # a streamed dataset keeps its training fold a lazy view; the validation fold is read
        raw_train = (
            dataset.X.subset(train_idx)
            if inputs.is_lazy(dataset.X)
            else inputs.take(dataset.X, train_idx)
        )
        raw_val = inputs.take(dataset.X, val_idx)
        scaler = Scaler(raw_train) if standardize else None
        if scaler is not None:
            X_train, X_val = scaler.transform(raw_train), scaler.transform(raw_val)
        else:
            X_train = (
                raw_train if inputs.is_lazy(raw_train) else inputs.map_arrays(raw_train, _as_stored)
            )
            X_val = inputs.map_arrays(raw_val, _as_stored)
        folds.append(
            Fold(
                index=i,
                train_idx=train_idx,
                val_idx=val_idx,
                X_train=X_train,
                y_train=dataset.y[train_idx],
                X_val=X_val,
                y_val=dataset.y[val_idx],
                standardized=standardize,
                scaler=scaler,
            )
        )
    return folds
