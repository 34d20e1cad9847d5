"""Automated per-layer rates ("auto"): the allocation pinned on curves with a known optimum, the
sensitivity analysis pinned to its definition on the training calibration slice, the masks and
the budgets on small nets, and a no-fine-tuning comparison on sklearn digits."""

from __future__ import annotations

import copy
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from harness.models import cnn1d, mlp
from harness.pruning import PruneContext, create, get, prunable_modules
from harness.pruning.auto import (
    DEFAULT_GRID,
    AutoArgs,
    AutoPruner,
    allocate,
    calibration_indices,
    layer_counts,
    sensitivity,
    weight_costs,
)
from harness.pruning.base import weight
from harness.schema import SpecError
from harness.spec import PruneSpec, TrainSpec
from harness.training import fit, predict_logits

GRID = [i / 10 for i in range(10)] + [0.95, 0.98]


def _quadratic(scale: float, grid: list[float] = GRID) -> list[tuple[float, float]]:
    return [(s, scale * s * s) for s in grid]


def _spent(rates: dict[str, float], costs: dict[str, float], sizes: dict[str, int]) -> float:
    return math.fsum(rates[n] * sizes[n] * costs[n] for n in rates)


# --------------------------------------------------------------------------------------------
# allocate(): hand-made curves


def test_an_insensitive_layer_takes_the_budget_first() -> None:
    curves = {"flat": [(s, 0.0) for s in GRID], "steep": _quadratic(5.0)}
    costs, sizes = {"flat": 1.0, "steep": 1.0}, {"flat": 100, "steep": 100}
    assert allocate(curves, costs, sizes, 0.4, 0.98) == pytest.approx({"flat": 0.8, "steep": 0.0})
    # flat is capped at max_layer, the rest of the budget goes to steep (interpolated to 0.22)
    rates = allocate(curves, costs, sizes, 0.6, 0.98)
    assert rates == pytest.approx({"flat": 0.98, "steep": 0.22})


def test_greedy_reaches_the_lagrange_optimum_of_convex_curves() -> None:
    # min s_a^2 + 2 s_b^2 subject to s_a + s_b = 0.6: 2 s_a = 4 s_b -> s_a = 0.4, s_b = 0.2
    curves = {"a": _quadratic(1.0), "b": _quadratic(2.0)}
    rates = allocate(curves, {"a": 1.0, "b": 1.0}, {"a": 50, "b": 50}, 0.3, 0.98)
    assert rates == pytest.approx({"a": 0.4, "b": 0.2})


def test_equal_curves_and_costs_give_equal_rates() -> None:
    curves = {n: _quadratic(1.0) for n in "abc"}
    costs, sizes = dict.fromkeys("abc", 2.0), dict.fromkeys("abc", 64)
    for target in (0.05, 0.33, 0.5, 0.77, 0.98):
        rates = allocate(curves, costs, sizes, target, 0.98)
        assert rates["a"] == pytest.approx(target, abs=1e-12)
        assert rates["a"] == rates["b"] == rates["c"]
    # linear curves: every step of every layer ties; the layers still move in lockstep
    linear = {n: [(s, s) for s in GRID] for n in "ab"}
    rates = allocate(linear, {"a": 1.0, "b": 1.0}, {"a": 10, "b": 10}, 0.37, 0.98)
    assert rates == pytest.approx({"a": 0.37, "b": 0.37})


def test_a_layer_whose_weights_cost_more_meets_the_budget_with_fewer_removals() -> None:
    curves = {"dear": [(s, s) for s in GRID], "cheap": [(s, s) for s in GRID]}
    costs, sizes = {"dear": 4.0, "cheap": 1.0}, {"dear": 100, "cheap": 100}
    rates = allocate(curves, costs, sizes, 0.5, 0.98)
    # Delta per unit of cost is 4x smaller for "dear": 0.5 * (400 + 100) = 250 = s * 400
    assert rates == pytest.approx({"dear": 0.625, "cheap": 0.0})
    removed = sum(rates[n] * sizes[n] for n in rates)
    assert removed == pytest.approx(62.5) and removed < 0.5 * 200  # vs. 100 by params


def test_budget_is_met_exactly_and_rates_stay_in_range() -> None:
    curves = {"a": _quadratic(1.0), "b": _quadratic(3.0), "c": [(s, math.sqrt(s)) for s in GRID]}
    costs, sizes = {"a": 1.0, "b": 19.0, "c": 4.0}, {"a": 123, "b": 77, "c": 512}
    total = sum(sizes[n] * costs[n] for n in sizes)
    for target in (0.0, 0.123, 0.5, 0.9, 0.97):
        rates = allocate(curves, costs, sizes, target, 0.97)
        assert abs(_spent(rates, costs, sizes) - target * total) <= 1e-9 * total
        assert all(0 <= r <= 0.97 for r in rates.values())


def test_layers_start_at_their_first_point_and_the_curves_are_made_monotone() -> None:
    # "a" already sits at 0.5 (iterative round): it never goes below; the dip of "b" at 0.3 is
    # flattened by the running max, so "b" is no cheaper to prune to 0.3 than to 0.2
    curves = {"a": [(0.5, 0.0), (0.6, 10.0), (0.98, 20.0)], "b": [(0.0, 0), (0.2, 1), (0.3, 0)]}
    rates = allocate(curves, {"a": 1.0, "b": 1.0}, {"a": 10, "b": 10}, 0.3, 0.98)
    assert rates == pytest.approx({"a": 0.5, "b": 0.1})
    rates = allocate(curves, {"a": 1.0, "b": 1.0}, {"a": 10, "b": 10}, 0.2, 0.98)
    assert rates == pytest.approx({"a": 0.5, "b": 0.0})  # the floor already meets the budget


def test_a_dip_in_a_curve_counts_as_no_gain() -> None:
    # "b" seems to improve from 0.1 to 0.2: the running max flattens it, so "a" and "b" are
    # equally cheap and move together instead of "b" alone
    flat = [(0.0, 0.0), (0.1, 0.0), (0.2, 0.0), (0.98, 0.0)]
    dip = [(0.0, 0.0), (0.1, 0.0), (0.2, -1.0), (0.98, -1.0)]
    rates = allocate({"a": flat, "b": dip}, {"a": 1.0, "b": 1.0}, {"a": 10, "b": 10}, 0.15, 0.98)
    assert rates == pytest.approx({"a": 0.15, "b": 0.15})


def test_unreachable_budget_and_bad_inputs_raise() -> None:
    curves = {"a": _quadratic(1.0), "b": _quadratic(1.0)}
    with pytest.raises(ValueError, match="unreachable"):
        allocate(curves, {"a": 1.0, "b": 1.0}, {"a": 5, "b": 5}, 0.9, 0.8)
    with pytest.raises(ValueError, match="same layers"):
        allocate(curves, {"a": 1.0}, {"a": 5, "b": 5}, 0.5, 0.98)
    with pytest.raises(ValueError, match="> 0"):
        allocate(curves, {"a": 0.0, "b": 1.0}, {"a": 5, "b": 5}, 0.5, 0.98)


@st.composite
def _problems(draw: st.DrawFn) -> tuple[dict, dict, dict, float, float]:
    n_layers = draw(st.integers(1, 5))
    max_layer = draw(st.floats(0.3, 0.99))
    curves, costs, sizes = {}, {}, {}
    for i in range(n_layers):
        inner = draw(st.lists(st.floats(0.01, 0.98), min_size=0, max_size=8))
        grid = sorted({0.0, *inner, 0.99})
        deltas = draw(st.lists(st.floats(-1, 5), min_size=len(grid), max_size=len(grid)))
        curves[f"l{i}"] = list(zip(grid, deltas, strict=True))
        costs[f"l{i}"] = draw(st.floats(0.1, 50))
        sizes[f"l{i}"] = draw(st.integers(1, 5000))
    return curves, costs, sizes, draw(st.floats(0, 1)) * max_layer, max_layer


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_problems())
def test_property_budget_met_and_rates_capped(problem: tuple) -> None:
    curves, costs, sizes, target, max_layer = problem
    rates = allocate(curves, costs, sizes, target, max_layer)
    total = sum(sizes[n] * costs[n] for n in sizes)
    assert abs(_spent(rates, costs, sizes) - target * total) <= 1e-9 * total
    assert all(0 <= r <= max_layer + 1e-15 for r in rates.values())


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.lists(
        st.lists(st.floats(0, 3), min_size=len(GRID) - 1, max_size=len(GRID) - 1),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.floats(0.5, 8), min_size=4, max_size=4),
    st.floats(0.0, 0.98),
)
def test_property_convex_curves_give_the_linear_programming_optimum(
    slopes: list[list[float]], costs_drawn: list[float], target: float
) -> None:
    """Convex piecewise-linear curves: the greedy equals the exact optimum (an LP over segments)."""
    curves, costs, sizes = {}, {}, {}
    for i, raw in enumerate(slopes):
        ordered = sorted(raw)  # increasing slopes: convex
        points, d = [(GRID[0], 0.0)], 0.0
        for j, slope in enumerate(ordered):
            d += slope * (GRID[j + 1] - GRID[j])
            points.append((GRID[j + 1], d))
        curves[f"l{i}"], costs[f"l{i}"], sizes[f"l{i}"] = points, costs_drawn[i], 10 + 7 * i
    rates = allocate(curves, costs, sizes, target, 0.98)
    greedy = sum(np.interp(rates[n], *zip(*curves[n], strict=True)) for n in curves)
    # LP: one variable per segment (its sparsity increment), objective slope * increment
    obj, coef, bounds = [], [], []
    for n, points in curves.items():
        for (s0, d0), (s1, d1) in pairwise(points):
            obj.append((d1 - d0) / (s1 - s0))
            coef.append(-sizes[n] * costs[n])
            bounds.append((0, s1 - s0))
    total = sum(sizes[n] * costs[n] for n in sizes)
    lp = linprog(obj, A_ub=[coef], b_ub=[-target * total], bounds=bounds, method="highs")
    assert lp.status == 0
    assert greedy == pytest.approx(lp.fun, rel=1e-7, abs=1e-9)


# --------------------------------------------------------------------------------------------
# Rounding to whole weights


def test_layer_counts_round_by_largest_remainder_and_respect_floors() -> None:
    sizes = {"a": 10, "b": 10, "c": 10}
    counts = layer_counts({"a": 0.25, "b": 0.25, "c": 0.25}, sizes, dict.fromkeys("abc", 0))
    assert sum(counts.values()) == 8 and sorted(counts.values()) == [2, 3, 3]  # 7.5 -> 8
    counts = layer_counts({"a": 0.34, "b": 0.34, "c": 0.32}, sizes, {"a": 0, "b": 0, "c": 4})
    assert counts["c"] == 4 and sum(counts.values()) == 10


# --------------------------------------------------------------------------------------------
# Sensitivity on the calibration slice of the training fold


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)
    )


def _data(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(1)
    X = g.normal(size=(n, 10)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def test_calibration_slice_is_seeded_sized_and_capped() -> None:
    idx = calibration_indices(300, 0.2, seed=7)
    assert np.array_equal(idx, np.sort(np.random.default_rng(7).permutation(300)[:60]))
    assert np.array_equal(idx, calibration_indices(300, 0.2, seed=7))
    assert not np.array_equal(idx, calibration_indices(300, 0.2, seed=8))
    assert len(calibration_indices(100_000, 0.2, seed=0)) == 1024


def test_sensitivity_is_the_loss_increase_of_pruning_one_layer_alone() -> None:
    model, (X, y) = _mlp(), _data()
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grid = [0.0, 0.1, 0.2, 0.3, 0.45, 0.6]
    curves = sensitivity(model, Xt, yt, grid, max_layer=0.9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored
    with torch.no_grad():
        base = float(nn.functional.cross_entropy(model(Xt), yt))
        dips = 0
        for index, name in ((0, "0"), (2, "2"), (4, "4")):
            assert [s for s, _ in curves[name]] == [*grid, 0.9]
            raw = [0.0]
            for s in [*grid[1:], 0.9]:
                pruned = copy.deepcopy(model)
                w = pruned[index].weight.data
                w.view(-1)[
                    torch.argsort(w.abs().flatten(), stable=True)[: round(s * w.numel())]
                ] = 0
                raw.append(float(nn.functional.cross_entropy(pruned(Xt), yt)) - base)
            dips += int(np.any(np.diff(raw) < 0))
            expected = np.maximum.accumulate(raw)  # the running max
            assert [d for _, d in curves[name]] == pytest.approx(expected.tolist(), abs=1e-6)
    assert dips > 0  # the running max mattered on this net


def test_curves_use_only_the_calibration_rows_of_the_training_fold() -> None:
    X, y = _data()
    spec = PruneSpec("auto", 0.5, args={"calibration": 0.25})
    idx = calibration_indices(len(y), 0.25, seed=3)
    pruner = AutoPruner(spec)
    pruner.step(_mlp(), 0.5, PruneContext(torch.as_tensor(X[:8]), X, y, 3))
    expected = sensitivity(
        _mlp(), torch.as_tensor(X[idx]), torch.as_tensor(y[idx]), list(DEFAULT_GRID), 0.98
    )
    assert pruner.curves == expected
    # rows outside the slice are never read: poisoning them changes nothing
    poisoned = X.copy()
    poisoned[np.setdiff1d(np.arange(len(y)), idx)] = np.nan
    again = AutoPruner(spec)
    model = again.step(_mlp(), 0.5, PruneContext(torch.as_tensor(X[:8]), poisoned, y, 3))
    assert again.curves == pruner.curves and again.rates == pruner.rates
    assert all(np.isfinite(v) for c in again.curves.values() for _, v in c)
    assert isinstance(model, nn.Module)


# --------------------------------------------------------------------------------------------
# Full steps


def _zeros(model: nn.Module) -> dict[str, int]:
    return {n: int((weight(m) == 0).sum()) for n, m in prunable_modules(model)}


def test_a_step_meets_the_params_budget_with_per_layer_magnitude_masks() -> None:
    X, y = _data()
    model, ctx = _mlp(), PruneContext(torch.as_tensor(X[:8]), X, y, 0)
    dense = {n: weight(m).detach().clone() for n, m in prunable_modules(model)}
    pruner = create(PruneSpec("auto", 0.6))
    pruner.step(model, 0.6, ctx)
    assert isinstance(pruner, AutoPruner)
    zeros, total = _zeros(model), sum(w.numel() for w in dense.values())
    assert abs(sum(zeros.values()) - 0.6 * total) <= 1
    assert len(set(pruner.rates.values())) > 1  # not uniform on this net
    for name, m in prunable_modules(model):
        assert abs(zeros[name] - pruner.rates[name] * dense[name].numel()) < 1
        gone = weight(m) == 0
        if gone.any() and (~gone).any():  # magnitude within the layer
            assert dense[name][gone].abs().max() <= dense[name][~gone].abs().min()
    pruner.finalize(model)
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_modules(model))
    assert _zeros(model) == zeros


def test_same_seed_same_masks() -> None:
    X, y = _data()
    masks = []
    for _ in range(2):
        model = _mlp()
        create(PruneSpec("auto", 0.7)).step(
            model, 0.7, PruneContext(torch.as_tensor(X[:8]), X, y, 5)
        )
        masks.append([m.weight_mask.clone() for _, m in prunable_modules(model)])
    assert all(torch.equal(a, b) for a, b in zip(*masks, strict=True))


def test_flops_budget_weighs_conv_weights_by_output_length() -> None:
    torch.manual_seed(0)
    model = cnn1d(40, 10, channels=[8, 8, 8])
    example = torch.randn(16, 40)
    # lengths 40 -> 19 -> 9 -> 4 (kernel 5, stride 2, padding 1), then the linear classifier
    costs = weight_costs(model, example, "flops")
    assert list(costs.values()) == [19.0, 9.0, 4.0, 1.0]
    assert set(weight_costs(model, example, "params").values()) == {1.0}

    g = np.random.default_rng(0)
    X = g.normal(size=(200, 40)).astype(np.float32)
    y = g.integers(0, 10, 200)
    pruner = AutoPruner(PruneSpec("auto", 0.5, args={"budget": "flops"}))
    pruner.step(model, 0.5, PruneContext(torch.as_tensor(X[:8]), X, y, 0))
    assert pruner.costs == costs
    layers = prunable_modules(model)
    macs = sum(weight(m).numel() * costs[n] for n, m in layers)
    removed = sum(int((weight(m) == 0).sum()) * costs[n] for n, m in layers)
    assert abs(removed - 0.5 * macs) < sum(costs.values())  # < 1 weight per layer off
    exact = sum(pruner.rates[n] * weight(m).numel() * costs[n] for n, m in layers)
    assert exact == pytest.approx(0.5 * macs, rel=1e-12)


def test_energy_budget_uses_the_energy_model_per_weight() -> None:
    from harness.energy import estimate, weight_energy_pj

    torch.manual_seed(0)
    model = cnn1d(40, 10, channels=[8, 8, 8])
    g = np.random.default_rng(0)
    X = g.normal(size=(200, 40)).astype(np.float32)
    y = g.integers(0, 10, 200)
    example = torch.as_tensor(X[:8])
    per_weight = weight_energy_pj(model, example)
    costs = weight_costs(model, example, "energy")
    assert costs == {n: per_weight[m] for n, m in prunable_modules(model)}
    dense_pj = estimate(model, example).total_pj
    pruner = AutoPruner(PruneSpec("auto", 0.5, args={"budget": "energy"}))
    pruner.step(model, 0.5, PruneContext(example, X, y, 0))
    # the energy model's saving is the removed weights' energy: half the weights' energy
    budget = 0.5 * sum(weight(m).numel() * costs[n] for n, m in prunable_modules(model))
    saved = dense_pj - estimate(model, example).total_pj
    assert abs(saved - budget) < sum(costs.values())


def test_iterative_steps_keep_earlier_zeros() -> None:
    X, y = _data()
    model, ctx = _mlp(), PruneContext(torch.as_tensor(X[:8]), X, y, 0)
    pruner = AutoPruner(PruneSpec("auto", 0.8, schedule="iterative", steps=2))
    pruner.step(model, 0.5, ctx)
    first = {n: (weight(m) == 0).clone() for n, m in prunable_modules(model)}
    first_rates = dict(pruner.rates)
    with torch.no_grad():  # "fine-tuning" moved the hidden weights: biggest |w_orig| now
        for n, m in prunable_modules(model):
            m.weight_orig[first[n]] = 100.0
    pruner.step(model, 0.8, ctx)
    total = sum(weight(m).numel() for _, m in prunable_modules(model))
    assert abs(sum(_zeros(model).values()) - 0.8 * total) <= 1
    for n, m in prunable_modules(model):
        assert bool((weight(m)[first[n]] == 0).all())
        assert pruner.rates[n] >= first_rates[n] - 1e-12
        assert pruner.curves[n][0] == pytest.approx((first[n].float().mean().item(), 0.0))


def test_scope_layer_is_uniform_magnitude() -> None:
    X, y = _data()
    ctx = PruneContext(torch.as_tensor(X[:8]), X, y, 0)
    auto, plain = _mlp(), _mlp()
    pruner = AutoPruner(PruneSpec("auto", 0.4, scope="layer"))
    pruner.step(auto, 0.4, ctx)
    create(PruneSpec("magnitude", 0.4, scope="layer")).step(plain, 0.4, ctx)
    assert pruner.rates == dict.fromkeys(pruner.rates, 0.4) and pruner.curves == {}
    for (_, a), (_, b) in zip(prunable_modules(auto), prunable_modules(plain), strict=True):
        assert torch.equal(a.weight_mask, b.weight_mask)


def test_parse_args_validates_every_arg() -> None:
    cls = get("auto")
    assert cls is AutoPruner

    def problem(**args: object) -> tuple[str, str]:
        with pytest.raises(SpecError) as info:
            cls.parse_args(args)
        return info.value.key, info.value.problem

    assert cls.parse_args({}) == AutoArgs()
    good = cls.parse_args({"budget": "flops", "grid": [0, 0.5, 0.9], "calibration": 0.1})
    assert good == AutoArgs(budget="flops", grid=(0.0, 0.5, 0.9), calibration=0.1)
    key, text = problem(budget="latency")
    assert key == "prune.args.budget" and "dense kernels" in text and "structured" in text
    assert problem(budget="bytes") == ("prune.args.budget", "must be one of params, flops, energy")
    unsorted = "must be sorted ascending without repeats"
    out_of_range = "must be a non-empty array of numbers in [0, 1)"
    for grid, text in (
        ([0.5, 0.2], unsorted),
        ([0.2, 0.2], unsorted),
        ([0.1, 1.0], out_of_range),
        ([], out_of_range),
        ([0.1, True], "must be an array of numbers"),
        ("0.1", "must be an array"),
    ):
        assert problem(grid=grid) == ("prune.args.grid", text), grid
    for key in ("calibration", "max_layer"):
        for bad in (0, 1, 1.5, -0.1):
            assert problem(**{key: bad}) == (f"prune.args.{key}", "must be in (0, 1)"), (key, bad)
        for bad in ("0.5", True):
            assert problem(**{key: bad}) == (f"prune.args.{key}", "must be a number"), (key, bad)
    assert problem(nope=1) == ("prune.args.nope", "unknown key")
    # with the spec: a target above the cap cannot be allocated
    assert create(PruneSpec("auto", 0.9, args={"max_layer": 0.95})).args.max_layer == 0.95
    with pytest.raises(SpecError) as info:
        create(PruneSpec("auto", 0.99))  # above the default cap: budget unreachable
    assert (info.value.key, info.value.value) == ("prune.args.max_layer", 0.98)
    assert (
        info.value.problem == "below the target sparsity 0.99 (no allocation can meet the budget)"
    )


# --------------------------------------------------------------------------------------------
# Digits: auto vs uniform vs global magnitude, no fine-tuning


def test_digits_auto_beats_uniform_and_global_magnitude_without_finetuning() -> None:
    torch.set_num_threads(1)
    digits = load_digits()
    X, y = (digits.data / 16).astype(np.float32), digits.target
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    mu, sd = X_tr.mean(0), X_tr.std(0) + 1e-6
    X_tr, X_te = ((X_tr - mu) / sd).astype(np.float32), ((X_te - mu) / sd).astype(np.float32)
    torch.manual_seed(0)
    dense = mlp(64, 10, hidden=[256, 128])
    fit(dense, X_tr, y_tr, TrainSpec(epochs=10, lr=1e-3), seed=0)
    ctx = PruneContext(torch.as_tensor(X_tr[:64]), X_tr, y_tr, 0)

    def accuracy(model: nn.Module) -> float:
        return float((predict_logits(model, X_te).argmax(1) == y_te).mean())

    print(f"\ndigits dense accuracy {accuracy(dense):.3f}")
    for s in (0.9, 0.95):
        results, rates = {}, {}
        for label, spec in (
            ("auto", PruneSpec("auto", s)),
            ("uniform", PruneSpec("magnitude", s, scope="layer")),
            ("global", PruneSpec("magnitude", s)),
        ):
            pruner = create(spec)
            model = pruner.finalize(pruner.step(copy.deepcopy(dense), s, ctx))
            results[label] = accuracy(model)
            rates[label] = {
                n: float((weight(m) == 0).float().mean()) for n, m in prunable_modules(model)
            }
            total = sum(weight(m).numel() for _, m in prunable_modules(model))
            assert abs(sum(_zeros(model).values()) - s * total) <= 1  # same overall sparsity
            if isinstance(pruner, AutoPruner):
                assert rates[label] == pytest.approx(pruner.rates, abs=1e-4)
        print(f"sparsity {s}: accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
        print("  auto rates " + ", ".join(f"{n}: {r:.3f}" for n, r in rates["auto"].items()))
        print("  global rates " + ", ".join(f"{n}: {r:.3f}" for n, r in rates["global"].items()))
        assert results["auto"] > results["uniform"] and results["auto"] > results["global"]
        auto_rates = list(rates["auto"].values())
        assert auto_rates[-1] < min(auto_rates[:-1])  # the small classifier is spared
        assert max(auto_rates) <= 0.98 + 1e-9


@pytest.mark.parametrize("budget", ["flops", "energy"])
def test_a_layer_the_forward_pass_never_reaches_is_named(budget: str) -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(ValueError, match=r"layer\(s\) spare not reached by a forward pass"):
        weight_costs(Unused(), torch.zeros(2, 4), budget)
