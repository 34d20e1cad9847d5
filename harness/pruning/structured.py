"""Structured neuron / channel pruning with dependency handling by Torch-Pruning.

The model really gets smaller: whole output neurons of linear layers and output channels of
convolutions are removed together with everything that depends on them (the inputs of the next
layer, biases, flatten -> linear blocks). ``sparsity`` is the fraction of neurons / channels removed
from every prunable layer (``scope = "layer"``) or across layers (``scope = "global"``). The final
classifier layer keeps its outputs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from harness.pruning.base import (
    PruneContext,
    Pruner,
    ignored_layers,
    module_names_problem,
    positive_int_problem,
    ratio_of_remaining,
)
from harness.pruning.registry import register
from harness.spec import PruneSpec


@register
class StructuredMagnitudePruner(Pruner):
    name = "structured"
    summary = "Structured: remove whole neurons/channels of smallest L2 norm (dependency graph)."
    reference = "Li et al. 2017, Pruning Filters for Efficient ConvNets; Fang et al. 2023, DepGraph"
    structured = True
    arg_names: ClassVar[tuple[str, ...]] = ("norm", "ignore")

    def __init__(self, spec: PruneSpec) -> None:
        super().__init__(spec)
        self.reached = 0.0

    @classmethod
    def check(cls, spec: PruneSpec) -> str | None:
        if (problem := super().check(spec)) is not None:
            return problem
        norm = spec.args.get("norm", 2)
        if norm not in (1, 2):
            return f"norm = {norm!r}: must be 1 or 2"
        return module_names_problem(spec.args)

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        import torch_pruning as tp

        ratio = ratio_of_remaining(self.reached, target)
        self.reached = target
        if ratio <= 0:
            return model
        ignored = ignored_layers(model, self.spec.args.get("ignore", []))
        importance = self.importance(model, ctx)
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

    def importance(self, model: nn.Module, ctx: PruneContext) -> Any:
        """The Torch-Pruning importance that ranks the groups (neuron / channel + dependents)."""
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=self.spec.args.get("norm", 2))


@register
class StructuredTaylorPruner(StructuredMagnitudePruner):
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
    arg_names: ClassVar[tuple[str, ...]] = ("batches", "batch_size", "ignore")

    @classmethod
    def check(cls, spec: PruneSpec) -> str | None:
        # the generic key check of Pruner, not the parent's norm check
        if (problem := super(StructuredMagnitudePruner, cls).check(spec)) is not None:
            return problem
        return positive_int_problem(spec.args, "batches", "batch_size") or module_names_problem(
            spec.args
        )

    def importance(self, model: nn.Module, ctx: PruneContext) -> Any:
        import torch_pruning as tp

        accumulate_gradients(
            model,
            torch.as_tensor(ctx.X_train),
            torch.as_tensor(ctx.y_train),
            batches=int(self.spec.args.get("batches", 8)),
            batch_size=int(self.spec.args.get("batch_size", 128)),
        )
        return tp.importance.GroupTaylorImportance(multivariable=True)


def accumulate_gradients(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, batches: int, batch_size: int
) -> int:
    """Leave in every parameter's ``.grad`` the gradient of the mean cross-entropy over the first
    ``batches`` mini-batches (eval mode: no dropout noise); returns the number of batches."""
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    starts = list(range(0, min(len(X), batches * batch_size), batch_size))
    with torch.enable_grad():
        for start in starts:
            xb, yb = X[start : start + batch_size], y[start : start + batch_size]
            (nn.functional.cross_entropy(model(xb), yb) / len(starts)).backward()
    model.train(was_training)
    return len(starts)
