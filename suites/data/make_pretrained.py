"""Writes the pretrained-checkpoint suite's data and checkpoint (suites/digits_pretrained.toml).

- ``digits_finetune.npz``: 75 % of scikit-learn's digits, pixels scaled to [0, 1] (x / 16), the
  data the checkpoint was trained on and the suite's k folds split (calibration, pruning,
  fine-tuning);
- ``digits_test.npz``: the other 25 % (stratified, seed 0), never seen by the checkpoint: the
  suite's fixed test split (``[cv] test``);
- ``digits_mlp_pretrained.safetensors``: the state_dict of ``harness.models:mlp`` with
  ``hidden = [128, 64]`` trained on ``digits_finetune.npz`` (40 epochs of Adam, seed 0).

Rerun with ``python suites/data/make_pretrained.py``; the data are deterministic, the weights
are too on the same machine and torch build (the suite uses the committed file either way).
"""

# ruff: noqa: I001
from pathlib import Path

import harness  # noqa: F401  (first: portable numerics are set before torch loads)
import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedShuffleSplit

from harness.models import mlp
from harness.spec import TrainSpec
from harness.training import fit, predict_logits

HERE = Path(__file__).parent

digits = load_digits()
X = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int64)
train, test = next(StratifiedShuffleSplit(1, test_size=0.25, random_state=0).split(X, y))
train, test = np.sort(train), np.sort(test)
np.savez_compressed(HERE / "digits_finetune.npz", X=X[train], y=y[train])
np.savez_compressed(HERE / "digits_test.npz", X=X[test], y=y[test])

torch.manual_seed(0)
model = mlp(64, 10, hidden=(128, 64))
fit(model, X[train], y[train], TrainSpec(epochs=40, lr=2e-3), seed=0)
accuracy = float((predict_logits(model, X[test]).argmax(1) == y[test]).mean())
save_file(
    {k: v.contiguous() for k, v in model.state_dict().items()},
    HERE / "digits_mlp_pretrained.safetensors",
)
print(f"{len(train)} training, {len(test)} test samples; test accuracy {accuracy:.4f}")
