"""SparseGPT (harness.pruning.sparsegpt) pinned to OBS's closed form for one removal, to its own
error bookkeeping, to exact mask counts, and against magnitude's reconstruction error.

Conventions as harness.pruning.obs: ``E = ||(W - W_hat) X||^2 / n`` per row, ``H = 2 X X^T / n``
(+ dampening), one OBS removal of ``w_q`` updates ``w <- w - (w_q / [H^-1]_qq) H^-1[:, q]``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.pruning import PruneContext, create, prunable_modules
from harness.pruning.base import PruneError, nm_keep_mask, row_keep_mask
from harness.pruning.obs import (
    InputStats,
    collect_inputs,
    hessian,
    input_columns,
    obs_refit,
    reconstruction_error,
)
from harness.pruning.sparsegpt import inverse_factor, sparsegpt_prune
from harness.schema import SpecError
from harness.spec import PruneSpec

torch.set_num_threads(1)


def _problem(seed: int, rows: int, d: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(rows, d)`` and correlated inputs ``(n, d)`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, d, generator=g, dtype=torch.float64)
    mix = torch.eye(d, dtype=torch.float64) + 0.7 * torch.randn(
        d, d, generator=g, dtype=torch.float64
    )
    X = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    return W, X


def _stats(X: torch.Tensor) -> InputStats:
    return InputStats(X.T @ X, X.shape[0])


def _only(W: torch.Tensor, row: int, col: int) -> torch.Tensor:
    given = torch.zeros_like(W, dtype=torch.bool)
    given[row, col] = True
    return given


# --------------------------------------------------------------------------------------------
# (b) one removal is OBS's update


def test_the_inverse_factor_is_the_upper_cholesky_factor_of_the_inverse() -> None:
    _, X = _problem(0, 1, 6, 30)
    H = hessian(_stats(X), 0.01)
    U = inverse_factor(H)
    torch.testing.assert_close(U, torch.triu(U))
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(H))
    for q in range(6):  # [U]_qq^2 is the OBS diagonal once the columns before q are fixed
        torch.testing.assert_close(U[q, q] ** 2, torch.linalg.inv(H[q:, q:])[0, 0])


def test_pruning_the_first_column_of_a_row_is_exactly_the_obs_update() -> None:
    W, X = _problem(1, 3, 7, 40)
    H = hessian(_stats(X), 0.01)
    Hinv = torch.linalg.inv(H)
    for row in range(3):
        sweep = sparsegpt_prune(W, H, given=_only(W, row, 0), blocksize=3)
        w = W[row]
        closed = w - (w[0] / Hinv[0, 0]) * Hinv[:, 0]  # OBS: w - w_q / [H^-1]_qq H^-1[:, q]
        torch.testing.assert_close(sweep.weights[row], closed, rtol=0, atol=1e-12)
        assert float(sweep.weights[row, 0]) == 0.0
        keep = ~_only(W, row, 0)
        torch.testing.assert_close(sweep.weights, obs_refit(W, H, keep), rtol=0, atol=1e-12)
        others = [i for i in range(3) if i != row]
        torch.testing.assert_close(sweep.weights[others], W[others], rtol=0, atol=1e-12)
        # the error it books is OBS's 1/2 w_q^2 / [H^-1]_qq
        assert float(sweep.losses[row]) == pytest.approx(float(0.5 * w[0] ** 2 / Hinv[0, 0]))


@pytest.mark.parametrize("q", [1, 3, 6])
def test_a_later_column_is_the_obs_update_with_the_earlier_columns_fixed(q: int) -> None:
    W, X = _problem(2, 2, 7, 40)
    H = hessian(_stats(X), 0.01)
    sweep = sparsegpt_prune(W, H, given=_only(W, 0, q), blocksize=2)
    w = W[0]
    sub = torch.linalg.inv(H[q:, q:])  # the OBS inverse over the columns not yet fixed
    expected = w.clone()
    expected[q:] = w[q:] - (w[q] / sub[0, 0]) * sub[:, 0]
    torch.testing.assert_close(sweep.weights[0], expected, rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 4),
    d=st.integers(1, 12),
    blocksize=st.integers(1, 13),
    rate=st.floats(0.0, 0.9),
)
def test_property_lazy_blocks_change_nothing_and_the_booked_error_is_the_real_one(
    seed: int, rows: int, d: int, blocksize: int, rate: float
) -> None:
    W, X = _problem(seed, rows, d, 3 * d)
    H = hessian(_stats(X), 0.01)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(rows, d, generator=g) < rate
    one = sparsegpt_prune(W, H, given=chosen, blocksize=1)
    blocked = sparsegpt_prune(W, H, given=chosen, blocksize=blocksize)
    torch.testing.assert_close(blocked.weights, one.weights, rtol=1e-9, atol=1e-9)
    assert torch.equal(blocked.removed, chosen)
    assert bool((blocked.weights[chosen] == 0).all())
    D = W - blocked.weights
    real = 0.5 * torch.einsum("ri,ij,rj->r", D, H, D)  # 1/2 dW H dW^T, the damped objective
    torch.testing.assert_close(blocked.losses, real, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------------------------
# (c) exact counts


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 5),
    d=st.integers(1, 20),
    blocksize=st.integers(1, 24),
    sparsity=st.floats(0.0, 1.0),
)
def test_property_every_row_loses_exactly_the_target_count(
    seed: int, rows: int, d: int, blocksize: int, sparsity: float
) -> None:
    W, X = _problem(seed, rows, d, 2 * d + 2)
    sweep = sparsegpt_prune(W, hessian(_stats(X), 0.01), sparsity=sparsity, blocksize=blocksize)
    assert sweep.removed.sum(1).tolist() == [round(sparsity * d)] * rows
    assert bool((sweep.weights[sweep.removed] == 0).all())


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 5),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 3), (4, 8)]),
    groups=st.integers(1, 5),
    blocksize=st.integers(1, 20),
)
def test_property_every_group_of_m_keeps_exactly_n(
    seed: int, rows: int, nm: tuple[int, int], groups: int, blocksize: int
) -> None:
    n, m = nm
    W, X = _problem(seed, rows, m * groups, 2 * m * groups)
    sweep = sparsegpt_prune(W, hessian(_stats(X), 0.01), nm=nm, blocksize=blocksize)
    kept = (~sweep.removed).reshape(rows, groups, m).sum(-1)
    assert bool((kept == n).all())


def test_uncorrelated_inputs_need_no_update_and_select_by_w2_times_h() -> None:
    # X^T X diagonal: U is diagonal, nothing is updated, and w^2 / [U]_qq^2 = w^2 H_qq, the
    # square of Wanda's |w| * ||x|| (times 2 / n) without dampening's shift
    scales = torch.tensor([3.0, 1.0, 0.5, 2.0, 1.0, 4.0], dtype=torch.float64)
    X = torch.diag(scales)  # one sample per feature: orthogonal columns
    W, _ = _problem(3, 4, 6, 1)
    H = hessian(_stats(X), 1e-9)
    sweep = sparsegpt_prune(W, H, sparsity=0.5)
    torch.testing.assert_close(sweep.weights, W * ~sweep.removed, rtol=0, atol=1e-12)
    expected = row_keep_mask(W.abs() * scales, 0.5) == 0
    assert torch.equal(sweep.removed, expected)


# --------------------------------------------------------------------------------------------
# (a) against magnitude


def _shared(seed: int, rows: int, d: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and inputs whose features share a rank-4 component (as activations do)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, d, generator=g, dtype=torch.float64)
    Z = torch.randn(n, d, generator=g, dtype=torch.float64)
    basis = torch.randn(4, d, generator=g, dtype=torch.float64)
    return W, Z + torch.randn(n, 4, generator=g, dtype=torch.float64) @ basis


def _errors(
    W: torch.Tensor, X: torch.Tensor, blocksize: int, nm: tuple[int, int] | None
) -> tuple[float, float]:
    """(SparseGPT's, magnitude's) ``||(W - W_hat) X||^2 / n`` at 50 % per row, or ``nm``."""
    stats = _stats(X)
    H = hessian(stats, 0.01)
    if nm is None:
        sweep = sparsegpt_prune(W, H, sparsity=0.5, blocksize=blocksize)
        keep = row_keep_mask(W.abs(), 0.5)
    else:
        sweep = sparsegpt_prune(W, H, nm=nm, blocksize=blocksize)
        nm_keep = nm_keep_mask(W.abs(), *nm)
        assert nm_keep is not None
        keep = nm_keep
    return (
        reconstruction_error(W, sweep.weights, stats.xtx, stats.n),
        reconstruction_error(W, W * keep, stats.xtx, stats.n),
    )


@pytest.mark.parametrize("nm", [None, (2, 4)], ids=["unstructured", "2:4"])
@pytest.mark.parametrize("blocksize", [16, 128])
@pytest.mark.parametrize("seed", range(6))
def test_reconstruction_error_is_no_worse_than_magnitude_at_the_same_pattern(
    seed: int, blocksize: int, nm: tuple[int, int] | None
) -> None:
    W, X = _shared(seed, 16, 64, 400)
    e_sparsegpt, e_magnitude = _errors(W, X, blocksize, nm)
    assert e_sparsegpt <= e_magnitude


def test_sparsegpt_can_lose_to_magnitude_so_the_property_is_not_universal() -> None:
    # a dense random mixing of 32 features (condition number ~450): the column sweep's
    # sequential choice (each mask decided with the earlier columns fixed) loses here
    W, X = _problem(3, 8, 32, 200)
    e_sparsegpt, e_magnitude = _errors(W, X, 32, None)
    assert e_sparsegpt > e_magnitude


# --------------------------------------------------------------------------------------------
# The pruner on models


def _ctx(X: np.ndarray) -> PruneContext:
    return PruneContext(torch.as_tensor(X[:4]), X, (np.arange(len(X)) % 3).astype(np.int64), 0)


def test_the_pruner_applies_the_sweep_on_each_layers_calibration_inputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3))
    X = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    dense = copy.deepcopy(model)
    pruner = create(PruneSpec("sparsegpt", 0.5, args={"n_samples": 16, "blocksize": 4}))
    net = pruner.step(model, 0.5, _ctx(X))
    # the first layer: the sweep on the first 16 training rows' Hessian
    stats = collect_inputs(dense, [dense[0]], torch.as_tensor(X[:16]))[dense[0]]
    W0 = dense[0].weight.detach().double()
    sweep = sparsegpt_prune(W0, hessian(stats, 0.01), sparsity=0.5, blocksize=4)
    torch.testing.assert_close(net[0].weight.detach().double(), sweep.weights.float().double())
    assert torch.equal(net[0].weight_mask == 0, sweep.removed)
    # the second layer is calibrated on the inputs of the model pruned so far
    pruned_in = net[1](net[0](torch.as_tensor(X[:16]))).detach()
    stats2 = InputStats(pruned_in.double().T @ pruned_in.double(), 16)
    sweep2 = sparsegpt_prune(
        dense[2].weight.detach().double(), hessian(stats2, 0.01), sparsity=0.5, blocksize=4
    )
    torch.testing.assert_close(net[2].weight.detach().double(), sweep2.weights.float().double())
    net = pruner.finalize(net)
    for _, m in prunable_modules(net):
        assert (m.weight == 0).sum(1).tolist() == [m.weight.shape[1] // 2] * m.weight.shape[0]


@pytest.mark.parametrize("conv", ["1d", "2d"])
def test_convolutions_take_unfolded_inputs_and_patterns(conv: str) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if conv == "1d":
        layer: nn.Module = nn.Conv1d(4, 6, 3, padding=1)
        X = rng.normal(size=(12, 4, 8)).astype(np.float32)
        model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))
    else:
        layer = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        X = rng.normal(size=(12, 4, 6, 6)).astype(np.float32)
        model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.Linear(54, 3))
    dense = copy.deepcopy(model)
    net = create(PruneSpec("sparsegpt", 0.5, pattern="2:4")).step(model, 0.5, _ctx(X))
    cols = input_columns(dense[0], torch.as_tensor(X).double())
    stats = InputStats(cols.T @ cols, cols.shape[0])
    W = dense[0].weight.detach().double().reshape(6, -1)
    sweep = sparsegpt_prune(W, hessian(stats, 0.01), nm=(2, 4))
    torch.testing.assert_close(
        net[0].weight.detach().double().reshape(6, -1), sweep.weights.float().double()
    )
    kept = net[0].weight_mask.reshape(6, -1, 4).sum(-1)
    assert bool((kept == 2).all())


def test_ignore_patterns_and_refusals() -> None:
    torch.manual_seed(0)
    # rows of 6 inputs cannot take 2:4 (dense); the hidden layer of 8 can; the classifier ignored
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    X = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    before = [m.weight.detach().clone() for _, m in prunable_modules(model)]
    pruner = create(PruneSpec("sparsegpt", 0.5, pattern="2:4", args={"ignore": ["4"]}))
    net = pruner.step(model, 0.5, _ctx(X))
    assert not hasattr(net[0], "weight_mask") and not hasattr(net[4], "weight_mask")
    assert torch.equal(net[0].weight, before[0]) and torch.equal(net[4].weight, before[2])
    assert bool((net[2].weight_mask.reshape(8, 2, 4).sum(-1) == 2).all())
    with pytest.raises(SpecError) as info:
        create(PruneSpec("sparsegpt", 0.5, schedule="agp", steps=3))
    assert (info.value.key, info.value.problem) == (
        "prune.schedule",
        "SparseGPT prunes in one shot",
    )
    with pytest.raises(SpecError) as info:
        create(PruneSpec("sparsegpt", 0.5, args={"blocksize": 0}))
    assert info.value.key == "prune.args.blocksize"
    grouped = nn.Sequential(nn.Conv1d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    Xc = np.random.default_rng(0).normal(size=(4, 2, 4)).astype(np.float32)
    with pytest.raises(PruneError) as perr:
        create(PruneSpec("sparsegpt", 0.5)).step(grouped, 0.5, _ctx(Xc))
    assert str(perr.value) == "sparsegpt: layer '0': grouped convolution (groups=2) not supported"
