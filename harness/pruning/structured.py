"""Structured neuron / channel pruning with dependency handling by Torch-Pruning.

The model really gets smaller: whole output neurons of linear layers and output channels of
convolutions are removed together with everything that depends on them (the inputs of the next
layer, biases, flatten -> linear blocks). ``sparsity`` is the fraction of neurons / channels removed
from every prunable layer (``scope = "layer"``) or across layers (``scope = "global"``). The final
classifier layer keeps its outputs, and so do the layers named in ``args.ignore``.

:class:`StructuralPruner` is the one generic pruner; a technique names the Torch-Pruning
importance that ranks the groups (a neuron / channel with everything that depends on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

import torch
from torch import nn

from harness.pruning.base import (
    GradientArgs,
    IgnoreArgs,
    PruneContext,
    Pruner,
    PrunerArgs,
    accumulate_gradients,
    ignored_layers,
    ratio_of_remaining,
)
from harness.pruning.registry import register
from harness.spec import PruneSpec

# The Torch-Pruning importance of a technique (``tp.importance.Importance``) from the model as it
# is at this round, the context and the technique's args; a class attribute holds it as a
# ``staticmethod``
Importance: TypeAlias = "staticmethod[[nn.Module, PruneContext, Any], Any]"


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

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        import torch_pruning as tp

        ratio = ratio_of_remaining(self.reached, target)
        self.reached = target
        if ratio <= 0:
            return model
        ignored = ignored_layers(model, self.args.ignore)
        importance = type(self).importance(model, ctx, self.args)
        pruner = tp.pruner.BasePruner(
            model,
            ctx.example[:1],
            importance=importance,
            pruning_ratio=ratio,
            global_pruning=self.spec.scope == "global",
            max_pruning_ratio=0.95,
            ignored_layers=ignored,
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
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, batches: int, batch_size: int
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

    store_gradients(
        model,
        torch.as_tensor(ctx.X_train),
        torch.as_tensor(ctx.y_train),
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
