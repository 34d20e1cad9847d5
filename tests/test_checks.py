"""Property-based and differential checks (harness.checks): healthy and broken models, minimal
examples, determinism, no side effects."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from torch import nn

from harness import checks
from harness.checks import CheckReport, Finding, differential_check, property_checks, run_checks
from harness.models import mlp

D, C = 64, 10


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((360, D)).astype(np.float32)


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    torch.manual_seed(0)
    return mlp(D, C).eval()


def _raised_bias(model: nn.Module, cls: int = 3, by: float = 20.0) -> nn.Module:
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned[-1].bias[cls] += by
    return pruned


class Exp(nn.Module):
    """Overflows (inf) once a feature passes log(float32 max) ~ 88.72."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x).sum(1, keepdim=True) * torch.ones(1, C)


class Scaled(nn.Module):
    """Overflows once |x| > 3.4 in one of the features 2..4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, 2:5] * 1e38, torch.zeros(len(x), C - 3)], dim=1)


class BatchStats(nn.Module):
    """Centres the batch: a row's logits depend on the other rows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x - x.mean(0))


class Noisy(nn.Module):
    """Adds fresh noise on every call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.linear = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + 1e-3 * torch.randn(len(x), C)


def _by_check(findings: tuple[Finding, ...]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def _logits(model: nn.Module, rows: list[list[float]]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor(rows, dtype=torch.float32))


def _assert_well_formed(f: Finding) -> None:
    assert f.check in checks.CHECKS
    assert f.message and "\n" not in f.message
    assert f.input and all(len(row) == D for row in f.input)
    assert all(type(v) is float and float(np.float32(v)) == v for row in f.input for v in row)
    json.dumps(f.to_dict(), allow_nan=False)  # strict JSON, even with non-finite logits


def test_healthy_mlp_passes_all_property_checks(dense: nn.Module, X: np.ndarray) -> None:
    assert property_checks(dense, X, seed=0) == ()


@pytest.mark.parametrize("seed", [0, 1])
def test_overflow_fails_finite_outputs_with_a_minimal_example(X: np.ndarray, seed: int) -> None:
    found = _by_check(property_checks(Exp(), X, seed=seed))
    assert {"finite_outputs", "valid_probabilities"} <= set(found)
    f = found["finite_outputs"]
    _assert_well_formed(f)
    x = np.array(f.input)
    # shrunk: one row, one non-zero feature, the smallest integer that overflows exp
    assert x.shape == (1, D) and np.count_nonzero(x) == 1
    assert x.max() == 89.0
    assert not torch.isfinite(_logits(Exp(), f.input)).all()
    assert torch.isfinite(_logits(Exp(), (x - 1).clip(0).tolist())).all()
    assert f.detail["max_abs_input"] == 89.0 and f.detail["nonzero_features"] == 1
    assert "inf" in f.detail["logits"][0]


def test_overflow_in_a_few_features_shrinks_to_one_of_them(X: np.ndarray) -> None:
    f = _by_check(property_checks(Scaled(), X, seed=0))["finite_outputs"]
    x = np.array(f.input)
    assert x.shape == (1, D)
    (nonzero,) = np.flatnonzero(x)
    assert 2 <= nonzero <= 4 and 3.4 < abs(x[0, nonzero]) <= 4
    assert not torch.isfinite(_logits(Scaled(), f.input)).all()


def test_batch_statistics_fail_batch_invariance(X: np.ndarray) -> None:
    model = BatchStats()
    found = _by_check(property_checks(model, X, seed=0))
    assert set(found) == {"batch_invariance"}
    f = found["batch_invariance"]
    _assert_well_formed(f)
    detail = f.detail
    assert len(f.input) == len(detail["batch_indices"]) == 2  # the smallest batch
    assert detail["batch_indices"][detail["position"]] == detail["index"]
    assert np.array_equal(np.array(f.input, np.float32), X[detail["batch_indices"]])
    alone = _logits(model, X[detail["index"]][None].tolist())[0]
    inside = _logits(model, f.input)[detail["position"]]
    assert (alone - inside).abs().max() > detail["tolerance"]


def test_noise_fails_deterministic(X: np.ndarray) -> None:
    found = _by_check(property_checks(Noisy(), X, seed=0))
    assert "deterministic" in found and "finite_outputs" not in found
    f = found["deterministic"]
    _assert_well_formed(f)
    assert len(f.input) == 1
    assert f.detail["linf"] == 0.0  # shrunk to the unperturbed row
    assert f.detail["logits_first"] != f.detail["logits_second"]


def test_identical_models_never_disagree(dense: nn.Module, X: np.ndarray) -> None:
    rate, found = differential_check(dense, copy.deepcopy(dense), X, seed=0)
    assert rate == 0.0 and found == ()


def test_raised_bias_disagrees_and_the_finding_reproduces(dense: nn.Module, X: np.ndarray) -> None:
    pruned = _raised_bias(dense)
    rate, found = differential_check(dense, pruned, X, seed=0, radius=0.5)
    assert rate > 0.5
    (f,) = found
    _assert_well_formed(f)
    assert f.check == "dense_pruned_disagreement" and len(f.input) == 1
    dense_pred = int(_logits(dense, f.input).argmax(1))
    pruned_pred = int(_logits(pruned, f.input).argmax(1))
    assert dense_pred != pruned_pred == 3
    assert (f.detail["dense_pred"], f.detail["pruned_pred"]) == (dense_pred, pruned_pred)
    perturbation = np.array(f.input[0], np.float32) - X[f.detail["index"]]
    assert f.detail["linf"] == pytest.approx(float(np.abs(perturbation).max()))
    assert f.detail["linf"] <= 0.5


def test_disagreement_needing_a_perturbation_is_found(X: np.ndarray) -> None:
    """Dense predicts ``x0 > 0``, pruned ``x0 > 0.3``; no validation row lies in between, so
    the finding is a row moved into the band by a (small) perturbation."""
    dense = nn.Linear(D, 2)
    with torch.no_grad():
        dense.weight.zero_()
        dense.weight[0, 0] = 1.0
        dense.bias.zero_()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        pruned.bias[0] = -0.3
    rows = X[(X[:, 0] < 0) | (X[:, 0] > 0.3)]
    rate, found = differential_check(dense, pruned, rows, seed=0, radius=0.5)
    assert 0 < rate < 0.5
    (f,) = found
    x0 = f.input[0][0]
    assert 0 < x0 <= 0.3  # in the band: dense says 0, pruned says 1
    assert (f.detail["dense_pred"], f.detail["pruned_pred"]) == (0, 1)
    assert 0 < f.detail["linf"] <= 0.5


def test_run_checks_is_deterministic(dense: nn.Module, X: np.ndarray) -> None:
    pruned = _raised_bias(dense)
    first = run_checks(dense, pruned, X, seed=3)
    assert first == run_checks(dense, pruned, X, seed=3)
    assert first.failures == 0 and len(first.disagreements) == 1
    assert property_checks(BatchStats(), X, seed=3) == property_checks(BatchStats(), X, seed=3)
    assert property_checks(Exp(), X, seed=3) == property_checks(Exp(), X, seed=3)


def test_report_counts_failed_checks_and_serializes(X: np.ndarray) -> None:
    torch.manual_seed(0)
    report = run_checks(mlp(D, C), Exp(), X, seed=0, max_examples=20)
    assert isinstance(report, CheckReport)
    assert report.failures == len(report.findings) >= 2
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["failures"] == report.failures
    assert data["disagreement_rate"] == report.disagreement_rate


def test_models_and_data_are_left_unchanged(dense: nn.Module, X: np.ndarray) -> None:
    pruned = _raised_bias(dense)
    pruned.train()  # the checks evaluate in eval mode and restore the flags
    before = [copy.deepcopy(m.state_dict()) for m in (dense, pruned)]
    rows = X.copy()
    run_checks(dense, pruned, X, seed=0)
    property_checks(BatchStats(), X, seed=0)
    for model, state in zip((dense, pruned), before, strict=True):
        after = model.state_dict()
        assert state.keys() == after.keys()
        assert all(torch.equal(state[k], after[k]) for k in state)
    assert pruned.training and all(m.training for m in pruned.modules())
    assert not dense.training
    assert np.array_equal(X, rows)


def _examples_dir() -> Path:
    from hypothesis.configuration import storage_directory

    where = storage_directory("examples", intent_to_write=False)
    return Path(getattr(where, "path", where))  # a StorageDirectory in recent versions


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.exists() else set()


def test_no_example_database_is_written(
    dense: nn.Module, X: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    examples, before = _examples_dir(), _files(_examples_dir())
    run_checks(dense, _raised_bias(dense), X, seed=0, max_examples=10)
    property_checks(Exp(), X, seed=0, max_examples=10)  # failures and shrinking too
    assert _files(examples) == before
    assert not (tmp_path / ".hypothesis").exists()


_SCRIPT = """
import numpy as np, torch
from torch import nn
from harness.checks import property_checks

class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x).sum(1, keepdim=True) * torch.ones(1, 3)

X = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
assert property_checks(Exp(), X, seed=0, max_examples=10)
"""


def test_a_fresh_process_writes_no_example_database(tmp_path: Path) -> None:
    """Hypothesis fixes its storage directory (``./.hypothesis``) when imported, so only a new
    process in an empty directory shows what a CI run writes there: no example database
    (recent hypothesis versions do cache constants mined from local source files there)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("HYPOTHESIS_STORAGE_DIRECTORY", None)
    subprocess.run([sys.executable, "-c", _SCRIPT], cwd=tmp_path, env=env, check=True)
    storage = tmp_path / ".hypothesis"
    assert not (storage / "examples").exists()
    written = {p.name for p in storage.iterdir()} if storage.exists() else set()
    assert written <= {"constants", ".gitignore"}


def test_findings_reproduce_also_when_shrinking_runs_out_of_budget(X: np.ndarray) -> None:
    """A small ``max_examples`` ends shrinking early: the reported input still fails."""

    class SumOverflow(nn.Module):  # overflows once the whole batch sums past ~3.4e4
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.abs().sum() * 1e34).expand(len(x), C) + x[:, :C]

    found = _by_check(property_checks(SumOverflow(), X, seed=0, max_examples=10))
    for check in ("finite_outputs", "valid_probabilities"):
        f = found[check]
        _assert_well_formed(f)
        assert not torch.isfinite(_logits(SumOverflow(), f.input)).all()
    assert "inf" in found["valid_probabilities"].message


def test_search_budget_bounds_shrinking() -> None:
    calls = 0

    def fails(values: list[int]) -> bool:
        nonlocal calls
        calls += 1
        return sum(values) > 1000

    strategy = st.lists(st.integers(0, 10_000), min_size=20, max_size=40)
    found = checks._search(strategy, fails, seed=0, max_examples=5)
    assert found is not None and sum(found) > 1000
    assert calls <= (1 + checks.SHRINK_CALLS) * 5


@pytest.mark.parametrize("bad", [np.zeros(D), np.zeros((0, D)), np.zeros((3, 0))])
def test_rejects_data_that_is_not_rows(dense: nn.Module, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        run_checks(dense, dense, bad, seed=0)
