"""Sparsity-inducing regularization during training, followed by threshold pruning.

Before the first pruning round the trained dense model is trained further for ``epochs`` epochs
(learning rate ``lr``, Adam, cosine schedule, the suite's batch size) on the training fold with a
penalty ``strength * R(W)`` added to the cross-entropy, summed over the weights of all prunable
layers (biases are not penalized):

- ``l1``: ``R = sum |w|`` (lasso; drives weights to exactly-small values, Han et al. 2015 §3.1),
- ``l2``: ``R = sum w ** 2`` (weight decay; shrinks, the regularizer Han et al. found best for
  pruning with retraining),
- ``group-lasso``: ``R = sum_g sqrt(|g|) * ||w_g||_2`` over the groups ``g`` = the incoming
  weights of each output neuron / channel (Wen et al. 2016, structured sparsity learning; Yuan &
  Lin 2006 weight ``sqrt(|g|)``), the final classifier excluded since it is never pruned.

Then threshold pruning: the weights (l1, l2) or the neurons / channels (group-lasso, through the
dependency graph as in ``structured``) below the magnitude threshold that yields the target
sparsity are removed. Later rounds of an iterative schedule prune without regularizing again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from harness.pruning.base import (
    IgnoreArgs,
    MaskArgs,
    MaskPruner,
    PruneContext,
    count,
    layers_to_prune,
    non_negative,
    positive,
    prunable_modules,
    weight,
)
from harness.pruning.magnitude import magnitude_scores
from harness.pruning.registry import register
from harness.pruning.structured import StructuralPruner
from harness.schema import option
from harness.spec import PruneSpec, TrainSpec


@dataclass(frozen=True)
class RegularizedArgs(IgnoreArgs):
    """The regularized training phase: penalty ``strength``, ``epochs``, Adam's ``lr``; the
    penalty leaves the layers in ``ignore`` alone."""

    strength: float = option(1e-3, check=non_negative)
    epochs: int = option(10, check=count)
    lr: float = option(1e-3, check=positive)


@dataclass(frozen=True)
class L2Args(MaskArgs, RegularizedArgs):
    """``strength``, ``epochs``, ``lr``; ``max_layer``."""


@dataclass(frozen=True)
class L1Args(L2Args):
    """``strength`` 1e-4 by default (L2's: 1e-3); ``epochs``, ``lr``; ``max_layer``."""

    strength: float = option(1e-4, check=non_negative)


@dataclass(frozen=True)
class GroupLassoArgs(RegularizedArgs):
    """``strength``, ``epochs``, ``lr``; ``ignore``."""


def l1_penalty(model: nn.Module, ignore: Sequence[str] = ()) -> torch.Tensor:
    """Sum of absolute weights of the prunable layers not in ``ignore``."""
    layers = layers_to_prune(model, ignore)
    return sum((weight(m).abs().sum() for _, m in layers), torch.tensor(0.0))


def l2_penalty(model: nn.Module, ignore: Sequence[str] = ()) -> torch.Tensor:
    """Sum of squared weights of the prunable layers not in ``ignore``."""
    layers = layers_to_prune(model, ignore)
    return sum((weight(m).pow(2).sum() for _, m in layers), torch.tensor(0.0))


def group_lasso_penalty(model: nn.Module, ignore: Sequence[str] = ()) -> torch.Tensor:
    """``sum_g sqrt(|g|) * ||w_g||_2`` over output neurons / channels of all prunable layers but
    the last (the classifier) and those in ``ignore``."""
    total = torch.tensor(0.0)
    last = prunable_modules(model)[-1][1]
    for _, m in layers_to_prune(model, ignore):
        if m is last:
            continue
        rows = weight(m).flatten(1)
        total = total + math.sqrt(rows.shape[1]) * rows.norm(dim=1).sum()
    return total


PENALTIES = {"l1": l1_penalty, "l2": l2_penalty, "group-lasso": group_lasso_penalty}


def l2_norm_importance(model: nn.Module, ctx: PruneContext, args: GroupLassoArgs) -> Any:
    """Torch-Pruning's ``GroupMagnitudeImportance(p=2)``: what the group lasso shrinks."""
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


class _Regularize:
    """Mixin: the regularized training phase, run once before the first pruning round."""

    spec: PruneSpec
    args: RegularizedArgs
    name: ClassVar[str]

    def regularize(self, model: nn.Module, ctx: PruneContext) -> None:
        if getattr(self, "_done", False):
            return
        self._done = True
        strength = self.args.strength
        if strength == 0:
            return
        base = ctx.train or TrainSpec()
        spec = replace(
            base,
            epochs=self.args.epochs,
            lr=self.args.lr,
            optimizer="adam",
            scheduler="cosine",
            weight_decay=0.0,
        )
        from harness.training import fit

        penalty, ignore = PENALTIES[self.name], self.args.ignore
        fit(
            model,
            ctx.X_train,
            ctx.y_train,
            spec,
            seed=ctx.seed + 7,
            device=ctx.device,
            penalty=lambda m: strength * penalty(m, ignore),  # ignored layers: not shrunk
        )


class _UnstructuredRegularized(_Regularize, MaskPruner):
    """Magnitude masks after the regularized training."""

    args: L2Args
    criterion = staticmethod(magnitude_scores)

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        self.regularize(model, ctx)
        return super().step(model, target, ctx)


@register
class L1Pruner(_UnstructuredRegularized):
    name = "l1"
    summary = "Unstructured: train with an L1 penalty, then remove weights below the threshold."
    reference = "Han et al. 2015, Learning both Weights and Connections (L1/L2 regularization)"
    Args = L1Args
    args: L1Args


@register
class L2Pruner(_UnstructuredRegularized):
    name = "l2"
    summary = "Unstructured: train with an L2 penalty, then remove weights below the threshold."
    reference = "Han et al. 2015, Learning both Weights and Connections (L1/L2 regularization)"
    Args = L2Args


@register
class GroupLassoPruner(_Regularize, StructuralPruner):
    name = "group-lasso"
    summary = "Structured: train with a group-lasso penalty per neuron/channel, remove weak ones."
    reference = "Wen et al. 2016, Learning Structured Sparsity in Deep Neural Networks"
    Args = GroupLassoArgs
    args: GroupLassoArgs
    importance = staticmethod(l2_norm_importance)

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        self.regularize(model, ctx)
        return super().step(model, target, ctx)
