"""Stratified k-fold splits (scikit-learn) with feature scaling fitted on the training fold only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from harness.data.registry import Dataset


@dataclass(frozen=True, eq=False)
class Fold:
    """One fold: indices into the dataset and the scaled train / validation arrays."""

    index: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    standardized: bool = True  # False: X_train / X_val are the raw features (float32)


def make_folds(
    dataset: Dataset, k: int, *, seed: int, repeats: int = 1, standardize: bool = True
) -> list[Fold]:
    """Stratified, shuffled k-fold, ``repeats`` times; the scaler is fitted on each training fold
    only.

    Deterministic for a given ``seed``; repeat ``r`` shuffles with ``seed + r``, so the first
    repeat is the plain k-fold split. Features are standardized (zero mean, unit variance per
    feature, constant features left at zero) unless ``standardize`` is false (a pretrained
    model expects the features as it was trained on them). Folds are numbered ``r * k + i``.
    """
    splits = [
        split
        for r in range(repeats)
        for split in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + r).split(
            dataset.X, dataset.y
        )
    ]
    folds = []
    for i, (train_idx, val_idx) in enumerate(splits):
        if standardize:
            scaler = StandardScaler().fit(dataset.X[train_idx])
            X_train = scaler.transform(dataset.X[train_idx]).astype(np.float32)
            X_val = scaler.transform(dataset.X[val_idx]).astype(np.float32)
        else:
            X_train = np.array(dataset.X[train_idx], dtype=np.float32)
            X_val = np.array(dataset.X[val_idx], dtype=np.float32)
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
            )
        )
    return folds
