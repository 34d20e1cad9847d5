"""Property-based and differential checks of a fold's dense and pruned models.

Each property is a search with :func:`hypothesis.find` for a counterexample; hypothesis shrinks
what it finds to a minimal input, which is reported as a :class:`Finding` (plain lists and
dicts, ready for JSON). The searches are seeded (``random.Random(seed)``, derandomized), never
read or write hypothesis' example database and run under :func:`torch.inference_mode` with the
model in evaluation mode; the model's parameters and train/eval flags are left as they were.

Properties of one model (:func:`property_checks`):

``finite_outputs``
    rows with features in ``[-extreme, extreme]`` (float32) give finite logits;
``valid_probabilities``
    the softmax of those logits lies in ``[0, 1]`` and every row sums to 1 within ``1e-6``;
``batch_invariance``
    a validation row gives the same logits (within ``1e-4 * (1 + max|logit|)``) and the same
    prediction alone and inside a batch of 2 to 32 validation rows;
``deterministic``
    the same input (a validation row plus a small perturbation) twice gives identical logits.

Dense against pruned (:func:`differential_check`): the disagreement rate on random points near
the validation rows, and a minimal (smallest perturbation) input on which the predictions
differ. :func:`run_checks` runs both, once per fold.

Cost is bounded per search: ``max_examples`` generated examples, then at most
``SHRINK_CALLS * max_examples`` calls for shrinking (counted, not timed, so results do not
depend on the machine). Extreme inputs are searched sparse first (zeros but for a few features)
so that a minimal example names the features that matter. The differential search also starts
from the disagreements the random points found: hypothesis rarely hits a small disagreement
region by itself, but shrinks a known one towards its validation row.
"""

from __future__ import annotations

import os
import random
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, Verbosity, find, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisSideeffectWarning, NoSuchExample
from hypothesis.extra.numpy import arrays
from torch import nn

__all__ = [
    "CheckReport",
    "Finding",
    "differential_check",
    "property_checks",
    "run_checks",
]

T = TypeVar("T")

CHECKS = (
    "finite_outputs",
    "valid_probabilities",
    "batch_invariance",
    "deterministic",
    "dense_pruned_disagreement",
)
PROB_TOL = 1e-6  # |row sum of the softmax - 1|
BATCH_RTOL = 1e-4  # batch invariance: |alone - in batch| <= BATCH_RTOL * (1 + max|logit|)
MAX_BATCH = 32  # batch invariance: batches of 2..MAX_BATCH rows
MAX_EXTREME_ROWS = 4  # finite / valid probabilities: 1..MAX_EXTREME_ROWS rows per input
SHRINK_CALLS = 4  # shrinking may call the property 4 * max_examples times
RAY_STEPS = 32  # differential search: known disagreements are shrunk in 1/32 steps
JITTER = 0.1  # deterministic: perturbation of a validation row, entries in [-JITTER, JITTER]

_HEALTH = (
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
)


@dataclass(frozen=True)
class Finding:
    """One violated property, or one dense/pruned disagreement, with its minimal input.

    Attributes
    ----------
    check : str
        ``"finite_outputs"``, ``"valid_probabilities"``, ``"batch_invariance"``,
        ``"deterministic"`` or ``"dense_pruned_disagreement"``.
    message : str
        One line: what failed, on which input.
    input : list of list of float
        The minimal (shrunk) input, one row per sample (float32 values as Python floats).
    detail : dict
        JSON-ready particulars (logits, predictions, sample index, perturbation norm, ...);
        non-finite numbers appear as the strings ``"nan"``, ``"inf"`` and ``"-inf"``.
    """

    check: str
    message: str
    input: list[list[float]]
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"check", "message", "input", "detail"}``."""
        return {
            "check": self.check,
            "message": self.message,
            "input": self.input,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class CheckReport:
    """The checks of one fold.

    Attributes
    ----------
    findings : tuple of Finding
        Property violations of the pruned model, at most one (minimal) example per property.
    disagreement_rate : float
        Fraction of random points near the validation rows on which dense and pruned predict
        different classes.
    disagreements : tuple of Finding
        The minimal disagreeing input found by hypothesis (zero or one finding).
    """

    findings: tuple[Finding, ...]
    disagreement_rate: float
    disagreements: tuple[Finding, ...]

    @property
    def failures(self) -> int:
        """Number of property checks that failed."""
        return len({f.check for f in self.findings})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the report."""
        return {
            "failures": self.failures,
            "findings": [f.to_dict() for f in self.findings],
            "disagreement_rate": self.disagreement_rate,
            "disagreements": [f.to_dict() for f in self.disagreements],
        }


# --------------------------------------------------------------------------- helpers


@contextmanager
def _evaluating(*models: nn.Module) -> Iterator[None]:
    """Evaluation mode and inference mode; every module's ``training`` flag is restored."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        with torch.inference_mode():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of ``model`` for a copy of the float32 batch ``x``, as float64 (call inside
    :func:`_evaluating`)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    out = model(torch.tensor(x, dtype=torch.float32, device=device))
    return np.asarray(out.detach().to(device="cpu", dtype=torch.float64).numpy())


def _settings(max_examples: int) -> settings:
    return settings(
        settings.get_profile("default"),  # not whatever profile the environment loaded
        max_examples=max_examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=_HEALTH,
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
    )


class _OutOfBudget(BaseException):
    """Ends a search whose call budget is spent (a ``BaseException``, so hypothesis does not
    take it for a failure of the property and lets it through)."""


def _search(
    strategy: st.SearchStrategy[T], fails: Callable[[T], bool], *, seed: int, max_examples: int
) -> T | None:
    """The minimal value of ``strategy`` for which ``fails`` holds, or ``None``.

    Hypothesis generates up to ``max_examples`` values; once one fails, shrinking gets at most
    ``SHRINK_CALLS * max_examples`` further calls of ``fails``, after which the smallest
    failing value so far is returned (hypothesis only tries values smaller than its current
    one, so that is the last one that failed). Calls are counted, not timed, so the result is
    the same on every machine.
    """
    last: list[T] = []
    calls = 0
    limit = (1 + SHRINK_CALLS) * max_examples

    def condition(value: T) -> bool:
        nonlocal calls, limit
        calls += 1
        if calls > limit:
            raise _OutOfBudget
        if not fails(value):
            return False
        if not last:
            limit = min(limit, calls + SHRINK_CALLS * max_examples)
        last[:] = [value]
        return True

    try:
        with warnings.catch_warnings(), _private_storage():
            # run-time use, e.g. a conftest that runs a suite while pytest starts up
            warnings.simplefilter("ignore", HypothesisSideeffectWarning)
            return find(
                strategy, condition, settings=_settings(max_examples), random=random.Random(seed)
            )
    except NoSuchExample:
        return None
    except _OutOfBudget:
        return last[0] if last else None


@contextmanager
def _private_storage() -> Iterator[None]:
    """Hypothesis keeps caches (the constants it mines from loaded modules) under
    ``./.hypothesis``; during the harness's searches they go to a folder of the system's
    temporary directory instead, so a gate run writes nothing into the user's working tree.
    The user's own setting (``HYPOTHESIS_STORAGE_DIRECTORY``) is left alone."""
    from hypothesis import configuration

    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        yield
        return
    key = "__hypothesis_home_directory"
    before = vars(configuration).get(key)
    configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "prune-harness-hypothesis")
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(before)


def _f32_bound(value: float) -> float:
    """The largest float32 magnitude that is at most ``|value|`` (hypothesis needs bounds
    that are representable at ``width=32``)."""
    bound = np.float32(abs(value))
    if float(bound) > abs(value):
        bound = np.nextafter(bound, np.float32(0))
    return float(bound)


def _vectors(d: int, bound: float) -> st.SearchStrategy[np.ndarray]:
    """float32 vectors of length ``d`` with entries in ``[-bound, bound]``."""
    b = _f32_bound(bound)
    elements = st.floats(-b, b, allow_nan=False, allow_infinity=False, width=32)
    return arrays(np.float32, d, elements=elements)


def _extreme_inputs(d: int, extreme: float, *, sparse: bool) -> st.SearchStrategy[np.ndarray]:
    """Batches of 1..MAX_EXTREME_ROWS float32 rows with features in ``[-extreme, extreme]``:
    ``sparse`` ones are zero but for a few drawn features, dense ones hold one drawn value
    everywhere but for a few others."""
    b = _f32_bound(extreme)
    elements = st.floats(-b, b, allow_nan=False, allow_infinity=False, width=32)
    fill = st.just(0.0) if sparse else None
    return st.integers(1, MAX_EXTREME_ROWS).flatmap(
        lambda rows: arrays(np.float32, (rows, d), elements=elements, fill=fill)
    )


def _search_extreme(
    fails: Callable[[np.ndarray], bool], d: int, extreme: float, *, seed: int, max_examples: int
) -> np.ndarray | None:
    """Sparse extreme batches first, so that a minimal example keeps only the features that
    matter non-zero; dense ones (``max_examples // 2``) only when no sparse one fails."""
    found = _search(
        _extreme_inputs(d, extreme, sparse=True), fails, seed=seed, max_examples=max_examples
    )
    if found is None and max_examples > 1:
        found = _search(
            _extreme_inputs(d, extreme, sparse=False),
            fails,
            seed=seed,
            max_examples=max_examples // 2,
        )
    return found


def _jsonable(values: np.ndarray) -> list[Any]:
    """Nested lists of floats; non-finite values as ``"nan"``, ``"inf"``, ``"-inf"`` (JSON and
    ``==`` both work on them)."""

    def one(v: float) -> float | str:
        return float(v) if np.isfinite(v) else str(float(v))

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        return [one(float(arr))]
    if arr.ndim == 1:
        return [one(v) for v in arr.tolist()]
    return [_jsonable(row) for row in arr]


def _rows(x: np.ndarray) -> list[list[float]]:
    """A float32 batch as plain lists, one row per sample."""
    return [[float(v) for v in row] for row in np.asarray(x, dtype=np.float32).reshape(len(x), -1)]


def _validated(X: np.ndarray) -> np.ndarray:
    arr = np.array(X, dtype=np.float32)  # a copy: a model cannot alter the caller's rows
    if arr.ndim != 2 or len(arr) == 0 or arr.shape[1] == 0:
        raise ValueError(f"X must be a non-empty (N, d) array, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- properties


def _check_finite(model: nn.Module, d: int, extreme: float, seed: int, n: int) -> Finding | None:
    seen: dict[str, np.ndarray] = {}  # what the last failing call saw: the returned example

    def fails(x: np.ndarray) -> bool:
        logits = _forward(model, x)
        if np.isfinite(logits).all():
            return False
        seen["logits"] = logits
        return True

    x = _search_extreme(fails, d, extreme, seed=seed, max_examples=n)
    if x is None:
        return None
    logits = seen["logits"]
    bad = ~np.isfinite(logits)
    row, col = (int(v) for v in np.argwhere(bad)[0])
    kinds = sorted({str(float(v)) for v in logits[bad]})
    return Finding(
        "finite_outputs",
        f"non-finite logits ({'/'.join(kinds)}, {int(bad.sum())} of {logits.size}, first at "
        f"row {row} class {col}) on a {x.shape[0]}x{d} input with max |x| = "
        f"{float(np.abs(x).max()):.6g}",
        _rows(x),
        {
            "logits": _jsonable(logits),
            "nonfinite": int(bad.sum()),
            "first": [row, col],
            "max_abs_input": float(np.abs(x).max()),
            "nonzero_features": int(np.count_nonzero(x)),
        },
    )


def _prob_error(logits: np.ndarray) -> float:
    """How far the softmax of ``logits`` is from a valid distribution (0 when valid)."""
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    if not np.isfinite(probs).all():
        return float("inf")
    outside = max(float(-probs.min()), float(probs.max() - 1), 0.0)
    return max(outside, float(np.abs(probs.sum(1) - 1).max()))


def _check_probabilities(
    model: nn.Module, d: int, extreme: float, seed: int, n: int
) -> Finding | None:
    seen: dict[str, np.ndarray] = {}

    def fails(x: np.ndarray) -> bool:
        logits = _forward(model, x)
        if _prob_error(logits) <= PROB_TOL:
            return False
        seen["logits"] = logits
        return True

    x = _search_extreme(fails, d, extreme, seed=seed + 1, max_examples=n)
    if x is None:
        return None
    logits = seen["logits"]
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    error = _prob_error(logits)
    return Finding(
        "valid_probabilities",
        f"softmax is not a distribution (error {error:.3g} > {PROB_TOL:g}) on a "
        f"{x.shape[0]}x{d} input with max |x| = {float(np.abs(x).max()):.6g}",
        _rows(x),
        {
            "logits": _jsonable(logits),
            "probabilities": _jsonable(probs),
            "row_sums": _jsonable(probs.sum(1)),
            "error": error if np.isfinite(error) else "inf",
        },
    )


def _batch_case(n: int) -> st.SearchStrategy[tuple[int, list[int], int]]:
    """(row index, the other rows of the batch, position of the row in the batch)."""
    return st.tuples(
        st.integers(0, n - 1),
        st.lists(st.integers(0, n - 1), min_size=1, max_size=MAX_BATCH - 1),
        st.integers(0, MAX_BATCH - 1),
    )


def _batch_of(case: tuple[int, list[int], int]) -> tuple[list[int], int]:
    index, others, pos = case
    pos %= len(others) + 1
    return [*others[:pos], index, *others[pos:]], pos


def _check_batch(model: nn.Module, X: np.ndarray, seed: int, n: int) -> Finding | None:
    def compare(case: tuple[int, list[int], int]) -> tuple[np.ndarray, np.ndarray, float]:
        batch, pos = _batch_of(case)
        alone = _forward(model, X[case[0] : case[0] + 1])[0]
        inside = _forward(model, X[batch])[pos]
        return alone, inside, BATCH_RTOL * (1 + float(np.abs(alone).max()))

    seen: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}

    def fails(case: tuple[int, list[int], int]) -> bool:
        alone, inside, tol = compared = compare(case)
        if not (np.isfinite(alone).all() and np.isfinite(inside).all()):
            failed = not np.array_equal(alone, inside, equal_nan=True)
        else:
            failed = np.abs(alone - inside).max() > tol or alone.argmax() != inside.argmax()
        if failed:
            seen["compared"] = compared
        return bool(failed)

    case = _search(_batch_case(len(X)), fails, seed=seed + 2, max_examples=n)
    if case is None:
        return None
    batch, pos = _batch_of(case)
    alone, inside, tol = seen["compared"]
    diff = float(np.abs(alone - inside).max())
    return Finding(
        "batch_invariance",
        f"validation row {case[0]} alone and at position {pos} of a batch of {len(batch)} "
        f"rows {batch} gives different logits (max |diff| {diff:.3g}, tolerance {tol:.3g}; "
        f"prediction {int(alone.argmax())} vs {int(inside.argmax())})",
        _rows(X[batch]),
        {
            "index": int(case[0]),
            "position": pos,
            "batch_indices": [int(i) for i in batch],
            "logits_alone": _jsonable(alone),
            "logits_in_batch": _jsonable(inside),
            "max_abs_diff": diff if np.isfinite(diff) else str(diff),
            "tolerance": tol,
            "pred_alone": int(alone.argmax()),
            "pred_in_batch": int(inside.argmax()),
        },
    )


def _check_deterministic(model: nn.Module, X: np.ndarray, seed: int, n: int) -> Finding | None:
    d = X.shape[1]
    strategy = st.tuples(st.integers(0, len(X) - 1), _vectors(d, JITTER))

    def point(case: tuple[int, np.ndarray]) -> np.ndarray:
        return (X[case[0]] + case[1])[None]

    seen: dict[str, np.ndarray] = {}

    def fails(case: tuple[int, np.ndarray]) -> bool:
        x = point(case)
        first, second = _forward(model, x)[0], _forward(model, x)[0]
        if np.array_equal(first, second, equal_nan=True):
            return False
        seen["first"], seen["second"] = first, second
        return True

    case = _search(strategy, fails, seed=seed + 3, max_examples=n)
    if case is None:
        return None
    x = point(case)
    first, second = seen["first"], seen["second"]
    diff = np.abs(first - second)
    max_diff = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan")
    linf = float(np.abs(x[0] - X[case[0]]).max())
    return Finding(
        "deterministic",
        f"validation row {case[0]} + perturbation (max |delta| {linf:.3g}) gives different "
        f"logits on two identical calls (max |diff| {max_diff:.3g})",
        _rows(x),
        {
            "index": int(case[0]),
            "linf": linf,
            "logits_first": _jsonable(first),
            "logits_second": _jsonable(second),
            "max_abs_diff": max_diff if np.isfinite(max_diff) else str(max_diff),
        },
    )


def property_checks(
    model: nn.Module,
    X: np.ndarray,
    *,
    seed: int,
    max_examples: int = 40,
    extreme: float = 1e4,
) -> tuple[Finding, ...]:
    """Search for violations of the four properties of ``model``.

    Parameters
    ----------
    model : nn.Module
        Maps a float32 ``(N, d)`` batch to logits ``(N, C)``; not modified (its train/eval
        flags are restored).
    X : np.ndarray
        Validation rows ``(N, d)`` (scaled like the training data); batch invariance and
        determinism are checked on and near these rows.
    seed : int
        Seeds every search; the same seed gives the same findings.
    max_examples : int, default 40
        Examples tried per property before it counts as holding.
    extreme : float, default 1e4
        Feature bound of the inputs for ``finite_outputs`` and ``valid_probabilities``.

    Returns
    -------
    tuple of Finding
        At most one minimal counterexample per violated property, in the order
        ``finite_outputs``, ``valid_probabilities``, ``batch_invariance``, ``deterministic``.

    Raises
    ------
    ValueError
        ``X`` is not a non-empty 2-D array. Exceptions raised by the model propagate.
    """
    X = _validated(X)
    d = X.shape[1]
    found: list[Finding | None] = []
    with _evaluating(model):
        found.append(_check_finite(model, d, extreme, seed, max_examples))
        found.append(_check_probabilities(model, d, extreme, seed, max_examples))
        found.append(_check_batch(model, X, seed, max_examples))
        found.append(_check_deterministic(model, X, seed, max_examples))
    return tuple(f for f in found if f is not None)


# --------------------------------------------------------------------------- differential


def _rays(known: list[tuple[int, np.ndarray]]) -> st.SearchStrategy[tuple[int, np.ndarray]]:
    """``(row, s * delta)`` for a known disagreement ``(row, delta)`` and
    ``s = min(1, step / RAY_STEPS)``: half the draws give the known point itself, and shrinking
    the integer step moves towards the row in steps of ``1 / RAY_STEPS`` (and shrinking the
    choice moves to known points with smaller perturbations)."""

    def point(choice: tuple[int, int]) -> tuple[int, np.ndarray]:
        row, delta = known[choice[0]]
        return row, np.float32(min(1.0, choice[1] / RAY_STEPS)) * delta

    return st.tuples(st.integers(0, len(known) - 1), st.integers(0, 2 * RAY_STEPS)).map(point)


def differential_check(
    dense: nn.Module,
    pruned: nn.Module,
    X: np.ndarray,
    *,
    seed: int,
    radius: float = 0.5,
    samples: int = 256,
    max_examples: int = 40,
) -> tuple[float, tuple[Finding, ...]]:
    """Compare the predictions of ``dense`` and ``pruned`` near the validation rows.

    Parameters
    ----------
    dense, pruned : nn.Module
        The two models (not modified).
    X : np.ndarray
        Validation rows ``(N, d)``.
    seed : int
        Seeds the random points (``numpy.random.default_rng(seed)``) and the search.
    radius : float, default 0.5
        Perturbations have entries in ``[-radius, radius]``.
    samples : int, default 256
        Random points ``X[i] + delta`` for the disagreement rate (one batched forward each).
    max_examples : int, default 40
        Examples the hypothesis search tries before it gives up.

    Returns
    -------
    rate : float
        Fraction of the random points where the argmax of the two models differs.
    disagreements : tuple of Finding
        Empty, or one ``"dense_pruned_disagreement"`` finding: the shrunk (smallest
        perturbation) input where the predictions differ, with detail ``index``,
        ``dense_pred``, ``pruned_pred`` and ``linf`` (max |delta|).

    Notes
    -----
    The search draws a row index and a perturbation with entries in ``[-radius, radius]``, and
    also the known disagreements (validation rows the models disagree on, disagreeing random
    points) scaled by ``s`` in ``[0, 1]``, which shrinking pulls towards the row. So a finding
    exists whenever the models disagree on a validation row or a random point; elsewhere it
    depends on what the ``max_examples`` draws hit.
    """
    X = _validated(X)
    n, d = X.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=samples)
    delta = rng.uniform(-radius, radius, size=(samples, d)).astype(np.float32)

    def preds(x: np.ndarray) -> tuple[int, int]:
        return int(_forward(dense, x)[0].argmax()), int(_forward(pruned, x)[0].argmax())

    seen: dict[str, tuple[int, int]] = {}

    def fails(case: tuple[int, np.ndarray]) -> bool:
        a, b = preds((X[case[0]] + case[1])[None])
        if a == b:
            return False
        seen["preds"] = a, b
        return True

    with _evaluating(dense, pruned):
        rate, differ = 0.0, np.zeros(samples, dtype=bool)
        if samples > 0:
            points = X[idx] + delta
            differ = _forward(dense, points).argmax(1) != _forward(pruned, points).argmax(1)
            rate = float(differ.mean())
        # Known disagreements seed the search: validation rows the models already disagree
        # on (direction 0), then the disagreeing random points, smallest perturbation first.
        on_rows = np.flatnonzero(_forward(dense, X).argmax(1) != _forward(pruned, X).argmax(1))
        near = np.flatnonzero(differ)
        near = near[np.argsort(np.abs(delta[near]).max(1), kind="stable")]
        known = [(int(i), np.zeros(d, np.float32)) for i in on_rows]
        known += [(int(idx[k]), delta[k]) for k in near]
        free = st.tuples(st.integers(0, n - 1), _vectors(d, radius))
        strategy = st.one_of(_rays(known), free) if known else free
        case = _search(strategy, fails, seed=seed + 4, max_examples=max_examples)
        if case is None:
            return rate, ()
    x = (X[case[0]] + case[1])[None]
    dense_pred, pruned_pred = seen["preds"]
    linf = float(np.abs(x[0] - X[case[0]]).max())
    finding = Finding(
        "dense_pruned_disagreement",
        f"dense predicts {dense_pred} and pruned {pruned_pred} on validation row {case[0]} + "
        f"perturbation with max |delta| = {linf:.6g}",
        _rows(x),
        {"index": int(case[0]), "dense_pred": dense_pred, "pruned_pred": pruned_pred, "linf": linf},
    )
    return rate, (finding,)


def run_checks(
    dense: nn.Module,
    pruned: nn.Module,
    X: np.ndarray,
    *,
    seed: int,
    max_examples: int = 40,
    radius: float = 0.5,
    samples: int = 256,
) -> CheckReport:
    """Property checks of ``pruned`` and the dense/pruned differential check for one fold.

    Parameters
    ----------
    dense, pruned : nn.Module
        The fold's models (not modified).
    X : np.ndarray
        The fold's scaled validation rows ``(N, d)``.
    seed : int
        Seeds every search and the random points; the same seed gives an equal report.
    max_examples : int, default 40
        Examples per hypothesis search.
    radius : float, default 0.5
        Perturbation bound of the differential check.
    samples : int, default 256
        Random points for the disagreement rate.

    Returns
    -------
    CheckReport
        Findings, disagreement rate and the minimal disagreement (if any).
    """
    findings = property_checks(pruned, X, seed=seed, max_examples=max_examples)
    rate, disagreements = differential_check(
        dense, pruned, X, seed=seed, radius=radius, samples=samples, max_examples=max_examples
    )
    return CheckReport(findings, rate, disagreements)
