"""Structured neuron / channel pruning with dependency handling by Torch-Pruning.

The model really gets smaller: whole output neurons of linear layers and output channels of
convolutions are removed together with everything that depends on them (the inputs of the next
layer, biases, flatten -> linear blocks). ``sparsity`` is the fraction of neurons / channels removed
from every prunable layer (``scope = "layer"``) or across layers (``scope = "global"``). The final
classifier layer keeps its outputs, and so do the layers named in ``args.ignore``.

Attention. A module with separate ``q``, ``k``, ``v`` ``nn.Linear`` children of equal width and a
``head_dim`` (also found: ``query`` / ``key`` / ``value`` or ``q_proj`` / ``k_proj`` / ``v_proj``
children, ``attention_head_size``) loses whole heads: the same ``head_dim`` rows of ``q``, ``k``
and ``v`` and the matching input columns of the output projection, never single dimensions of
a head, so a module that derives its head count from ``q.out_features // head_dim`` keeps working
(an ``int`` attribute ``num_heads`` / ``num_attention_heads`` / ``all_head_size`` is updated).
A head's importance is the mean of the technique's importance over its rows of the
Torch-Pruning group of ``q`` (which holds ``k``, ``v`` and the output projection's inputs); the
same ratio of heads goes as of units, per module (``"layer"``) or ranked over all attention
modules (``"global"``), and every module keeps at least ``max(1, ceil(5 %))`` of its first-round
heads. The other groups (MLP hidden units, the residual width, channels) are pruned as usual.

:class:`StructuralPruner` is the one generic pruner; a technique names the Torch-Pruning
importance that ranks the groups (a neuron / channel with everything that depends on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

import torch
from torch import nn

from harness.inputs import Batch, logits_of
from harness.pruning.base import (
    GradientArgs,
    IgnoreArgs,
    PruneContext,
    Pruner,
    PrunerArgs,
    accumulate_gradients,
    batch_of,
    example_of,
    first_rows,
    ignored_layers,
    labels,
    lowest_within_caps,
    ratio_of_remaining,
)
from harness.pruning.registry import register
from harness.spec import PruneSpec

# The Torch-Pruning importance of a technique (``tp.importance.Importance``) from the model as it
# is at this round, the context and the technique's args; a class attribute holds it as a
# ``staticmethod``
Importance: TypeAlias = "staticmethod[[nn.Module, PruneContext, Any], Any]"

MAX_PRUNING_RATIO = 0.95  # Torch-Pruning's cap per layer and round; heads: of the first round
_QKV_NAMES = (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))
_HEAD_DIM_NAMES = ("head_dim", "attention_head_size")
# int attributes counting heads (1 per head) or their rows (0: head_dim per head)
_HEAD_COUNT_NAMES = (("num_heads", 1), ("num_attention_heads", 1), ("all_head_size", 0))


# --------------------------------------------------------------------------------------------
# Attention heads


@dataclass(frozen=True, eq=False)
class Attention:
    """A multi-head attention module whose heads can be removed whole: its ``q``, ``k``, ``v``
    projections (equal widths, a multiple of ``head_dim``)."""

    name: str
    module: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    head_dim: int

    @property
    def heads(self) -> int:
        return self.q.out_features // self.head_dim

    @property
    def projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.q, self.k, self.v

    def head_rows(self, heads: Sequence[int]) -> list[int]:
        """The output rows of ``q`` (and ``k``, ``v``) of ``heads``."""
        d = self.head_dim
        return [h * d + j for h in sorted(heads) for j in range(d)]

    def removed(self, n: int) -> None:
        """Update the module's own head-count attributes after ``n`` heads went."""
        for attr, per_head in _HEAD_COUNT_NAMES:
            value = getattr(self.module, attr, None)
            derived = isinstance(getattr(type(self.module), attr, None), property)
            if isinstance(value, int) and not isinstance(value, bool) and not derived:
                setattr(self.module, attr, value - n * (per_head or self.head_dim))


def attention_modules(model: nn.Module) -> list[Attention]:
    """The attention modules of ``model`` whose heads can be removed whole (module docstring).
    Grouped-query attention (``k`` / ``v`` narrower than ``q``) is not among them."""
    found = []
    for name, m in model.named_modules():
        head_dim = next(
            (
                v
                for a in _HEAD_DIM_NAMES
                if isinstance(v := getattr(m, a, None), int) and not isinstance(v, bool)
            ),
            None,
        )
        if head_dim is None or head_dim < 1:
            continue
        for names in _QKV_NAMES:
            q, k, v = (getattr(m, n, None) for n in names)
            if not all(isinstance(p, nn.Linear) for p in (q, k, v)):
                continue
            assert isinstance(q, nn.Linear) and isinstance(k, nn.Linear)
            assert isinstance(v, nn.Linear)
            width = q.out_features
            if k.out_features == width == v.out_features and width % head_dim == 0:
                found.append(Attention(name, m, q, k, v, head_dim))
            break
    return found


def attention_projections(attentions: Sequence[Attention]) -> list[nn.Module]:
    """The ``q``, ``k``, ``v`` layers of ``attentions``: ignored by the width pruning, whose
    group of ``q`` would otherwise lose single dimensions of a head."""
    return [p for a in attentions for p in a.projections]


@dataclass(frozen=True, eq=False)
class _Heads:
    """Per-head scores (lowest pruned first) of one attention module, and how many of its heads
    may still go."""

    attention: Attention
    scores: torch.Tensor
    removable: int


def head_plan(
    dg: Any,
    attentions: Sequence[Attention],
    score: Callable[[Any], torch.Tensor | None],
    ratio: float,
    scope: str,
    initial: dict[str, int],
) -> list[tuple[Attention, list[int]]]:
    """Which heads of every attention module go (``(attention, heads)``, heads sorted): the
    ``n - int(n * (1 - ratio))`` of lowest score per module (``"layer"``) or of all ``n`` heads
    (``"global"``), each module keeping ``max(1, ceil(5 %))`` of its ``initial`` heads (filled
    in at the first round). ``score(group)`` gives one score per row of ``q`` (None: the module
    keeps its heads); a head's score is the mean over its rows."""
    import torch_pruning as tp

    fn = tp.pruner.function.prune_linear_out_channels
    scored: list[_Heads] = []
    for a in attentions:
        n = a.heads
        if n < 1:
            continue
        s = score(dg.get_pruning_group(a.q, fn, list(range(a.q.out_features))))
        if s is None:
            continue
        per_head = s.detach().double().cpu().view(n, a.head_dim).mean(1)
        floor = max(1, math.ceil((1 - MAX_PRUNING_RATIO) * initial.setdefault(a.name, n)))
        scored.append(_Heads(a, per_head, max(0, n - floor)))
    if scope == "global":
        total = sum(len(h.scores) for h in scored)
        plan = lowest_within_caps(
            [h.scores for h in scored],
            total - int(total * (1 - ratio)),
            [h.removable for h in scored],
        )
    else:
        plan = []
        for h in scored:
            n = len(h.scores)
            k = min(n - int(n * (1 - ratio)), h.removable)
            plan.append(sorted(torch.argsort(h.scores, stable=True)[:k].tolist()))
    return [(h.attention, heads) for h, heads in zip(scored, plan, strict=True) if heads]


def remove_heads(dg: Any, plan: Sequence[tuple[Attention, list[int]]]) -> None:
    """Remove the planned heads: their rows of ``q`` with everything Torch-Pruning groups with
    them (the same rows of ``k`` and ``v``, the output projection's inputs)."""
    import torch_pruning as tp

    fn = tp.pruner.function.prune_linear_out_channels
    for attention, heads in plan:
        group = dg.get_pruning_group(attention.q, fn, attention.head_rows(heads))
        if not dg.check_pruning_group(group):
            continue
        group.prune()
        attention.removed(len(heads))


class StructuralPruner(Pruner):
    """Removes the groups of lowest :attr:`importance` with Torch-Pruning's ``BasePruner``
    (``max_pruning_ratio = 0.95`` per layer), ``ignore`` and the classifier left alone. The
    cumulative target of each round becomes a ratio of the units there now."""

    structured = True
    Args: ClassVar[type[PrunerArgs]] = IgnoreArgs
    args: IgnoreArgs
    importance: ClassVar[Importance]

    def __init__(self, spec: PruneSpec) -> None:
        super().__init__(spec)
        self.reached = 0.0
        self.initial_heads: dict[str, int] = {}  # heads of each attention module, first round

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        import torch_pruning as tp

        ratio = ratio_of_remaining(self.reached, target)
        self.reached = target
        if ratio <= 0:
            return model
        ignored = ignored_layers(model, self.args.ignore)
        importance = type(self).importance(model, ctx, self.args)
        example = example_of(ctx)
        attentions = attention_modules(model)
        if attentions:
            kept = {id(m) for m in ignored}
            heads = [a for a in attentions if not any(id(p) in kept for p in a.projections)]
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example, output_transform=logits_of
            )
            scope = self.spec.scope
            remove_heads(dg, head_plan(dg, heads, importance, ratio, scope, self.initial_heads))
            ignored = ignored + attention_projections(attentions)
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=importance,
            pruning_ratio=ratio,
            global_pruning=self.spec.scope == "global",
            max_pruning_ratio=MAX_PRUNING_RATIO,
            ignored_layers=ignored,
            output_transform=logits_of,  # a Hugging Face style output: its logits
        )
        pruner.step()
        model.zero_grad(set_to_none=True)
        return model


@dataclass(frozen=True)
class StructuredArgs(IgnoreArgs):
    """``norm``: of the units' weights (L1 or L2); ``ignore``."""

    norm: Literal[1, 2] = 2


def magnitude_importance(model: nn.Module, ctx: PruneContext, args: StructuredArgs) -> Any:
    """Torch-Pruning's ``GroupMagnitudeImportance`` with the ``norm`` of the args."""
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=args.norm)


@register
class StructuredMagnitudePruner(StructuralPruner):
    name = "structured"
    summary = "Structured: remove whole neurons/channels of smallest L2 norm (dependency graph)."
    reference = "Li et al. 2017, Pruning Filters for Efficient ConvNets; Fang et al. 2023, DepGraph"
    Args = StructuredArgs
    args: StructuredArgs
    importance = staticmethod(magnitude_importance)


@dataclass(frozen=True)
class StructuredTaylorArgs(IgnoreArgs, GradientArgs):
    """``batches`` mini-batches of ``batch_size`` training rows; ``ignore``."""


def store_gradients(
    model: nn.Module, X: Batch, y: torch.Tensor, *, batches: int, batch_size: int
) -> int:
    """Leave in every parameter's ``.grad`` the gradient of the mean cross-entropy over the first
    ``batches`` mini-batches (eval mode: no dropout noise; ``None`` where the loss does not reach
    the parameter); returns the number of batches."""
    model.zero_grad(set_to_none=True)
    params = [p for p in model.parameters() if p.requires_grad]
    summed = accumulate_gradients(
        model, X, y, params, batches=batches, batch_size=batch_size, mean=True
    )
    for p, g in zip(params, summed.sums, strict=True):
        p.grad = g
    return summed.batches


def taylor_importance(model: nn.Module, ctx: PruneContext, args: StructuredTaylorArgs) -> Any:
    """Torch-Pruning's ``GroupTaylorImportance(multivariable=True)`` on the gradients of
    :func:`store_gradients` over the training fold."""
    import torch_pruning as tp

    n = args.batches * args.batch_size  # the rows the mini-batches take
    store_gradients(
        model,
        batch_of(first_rows(ctx.X_train, n), ctx.device),
        labels(ctx.y_train[:n], ctx.device),
        batches=args.batches,
        batch_size=args.batch_size,
    )
    return tp.importance.GroupTaylorImportance(multivariable=True)


@register
class StructuredTaylorPruner(StructuralPruner):
    """First-order Taylor importance of whole neurons / channels (Molchanov et al. 2019).

    The importance of a unit is the first-order estimate of the loss change when its output is
    removed: ``|sum_s g_s * w_s|`` over the unit's parameters ``s`` in every layer of its
    dependency group (Torch-Pruning's ``GroupTaylorImportance(multivariable=True)``), with ``g``
    the gradient of the mean cross-entropy over ``batches`` mini-batches of ``batch_size``
    training rows, computed on the model as it is at each round.
    """

    name = "structured-taylor"
    summary = "Structured: remove neurons/channels of smallest first-order Taylor importance."
    reference = "Molchanov et al. 2019, Importance Estimation for Neural Network Pruning"
    Args = StructuredTaylorArgs
    args: StructuredTaylorArgs
    importance = staticmethod(taylor_importance)
