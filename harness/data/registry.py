"""Dataset registry: names in suite files -> arrays.

Names: ``sklearn:digits``, ``sklearn:breast_cancer``, ``sklearn:wine``, ``mnist1d`` (generated
offline by the ``mnist1d`` package), ``synthetic:classification`` (scikit-learn's
``make_classification``; its keyword arguments in ``dataset_args``), ``npz:PATH`` (arrays ``X`` and
``y``), ``csv:PATH`` (numeric features and a label column: the last one unless
``dataset_args.label`` names or numbers it; a header row is detected, or set with
``dataset_args.header``) and ``module:callable``, the user's own function called with the
``dataset_args`` (see :func:`from_callable` for what it may return). Relative paths are resolved
against the suite file's directory.

Every dataset also takes two generic ``dataset_args``: ``shape`` (each sample reshaped to it, e.g.
``[1, 8, 8]`` for the digits as images, ``[64]`` to flatten) and ``kind`` (``tabular``,
``image``, ``signal`` or ``tokens``: which edge sets and scaling apply). Samples keep their shape:
``X`` is ``(N, *sample_shape)``, float32, or int64 for ``tokens`` (ids >= 0, never scaled), or a
mapping of named arrays for a multi-input model (its integer fields stay int64).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from harness import inputs
from harness._util import HarnessError


class DatasetError(HarnessError):
    """A dataset name, argument or file is unusable; the message is one line."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Inputs ``X`` (:data:`harness.inputs.Inputs`: ``(N, *sample_shape)`` float32 or int64
    token ids, or named arrays), labels ``y`` (int64, 0..n_classes-1)."""

    name: str
    X: Any  # harness.inputs.Inputs
    y: np.ndarray
    class_names: tuple[str, ...]
    kind: str  # "tabular", "image", "signal" or "tokens": which edge cases make sense
    digest: str

    @cached_property
    def spec(self) -> inputs.InputSpec:
        """What one sample looks like (shape, dtype, token vocabulary): what factories get."""
        return inputs.spec_of(self.X)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        """Values per sample (of the main input)."""
        return self.spec.in_features

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.spec.shape


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
    return X, y, None, _kind_of_shape(X)


def _kind_of_shape(X: np.ndarray) -> str:
    """The data kind a file's array shape suggests: ``(N, C, H, W)`` images, ``(N, C, L)``
    signals, else tabular (``dataset_args.kind`` says otherwise)."""
    return {4: "image", 3: "signal"}.get(X.ndim, "tabular")


CSV_ARGS = ("label", "header")


def _csv(path: Path, args: Mapping[str, Any]) -> tuple:
    unknown = sorted(set(args) - set(CSV_ARGS))
    if unknown:
        raise DatasetError(f"unknown csv dataset_args: {', '.join(unknown)} (known: label, header)")
    header_arg = args.get("header")
    if header_arg is not None and not isinstance(header_arg, bool):
        raise DatasetError(f"header = {header_arg!r}: must be true or false")
    try:
        rows = [line.split(",") for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read ({err})") from err
    label = args.get("label")
    if header_arg is not None:
        has_header = header_arg
    elif isinstance(label, str):
        has_header = True  # a label named by its column needs the header row
    else:
        has_header = _looks_like_header(rows, label)
    header = [v.strip() for v in rows[0]] if has_header and rows else []
    rows = rows[1:] if has_header else rows
    if not rows:
        raise DatasetError(f"{path}: no data rows")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DatasetError(f"{path}: row {i + 1} has {len(row)} columns, expected {width}")
    column = _label_column(path, label, header, width)
    try:
        X = np.array([[float(v) for j, v in enumerate(row) if j != column] for row in rows])
    except ValueError as err:
        where = (
            f"label = {args['label']!r} " if "label" in args else "the label is the last column; "
        )
        raise DatasetError(
            f"{path}: non-numeric feature ({err}); {where}set dataset_args.label to the label "
            "column's name or index"
        ) from err
    y = np.array([row[column].strip() for row in rows])
    return X, y, None, "tabular"


def _looks_like_header(rows: list[list[str]], label: Any) -> bool:
    """Whether the first row is a header: its first feature cell (the first cell not in the
    label column) is not a number."""
    if not rows or not rows[0]:
        return False
    width = len(rows[0])
    column = label % width if isinstance(label, int) and -width <= label < width else width - 1
    first = next((j for j in range(width) if j != column), None)
    return first is not None and not _is_number(rows[0][first])


def _label_column(path: Path, label: Any, header: list[str], width: int) -> int:
    """The label column: ``label`` as a header name or a 0-based index (negative from the end);
    the last column by default."""
    if label is None:
        return width - 1
    if isinstance(label, bool) or not isinstance(label, int | str):
        raise DatasetError(f"label = {label!r}: must be a column name or index")
    if isinstance(label, int):
        if not -width <= label < width:
            raise DatasetError(f"label = {label}: the file has {width} columns")
        return label % width
    if label not in header:
        shown = ", ".join(header[:20]) if header else "no header row"
        raise DatasetError(f"{path}: label = {label!r}: no such column ({shown})")
    return header.index(label)


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


MAX_SAMPLES = 10**7  # samples a user's torch Dataset is materialized to at most
KINDS = ("tabular", "image", "signal", "tokens")
GENERIC_ARGS = ("shape", "kind")  # dataset_args every dataset takes
# prefixes that name the harness's own datasets, never a user module
RESERVED = ("sklearn", "synthetic", *FILE_KINDS)


def names() -> list[str]:
    return [*BUILTIN, *(f"{k}:PATH" for k in FILE_KINDS), "module:callable"]


def is_callable_ref(name: str) -> bool:
    """Whether ``name`` is a user's ``module:callable`` (not a builtin or file dataset)."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr) and module not in RESERVED and name not in BUILTIN


def from_callable(ref: str, args: Mapping[str, Any], *, stream: bool | None = None) -> tuple:
    """Call the user's dataset function ``ref`` with ``args`` as keyword arguments.

    It may return ``(X, y)``, ``(X, y, class_names)``, a mapping with keys ``X``, ``y`` and
    optionally ``class_names`` and ``kind`` ("tabular", "image", "signal" or "tokens": which edge
    sets and scaling apply), or a ``torch.utils.data.Dataset`` of ``(features, label)`` pairs,
    which is materialized once (at most :data:`MAX_SAMPLES` samples). ``X`` (and each sample of a
    Dataset) may be an array of any shape or a mapping of named arrays (a multi-input model, as
    ``{"input_ids": ..., "attention_mask": ...}``).
    """
    from harness._util import import_user_callable

    factory = import_user_callable(ref, "dataset", DatasetError)
    try:
        out = factory(**args)
    except Exception as err:  # the user's function may raise anything
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise DatasetError(
            f"{ref}({_kwargs(args)}) failed ({type(err).__name__}: {first})"
        ) from err
    kind = "tabular"
    names: Any = None
    if isinstance(out, Mapping):
        missing = [k for k in ("X", "y") if k not in out]
        if missing:
            raise DatasetError(f"{ref} returned a mapping without {', '.join(missing)}")
        X, y, names, kind = out["X"], out["y"], out.get("class_names"), out.get("kind", kind)
    elif isinstance(out, tuple | list) and len(out) in (2, 3):
        X, y = out[0], out[1]
        names = out[2] if len(out) == 3 else None
    elif hasattr(out, "__getitem__") and hasattr(out, "__len__"):
        if _streams(ref, out, stream):  # read in batches when needed, never stacked whole
            from harness.data.stream import Streamed

            return Streamed(out, len(out), lambda batch: batch), None, None, kind
        X, y = _materialize(ref, out)
    else:
        raise DatasetError(
            f"{ref} returned {type(out).__name__}; expected (X, y), (X, y, class_names), a "
            "mapping with X and y, or a torch Dataset of (features, label) pairs"
        )
    if kind not in KINDS:
        raise DatasetError(f"{ref}: kind = {kind!r}: must be one of {', '.join(KINDS)}")
    if names is not None:
        names = [str(n) for n in names]
    if isinstance(X, Mapping):
        X = {str(k): _array(ref, f"X[{k!r}]", v) for k, v in X.items()}
        if not X:
            raise DatasetError(f"{ref}: X is an empty mapping (needs at least one named input)")
        if inputs.TOKEN_FIELD in X and "kind" not in (out if isinstance(out, Mapping) else {}):
            kind = "tokens"
    else:
        X = _array(ref, "X", X)
    return X, _array(ref, "y", y), names, kind


def _streams(ref: str, data: Any, stream: bool | None) -> bool:
    """Whether a map-style dataset is streamed: as ``dataset_args.stream`` says, else when its
    features would take more than ``STREAM_ABOVE_BYTES`` (the first sample's size x length)."""
    from harness.data.stream import STREAM_ABOVE_BYTES

    if stream is not None:
        return stream
    n = len(data)
    if n == 0:
        return False
    item = data[0]
    if not (isinstance(item, tuple | list) and len(item) == 2):
        return False  # _materialize says what is wrong
    x = item[0]
    parts = x.values() if isinstance(x, Mapping) else [x]
    size = sum(int(getattr(v, "nbytes", np.asarray(v).nbytes)) for v in parts)
    return size * n > STREAM_ABOVE_BYTES


def _kwargs(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())[:200]


def _array(ref: str, what: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # ragged lists and the like
        raise DatasetError(f"{ref}: {what} is not an array ({err})") from err


def _materialize(ref: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """A map-style dataset of ``(features, label)`` pairs as two arrays."""
    n = len(data)
    if n > MAX_SAMPLES:
        raise DatasetError(
            f"{ref}: a dataset of {n} samples; at most {MAX_SAMPLES} are materialized (the "
            "harness's bound)"
        )
    xs: list[Any] = []
    ys = []
    for i in range(n):
        item = data[i]
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise DatasetError(
                f"{ref}: item {i} is {type(item).__name__}; expected a (features, label) pair"
            )
        if isinstance(item[0], Mapping):
            xs.append({str(k): _array(ref, f"item {i} {k}", v) for k, v in item[0].items()})
        else:
            xs.append(_array(ref, f"item {i} features", item[0]))
        label = item[1]
        ys.append(label.item() if hasattr(label, "item") else label)
    if not xs:
        return np.zeros((0, 0)), np.asarray(ys)
    if isinstance(xs[0], Mapping):
        keys = list(xs[0])
        if any(not isinstance(x, Mapping) or list(x) != keys for x in xs):
            raise DatasetError(f"{ref}: items have different named inputs (the first: {keys})")
        stacked = {}
        for k in keys:
            shapes = {x[k].shape for x in xs}
            if len(shapes) > 1:
                raise DatasetError(
                    f"{ref}: items have {k} of different shapes ({sorted(shapes)[:3]})"
                )
            stacked[k] = np.stack([x[k] for x in xs])
        return stacked, np.asarray(ys)  # type: ignore[return-value]
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DatasetError(f"{ref}: items have features of different shapes ({sorted(shapes)[:3]})")
    return np.stack(xs), np.asarray(ys)


def load_dataset(
    name: str, args: Mapping[str, Any] | None = None, base: Path | None = None
) -> Dataset:
    """Load a registered dataset (cached per process); raises :class:`DatasetError`."""
    # only file datasets depend on the directory; builtin ones share one cache entry
    kind, _, rest = name.partition(":")
    where = ""
    stamp: tuple[int, ...] = ()
    if is_callable_ref(name):
        stamp = _module_stamp(kind)
    elif kind in FILE_KINDS:
        where = str((base or Path.cwd()).resolve())
        try:  # a file rewritten during the session is a new dataset, not a cache hit
            st = (Path(where) / rest).stat()
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        except (OSError, ValueError):
            pass
    return _load(name, json.dumps(dict(args or {}), sort_keys=True), where, stamp)


def _module_stamp(module: str) -> tuple[int, ...]:
    """Size and mtime of a user module's file (a module edited during the session is a new
    dataset), or nothing when it cannot be found without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        if origin and origin not in ("built-in", "frozen"):
            st = Path(origin).stat()
            return (st.st_size, st.st_mtime_ns)
    except (ImportError, ValueError, OSError):
        pass
    return ()


@lru_cache(maxsize=8)
def _load(name: str, args_json: str, base: str, stamp: tuple[int, ...] = ()) -> Dataset:
    args = json.loads(args_json)
    shape, kind_arg = args.pop("shape", None), args.pop("kind", None)
    stream = args.pop("stream", None)
    if kind_arg is not None and kind_arg not in KINDS:
        raise DatasetError(f"kind = {kind_arg!r}: must be one of {', '.join(KINDS)}")
    if stream is not None and not isinstance(stream, bool):
        raise DatasetError(f"stream = {stream!r}: must be true or false")
    kind, _, rest = name.partition(":")
    if name in BUILTIN:
        X, y, class_names, data_kind = BUILTIN[name](args, Path(base))
    elif kind in FILE_KINDS and rest:
        path = Path(rest) if Path(rest).is_absolute() else Path(base) / rest
        if not path.is_file():
            raise DatasetError(f"data file not found: {path}")
        X, y, class_names, data_kind = FILE_KINDS[kind](path, args)
    elif is_callable_ref(name):
        X, y, class_names, data_kind = from_callable(name, args, stream=stream)
    else:
        raise DatasetError(f"unknown dataset (known: {', '.join(names())})")
    data_kind = kind_arg or data_kind
    if stream and y is not None:  # arrays, a file, a builtin: nothing to stream
        raise DatasetError("stream applies to a dataset function returning a torch Dataset")
    if y is None:  # a streamed torch Dataset
        return _streamed(name, X, shape, data_kind)
    y = _labels(np.asarray(y))
    if isinstance(X, Mapping):
        if shape is not None:
            raise DatasetError("shape applies to one input array, not to named inputs")
        X = {
            k: _features(v, k, integer=np.asarray(v).dtype.kind in "biu", n=len(y))
            for k, v in X.items()
        }
    else:
        X = np.asarray(X)
        if shape is not None:
            X = _reshaped(X, shape)
        X = _features(X, "features", integer=data_kind == "tokens", n=len(y))
    labels, y_idx = np.unique(np.asarray(y), return_inverse=True)
    if len(labels) < 2:
        raise DatasetError("needs at least two classes")
    if class_names is None or len(class_names) != len(labels):
        class_names = [str(v) for v in labels]
    y_idx = y_idx.astype(np.int64)
    digest = hashlib.sha256(inputs.digest_bytes(X) + y_idx.tobytes()).hexdigest()[:16]
    for a in X.values() if isinstance(X, Mapping) else [X]:
        a.setflags(write=False)
    y_idx.setflags(write=False)
    return Dataset(name, X, y_idx, tuple(class_names), data_kind, digest)


def _streamed(name: str, source: Any, shape: Any, kind: str) -> Dataset:
    """A streamed dataset: one pass reads the labels, digests and checks every sample; ``X`` is
    a lazy view of all rows (:mod:`harness.data.stream`)."""
    from harness.data.stream import Rows, scan

    def prepare(batch: Any) -> Any:
        n = inputs.count(batch)
        if isinstance(batch, Mapping):
            if shape is not None:
                raise DatasetError("shape applies to one input array, not to named inputs")
            return {
                k: _features(v, k, integer=np.asarray(v).dtype.kind in "biu", n=n)
                for k, v in batch.items()
            }
        batch = np.asarray(batch)
        if shape is not None:
            batch = _reshaped(batch, shape)
        return _features(batch, "features", integer=kind == "tokens", n=n)

    source.prepare = prepare
    y, raw_digest, (first, top) = scan(source, lambda batch: None)
    y = _labels(y)
    labels, y_idx = np.unique(y, return_inverse=True)
    if len(labels) < 2:
        raise DatasetError("needs at least two classes")
    y_idx = y_idx.astype(np.int64)
    y_idx.setflags(write=False)
    spec = inputs.spec_of(first)
    if spec.fields:
        fields = tuple(
            (k, replace(f, vocab=top[k] + 1) if f.is_tokens else f) for k, f in spec.fields
        )
        head = dict(fields).get(inputs.TOKEN_FIELD, fields[0][1])
        spec = inputs.InputSpec(head.shape, head.dtype, head.vocab, fields)
    elif spec.is_tokens:
        spec = replace(spec, vocab=top[""] + 1)
    digest = hashlib.sha256(raw_digest + y_idx.tobytes()).hexdigest()[:16]
    ds = Dataset(
        name, Rows(source, np.arange(len(source))), y_idx, tuple(map(str, labels)), kind, digest
    )
    ds.__dict__["spec"] = spec  # the whole dataset's (vocab over every sample), not one batch's
    return ds


def _reshaped(X: np.ndarray, shape: Any) -> np.ndarray:
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise DatasetError(f"shape = {shape!r}: must be a list of positive integers")
    per_sample = int(np.prod(X.shape[1:])) if X.ndim >= 1 else 0
    if X.ndim < 1 or int(np.prod(shape)) != per_sample:
        raise DatasetError(
            f"shape = {shape}: {int(np.prod(shape))} values per sample, the data have "
            f"{per_sample} ({list(X.shape[1:])})"
        )
    return X.reshape(len(X), *shape)


def _features(X: Any, what: str, *, integer: bool, n: int) -> np.ndarray:
    """One input array checked and cast: float32 (int64 for token ids and other integer
    fields), one sample per label, finite."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"{what} have dtype {X.dtype}: need real numbers (int or float)")
    if X.ndim < 2 or len(X) != n or len(X) == 0 or X[0].size == 0:
        raise DatasetError(
            f"needs {what} of shape (samples, ...) with one sample per label "
            f"(X {X.shape}, y ({n},))"
        )
    if integer:
        if X.dtype.kind == "f" and (not np.isfinite(X).all() or (np.round(X) != X).any()):
            raise DatasetError(f"{what}: token ids must be integers")
        if X.min() < 0 or X.max() >= 2**31:
            raise DatasetError(
                f"{what}: token ids must be in [0, 2**31) (found {X.min()}..{X.max()})"
            )
        return X.astype(np.int64)
    with np.errstate(over="ignore"):  # values beyond float32 become inf: refused below
        X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise DatasetError(f"{what} contain NaN or infinity")
    return X


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
