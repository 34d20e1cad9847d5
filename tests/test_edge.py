"""Edge-case sets: parsing and names, data-kind checks, and every generator on real folds."""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import StandardScaler

from harness.data import Dataset, Fold, load_dataset, make_folds
from harness.data.edge import KINDS, check_edge, imbalanced_counts, make_edge_set
from harness.edgesets import GRID_DATA, NAME_RE, PATH_KINDS, TOKEN_DATA, EdgeSet, parse_edge

NAME_PATTERN = re.compile(r"^[a-z0-9_.]+$")
BUILTIN_KINDS = [k for k in KINDS if k not in PATH_KINDS and KINDS[k].data_kinds != TOKEN_DATA]
TOKEN_KINDS = [k for k in KINDS if KINDS[k].data_kinds == TOKEN_DATA]
GRID_KINDS = [k for k in BUILTIN_KINDS if KINDS[k].data_kinds == GRID_DATA]


@cache
def _data(name: str) -> tuple[Dataset, Fold]:
    ds = load_dataset(name)
    return ds, make_folds(ds, 3, seed=0)[0]


@cache
def _offset_digits() -> tuple[Dataset, Fold]:
    """Digits with every raw pixel shifted to >= 1, so zeros in raw space are occlusions only."""
    ds = load_dataset("sklearn:digits")
    shifted = Dataset("digits+1", ds.X + np.float32(1), ds.y, ds.class_names, "image", "x")
    return shifted, make_folds(shifted, 3, seed=0)[0]


def _margin(fold: Fold, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=len(fold.y_val))


def _make(
    text: str, name: str = "sklearn:digits", seed: int = 0, base: Path = Path(".")
) -> tuple[np.ndarray, np.ndarray]:
    ds, fold = _data(name)
    return make_edge_set(
        parse_edge(text), fold, ds, dense_margin=_margin(fold), seed=seed, base=base
    )


def _raw(X: np.ndarray, ds: Dataset, fold: Fold) -> np.ndarray:
    """Scaled -> raw features with the training-fold scaler (float64)."""
    scaler = StandardScaler().fit(ds.X[fold.train_idx])
    return scaler.inverse_transform(X.astype(np.float64))


def _applicable(name: str) -> list[str]:
    kind = _data(name)[0].kind
    return [k for k in BUILTIN_KINDS if kind in KINDS[k].data_kinds]


DATASETS = ["sklearn:digits", "mnist1d", "sklearn:breast_cancer"]
CASES = [(name, kind) for name in DATASETS for kind in _applicable(name)]


# --------------------------------------------------------------------------------------------
# shapes, dtypes, labels, determinism


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_every_kind_shape_dtype_labels(name: str, kind: str) -> None:
    ds, fold = _data(name)
    X, y = _make(kind, name)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert X.ndim == 2 and X.shape == (len(y), ds.n_features) and len(y) > 0
    assert np.isfinite(X).all()
    assert set(np.unique(y)) <= set(np.unique(fold.y_val))
    if kind not in ("minority", "hardest", "imbalanced"):  # perturbations keep the labels
        np.testing.assert_array_equal(y, fold.y_val)
        assert not np.array_equal(X, fold.X_val)


@settings(max_examples=25, deadline=None)
@given(
    case=st.sampled_from(CASES),
    seed=st.integers(0, 2**32 - 1),
    param=st.floats(0.05, 1.0),
)
def test_deterministic_for_seed_and_global_rng_untouched(
    case: tuple[str, str], seed: int, param: float
) -> None:
    name, kind = case
    ds, fold = _data(name)
    value = float(round(param * 2)) if kind == "shift" else param
    value = max(1.0, value * 20) if kind == "imbalanced" else value
    edge = EdgeSet(kind, value)
    assert check_edge(edge, ds) is None
    state = np.random.get_state(legacy=False)
    margin = _margin(fold)
    before = fold.X_val.copy()
    a = make_edge_set(edge, fold, ds, dense_margin=margin, seed=seed, base=Path("."))
    b = make_edge_set(edge, fold, ds, dense_margin=margin, seed=seed, base=Path("."))
    after = np.random.get_state(legacy=False)
    assert state["state"]["pos"] == after["state"]["pos"]
    assert np.array_equal(state["state"]["key"], after["state"]["key"])
    for left, right in zip(a, b, strict=True):
        assert left.dtype == right.dtype
        np.testing.assert_array_equal(left, right)
    assert a[0].shape == (len(a[1]), ds.n_features)
    np.testing.assert_array_equal(fold.X_val, before)  # the fold is left as it was


@pytest.mark.parametrize("kind", ["gaussian_noise", "feature_dropout", "occlusion", "imbalanced"])
def test_random_kinds_depend_on_the_seed(kind: str) -> None:
    assert not np.array_equal(_make(kind, seed=1)[0], _make(kind, seed=2)[0])


# --------------------------------------------------------------------------------------------
# perturbations in scaled space


def test_gaussian_noise_has_the_stated_std() -> None:
    _, fold = _data("sklearn:digits")
    X, _ = _make("gaussian_noise:0.3")
    noise = X.astype(np.float64) - fold.X_val
    assert abs(noise.std() - 0.3) < 0.005
    assert abs(noise.mean()) < 0.005


def test_feature_dropout_zeros_about_p() -> None:
    _, fold = _data("sklearn:digits")
    dropped, _ = _make("feature_dropout:0.2")
    changed = dropped != fold.X_val
    assert (dropped[changed] == 0).all()  # dropped values are the training mean, i.e. 0 scaled
    nonzero = fold.X_val != 0
    assert abs(changed[nonzero].mean() - 0.2) < 0.01
    assert (_make("feature_dropout:0")[0] == fold.X_val).all()
    assert (_make("feature_dropout:1")[0] == 0).all()


def test_scale_and_shift_kinds() -> None:
    _, fold = _data("sklearn:breast_cancer")
    name = "sklearn:breast_cancer"
    np.testing.assert_allclose(_make("extremes", name)[0], fold.X_val * 5, rtol=1e-6)
    np.testing.assert_allclose(_make("scale_drift:2", name)[0], fold.X_val * 2, rtol=1e-6)
    np.testing.assert_allclose(_make("shift_drift", name)[0], fold.X_val + 0.5, atol=1e-6)
    np.testing.assert_allclose(_make("shift_drift:-1", name)[0], fold.X_val - 1, atol=1e-6)


# --------------------------------------------------------------------------------------------
# geometric ops in raw space


def test_geometric_ops_rescale_with_the_training_scaler() -> None:
    _, fold = _data("sklearn:digits")
    X, _ = _make("contrast:1")  # the identity in raw space
    np.testing.assert_array_equal(X, fold.X_val)
    X, _ = _make("blur:0")
    np.testing.assert_array_equal(X, fold.X_val)


@pytest.mark.parametrize("pixels", [1, 2, -1])
def test_shift_translates_a_digit(pixels: int) -> None:
    ds, fold = _data("sklearn:digits")
    X, _ = _make(f"shift:{pixels}")
    raw = _raw(X, ds, fold).reshape(-1, 8, 8)
    original = ds.X[fold.val_idx].astype(np.float64).reshape(-1, 8, 8)
    rolled = np.roll(original, (pixels, pixels), axis=(1, 2))
    edge = slice(0, pixels) if pixels > 0 else slice(pixels, None)
    rolled[:, edge, :] = 0  # zero fill where np.roll wraps around
    rolled[:, :, edge] = 0
    np.testing.assert_allclose(raw, rolled, atol=1e-4)


def test_shift_translates_a_signal() -> None:
    ds, fold = _data("mnist1d")
    X, _ = _make("shift:-3", "mnist1d")
    raw = _raw(X, ds, fold)
    original = ds.X[fold.val_idx].astype(np.float64)
    np.testing.assert_allclose(raw[:, :-3], original[:, 3:], atol=1e-4)
    np.testing.assert_allclose(raw[:, -3:], 0, atol=1e-4)


def _high_frequency_energy(grid: np.ndarray) -> float:
    spectrum = np.abs(np.fft.fftn(grid, axes=tuple(range(1, grid.ndim)))) ** 2
    freqs = [np.abs(np.fft.fftfreq(n)) for n in grid.shape[1:]]
    high = np.zeros(grid.shape[1:], dtype=bool)
    for axis, f in enumerate(freqs):
        shape = [1] * len(freqs)
        shape[axis] = len(f)
        high |= f.reshape(shape) >= 0.25
    return float(spectrum[:, high].sum())


@pytest.mark.parametrize(("name", "shape"), [("sklearn:digits", (8, 8)), ("mnist1d", (40,))])
def test_blur_reduces_high_frequency_energy(name: str, shape: tuple[int, ...]) -> None:
    ds, fold = _data(name)
    original = ds.X[fold.val_idx].astype(np.float64).reshape(-1, *shape)
    blurred = _raw(_make("blur:1", name)[0], ds, fold).reshape(-1, *shape)
    assert _high_frequency_energy(blurred) < 0.5 * _high_frequency_energy(original)
    np.testing.assert_allclose(blurred.mean(), original.mean(), rtol=0.05)


@pytest.mark.parametrize(("name", "shape"), [("sklearn:digits", (8, 8)), ("mnist1d", (40,))])
def test_blur_filters_each_sample_on_its_own(name: str, shape: tuple[int, ...]) -> None:
    from scipy.ndimage import gaussian_filter

    ds, fold = _data(name)
    original = ds.X[fold.val_idx].astype(np.float64).reshape(-1, *shape)
    blurred = _raw(_make("blur:0.7", name)[0], ds, fold).reshape(-1, *shape)
    for i in range(0, len(original), 97):
        np.testing.assert_allclose(blurred[i], gaussian_filter(original[i], 0.7), atol=1e-4)


def test_occlusion_zeros_a_square_patch_of_the_stated_fraction() -> None:
    ds, fold = _offset_digits()
    X, _ = make_edge_set(
        parse_edge("occlusion:0.25"), fold, ds, dense_margin=_margin(fold), seed=3, base=Path(".")
    )
    raw = _raw(X, ds, fold).reshape(-1, 8, 8)
    original = ds.X[fold.val_idx].astype(np.float64).reshape(-1, 8, 8)
    zero = np.isclose(raw, 0, atol=1e-4)
    assert (zero.reshape(len(raw), -1).mean(axis=1) == 0.25).all()
    for sample, mask, before in zip(raw, zero, original, strict=True):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert np.ptp(rows) == 3 and np.ptp(cols) == 3  # one contiguous 4x4 patch
        np.testing.assert_allclose(sample[~mask], before[~mask], atol=1e-4)
    positions = {(int(np.argmax(m.any(axis=1))), int(np.argmax(m.any(axis=0)))) for m in zero}
    assert len(positions) > 10  # placed at random


def test_occlusion_zeros_a_segment_of_a_signal() -> None:
    ds, fold = _data("mnist1d")
    raw = _raw(_make("occlusion:0.2", "mnist1d")[0], ds, fold)
    original = ds.X[fold.val_idx].astype(np.float64)
    changed = ~np.isclose(raw, original, atol=1e-4)
    assert (changed.sum(axis=1) <= 8).all() and changed.sum(axis=1).mean() > 7.5
    for sample, mask in zip(raw, changed, strict=True):
        np.testing.assert_allclose(sample[mask], 0, atol=1e-4)
        if mask.any():
            idx = np.flatnonzero(mask)
            assert idx[-1] - idx[0] < 8


def test_contrast_scales_around_the_sample_mean() -> None:
    ds, fold = _data("sklearn:digits")
    raw = _raw(_make("contrast:0.5")[0], ds, fold)
    original = ds.X[fold.val_idx].astype(np.float64)
    np.testing.assert_allclose(raw.mean(axis=1), original.mean(axis=1), atol=1e-4)
    np.testing.assert_allclose(raw.std(axis=1), 0.5 * original.std(axis=1), atol=1e-4)


# --------------------------------------------------------------------------------------------
# slices


def test_minority_takes_only_the_rarest_classes() -> None:
    _, fold = _data("sklearn:wine")  # 59 / 71 / 48 samples: class 2, then 0, then 1
    X, y = _make("minority", "sklearn:wine")  # 0.3 of 3 classes -> 1 class
    assert set(y) == {2}
    assert len(y) == int((fold.y_val == 2).sum())
    np.testing.assert_array_equal(X, fold.X_val[fold.y_val == 2])
    _, y = _make("minority:0.5", "sklearn:wine")
    assert set(y) == {0, 2}
    _, y = _make("minority:1", "sklearn:wine")
    np.testing.assert_array_equal(y, fold.y_val)


def test_minority_classes_follow_training_frequency() -> None:
    ds, fold = _data("sklearn:digits")
    counts = np.bincount(ds.y[fold.train_idx], minlength=ds.n_classes)
    _, y = _make("minority:0.3")
    taken = sorted(set(y.tolist()))
    others = [c for c in range(ds.n_classes) if c not in taken]
    assert len(taken) == 3
    assert counts[taken].max() <= counts[others].min()


def test_hardest_takes_the_lowest_margins() -> None:
    ds, fold = _data("sklearn:breast_cancer")
    margin = _margin(fold)
    X, y = make_edge_set(
        parse_edge("hardest:0.1"), fold, ds, dense_margin=margin, seed=0, base=Path(".")
    )
    n = math.floor(0.1 * len(fold.y_val))
    assert len(y) == n
    chosen = np.flatnonzero(np.isin(np.arange(len(margin)), np.argsort(margin)[:n]))
    np.testing.assert_array_equal(X, fold.X_val[chosen])
    np.testing.assert_array_equal(y, fold.y_val[chosen])
    assert margin[chosen].max() <= np.delete(margin, chosen).min()


def test_hardest_breaks_ties_by_index_and_takes_at_least_one() -> None:
    ds, fold = _data("sklearn:breast_cancer")
    flat = np.zeros(len(fold.y_val))
    X, _ = make_edge_set(
        EdgeSet("hardest", 0.05), fold, ds, dense_margin=flat, seed=0, base=Path(".")
    )
    np.testing.assert_array_equal(X, fold.X_val[: len(X)])
    X, _ = make_edge_set(
        EdgeSet("hardest", 1e-6), fold, ds, dense_margin=flat, seed=0, base=Path(".")
    )
    assert len(X) == 1
    with pytest.raises(ValueError, match="dense_margin"):
        make_edge_set(EdgeSet("hardest"), fold, ds, dense_margin=flat[:-1], seed=0, base=Path("."))


@pytest.mark.parametrize("ratio", [1.0, 4.0, 10.0])
def test_imbalanced_frequencies_follow_the_ratio(ratio: float) -> None:
    ds, fold = _data("sklearn:digits")
    X, y = _make(f"imbalanced:{ratio}", seed=5)
    counts = np.bincount(y, minlength=ds.n_classes)
    train = np.bincount(ds.y[fold.train_idx], minlength=ds.n_classes)
    ranked = counts[np.argsort(-train, kind="stable")]
    expected = ratio ** (-np.arange(ds.n_classes) / (ds.n_classes - 1))
    np.testing.assert_allclose(ranked / ranked[0], expected, atol=0.02)
    assert abs(len(y) - len(fold.y_val)) <= ds.n_classes
    # every row is a validation row of its class (sampled with replacement)
    rows = {row.tobytes(): label for row, label in zip(fold.X_val, fold.y_val, strict=True)}
    assert all(rows[row.tobytes()] == label for row, label in zip(X, y, strict=True))


def test_imbalanced_counts_two_classes() -> None:
    counts = imbalanced_counts(10.0, np.array([100, 150]), 110)
    assert counts.tolist() == [10, 100]  # the more frequent class gets weight 1


# --------------------------------------------------------------------------------------------
# user files


def test_npz_rows_equal_to_training_rows_scale_like_x_train(tmp_path: Path) -> None:
    ds, fold = _data("sklearn:digits")
    rows = fold.train_idx[:20]
    (tmp_path / "edge").mkdir()
    np.savez(tmp_path / "edge" / "hard.npz", X=ds.X[rows], y=ds.y[rows].astype(np.float64))
    edge = parse_edge("npz:edge/hard.npz")
    assert edge.name == "npz_hard"
    assert check_edge(edge, ds, tmp_path) is None
    X, y = make_edge_set(edge, fold, ds, dense_margin=_margin(fold), seed=0, base=tmp_path)
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X, fold.X_train[:20])
    np.testing.assert_array_equal(y, fold.y_train[:20])


def test_csv_with_header_and_string_labels(tmp_path: Path) -> None:
    ds, fold = _data("sklearn:breast_cancer")
    rows = fold.train_idx[5:15]
    lines = [",".join(f"f{i}" for i in range(ds.n_features)) + ",label"]
    for r in rows:
        values = ",".join(repr(float(v)) for v in ds.X[r])
        lines.append(f"{values},{ds.class_names[ds.y[r]]}")
    (tmp_path / "My Hard-Cases.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    edge = parse_edge("csv:My Hard-Cases.csv")
    assert edge.name == "csv_my_hard_cases"
    X, y = make_edge_set(edge, fold, ds, dense_margin=_margin(fold), seed=0, base=tmp_path)
    np.testing.assert_array_equal(X, fold.X_train[5:15])
    np.testing.assert_array_equal(y, fold.y_train[5:15])


def test_integer_labels_are_class_indices_when_names_are_not_numbers(tmp_path: Path) -> None:
    ds, fold = _data("sklearn:breast_cancer")  # class names: malignant, benign
    np.savez(tmp_path / "a.npz", X=ds.X[:7], y=ds.y[:7])
    _, y = make_edge_set(
        parse_edge("npz:a.npz"), fold, ds, dense_margin=_margin(fold), seed=0, base=tmp_path
    )
    np.testing.assert_array_equal(y, ds.y[:7])


@pytest.mark.parametrize(
    ("X_shape", "labels", "match"),
    [
        ((4, 64), [0, 1, 2, 11], "label '11' is not a class"),
        ((4, 63), [0, 1, 2, 3], "63 features per row"),
        ((4, 64), ["a", "1", "2", "3"], "label 'a'"),
    ],
)
def test_user_file_errors_are_one_line(
    tmp_path: Path, X_shape: tuple[int, int], labels: list, match: str
) -> None:
    ds, fold = _data("sklearn:digits")
    np.savez(tmp_path / "bad.npz", X=np.ones(X_shape), y=np.array(labels))
    edge = parse_edge("npz:bad.npz")
    with pytest.raises(ValueError, match=re.escape(match)) as err:
        make_edge_set(edge, fold, ds, dense_margin=_margin(fold), seed=0, base=tmp_path)
    assert "\n" not in str(err.value)
    problem = check_edge(edge, ds, tmp_path)
    assert problem is not None and match in problem


def test_missing_user_file(tmp_path: Path) -> None:
    ds, fold = _data("sklearn:digits")
    with pytest.raises(ValueError, match="file not found"):
        make_edge_set(
            parse_edge("csv:nope.csv"), fold, ds, dense_margin=_margin(fold), seed=0, base=tmp_path
        )


# --------------------------------------------------------------------------------------------
# parsing, names, checks

VALID_PARAMS = {
    "gaussian_noise": st.floats(0, 10),
    "feature_dropout": st.floats(0, 1),
    "extremes": st.floats(1e-3, 100),
    "scale_drift": st.floats(1e-3, 100),
    "shift_drift": st.floats(-10, 10),
    "shift": st.integers(-7, 7).map(float),
    "blur": st.floats(0, 5),
    "occlusion": st.floats(1e-3, 1),
    "contrast": st.floats(0, 5),
    "minority": st.floats(1e-3, 1),
    "hardest": st.floats(1e-3, 1),
    "imbalanced": st.floats(1, 100),
}
assert set(VALID_PARAMS) == set(BUILTIN_KINDS)


@st.composite
def edge_texts(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from([*BUILTIN_KINDS, *PATH_KINDS]))
    if kind in PATH_KINDS:
        stem = draw(st.text(min_size=1, max_size=12).filter(lambda s: s.strip() and "/" not in s))
        return f"{kind}:dir/{stem.strip()}.{kind}"
    if draw(st.booleans()):
        return kind
    return f"{kind}:{draw(VALID_PARAMS[kind])!r}"


@settings(max_examples=300, deadline=None)
@given(edge_texts())
def test_parse_round_trip_and_names(text: str) -> None:
    edge = parse_edge(text)
    assert NAME_PATTERN.match(edge.name) and NAME_RE.match(edge.name)
    assert parse_edge(edge.text) == edge
    assert parse_edge(edge.text).name == edge.name == parse_edge(text).name
    assert parse_edge(f"  {text} ") == edge


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(BUILTIN_KINDS), st.data())
def test_distinct_params_get_distinct_names(kind: str, data: st.DataObject) -> None:
    a, b = data.draw(VALID_PARAMS[kind]), data.draw(VALID_PARAMS[kind])
    ea, eb = parse_edge(f"{kind}:{a!r}"), parse_edge(f"{kind}:{b!r}")
    assert (ea.name == eb.name) == (a == b)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_fails_in_one_line(text: str) -> None:
    try:
        edge = parse_edge(text)
    except ValueError as err:
        message = str(err)
        assert "\n" not in message and "\r" not in message
        assert "known: gaussian_noise" in message
    else:
        assert NAME_PATTERN.match(edge.name)


def test_names() -> None:
    assert parse_edge("gaussian_noise:0.1").name == "gaussian_noise_0.1"
    assert parse_edge("extremes").name == "extremes"
    assert parse_edge("hardest:0.05").name == "hardest_0.05"
    assert parse_edge("shift:2").name == "shift_2"
    assert parse_edge("shift_drift:-0.5").name == "shift_drift_m0.5"
    assert parse_edge("gaussian_noise:1e-5").name == "gaussian_noise_1em05"
    assert parse_edge("npz:edge/hard.npz") == EdgeSet("npz", None, "edge/hard.npz")
    assert parse_edge("npz:edge/hard.npz").name == "npz_hard"
    assert parse_edge("feature_dropout:0.2") == EdgeSet("feature_dropout", 0.2)
    assert parse_edge("minority").value == 0.3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("bogus", "unknown kind 'bogus'"),
        ("", "unknown kind ''"),
        ("gaussian_noise:-0.1", "sigma must be >= 0"),
        ("gaussian_noise:abc", "'abc' is not a finite number"),
        ("gaussian_noise:", "'' is not a finite number"),
        ("blur:inf", "not a finite number"),
        ("feature_dropout:1.5", "must be in [0, 1]"),
        ("feature_dropout:-0.1", "must be in [0, 1]"),
        ("hardest:0", "must be in (0, 1]"),
        ("minority:1.01", "must be in (0, 1]"),
        ("occlusion:2", "must be in (0, 1]"),
        ("imbalanced:0.5", "ratio must be >= 1"),
        ("extremes:0", "scale must be > 0"),
        ("shift:1.5", "whole number"),
        ("npz:", "needs a file path"),
        ("Gaussian_Noise:0.1", "unknown kind"),
    ],
)
def test_parse_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_edge(text)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"edge set {text!r}: ")
    assert problem in message
    assert "npz:PATH" in message and "imbalanced" in message


@pytest.mark.parametrize("kind", GRID_KINDS)
def test_check_edge_rejects_image_kinds_on_tabular_data(kind: str) -> None:
    ds, fold = _data("sklearn:breast_cancer")
    problem = check_edge(parse_edge(kind), ds)
    assert problem == f"{kind} needs image or signal data (sklearn:breast_cancer is tabular)"
    with pytest.raises(ValueError, match="needs image or signal data"):
        make_edge_set(
            parse_edge(kind), fold, ds, dense_margin=_margin(fold), seed=0, base=Path(".")
        )
    assert check_edge(parse_edge(kind), _data("sklearn:digits")[0]) is None
    assert check_edge(parse_edge(kind), _data("mnist1d")[0]) is None


def test_check_edge_data_dependent_limits() -> None:
    digits, _ = _data("sklearn:digits")
    assert check_edge(parse_edge("shift:7"), digits) is None
    assert "must be below 8" in (check_edge(parse_edge("shift:8"), digits) or "")
    assert check_edge(parse_edge("shift:-39"), _data("mnist1d")[0]) is None
    odd = Dataset(
        "odd", np.zeros((4, 10), np.float32), np.array([0, 1, 0, 1]), ("a", "b"), "image", "x"
    )
    assert "square" in (check_edge(parse_edge("blur"), odd) or "")
    assert "nope" in (check_edge(EdgeSet("nope"), digits) or "")
    assert "gaussian_noise" in (check_edge(EdgeSet("gaussian_noise", -1.0), digits) or "")
    for kind in BUILTIN_KINDS:
        if kind not in GRID_KINDS:
            assert check_edge(parse_edge(kind), _data("sklearn:breast_cancer")[0]) is None
