"""Writes digits_bold.npz: 300 scikit-learn digits drawn with bolder strokes (grey dilation).

A user-supplied edge set for suites/digits_mlp.toml (real-world shift: thicker pens). Rerun with
``python suites/data/make_digits_bold.py``; the output is deterministic.
"""

from pathlib import Path

import numpy as np
from scipy.ndimage import grey_dilation
from sklearn.datasets import load_digits

digits = load_digits()
rng = np.random.default_rng(0)
rows = np.sort(rng.choice(len(digits.target), size=300, replace=False))
images = digits.images[rows]
bold = np.stack([np.minimum(16.0, grey_dilation(im, size=(2, 2))) for im in images])
np.savez_compressed(
    Path(__file__).with_name("digits_bold.npz"),
    X=bold.reshape(len(rows), -1).astype(np.float32),
    y=digits.target[rows].astype(np.int64),
)
