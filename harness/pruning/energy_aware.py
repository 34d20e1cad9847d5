"""Energy-aware structured pruning: remove the units that save the most energy per importance lost.

After Yang, Chen & Sze 2017 (*Designing Energy-Efficient Convolutional Neural Networks using
Energy-Aware Pruning*): pruning is guided by an energy model of the inference rather than by
parameter or FLOP counts. Yang et al. prune weights layer by layer in order of the layers' energy;
here the idea is adapted to structured pruning (neurons of ``nn.Linear``, channels of convolutions,
removed with Torch-Pruning's dependency graph as in :mod:`harness.pruning.structured`) with one
ranking criterion: every unit ``u`` (a Torch-Pruning group channel) gets

    score(u) = Ihat(u) / E(u) ** beta

(``beta = args.energy_exponent``, default 1: the importance lost per pJ saved, the criterion
proper; 0 ranks by importance alone; values in between temper the energy term) and the units of
lowest score are removed (``scope = "global"``: ranked across all layers, ``"layer"``: within each
layer). ``sparsity`` is the fraction of units removed, the final classifier keeps its outputs,
modules named in ``args.ignore`` are left alone. Attention modules lose whole heads as in
:mod:`harness.pruning.structured` (the same ratio of heads, a head's score the mean of its rows'
scores in the group of ``q``), never single dimensions of a head.

``E(u)`` is the energy (pJ per inference, :mod:`harness.energy`) saved by removing ``u``: for each
member of its group,

* its row in a producing layer ``m`` (output unit): ``nnz(row) * (P_m * fp32_mac + dram) +
  P_m * sram_write`` (its incoming weights, their MACs, its output activations),
* its column(s) in a consuming layer ``c`` (input unit; a flatten maps one channel to several
  columns): ``nnz(col) * (P_c * fp32_mac + dram) + input_per_unit_c * sram_read`` (its outgoing
  weights, their MACs, the reads of its activations),

which is exactly ``estimate(before) - estimate(after removing u)`` (biases, ReLU and flatten are
free in the energy model). Members that are not energy-modelled layers add nothing; the input
side of grouped convolutions is not counted (the harness models have none).

``I(u)`` is Torch-Pruning's group importance: ``"magnitude"`` (default) is
``GroupMagnitudeImportance(p=2)``, the squared L2 norm of the unit's weights in each member layer,
averaged over the members; ``"taylor"`` is ``GroupTaylorImportance``, ``sum |w * dL/dw|`` over the
unit's weights averaged over the members, with the gradient of the mean cross-entropy over the
first ``batches * batch_size`` training samples. Normalisation: ``Ihat(u) = I(u) / mean_group(I)``,
the importance divided by the mean importance of the units of its layer (Torch-Pruning's
``"mean"`` normaliser), so every layer's importances average 1 whatever its fan-in or weight
scale; the energies are in a common unit (pJ) and are not normalised. Globally, a layer is thus
pruned more where its units cost more energy, and within a layer the ranking is importance per
pJ (in a dense layer, where all units cost the same, plain importance).

Selection (per call, with the cumulative target converted to a ratio ``r`` of the units there now,
as in :mod:`harness.pruning.structured`): ``"layer"`` removes the ``n - int(n * (1 - r))`` lowest
scores of each layer of ``n`` units; ``"global"`` removes the ``N - int(N * (1 - r))`` lowest of
all ``N`` units, exactly that many (stable order on ties). Every layer keeps at least
``max(1, ceil(5 %))`` of its first-round units (Torch-Pruning's ``max_pruning_ratio = 0.95``):
the ratio criterion can rank a whole layer below the others (random-init importances are
narrowly spread), and Torch-Pruning's ``BasePruner`` silently skips a group that would lose all
its units, missing the target. The selection is therefore done here, on Torch-Pruning's groups,
and each layer's units are removed with ``DependencyGraph.get_pruning_group(...).prune()``.
With ``beta = 1`` the energy term dominates when importances are narrowly spread: on a
digits-trained ``mlp(64, 10, hidden=[256, 128])`` at 50 % global (no fine-tuning) the second hidden
layer (266 weights per unit against 192) drops to its 5 % floor; ``beta = 0.25`` keeps accuracy
level with plain structured pruning at lower energy. ``"layer"`` scope is unaffected by ``beta``
when the layers are dense.
Deterministic: no randomness (Taylor gradients on the first training samples, model in eval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from harness import inputs
from harness.energy import COSTS_PJ, LayerTrace, layer_traces, weight_cost_pj
from harness.inputs import Batch
from harness.pruning.base import (
    PRUNABLE,
    GradientArgs,
    IgnoreArgs,
    PruneContext,
    PruneError,
    Pruner,
    batch_of,
    example_of,
    first_rows,
    ignored_layers,
    labels,
    lowest_within_caps,
    non_negative,
    ratio_of_remaining,
    weight,
)
from harness.pruning.registry import register
from harness.pruning.structured import (
    MAX_PRUNING_RATIO,
    attention_modules,
    attention_projections,
    head_plan,
    remove_heads,
    store_gradients,
)
from harness.schema import option
from harness.spec import PruneSpec

BaseImportance = Literal["magnitude", "taylor"]
MAX_LAYER_RATIO = MAX_PRUNING_RATIO  # a layer keeps max(1, ceil(5 %)) of its first-round units
_OUT = (
    function.prune_linear_out_channels,
    function.prune_conv_out_channels,
    function.prune_depthwise_conv_out_channels,
)
_IN = (function.prune_linear_in_channels, function.prune_conv_in_channels)


@dataclass(frozen=True)
class EnergyAwareArgs(IgnoreArgs, GradientArgs):
    """The base ``importance`` (its Taylor gradients over ``batches`` mini-batches of
    ``batch_size`` training rows), the ``energy_exponent`` ``beta``; ``ignore``."""

    importance: BaseImportance = "magnitude"
    energy_exponent: float = option(1.0, check=non_negative)


def group_energy_saved(group: Any, traces: Mapping[nn.Module, LayerTrace]) -> torch.Tensor:
    """Energy (pJ per inference) saved by removing each unit of a Torch-Pruning ``group``
    (one entry per root index), as defined in the module docstring."""
    n = len(group[0].root_idxs)
    saved = torch.zeros(n, dtype=torch.float64)
    for i, (dep, idxs) in enumerate(group):
        layer, fn = dep.target.module, dep.handler
        if not isinstance(layer, PRUNABLE) or layer not in traces:
            continue
        trace = traces[layer]
        w = weight(layer).detach()
        if fn in _OUT:
            nnz = (w[idxs].flatten(1) != 0).sum(1)
            activations = float(trace.positions * COSTS_PJ["sram_write_32b"])
        elif fn in _IN and getattr(layer, "groups", 1) == 1:
            nnz = (w.transpose(0, 1)[idxs].flatten(1) != 0).sum(1)
            activations = float(trace.input_per_unit * COSTS_PJ["sram_read_32b"])
        else:
            continue
        per_unit = nnz.double() * weight_cost_pj(trace.positions) + activations
        root = torch.as_tensor(group[i].root_idxs, dtype=torch.long)
        saved.scatter_add_(0, root, per_unit)
    return saved


class EnergyAwareImportance(tp.importance.Importance):
    """Torch-Pruning importance ``Ihat(u) / E(u) ** exponent`` (lowest pruned first), see the
    module docstring.

    ``base`` must return raw (unnormalised) group importances; ``traces`` are the activation
    counts of the model being pruned (:func:`harness.energy.layer_traces`).
    """

    def __init__(
        self,
        base: tp.importance.Importance,
        traces: Mapping[nn.Module, LayerTrace],
        exponent: float = EnergyAwareArgs.energy_exponent,
    ) -> None:
        self.base = base
        self.traces = traces
        self.exponent = exponent

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        imp = self.base(group)
        if imp is None:
            return None
        imp = imp.double()
        mean = imp.mean()
        normalised = imp / mean if mean > 0 else imp
        energy = group_energy_saved(group, self.traces).to(imp.device)
        return normalised / energy.clamp_min(1e-12) ** self.exponent


def unit_energy_saved(model: nn.Module, example: Batch, layer: nn.Module) -> torch.Tensor:
    """Energy (pJ per inference) saved by removing each output unit of ``layer`` (and everything
    that depends on it) from ``model``."""
    first = inputs.example_inputs(inputs.take(example, slice(0, 1)))
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=first, output_transform=inputs.logits_of
    )
    fn = function.prune_linear_out_channels
    if isinstance(layer, nn.modules.conv._ConvNd):
        fn = function.prune_conv_out_channels
    units = dg.get_out_channels(layer)
    group = dg.get_pruning_group(layer, fn, idxs=list(range(units)))
    return group_energy_saved(group, layer_traces(model, example))


def _base_importance(kind: BaseImportance) -> tp.importance.Importance:
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=None)
    return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)


@register
class EnergyAwarePruner(Pruner):
    name = "energy-aware"
    summary = "Structured: remove neurons/channels of lowest importance per pJ of energy saved."
    reference = (
        "Yang, Chen & Sze 2017, Designing Energy-Efficient Convolutional Neural Networks using "
        "Energy-Aware Pruning; Horowitz 2014, Computing's energy problem"
    )
    structured = True
    Args = EnergyAwareArgs
    args: EnergyAwareArgs

    def __init__(self, spec: PruneSpec) -> None:
        super().__init__(spec)
        self.reached = 0.0
        self.initial: dict[str, int] = {}  # units of each layer at the first round
        self.initial_heads: dict[str, int] = {}  # heads of each attention module, first round

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        ratio = ratio_of_remaining(self.reached, target)
        self.reached = target
        if ratio <= 0:
            return model
        kind = self.args.importance
        if kind == "taylor":
            n = self.args.batches * self.args.batch_size  # the rows the mini-batches take
            used = store_gradients(
                model,
                batch_of(first_rows(ctx.X_train, n), ctx.device, torch.float32),
                labels(ctx.y_train[:n], ctx.device).long(),
                batches=self.args.batches,
                batch_size=self.args.batch_size,
            )
            if not used:
                raise PruneError("energy-aware: taylor importance needs training samples")
        importance = EnergyAwareImportance(
            _base_importance(kind),
            layer_traces(model, ctx.example),
            self.args.energy_exponent,
        )
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_of(ctx), output_transform=inputs.logits_of
        )
        names = {m: n for n, m in model.named_modules()}
        scored: list[_Scored] = []
        ignored = ignored_layers(model, self.args.ignore)
        # attention modules lose whole heads (harness.pruning.structured), scored by the mean
        # of their rows' importance per pJ; their q / k / v groups are left out of the units
        attentions = attention_modules(model)
        kept = {id(m) for m in ignored}
        heads = [a for a in attentions if not any(id(p) in kept for p in a.projections)]
        plan_heads = head_plan(dg, heads, importance, ratio, self.spec.scope, self.initial_heads)
        ignored = ignored + attention_projections(attentions)
        for group in dg.get_all_groups(ignored_layers=ignored):
            scores = importance(group)
            if scores is None:
                continue
            dep = group[0].dep
            name, units = names[dep.target.module], len(scores)
            floor = max(1, math.ceil((1 - MAX_LAYER_RATIO) * self.initial.setdefault(name, units)))
            scored.append(_Scored(dep.target.module, dep.handler, scores, max(0, units - floor)))
        plan = (
            _select_global(scored, ratio)
            if self.spec.scope == "global"
            else _select_layer(scored, ratio)
        )
        remove_heads(dg, plan_heads)
        for item, idxs in zip(scored, plan, strict=True):
            if idxs:  # regrouped now: earlier prunings changed the other layers' input sizes
                dg.get_pruning_group(item.module, item.handler, idxs).prune()
        model.zero_grad(set_to_none=True)
        return model


@dataclass(frozen=True, eq=False)
class _Scored:
    """One prunable group: its root layer and pruning function, unit scores (lowest pruned
    first) and how many of its units may still go (the per-layer cap)."""

    module: nn.Module
    handler: Any
    scores: torch.Tensor
    removable: int


def _select_layer(scored: Sequence[_Scored], ratio: float) -> list[list[int]]:
    """Per layer: the ``n - int(n * (1 - ratio))`` lowest scores (capped), stable order."""
    plan = []
    for item in scored:
        n = len(item.scores)
        k = min(n - int(n * (1 - ratio)), item.removable)
        plan.append(sorted(torch.argsort(item.scores, stable=True)[:k].tolist()))
    return plan


def _select_global(scored: Sequence[_Scored], ratio: float) -> list[list[int]]:
    """Across layers: the ``N - int(N * (1 - ratio))`` lowest scores of all ``N`` units (stable
    order), no layer beyond its cap."""
    n = sum(len(item.scores) for item in scored)
    return lowest_within_caps(
        [item.scores for item in scored],
        n - int(n * (1 - ratio)),
        [item.removable for item in scored],
    )
