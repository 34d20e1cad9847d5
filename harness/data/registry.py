"""Dataset registry: names in suite files -> arrays.

Names: ``sklearn:digits``, ``sklearn:breast_cancer``, ``sklearn:wine``, ``mnist1d`` (generated
offline by the ``mnist1d`` package), ``synthetic:classification`` (scikit-learn's
``make_classification``; its keyword arguments in ``dataset_args``), ``npz:PATH`` (arrays ``X`` and
``y``) and ``csv:PATH`` (numeric features, the label in the last column, optional header row).
Relative paths are resolved against the suite file's directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from harness._util import HarnessError


class DatasetError(HarnessError):
    """A dataset name, argument or file is unusable; the message is one line."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``X`` (float32, one row per sample), labels ``y`` (int64, 0..n_classes-1)."""

    name: str
    X: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    kind: str  # "tabular", "image" or "signal": which edge cases make sense
    digest: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def _sklearn(loader_name: str, kind: str) -> Callable[[Mapping[str, Any], Path], tuple]:
    def load(args: Mapping[str, Any], base: Path) -> tuple:
        import sklearn.datasets

        _no_args(args)
        bunch = getattr(sklearn.datasets, loader_name)()
        names = [str(n) for n in getattr(bunch, "target_names", np.unique(bunch.target))]
        return bunch.data, bunch.target, names, kind

    return load


def _no_args(args: Mapping[str, Any]) -> None:
    if args:
        raise DatasetError(f"takes no dataset_args (got {', '.join(args)})")


def _mnist1d(args: Mapping[str, Any], base: Path) -> tuple:
    from mnist1d.data import get_dataset_args, make_dataset

    settings = get_dataset_args(as_dict=True)
    unknown = set(args) - (set(settings) - {"url"})
    if unknown:
        raise DatasetError(f"unknown mnist1d dataset_args: {', '.join(sorted(unknown))}")
    settings.update(args)
    count = settings.get("num_samples")
    if isinstance(count, int) and count > MNIST1D_MAX_SAMPLES:
        raise DatasetError(
            f"num_samples = {count}: at most {MNIST1D_MAX_SAMPLES} (the harness's bound; "
            "mnist1d generates samples one by one)"
        )
    state = np.random.get_state()  # make_dataset seeds numpy's global RNG; leave it as it was
    try:
        data = make_dataset(_Args(settings))
    except Exception as err:  # the generator validates nothing itself
        raise DatasetError(f"mnist1d rejected dataset_args {dict(args)}: {err}") from err
    finally:
        np.random.set_state(state)
    X = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    return X, y, [str(i) for i in range(10)], "signal"


class _Args:
    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)


def _synthetic(args: Mapping[str, Any], base: Path) -> tuple:
    from sklearn.datasets import make_classification

    kwargs = {
        "n_samples": 1000,
        "n_features": 20,
        "n_informative": 10,
        "n_classes": 3,
        "random_state": 0,
        **args,
    }
    size = (
        kwargs["n_samples"] * kwargs["n_features"]
        if all(isinstance(kwargs[k], int) for k in ("n_samples", "n_features"))
        else 0
    )
    if size > MAX_VALUES:
        raise DatasetError(
            f"n_samples * n_features = {size}: at most {MAX_VALUES} values (the harness's bound)"
        )
    try:
        X, y = make_classification(**kwargs)
    except (TypeError, ValueError, MemoryError) as err:
        raise DatasetError(f"make_classification rejected dataset_args: {err}") from err
    return X, y, [str(c) for c in np.unique(y)], "tabular"


def _npz(path: Path, args: Mapping[str, Any]) -> tuple:
    _no_args(args)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            xk = "X" if "X" in keys else "x"
            X = arrays[xk] if xk in keys else None
            y = arrays["y"] if "y" in keys else None
    except Exception as err:  # zipfile.BadZipFile, OSError, ValueError, ...
        raise DatasetError(f"{path}: not a readable .npz file ({err})") from err
    if X is None or y is None:
        raise DatasetError(f"{path}: needs arrays 'X' and 'y' (has {', '.join(sorted(keys))})")
    if X.ndim == 0 or X.size == 0:
        raise DatasetError(f"{path}: X = array of shape {X.shape}: needs one row per sample")
    if np.ndim(y) != 1:
        raise DatasetError(f"{path}: y = array of shape {np.shape(y)}: needs one label per row")
    return X.reshape(len(X), -1), y, None, "tabular"


def _csv(path: Path, args: Mapping[str, Any]) -> tuple:
    _no_args(args)
    try:
        rows = [line.split(",") for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read ({err})") from err
    if rows and not _is_number(rows[0][0]):
        rows = rows[1:]  # header
    if not rows:
        raise DatasetError(f"{path}: no data rows")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DatasetError(f"{path}: row {i + 1} has {len(row)} columns, expected {width}")
    try:
        X = np.array([[float(v) for v in row[:-1]] for row in rows])
    except ValueError as err:
        raise DatasetError(f"{path}: non-numeric feature ({err})") from err
    y = np.array([row[-1].strip() for row in rows])
    return X, y, None, "tabular"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


BUILTIN: dict[str, Callable[[Mapping[str, Any], Path], tuple]] = {
    "sklearn:digits": _sklearn("load_digits", "image"),
    "sklearn:breast_cancer": _sklearn("load_breast_cancer", "tabular"),
    "sklearn:wine": _sklearn("load_wine", "tabular"),
    "mnist1d": _mnist1d,
    "synthetic:classification": _synthetic,
}
FILE_KINDS = {"npz": _npz, "csv": _csv}


MAX_VALUES = 10**9  # features x samples of a generated dataset (4 GB as float32)
MNIST1D_MAX_SAMPLES = 10**6


def names() -> list[str]:
    return [*BUILTIN, *(f"{k}:PATH" for k in FILE_KINDS)]


def load_dataset(
    name: str, args: Mapping[str, Any] | None = None, base: Path | None = None
) -> Dataset:
    """Load a registered dataset (cached per process); raises :class:`DatasetError`."""
    # only file datasets depend on the directory; builtin ones share one cache entry
    kind, _, rest = name.partition(":")
    where = ""
    stamp: tuple[int, ...] = ()
    if kind in FILE_KINDS:
        where = str((base or Path.cwd()).resolve())
        try:  # a file rewritten during the session is a new dataset, not a cache hit
            st = (Path(where) / rest).stat()
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        except (OSError, ValueError):
            pass
    return _load(name, json.dumps(dict(args or {}), sort_keys=True), where, stamp)


@lru_cache(maxsize=8)
def _load(name: str, args_json: str, base: str, stamp: tuple[int, ...] = ()) -> Dataset:
    args = json.loads(args_json)
    kind, _, rest = name.partition(":")
    if name in BUILTIN:
        X, y, class_names, data_kind = BUILTIN[name](args, Path(base))
    elif kind in FILE_KINDS and rest:
        path = Path(rest) if Path(rest).is_absolute() else Path(base) / rest
        if not path.is_file():
            raise DatasetError(f"data file not found: {path}")
        X, y, class_names, data_kind = FILE_KINDS[kind](path, args)
    else:
        raise DatasetError(f"unknown dataset (known: {', '.join(names())})")
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"features have dtype {X.dtype}: need real numbers (int or float)")
    with np.errstate(over="ignore"):  # values beyond float32 become inf: refused below
        X = X.astype(np.float32)
    y = _labels(np.asarray(y))
    if X.ndim != 2 or len(X) != len(y) or len(X) == 0 or X.shape[1] == 0:
        raise DatasetError(
            f"needs 2-D features and one row per label (X {X.shape}, y {np.shape(y)})"
        )
    if not np.isfinite(X).all():
        raise DatasetError("features contain NaN or infinity")
    labels, y_idx = np.unique(np.asarray(y), return_inverse=True)
    if len(labels) < 2:
        raise DatasetError("needs at least two classes")
    if class_names is None or len(class_names) != len(labels):
        class_names = [str(v) for v in labels]
    y_idx = y_idx.astype(np.int64)
    digest = hashlib.sha256(X.tobytes() + y_idx.tobytes()).hexdigest()[:16]
    X.setflags(write=False)
    y_idx.setflags(write=False)
    return Dataset(name, X, y_idx, tuple(class_names), data_kind, digest)


def _labels(y: np.ndarray) -> np.ndarray:
    """Labels in one canonical form: numbers (and text that reads as numbers, as in CSV files)
    become numbers, integral ones integers, so ``1`` and ``1.0`` are one class; NaN, infinite
    and complex labels are refused."""
    if y.ndim != 1:
        raise DatasetError(f"labels have shape {y.shape}: need one label per row")
    if y.dtype.kind == "c":
        raise DatasetError("labels are complex numbers")
    if y.dtype.kind in "US":
        try:
            y = y.astype(np.float64)
        except ValueError:
            return y  # text labels: class names
    if y.dtype.kind == "O":
        raise DatasetError("labels must be numbers or text (got Python objects)")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DatasetError("labels contain NaN or infinity")
        if (y == np.round(y)).all() and np.abs(y).max(initial=0) < 2**53:
            return y.astype(np.int64)
    return y


def check(name: str, args: Mapping[str, Any], base: Path) -> str | None:
    """The problem with a dataset reference, or None if it loads."""
    try:
        load_dataset(name, args, base)
    except DatasetError as err:
        return str(err)
    return None


def smallest_class(name: str, args: Mapping[str, Any], base: Path) -> int:
    ds = load_dataset(name, args, base)
    return int(np.bincount(ds.y).min())
