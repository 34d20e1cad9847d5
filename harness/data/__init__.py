"""Datasets (a name registry), stratified folds with per-fold scaling, and later edge-case sets."""

from harness.data.folds import Fold, make_folds
from harness.data.registry import Dataset, load_dataset

__all__ = ["Dataset", "Fold", "load_dataset", "make_folds"]
