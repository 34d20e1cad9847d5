"""Property-based and differential checks (harness.checks): healthy and broken models, minimal
examples, determinism, no side effects."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness import checks, inputs
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


# --------------------------------------------------------------------------- inputs of any kind
#
# Image-shaped floats (N, 1, 8, 8) with a Conv2d model, int64 token ids (N, 12) with an
# embedding model taking a plain tensor, and named inputs {"input_ids", "attention_mask"} passed
# as keyword arguments. Each model kind has a healthy variant and one broken per property.

V, L, NC, EX = 20, 12, 3, 15  # vocabulary, sequence length, classes, max_examples


def _images(n: int = 40) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _tokens(n: int = 40, avoid: int | None = None) -> np.ndarray:
    ids = np.random.default_rng(2).integers(0, V, size=(n, L))
    if avoid is not None:
        ids[ids == avoid] = (avoid + 1) % V
    return ids.astype(np.int64)


def _named(n: int = 40, avoid: int | None = None) -> dict[str, np.ndarray]:
    lengths = np.random.default_rng(3).integers(1, L + 1, size=n)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int64)  # right padding
    return {"input_ids": _tokens(n, avoid), "attention_mask": mask}


class Conv(nn.Module):
    """A Conv2d classifier of 1x8x8 images; ``kind`` breaks it (see :class:`Embed`)."""

    def __init__(self, kind: str = "healthy") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, NC)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
        h = torch.relu(self.conv(x)).flatten(1)
        if self.kind == "overflow":
            return self.head(h) + torch.exp(x.flatten(1)).sum(1, keepdim=True)
        return _broken(self.kind, self.head, h)


def _broken(kind: str, head: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``batch``: normalizes over the batch; ``noisy``: fresh noise on every call."""
    if kind == "batch":
        h = h - h.mean(0)
    out = head(h)
    return out + 1e-3 * torch.randn_like(out) if kind == "noisy" else out


class Embed(nn.Module):
    """Mean of token embeddings, then linear; ``kind="nan"`` sets the embedding row of the
    largest id to NaN (as an untrained, corrupted row would be)."""

    def __init__(self, kind: str = "healthy") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.embed = nn.Embedding(V, 8)
        self.head = nn.Linear(8, NC)
        if kind == "nan":
            with torch.no_grad():
                self.embed.weight[V - 1] = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.int64 and x.shape[1:] == (L,)
        return _broken(self.kind, self.head, self.embed(x).mean(1))


class NamedEmbed(Embed):
    """:class:`Embed` over the unmasked tokens, called as ``model(input_ids=...,
    attention_mask=...)``; returns a Hugging Face style output with ``.logits``."""

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> Any:
        h = self.embed(input_ids)
        if attention_mask is not None:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            h = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        logits = _broken(self.kind, self.head, h.mean(1))
        return SimpleNamespace(logits=logits)


KINDS = {
    "image": (Conv, _images),
    "tokens": (Embed, _tokens),
    "named": (NamedEmbed, _named),
}


def _replay(model: nn.Module, f: Finding) -> torch.Tensor:
    """The logits of a finding's recorded input, restored to the samples' shape."""
    shape = f.detail.get("sample_shape")
    with torch.inference_mode():
        if isinstance(f.input, dict):
            assert isinstance(shape, dict)
            batch = {k: torch.tensor(v).reshape(-1, *shape[k]) for k, v in f.input.items()}
            return inputs.forward(model, batch)
        t = torch.tensor(f.input)
        return inputs.forward(model, t.reshape(-1, *shape) if shape else t)


def _json_ok(f: Finding) -> None:
    assert f.check in checks.CHECKS and f.message and "\n" not in f.message
    json.dumps(f.to_dict(), allow_nan=False)


@pytest.mark.parametrize("kind", list(KINDS))
def test_any_inputs_healthy_model_passes(kind: str) -> None:
    model, data = KINDS[kind]
    assert property_checks(model(), data(), seed=0, max_examples=EX) == ()


def test_image_overflow_is_found_and_replays() -> None:
    found = _by_check(property_checks(Conv("overflow"), _images(), seed=0, max_examples=EX))
    assert {"finite_outputs", "valid_probabilities"} <= set(found)
    f = found["finite_outputs"]
    _json_ok(f)
    assert f.detail["sample_shape"] == [1, 8, 8]
    assert isinstance(f.input, list) and all(len(row) == 64 for row in f.input)
    assert not torch.isfinite(_replay(Conv("overflow"), f)).all()
    x = np.array(f.input)
    assert np.count_nonzero(x) == 1 and x.max() == 89.0  # shrunk as for flat rows


@pytest.mark.parametrize("kind", ["tokens", "named"])
def test_nan_embedding_row_of_the_largest_id_is_found(kind: str) -> None:
    model, data = KINDS[kind]
    found = _by_check(property_checks(model("nan"), data(), seed=0, max_examples=EX))
    assert {"finite_outputs", "valid_probabilities"} <= set(found)
    f = found["finite_outputs"]
    _json_ok(f)
    assert not torch.isfinite(_replay(model("nan"), f)).all()
    ids = np.array(f.input["input_ids"] if isinstance(f.input, dict) else f.input)
    assert ids.shape[1:] == (L,) and ids.dtype.kind == "i"
    assert (ids == V - 1).any() and f.detail["max_id"] == V - 1
    assert np.count_nonzero(ids) == 1  # shrunk: the one id that matters, zeros elsewhere
    if kind == "named":
        assert f.detail["sample_shape"] == {"input_ids": [L], "attention_mask": [L]}
    else:
        assert "sample_shape" not in f.detail


@pytest.mark.parametrize("kind", list(KINDS))
def test_batch_statistics_fail_batch_invariance_for_any_inputs(kind: str) -> None:
    model, data = KINDS[kind]
    X = data()
    found = _by_check(property_checks(model("batch"), X, seed=0, max_examples=EX))
    assert set(found) == {"batch_invariance"}
    f = found["batch_invariance"]
    _json_ok(f)
    assert len(f.detail["batch_indices"]) == 2
    assert inputs.count(X) == 40
    expected = inputs.take(X, f.detail["batch_indices"])
    if isinstance(f.input, dict):
        assert all(np.array_equal(np.array(f.input[k]), expected[k]) for k in expected)
    else:
        assert np.array_equal(np.array(f.input, expected.dtype).reshape(expected.shape), expected)


@pytest.mark.parametrize("kind", list(KINDS))
def test_noise_fails_deterministic_for_any_inputs(kind: str) -> None:
    model, data = KINDS[kind]
    found = _by_check(property_checks(model("noisy"), data(), seed=0, max_examples=EX))
    assert "deterministic" in found and "finite_outputs" not in found
    f = found["deterministic"]
    _json_ok(f)
    if kind == "image":
        assert f.detail["linf"] == 0.0
    else:  # shrunk to the validation row itself: no substituted token
        assert f.detail["substituted"] == 0 and "0 of 12 tokens" in f.message


@pytest.mark.parametrize("kind", list(KINDS))
def test_identical_models_never_disagree_for_any_inputs(kind: str) -> None:
    model, data = KINDS[kind]
    rate, found = differential_check(model(), model(), data(), seed=0, max_examples=EX)
    assert rate == 0.0 and found == ()


def test_image_disagreement_needing_a_perturbation_is_found() -> None:
    """Dense predicts class 0 when pixel (0, 0) >= 0, pruned when it is >= 0.3."""
    dense = nn.Sequential(nn.Conv2d(1, 2, 8), nn.Flatten())
    with torch.no_grad():
        dense[0].weight.zero_()
        dense[0].weight[0, 0, 0, 0] = 1.0
        dense[0].bias.zero_()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        pruned[0].bias[0] = -0.3
    X = _images(80)
    X = X[(X[:, 0, 0, 0] < 0) | (X[:, 0, 0, 0] > 0.3)]
    rate, found = differential_check(dense, pruned, X, seed=0, radius=0.5, max_examples=EX)
    assert 0 < rate < 0.5
    (f,) = found
    _json_ok(f)
    assert 0 <= f.input[0][0] < 0.3 and 0 < f.detail["linf"] <= 0.5
    assert (f.detail["dense_pred"], f.detail["pruned_pred"]) == (0, 1)
    assert _replay(dense, f).argmax(1).tolist() == [0]
    assert _replay(pruned, f).argmax(1).tolist() == [1]


@pytest.mark.parametrize("kind", ["tokens", "named"])
def test_token_disagreement_needing_a_substitution_is_found(kind: str) -> None:
    """Pruned predicts class 0 whenever token 7 is present (unmasked); no validation row holds
    it, so the finding substitutes it into a row, at an unmasked position."""
    token = 7
    model, data = KINDS[kind]
    dense = model()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        pruned.embed.weight[token] = 1e3 * (pruned.head.weight[0] - pruned.head.weight[1:].mean(0))
    X = data(avoid=token)
    rate, found = differential_check(dense, pruned, X, seed=0, vocab=V, max_examples=EX)
    assert 0 < rate < 0.5
    (f,) = found
    _json_ok(f)
    detail = f.detail
    assert detail["pruned_pred"] == 0 != detail["dense_pred"]
    assert (
        1 <= detail["substituted"] <= round(0.5 * L)
        and len(detail["positions"]) == (detail["substituted"])
    )
    ids = np.array(f.input["input_ids"] if isinstance(f.input, dict) else f.input)[0]
    assert token in ids[detail["positions"]]
    if isinstance(X, dict):
        assert X["attention_mask"][detail["index"]][detail["positions"]].all()  # unmasked ones
        assert f.input["attention_mask"] == [X["attention_mask"][detail["index"]].tolist()]
    assert _replay(pruned, f).argmax(1).tolist() == [0]
    assert _replay(dense, f).argmax(1).tolist() == [detail["dense_pred"]]


class Spy(nn.Module):
    """Records every batch it is called with; logits from the ids, the mask and the floats."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V + 5, 4)
        self.head = nn.Linear(4, NC)
        self.seen: list[dict[str, np.ndarray]] = []

    def forward(self, input_ids: torch.Tensor, **rest: torch.Tensor) -> torch.Tensor:
        self.seen.append(
            {"input_ids": input_ids.numpy().copy()} | {k: v.numpy().copy() for k, v in rest.items()}
        )
        h = self.embed(input_ids).mean(1)
        if "extra" in rest:
            h = h + rest["extra"].clamp(-1, 1).mean(1, keepdim=True)
        return self.head(h)


@pytest.mark.parametrize("vocab", [None, V + 5])
def test_generated_ids_are_in_range_and_masks_never_all_zero(vocab: int | None) -> None:
    """Every batch any check feeds a model: ids in [0, vocab), masks with at least one one,
    other int fields as in validation rows, float fields perturbed or extreme, not NaN."""
    rng = np.random.default_rng(4)
    X = _named(30) | {
        "token_type_ids": rng.integers(0, 2, size=(30, L)),
        "extra": rng.standard_normal((30, 3)).astype(np.float32),
    }
    dense, pruned = Spy(), Spy()
    with torch.no_grad():
        pruned.head.bias[0] += 0.5
    property_checks(dense, X, seed=0, max_examples=EX, vocab=vocab)
    differential_check(dense, pruned, X, seed=0, max_examples=EX, vocab=vocab, samples=64)
    top = (vocab or V) - 1
    batches = dense.seen + pruned.seen
    assert len(batches) > 50
    ids = np.concatenate([b["input_ids"] for b in batches])
    assert ids.min() >= 0 and ids.max() == top  # the largest id is tried, never more
    masks = np.concatenate([b["attention_mask"] for b in batches])
    assert set(np.unique(masks)) <= {0, 1} and masks.any(1).all()
    assert (masks.sum(1) == 1).any() and (masks.sum(1) == L).any()
    types = {tuple(r) for r in X["token_type_ids"]}
    assert all(tuple(r) in types for b in batches for r in b["token_type_ids"])
    extra = np.concatenate([b["extra"] for b in batches])
    assert np.isfinite(extra).all() and np.abs(extra).max() > 10  # extremes were tried


@given(data=st.data())
@settings(max_examples=60, deadline=None, database=None)
def test_strategies_keep_ids_in_range_and_masks_non_zero(data: st.DataObject) -> None:
    """Hypothesis against the generators themselves: extreme batches and perturbed rows."""
    vocab = data.draw(st.integers(V, V + 3))
    X = _named(10)
    X["attention_mask"][0] = 0  # a row without unmasked tokens: substitutions go anywhere
    lay, X = checks._layout(X, vocab)
    sparse = data.draw(st.booleans())
    x = data.draw(checks._extreme_batches(lay, X, 1e4, sparse=sparse))
    assert 1 <= inputs.count(x) <= checks.MAX_EXTREME_ROWS
    assert x["input_ids"].min() >= 0 and x["input_ids"].max() < vocab
    assert x["attention_mask"].any(1).all()
    mask = x["attention_mask"]  # a prefix of ones
    assert (np.diff(mask, axis=1) <= 0).all() and mask[:, 0].all()
    radius = data.draw(st.sampled_from([0.0, 0.1, 0.5, 2.0]))
    row = data.draw(st.integers(0, 9))
    y = checks._apply(lay, X, row, data.draw(checks._perturbations(lay, radius)))
    assert y["input_ids"].min() >= 0 and y["input_ids"].max() < vocab
    assert np.array_equal(y["attention_mask"][0], X["attention_mask"][row])
    changed = np.flatnonzero(y["input_ids"][0] != X["input_ids"][row])
    assert len(changed) <= max(1, round(radius * L))
    if row:
        assert X["attention_mask"][row][changed].all()


def test_vocab_must_exceed_the_largest_id() -> None:
    with pytest.raises(ValueError, match="vocab"):
        property_checks(Embed(), _tokens(), seed=0, vocab=V - 1)
    with pytest.raises(ValueError, match="same N"):
        uneven = {"input_ids": _tokens(4), "attention_mask": np.ones((3, L))}
        property_checks(NamedEmbed(), uneven, seed=0)
