"""Edge-case datasets built from a validation fold: what pruning breaks beyond top-line accuracy.

Pruned models can keep their average accuracy while losing it on noisy, shifted or rare inputs
(Hooker et al. 2019, "What do compressed deep neural networks forget?"). Each edge set is declared
in a suite file as a string ``KIND`` or ``KIND:PARAM`` (``npz:PATH`` / ``csv:PATH`` for user
files), parsed by :func:`parse_edge`, validated against a dataset by :func:`check_edge` and
materialized for one fold by :func:`make_edge_set`, in the fold's *scaled* feature space.

Kinds (parameter and default in brackets):

Perturbations, any data kind (applied to the scaled validation fold ``fold.X_val``):

- ``gaussian_noise[sigma=0.1]``: add N(0, sigma) noise, in scaled (standard deviation) units.
- ``feature_dropout[p=0.2]``: each value is replaced by 0 (the training mean: a missing value
  imputed by the mean) with probability p.
- ``extremes[scale=5]``: multiply every value by scale (out-of-range inputs).
- ``scale_drift[factor=1.5]``: multiply every feature by factor (a milder, gain-like drift).
- ``shift_drift[delta=0.5]``: add delta to every feature.

Geometric, image data (samples ``C x H x W``, or flat rows of a square number of pixels: one
channel of side ``sqrt(n_features)``) and signal data (``C x L``, or flat rows: one channel of
length ``n_features``), done on the raw validation samples and re-scaled with the training-fold
scaler; every channel of a sample moves together:

- ``shift[pixels=1]``: translate by ``pixels`` along every axis (down and right; negative: up and
  left), zero fill.
- ``blur[sigma=1]``: gaussian blur (``scipy.ndimage.gaussian_filter``; 2-D images, 1-D signals).
- ``occlusion[fraction=0.25]``: zero one random contiguous square patch (segment for signals)
  covering that fraction of the pixels, one position per sample.
- ``contrast[factor=0.5]``: scale each sample around its own mean.

Token sequences (``tokens`` data: int64 ids, optionally with an ``attention_mask``; id 0 is
the padding / unknown id):

- ``token_dropout[p=0.1]``: each real (unmasked) token becomes id 0 with probability p.
- ``truncate[fraction=0.5]``: keep the first ``ceil(fraction * length)`` real tokens of each
  sequence (at least one); the rest become id 0 and, with a mask, are masked out.
- ``substitute[p=0.1]``: each real token becomes a uniformly random id in ``[1, vocab)`` with
  probability p (``vocab``: one more than the dataset's largest id).

Slices, any data kind:

- ``minority[fraction=0.3]``: samples of the rarest classes (by training-fold frequency, ties by
  class index), taken until they cover the fraction of the classes (at least one class).
- ``hardest[fraction=0.1]``: the fraction (at least one) of validation samples with the smallest
  dense-model margin (true-class logit minus best other logit), ties broken by index.
- ``imbalanced[ratio=10]``: resample the validation fold with replacement so that the class
  frequencies fall geometrically from 1 to 1/ratio (classes ranked by training-fold frequency).

User files: ``npz:PATH`` (arrays ``X`` and ``y``; any data kind with one input array: samples of
the dataset's shape, or flat rows of as many values) and ``csv:PATH`` (features, label last,
optional header; real-valued data), PATH relative to the suite file's directory. Raw features are
scaled with the training-fold scaler; labels are matched against the dataset's class names.

Names (:attr:`EdgeSet.name`, used in metric keys) match ``^[a-z0-9_.]+$``: the kind alone when
no parameter is written (``extremes``), ``KIND_PARAM`` otherwise (``gaussian_noise_0.1``,
``shift_2``, ``shift_drift_m0.5`` for -0.5, ``gaussian_noise_1em05`` for 1e-05), and
``npz_STEM`` / ``csv_STEM`` for user files (``npz:edge/hard.npz`` -> ``npz_hard``), the stem
lower-cased with every other character run replaced by ``_``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from harness import inputs
from harness.data import registry
from harness.data.folds import Fold
from harness.data.registry import Dataset
from harness.edgesets import (
    ALL_DATA,
    GRID_DATA,
    KIND_INFO,
    PARAM_RULES,
    PATH_KINDS,
    TOKEN_DATA,
    EdgeSet,
    _number,
    known_kinds,
)

# --------------------------------------------------------------------------------------------
# what a generator sees


@dataclass(frozen=True, eq=False)
class EdgeContext:
    """Everything a generator may use: the fold, its dataset, the dense margins, the RNG."""

    fold: Fold
    dataset: Dataset
    dense_margin: np.ndarray
    rng: np.random.Generator
    base: Path

    def scale(self, raw: Any) -> Any:
        """Raw inputs -> the fold's scaled space (cast to the dataset's dtypes first), with the
        training-fold scaler of :func:`harness.data.make_folds`; as they are for a fold that is
        not standardized."""
        return self.fold.scale(raw)

    def raw_val(self) -> np.ndarray:
        """The raw (unscaled) validation samples, float64."""
        return np.asarray(inputs.take(self.dataset.X, self.fold.val_idx), dtype=np.float64)

    @cached_property
    def vocab(self) -> int:
        """Token ids are in ``[0, vocab)`` (the dataset's)."""
        return self.dataset.spec.vocab or 1


EdgeGenerator = Callable[[EdgeSet, EdgeContext], tuple[Any, np.ndarray]]


class EdgeKind(NamedTuple):
    """A registry entry: ``(generator, data_kinds, default, description)``."""

    generator: EdgeGenerator
    data_kinds: tuple[str, ...]
    default: float | None
    description: str


# --------------------------------------------------------------------------------------------
# perturbations in scaled space


def _val(ctx: EdgeContext) -> tuple[np.ndarray, np.ndarray]:
    """The scaled validation fold (float64 copy) of real-valued data."""
    return np.array(ctx.fold.X_val, dtype=np.float64), np.asarray(ctx.fold.y_val, np.int64)


def _val_inputs(ctx: EdgeContext) -> tuple[Any, np.ndarray]:
    """The scaled validation fold of any data kind (slices take rows of it)."""
    return ctx.fold.X_val, np.asarray(ctx.fold.y_val, np.int64)


def _gaussian_noise(edge: EdgeSet, ctx: EdgeContext) -> tuple[np.ndarray, np.ndarray]:
    X, y = _val(ctx)
    return X + ctx.rng.normal(0.0, _value(edge), size=X.shape), y


def _feature_dropout(edge: EdgeSet, ctx: EdgeContext) -> tuple[np.ndarray, np.ndarray]:
    X, y = _val(ctx)
    X[ctx.rng.random(X.shape) < _value(edge)] = 0.0
    return X, y


def _multiply(edge: EdgeSet, ctx: EdgeContext) -> tuple[np.ndarray, np.ndarray]:
    X, y = _val(ctx)
    return X * _value(edge), y


def _shift_drift(edge: EdgeSet, ctx: EdgeContext) -> tuple[np.ndarray, np.ndarray]:
    X, y = _val(ctx)
    return X + _value(edge), y


# --------------------------------------------------------------------------------------------
# geometric ops in raw space


def _grid_shape(dataset: Dataset) -> tuple[int, ...]:
    """One sample as ``(channels, *spatial)``: ``C x H x W`` images and ``C x L`` signals as
    they are; flat rows as one channel, ``(1, side, side)`` for images, ``(1, length)`` for
    signals."""
    shape = dataset.sample_shape
    if len(shape) > 1:
        return shape
    n = dataset.n_features
    if dataset.kind == "image":
        side = math.isqrt(n)
        return (1, side, side)
    return (1, n)


def _grid(
    transform: Callable[[np.ndarray, EdgeSet, EdgeContext], np.ndarray],
) -> EdgeGenerator:
    def generate(edge: EdgeSet, ctx: EdgeContext) -> tuple[np.ndarray, np.ndarray]:
        raw = ctx.raw_val()
        shape = _grid_shape(ctx.dataset)
        out = transform(raw.reshape(len(raw), *shape), edge, ctx)
        return ctx.scale(out.reshape(raw.shape)), np.asarray(ctx.fold.y_val, np.int64)

    return generate


def _shift(grid: np.ndarray, edge: EdgeSet, ctx: EdgeContext) -> np.ndarray:
    """``grid``: ``(N, C, *spatial)``; every spatial axis moves by the same pixels."""
    p = round(_value(edge))
    out = np.zeros_like(grid)
    if p == 0:
        return grid.copy()
    src = slice(0, -p) if p > 0 else slice(-p, None)
    dst = slice(p, None) if p > 0 else slice(0, p)
    axes = grid.ndim - 2
    whole = (slice(None), slice(None))
    out[(*whole, *([dst] * axes))] = grid[(*whole, *([src] * axes))]
    return out


def _blur(grid: np.ndarray, edge: EdgeSet, ctx: EdgeContext) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = _value(edge)
    return np.asarray(gaussian_filter(grid, sigma=(0.0, 0.0) + (sigma,) * (grid.ndim - 2)))


def _patch_size(fraction: float, shape: tuple[int, ...]) -> int:
    """Side of the occlusion patch (segment length for signals): at least 1 pixel."""
    if len(shape) == 2:
        return min(shape[0], max(1, round(shape[0] * math.sqrt(fraction))))
    return min(shape[0], max(1, round(shape[0] * fraction)))


def _occlusion(grid: np.ndarray, edge: EdgeSet, ctx: EdgeContext) -> np.ndarray:
    shape = grid.shape[2:]
    size = _patch_size(_value(edge), shape)
    out = grid.copy()
    starts = ctx.rng.integers(0, shape[0] - size + 1, size=(len(grid), len(shape)))
    for i, start in enumerate(starts):
        window: tuple[int | slice, ...] = (
            i,
            slice(None),
            *(slice(int(s), int(s) + size) for s in start),
        )
        out[window] = 0.0
    return out


def _contrast(grid: np.ndarray, edge: EdgeSet, ctx: EdgeContext) -> np.ndarray:
    axes = tuple(range(1, grid.ndim))
    mean = grid.mean(axis=axes, keepdims=True)
    return mean + _value(edge) * (grid - mean)


# --------------------------------------------------------------------------------------------
# slices


def _train_counts(ctx: EdgeContext) -> np.ndarray:
    return np.bincount(ctx.dataset.y[ctx.fold.train_idx], minlength=ctx.dataset.n_classes)


def _count_of(fraction: float, total: int) -> int:
    """``ceil(fraction * total)`` robust to float fuzz (0.3 * 10 -> 3), at least 1."""
    return max(1, min(total, math.ceil(fraction * total - 1e-9)))


def minority_classes(fraction: float, train_counts: np.ndarray) -> np.ndarray:
    """Class indices of the ``minority[fraction]`` slice, rarest first.

    Parameters
    ----------
    fraction : float
        The share of the classes to take, in (0, 1].
    train_counts : np.ndarray
        Training-fold sample count per class.

    Returns
    -------
    np.ndarray
        The ``ceil(fraction * n_classes)`` (at least one) rarest classes; ties by class index.
    """
    order = np.argsort(train_counts, kind="stable")
    return order[: _count_of(fraction, len(train_counts))]


def _minority(edge: EdgeSet, ctx: EdgeContext) -> tuple[Any, np.ndarray]:
    X, y = _val_inputs(ctx)
    keep = np.isin(y, minority_classes(_value(edge), _train_counts(ctx)))
    return inputs.take(X, keep), y[keep]


def _hardest(edge: EdgeSet, ctx: EdgeContext) -> tuple[Any, np.ndarray]:
    X, y = _val_inputs(ctx)
    margin = np.asarray(ctx.dense_margin, dtype=np.float64)
    if margin.shape != (len(y),):
        raise ValueError(
            f"{edge.text}: dense_margin has shape {margin.shape}, expected ({len(y)},)"
            " (one value per validation sample)"
        )
    if not np.isfinite(margin).all():
        raise ValueError(f"{edge.text}: dense_margin contains NaN or infinity")
    n = max(1, min(len(y), math.floor(_value(edge) * len(y) + 1e-9)))
    chosen = np.sort(np.argsort(margin, kind="stable")[:n])
    return inputs.take(X, chosen), y[chosen]


def imbalanced_counts(ratio: float, train_counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class sample counts of the ``imbalanced[ratio]`` set.

    Parameters
    ----------
    ratio : float
        Frequency of the most over the least frequent class, >= 1.
    train_counts : np.ndarray
        Training-fold sample count per class: the most frequent class (ties by index) gets
        weight 1, the next ``ratio ** (-1 / (n - 1))``, ..., the rarest ``1 / ratio``.
    total : int
        The size of the resampled set (before rounding).

    Returns
    -------
    np.ndarray
        int64 count per class index, each at least 1.
    """
    k = len(train_counts)
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(-train_counts, kind="stable")] = np.arange(k)
    weights = float(ratio) ** (-rank / max(1, k - 1))
    return np.maximum(1, np.rint(total * weights / weights.sum())).astype(np.int64)


def _imbalanced(edge: EdgeSet, ctx: EdgeContext) -> tuple[Any, np.ndarray]:
    X, y = _val_inputs(ctx)
    counts = imbalanced_counts(_value(edge), _train_counts(ctx), len(y))
    parts = []
    for cls, count in enumerate(counts):
        members = np.flatnonzero(y == cls)
        if len(members) == 0:
            name = ctx.dataset.class_names[cls]
            raise ValueError(f"{edge.text}: class {name!r} has no validation samples to resample")
        parts.append(ctx.rng.choice(members, size=int(count), replace=True))
    chosen = np.sort(np.concatenate(parts), kind="stable")
    return inputs.take(X, chosen), y[chosen]


# --------------------------------------------------------------------------------------------
# token sequences


def _tokens(ctx: EdgeContext) -> tuple[np.ndarray, np.ndarray | None]:
    """Copies of the validation token ids and attention mask (None without one)."""
    X = ctx.fold.X_val
    if isinstance(X, dict):
        mask = X.get(inputs.MASK_FIELD)
        return np.array(inputs.main(X)), None if mask is None else np.array(mask)
    return np.array(X), None


def _with_tokens(ctx: EdgeContext, ids: np.ndarray, mask: np.ndarray | None) -> Any:
    X = ctx.fold.X_val
    if isinstance(X, dict):
        out = dict(X)
        out[inputs.TOKEN_FIELD if inputs.TOKEN_FIELD in X else next(iter(X))] = ids
        if mask is not None:
            out[inputs.MASK_FIELD] = mask
        return out
    return ids


def _real(ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Which positions hold real tokens: the mask's ones, else every position."""
    return mask.astype(bool) if mask is not None else np.ones(ids.shape, dtype=bool)


def _token_dropout(edge: EdgeSet, ctx: EdgeContext) -> tuple[Any, np.ndarray]:
    ids, mask = _tokens(ctx)
    ids[(ctx.rng.random(ids.shape) < _value(edge)) & _real(ids, mask)] = 0
    return _with_tokens(ctx, ids, mask), np.asarray(ctx.fold.y_val, np.int64)


def _truncate(edge: EdgeSet, ctx: EdgeContext) -> tuple[Any, np.ndarray]:
    ids, mask = _tokens(ctx)
    real = _real(ids, mask)
    rank = np.cumsum(real, axis=-1)  # 1-based position among real tokens
    keep = np.maximum(1, np.ceil(_value(edge) * real.sum(axis=-1, keepdims=True) - 1e-9))
    cut = real & (rank > keep)
    ids[cut] = 0
    if mask is not None:
        mask[cut] = 0
    return _with_tokens(ctx, ids, mask), np.asarray(ctx.fold.y_val, np.int64)


def _substitute(edge: EdgeSet, ctx: EdgeContext) -> tuple[Any, np.ndarray]:
    ids, mask = _tokens(ctx)
    hit = (ctx.rng.random(ids.shape) < _value(edge)) & _real(ids, mask)
    if ctx.vocab > 1:
        ids[hit] = ctx.rng.integers(1, ctx.vocab, size=int(hit.sum()))
    return _with_tokens(ctx, ids, mask), np.asarray(ctx.fold.y_val, np.int64)


# --------------------------------------------------------------------------------------------
# user files


def _user_file(edge: EdgeSet, ctx: EdgeContext) -> tuple[Any, np.ndarray]:
    raw, y = load_user_file(edge, ctx.dataset, ctx.base)
    return ctx.scale(raw), y


def load_user_file(edge: EdgeSet, dataset: Dataset, base: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw features (float32) and class indices (int64) of a ``npz:PATH`` / ``csv:PATH`` set.

    Parameters
    ----------
    edge : EdgeSet
        A set of kind ``npz`` or ``csv``.
    dataset : Dataset
        The suite's dataset: the file must have its number of features and class labels.
    base : Path
        Directory that a relative PATH is resolved against (the suite file's directory).

    Returns
    -------
    tuple of np.ndarray
        ``(X, y)`` with ``X`` unscaled.

    Raises
    ------
    ValueError
        One line: missing or unreadable file, wrong number of features, unknown label.
    """
    if edge.kind not in PATH_KINDS or edge.path is None:
        raise ValueError(f"{edge.text}: not a user-file edge set (npz:PATH or csv:PATH)")
    path = Path(edge.path) if Path(edge.path).is_absolute() else base / edge.path
    if not path.is_file():
        raise ValueError(f"{edge.text}: file not found: {path}")
    if isinstance(dataset.X, dict):
        raise ValueError(
            f"{edge.text}: a user file holds one array; {dataset.name} has named inputs"
        )
    X, labels, _, _ = registry.FILE_KINDS[edge.kind](path, {})
    X = np.asarray(X)
    if X.ndim == 0 or len(X) == 0 or len(X) != len(labels):
        raise ValueError(
            f"{edge.text}: needs one label per row (X {X.shape}, y {np.shape(labels)})"
        )
    values = int(np.prod(X.shape[1:]))
    if values != dataset.n_features:
        raise ValueError(
            f"{edge.text}: {values} features per row, {dataset.name} has {dataset.n_features}"
        )
    X = X.reshape(len(X), *dataset.sample_shape)  # flat rows of a shaped dataset, or as it is
    if dataset.spec.is_tokens:
        if X.dtype.kind not in "iu" or X.min() < 0:
            raise ValueError(f"{edge.text}: token ids must be non-negative integers")
        X = X.astype(np.int64)
    else:
        X = X.astype(np.float32)
        if not np.isfinite(X).all():
            raise ValueError(f"{edge.text}: features contain NaN or infinity")
    return X, map_labels(np.asarray(labels).ravel(), dataset, edge.text)


def map_labels(labels: np.ndarray, dataset: Dataset, source: str = "labels") -> np.ndarray:
    """Map user label values to the dataset's class indices.

    A label matches the class whose name equals ``str(label)`` (for integral numbers also
    ``str(int(label))``, so ``3.0`` matches ``"3"``). When none of the class names is numeric
    (``sklearn:breast_cancer``: ``malignant``, ``benign``), an integer label is also accepted as
    the class index, as in the original ``target`` arrays.

    Parameters
    ----------
    labels : np.ndarray
        1-D label values (numbers or strings).
    dataset : Dataset
        Supplies ``class_names``.
    source : str
        Named in the error message.

    Returns
    -------
    np.ndarray
        int64 class indices.

    Raises
    ------
    ValueError
        One line naming the first unknown label and the known classes.
    """
    index = {name: i for i, name in enumerate(dataset.class_names)}
    names_numeric = any(_number(name) is not None for name in dataset.class_names)
    values, inverse = np.unique(labels, return_inverse=True)
    mapped = np.empty(len(values), dtype=np.int64)
    for j, value in enumerate(values):
        found = _match_label(value, index, names_numeric, dataset.n_classes)
        if found is None:
            shown = ", ".join(dataset.class_names[:12]) + (
                ", ..." if dataset.n_classes > 12 else ""
            )
            raise ValueError(
                f"{source}: label {str(value)!r} is not a class of {dataset.name}"
                f" (classes: {shown})"
            )
        mapped[j] = found
    return mapped[inverse.ravel()]


def _match_label(
    value: object, index: dict[str, int], names_numeric: bool, n_classes: int
) -> int | None:
    text = str(value).strip()
    keys = [text]
    number = _number(text)
    integral = number is not None and number == int(number)
    if number is not None and integral:
        keys += [str(int(number)), repr(float(number))]
    for key in keys:
        if key in index:
            return index[key]
    if number is not None and integral and not names_numeric and 0 <= number < n_classes:
        return int(number)
    return None


# --------------------------------------------------------------------------------------------
# registry and parameter rules


def _value(edge: EdgeSet) -> float:
    value = edge.value
    assert value is not None, edge  # only path kinds have no default
    return float(value)


KINDS: dict[str, EdgeKind] = {
    "gaussian_noise": EdgeKind(_gaussian_noise, *KIND_INFO["gaussian_noise"]),
    "feature_dropout": EdgeKind(_feature_dropout, *KIND_INFO["feature_dropout"]),
    "extremes": EdgeKind(_multiply, *KIND_INFO["extremes"]),
    "scale_drift": EdgeKind(_multiply, *KIND_INFO["scale_drift"]),
    "shift_drift": EdgeKind(_shift_drift, *KIND_INFO["shift_drift"]),
    "shift": EdgeKind(_grid(_shift), *KIND_INFO["shift"]),
    "blur": EdgeKind(_grid(_blur), *KIND_INFO["blur"]),
    "occlusion": EdgeKind(_grid(_occlusion), *KIND_INFO["occlusion"]),
    "contrast": EdgeKind(_grid(_contrast), *KIND_INFO["contrast"]),
    "minority": EdgeKind(_minority, *KIND_INFO["minority"]),
    "hardest": EdgeKind(_hardest, *KIND_INFO["hardest"]),
    "imbalanced": EdgeKind(_imbalanced, *KIND_INFO["imbalanced"]),
    "npz": EdgeKind(_user_file, *KIND_INFO["npz"]),
    "csv": EdgeKind(_user_file, *KIND_INFO["csv"]),
    "token_dropout": EdgeKind(_token_dropout, *KIND_INFO["token_dropout"]),
    "truncate": EdgeKind(_truncate, *KIND_INFO["truncate"]),
    "substitute": EdgeKind(_substitute, *KIND_INFO["substitute"]),
}


def check_edge(edge: EdgeSet, dataset: Dataset, base: Path | None = None) -> str | None:
    """The problem with using ``edge`` on ``dataset``, or None.

    Parameters
    ----------
    edge : EdgeSet
        A parsed edge set.
    dataset : Dataset
        The suite's dataset.
    base : Path, optional
        When given, user files (``npz`` / ``csv``) are also loaded and checked (features, labels).

    Returns
    -------
    str or None
        One line, e.g. ``"blur needs image or signal data (sklearn:wine is tabular)"``.
    """
    if edge.kind not in KINDS:
        return f"unknown edge kind {edge.kind!r} (known: {known_kinds()})"
    entry = KINDS[edge.kind]
    if dataset.kind not in entry.data_kinds:
        return (
            f"{edge.kind} needs {' or '.join(entry.data_kinds)} data"
            f" ({dataset.name} is {dataset.kind})"
        )
    if (
        isinstance(dataset.X, dict)
        and entry.data_kinds != TOKEN_DATA
        and entry.data_kinds != ALL_DATA
    ):
        return f"{edge.kind} needs one input array ({dataset.name} has named inputs)"
    if edge.kind in PATH_KINDS:
        if edge.path is None:
            return f"{edge.kind} needs a file path ({edge.kind}:PATH)"
        if base is not None:
            try:
                load_user_file(edge, dataset, base)
            except ValueError as err:
                return str(err)
        return None
    value = _value(edge)
    problem = PARAM_RULES[edge.kind](value)
    if problem:
        return f"{edge.text}: {problem}"
    if entry.data_kinds == GRID_DATA:
        shape = _grid_shape(dataset)
        flat = len(dataset.sample_shape) == 1
        if dataset.kind == "image" and flat and shape[1] * shape[1] != dataset.n_features:
            return (
                f"{edge.kind} needs square images ({dataset.name} has {dataset.n_features}"
                " features, not a square number)"
            )
        if dataset.kind == "image" and len(shape) != 3:
            return f"{edge.kind} needs images C x H x W ({dataset.name} samples are {shape})"
        if edge.kind == "shift" and abs(round(value)) >= min(shape[1:]):
            return f"{edge.text}: shift of {round(value)} pixels must be below {min(shape[1:])}"
    return None


def make_edge_set(
    edge: EdgeSet,
    fold: Fold,
    dataset: Dataset,
    *,
    dense_margin: np.ndarray,
    seed: int,
    base: Path,
) -> tuple[Any, np.ndarray]:
    """Build one edge set from a validation fold.

    Parameters
    ----------
    edge : EdgeSet
        What to build.
    fold : Fold
        The fold: its validation rows are perturbed / sliced; its training rows fix the scaler
        and the class frequencies.
    dataset : Dataset
        The fold's dataset (raw rows for the geometric kinds, class names for user files).
    dense_margin : np.ndarray
        One value per validation sample: the dense model's true-class logit minus the best other
        logit (lower is harder). Only ``hardest`` uses it.
    seed : int
        Seeds a :func:`numpy.random.default_rng`; the global RNG is never touched.
    base : Path
        Directory that user-file paths are relative to (the suite file's directory).

    Returns
    -------
    tuple of np.ndarray
        ``(X, y)``: float32 features in the fold's scaled space, int64 class indices; identical
        for identical inputs and seed.

    Raises
    ------
    ValueError
        One line, when :func:`check_edge` finds a problem, a user file is unusable or the slice
        would be empty.
    """
    problem = check_edge(edge, dataset)
    if problem:
        raise ValueError(problem)
    ctx = EdgeContext(fold, dataset, np.asarray(dense_margin), np.random.default_rng(seed), base)
    X, y = KINDS[edge.kind].generator(edge, ctx)
    if len(y) == 0:
        raise ValueError(f"{edge.text}: the edge set is empty for fold {fold.index}")
    as_stored = inputs.map_arrays(
        X, lambda a: np.ascontiguousarray(a, dtype=np.int64 if a.dtype.kind in "iu" else np.float32)
    )
    return as_stored, np.ascontiguousarray(y, dtype=np.int64)
