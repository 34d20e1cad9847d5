"""Automated per-layer pruning rates: sensitivity analysis, budgeted allocation, magnitude masks.

Unstructured technique in three stages, run at every pruning round (so iterative schedules
re-measure the fine-tuned model under its current masks):

1. **Sensitivity analysis** (Han et al. 2015, section 4 "sensitivity analysis"; the per-layer
   sensitivity that automated rate search such as AMC, He et al. 2018, optimizes over). For each
   prunable layer ``l`` and each sparsity ``s`` on ``grid`` (default ``0.0, 0.1, ..., 0.9, 0.95,
   0.98``; points above ``max_layer`` are skipped and ``max_layer`` itself is always measured),
   layer ``l`` ALONE is magnitude-pruned to ``s`` (its ``round(s * n_l)`` weights of smallest
   ``|w|``, already-masked weights first; every other layer as it is) and the mean cross-entropy
   ``loss_l(s)`` is measured on a calibration slice of the TRAINING fold (never validation
   data): ``min(1024, max(1, round(calibration * n)))`` rows drawn by a permutation seeded with
   ``ctx.seed`` (``calibration`` defaults to 0.2). The curve is
   ``Delta_l(s) = max_{s' <= s} (loss_l(s') - loss_l(c_l))``, where ``c_l`` is the layer's
   current sparsity (0 when dense): the running max makes it monotone non-decreasing in ``s``
   (removing more weights is never counted as helping, which would only reflect calibration
   noise) and it starts at the point ``(c_l, 0)``.

2. **Allocation** under a global budget (:func:`allocate`). A nonzero weight of layer ``l`` costs
   ``cost_l``: 1 for ``budget = "params"``; the multiply-accumulates it takes per inference for
   ``"flops"`` (1 for ``Linear``, the output length for ``Conv1d``, the number of output
   positions in general, read from a forward hook on ``ctx.example[:1]``); or its energy in pJ
   from ``harness.energy.weight_energy_pj`` for ``"energy"``. The pruned cost must reach
   ``target * sum_l n_l * cost_l`` while minimizing ``sum_l Delta_l(s_l)`` with
   ``c_l <= s_l <= max_layer`` (default 0.98). Greedy over grid steps: every layer starts at
   ``c_l``; repeatedly, the layer whose next grid step adds the least ``Delta`` per unit of cost
   removed, ``(Delta_l(s_{i+1}) - Delta_l(s_i)) / ((s_{i+1} - s_i) * n_l * cost_l)``, advances
   one step (layers tied on that ratio advance together). The last step is fractional:
   ``Delta_l`` is linear between grid points, so the step is interpolated to remove exactly the
   remaining cost (shared among tied layers in proportion to their step cost) and the budget is
   met exactly rather than overshot. On convex curves this greedy is the exact optimum of the
   piecewise-linear problem (fractional knapsack); on others it is the usual greedy heuristic.

3. **Masks**: layer ``l`` keeps its weights of largest ``|w|`` and prunes ``k_l`` weights,
   ``k_l = s_l * n_l`` rounded by largest remainder so that ``sum_l k_l`` equals
   ``round(sum_l s_l * n_l)`` (with the params budget: overall sparsity is the target to within
   one weight), through ``torch.nn.utils.prune.custom_from_mask``. Already-masked weights stay
   pruned (``s_l >= c_l``).

Choices: ``scope = "layer"`` means *uniform* allocation, every layer to the target (plain
layer-wise magnitude pruning; no sensitivity analysis); ``scope = "global"`` is the automated
allocation. Latency is not offered as a budget: unstructured masks leave dense kernels just as
slow, so zeros buy no latency. ``spec.sparsity`` must not exceed ``max_layer`` (the budget
could not be met). The last allocation is kept in ``AutoPruner.rates`` (layer name -> sparsity),
with the curves in ``AutoPruner.curves`` and per-weight costs in ``AutoPruner.costs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from harness import inputs
from harness.inputs import Batch
from harness.pruning.base import (
    IgnoreArgs,
    Problems,
    PruneContext,
    PruneError,
    Pruner,
    PrunerArgs,
    batch_of,
    labels,
    layers_to_prune,
    leaf_weight,
    open_unit,
    prunable_modules,
    remove_masks,
    weight,
)
from harness.pruning.registry import register
from harness.schema import option
from harness.spec import PruneSpec

BUDGETS = ("params", "flops", "energy")
DEFAULT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
MAX_CALIBRATION_ROWS = 1024
_RATIO_TOL = 1e-9

Curve = Sequence[tuple[float, float]]


def _budget(value: str) -> str | None:
    if value == "latency":
        return (
            "not offered for unstructured masks (zeros do not make dense kernels faster); "
            "use params, flops or energy, or a structured method"
        )
    return None if value in BUDGETS else f"must be one of {', '.join(BUDGETS)}"


def _grid(value: tuple[float, ...]) -> str | None:
    if not value or not all(0 <= g < 1 for g in value):
        return "must be a non-empty array of numbers in [0, 1)"
    if any(a >= b for a, b in pairwise(value)):
        return "must be sorted ascending without repeats"
    return None


@dataclass(frozen=True)
class AutoArgs(IgnoreArgs):
    """The cost ``budget``, the sensitivity ``grid``, the ``calibration`` fraction of the
    training fold and the per-layer cap ``max_layer`` (module docstring)."""

    budget: str = option("params", check=_budget)
    grid: tuple[float, ...] = option(DEFAULT_GRID, check=_grid)
    calibration: float = option(0.2, check=open_unit)
    max_layer: float = option(0.98, check=open_unit)


# --------------------------------------------------------------------------------------------
# Allocation (pure)


def allocate(
    curves: Mapping[str, Curve],
    costs: Mapping[str, float],
    sizes: Mapping[str, int],
    target: float,
    max_layer: float,
) -> dict[str, float]:
    """Per-layer sparsities that prune ``target`` of the total cost at least summed sensitivity.

    Parameters
    ----------
    curves
        Per layer, ``(sparsity, delta_loss)`` points. A layer starts at its smallest sparsity
        (give ``(0, 0)`` for a dense layer, ``(c, 0)`` for one already at sparsity ``c``) and goes
        no further than its largest one or ``max_layer`` (the curve is cut there, interpolated
        linearly). ``delta_loss`` is made non-decreasing (running max); duplicate sparsities keep
        their largest value.
    costs
        Cost of one nonzero weight of each layer (> 0).
    sizes
        Number of weights of each layer (> 0).
    target
        Fraction of ``sum_l sizes[l] * costs[l]`` to remove, in ``[0, 1]``.
    max_layer
        Highest sparsity of any layer.

    Returns
    -------
    dict
        Layer -> sparsity with ``sum_l s_l * sizes[l] * costs[l] == target * total`` (up to
        rounding) unless the starting points already remove more.

    Raises
    ------
    ValueError
        Inconsistent keys, non-positive costs or sizes, or a budget that the curves and
        ``max_layer`` cannot reach.
    """
    names = list(curves)
    if set(names) != set(costs) or set(names) != set(sizes):
        raise ValueError("curves, costs and sizes must have the same layers")
    if not 0 <= target <= 1:
        raise ValueError(f"target = {target!r}: must be in [0, 1]")
    for name in names:
        if not costs[name] > 0 or not sizes[name] > 0:
            raise ValueError(f"layer {name!r}: cost and size must be > 0")
    points = {name: _clean_curve(curves[name], max_layer, name) for name in names}
    unit = {name: float(sizes[name]) * float(costs[name]) for name in names}  # cost of s = 1
    goal = target * sum(unit.values())
    pos = dict.fromkeys(names, 0)
    rates = {name: points[name][0][0] for name in names}

    def removed() -> float:
        return math.fsum(rates[n] * unit[n] for n in names)

    while (remaining := goal - removed()) > 1e-12 * max(goal, 1.0):
        steps = {n: _step(points[n], pos[n], unit[n]) for n in names if pos[n] + 1 < len(points[n])}
        if not steps:
            raise ValueError(
                f"budget unreachable: target {target} of the cost needs more than every layer "
                f"at its highest allowed sparsity (max_layer = {max_layer}) removes"
            )
        best = min(ratio for ratio, _ in steps.values())
        tied = [n for n, (ratio, _) in steps.items() if _close(ratio, best)]
        step_cost = math.fsum(steps[n][1] for n in tied)
        if step_cost <= remaining:
            for n in tied:
                pos[n] += 1
                rates[n] = points[n][pos[n]][0]
            continue
        fraction = remaining / step_cost  # the last, interpolated step: budget met exactly
        for n in tied:
            (s0, _), (s1, _) = points[n][pos[n]], points[n][pos[n] + 1]
            rates[n] = s0 + fraction * (s1 - s0)
        break
    return rates


def _clean_curve(curve: Curve, max_layer: float, name: str) -> list[tuple[float, float]]:
    """Sorted, deduplicated, monotone (running max) points, cut at ``max_layer``."""
    if not curve:
        raise ValueError(f"layer {name!r}: empty sensitivity curve")
    best: dict[float, float] = {}
    for s, d in curve:
        s, d = float(s), float(d)
        if not (0 <= s < 1 and math.isfinite(d)):
            raise ValueError(f"layer {name!r}: bad curve point ({s}, {d})")
        best[s] = max(d, best.get(s, -math.inf))
    out: list[tuple[float, float]] = []
    running = -math.inf
    for s in sorted(best):
        running = max(running, best[s])
        out.append((s, running))
    if out[0][0] >= max_layer:
        return out[:1]  # already at (or past) the cap: the layer stays where it is
    cut = [p for p in out if p[0] <= max_layer]
    if cut[-1][0] < max_layer and len(cut) < len(out):
        (s0, d0), (s1, d1) = cut[-1], out[len(cut)]
        cut.append((max_layer, d0 + (d1 - d0) * (max_layer - s0) / (s1 - s0)))
    return cut


def _step(points: list[tuple[float, float]], i: int, unit: float) -> tuple[float, float]:
    """(delta loss per unit of cost removed, cost removed) of the step from point ``i``."""
    (s0, d0), (s1, d1) = points[i], points[i + 1]
    cost = (s1 - s0) * unit
    return (d1 - d0) / cost, cost


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_RATIO_TOL, abs_tol=1e-15)


# --------------------------------------------------------------------------------------------
# Calibration data and sensitivity analysis


def calibration_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted rows of the calibration slice: ``min(1024, max(1, round(fraction * n)))`` rows of
    a permutation of ``range(n)`` seeded with ``seed``."""
    count = min(MAX_CALIBRATION_ROWS, max(1, round(fraction * n)), n)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:count])


def sensitivity(
    model: nn.Module,
    X: Batch,
    y: torch.Tensor,
    grid: Sequence[float],
    max_layer: float,
    ignore: Sequence[str] = (),
) -> dict[str, list[tuple[float, float]]]:
    """Per prunable layer, ``(s, Delta(s))`` for ``s`` in ``{c} | {g in grid: c < g < max_layer}
    | {max_layer}`` with ``c`` the layer's current sparsity: the cross-entropy on ``(X, y)``
    with that layer alone magnitude-pruned to ``s``, minus the loss of ``model`` as it is, made
    non-decreasing by a running max; layers named in ``ignore`` get none. ``model`` is left
    unchanged."""
    was_training = model.training
    model.eval()
    curves: dict[str, list[tuple[float, float]]] = {}
    with torch.no_grad():
        base = _loss(model, X, y)
        for name, module in layers_to_prune(model, ignore):
            start = _current_sparsity(module)
            points = [s for s in grid if start < s < max_layer]
            if start < max_layer:
                points.append(max_layer)
            curve, running = [(start, 0.0)], 0.0
            for s in points:
                running = max(running, _loss_pruned(model, module, s, X, y) - base)
                curve.append((float(s), running))
            curves[name] = curve
    model.train(was_training)
    return curves


def _loss(model: nn.Module, X: Batch, y: torch.Tensor) -> float:
    return float(nn.functional.cross_entropy(inputs.forward(model, X), y))


def _loss_pruned(model: nn.Module, module: nn.Module, s: float, X: Batch, y: torch.Tensor) -> float:
    """The loss with ``module`` alone pruned to ``s`` by magnitude (restored afterwards)."""
    leaf = leaf_weight(module)
    saved = leaf.detach().clone()
    keep = _magnitude_keep(module, round(s * weight(module).numel()))
    leaf.mul_(keep)  # under a mask, weight = weight_orig * mask is recomputed on forward
    try:
        return _loss(model, X, y)
    finally:
        leaf.copy_(saved)


def _effective(module: nn.Module) -> torch.Tensor:
    """The masked weight recomputed from its parts (``module.weight`` is only refreshed on a
    forward pass, so it can lag behind ``weight_orig`` after an optimizer step)."""
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor):
        return (leaf_weight(module) * mask).detach()
    return weight(module).detach()


def _current_sparsity(module: nn.Module) -> float:
    mask = getattr(module, "weight_mask", None)
    if not isinstance(mask, torch.Tensor):
        return 0.0
    return float((mask == 0).sum()) / mask.numel()


def _magnitude_keep(module: nn.Module, n_prune: int) -> torch.Tensor:
    """Keep mask pruning ``n_prune`` weights of smallest ``|w|`` (masked ones first, at least
    all of them; stable order)."""
    scores = _effective(module).abs().flatten().float()
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor):
        scores[mask.flatten() == 0] = -torch.inf
        n_prune = max(n_prune, int((mask == 0).sum()))
    keep = torch.ones_like(scores)
    if n_prune:
        keep[torch.argsort(scores, stable=True)[:n_prune]] = 0
    return keep.view_as(weight(module))


# --------------------------------------------------------------------------------------------
# Costs per weight


def weight_costs(model: nn.Module, example: Batch, budget: str) -> dict[str, float]:
    """Cost of one nonzero weight of every prunable layer (see the module docstring): 1, its
    MACs per inference (its output positions, from :func:`harness.energy.layer_traces`), or its
    energy in pJ (:func:`harness.energy.weight_cost_pj`)."""
    layers = prunable_modules(model)
    if budget == "params":
        return {name: 1.0 for name, _ in layers}
    if budget not in BUDGETS:
        raise ValueError(f"budget = {budget!r}: must be one of {', '.join(BUDGETS)}")
    from harness.energy import layer_traces, weight_cost_pj

    traces = layer_traces(model, inputs.take(example, slice(0, 1)))
    unused = [name for name, m in layers if m not in traces]
    if unused:
        raise PruneError(f"layer(s) {', '.join(unused)} not reached by a forward pass")
    if budget == "flops":
        return {name: float(traces[m].positions) for name, m in layers}
    return {name: weight_cost_pj(traces[m].positions) for name, m in layers}


# --------------------------------------------------------------------------------------------
# Masks


def layer_counts(
    rates: Mapping[str, float], sizes: Mapping[str, int], floors: Mapping[str, int]
) -> dict[str, int]:
    """Weights to prune per layer: ``rates[l] * sizes[l]`` rounded by largest remainder so that
    the total is ``round(sum_l rates[l] * sizes[l])``, each within ``[floors[l], sizes[l]]``."""
    exact = {n: rates[n] * sizes[n] for n in rates}
    counts = {n: min(sizes[n], max(floors[n], math.floor(exact[n] + 1e-9))) for n in rates}
    extra = round(math.fsum(exact.values())) - sum(counts.values())
    by_remainder = sorted(rates, key=lambda n: counts[n] - exact[n])  # largest remainder first
    for n in by_remainder if extra > 0 else reversed(by_remainder):
        if extra == 0:
            break
        if extra > 0 and counts[n] < sizes[n]:
            counts[n], extra = counts[n] + 1, extra - 1
        elif extra < 0 and counts[n] > floors[n]:
            counts[n], extra = counts[n] - 1, extra + 1
    return counts


# --------------------------------------------------------------------------------------------
# The pruner


@register
class AutoPruner(Pruner):
    """Sensitivity-driven per-layer sparsities under a params / flops / energy budget, then
    layer-wise magnitude masks (see the module docstring). Latency is not a budget: zeros in
    dense kernels do not make them faster."""

    no_pattern = "it allocates a sparsity per layer, N:M fixes one for every layer"
    name = "auto"
    summary = (
        "Unstructured: magnitude masks with per-layer rates allocated from sensitivity curves "
        "under a params/flops/energy budget."
    )
    reference = (
        "Han et al. 2015, Learning both Weights and Connections for Efficient Neural Networks "
        "(sensitivity analysis); He et al. 2018, AMC: AutoML for Model Compression"
    )
    Args = AutoArgs
    args: AutoArgs

    def __init__(self, spec: PruneSpec) -> None:
        super().__init__(spec)
        self.rates: dict[str, float] = {}
        self.curves: dict[str, list[tuple[float, float]]] = {}
        self.costs: dict[str, float] = {}

    @classmethod
    def spec_problems(cls, spec: PruneSpec, args: PrunerArgs) -> Problems:
        if isinstance(args, AutoArgs) and spec.sparsity > args.max_layer:
            yield (
                "args.max_layer",
                args.max_layer,
                f"below the target sparsity {spec.sparsity} (no allocation can meet the budget)",
            )

    def calibration(self, ctx: PruneContext) -> tuple[Batch, torch.Tensor]:
        """The calibration slice of the training fold (deterministic for ``ctx.seed``)."""
        idx = calibration_indices(len(ctx.y_train), self.args.calibration, ctx.seed)
        X = batch_of(inputs.take(ctx.X_train, idx), ctx.device)
        return X, labels(ctx.y_train[idx], ctx.device).long()

    def rates_for(self, model: nn.Module, target: float, ctx: PruneContext) -> dict[str, float]:
        """Per-layer sparsities for the cumulative ``target`` (stored in ``self.rates``)."""
        layers = layers_to_prune(model, self.args.ignore)
        start = {name: _current_sparsity(m) for name, m in layers}
        costs = weight_costs(model, ctx.example, self.args.budget)
        self.costs = {name: costs[name] for name in start}
        if self.spec.scope == "layer":  # uniform: every layer to the target
            self.curves = {}
            self.rates = {name: max(target, start[name]) for name in start}
            return self.rates
        X, y = self.calibration(ctx)
        max_layer = self.args.max_layer
        self.curves = sensitivity(model, X, y, list(self.args.grid), max_layer, self.args.ignore)
        sizes = {name: weight(m).numel() for name, m in layers}
        self.rates = allocate(self.curves, self.costs, sizes, target, max_layer)
        return self.rates

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        layers = layers_to_prune(model, self.args.ignore)
        rates = self.rates_for(model, target, ctx)
        sizes = {name: weight(m).numel() for name, m in layers}
        floors = {name: round(_current_sparsity(m) * sizes[name]) for name, m in layers}
        counts = layer_counts(rates, sizes, floors)
        with torch.no_grad():
            for name, m in layers:
                prune.custom_from_mask(m, "weight", _magnitude_keep(m, counts[name]))
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        return remove_masks(model)
