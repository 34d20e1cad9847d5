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
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from harness.pruning.base import MaskPruner, PruneContext, prunable_modules, weight
from harness.pruning.registry import register
from harness.pruning.structured import StructuredMagnitudePruner
from harness.spec import PruneSpec, TrainSpec

_ARGS = ("strength", "epochs", "lr")
_DEFAULT_STRENGTH = {"l1": 1e-4, "l2": 1e-3, "group-lasso": 1e-3}


def l1_penalty(model: nn.Module) -> torch.Tensor:
    return sum((weight(m).abs().sum() for _, m in prunable_modules(model)), torch.tensor(0.0))


def l2_penalty(model: nn.Module) -> torch.Tensor:
    return sum((weight(m).pow(2).sum() for _, m in prunable_modules(model)), torch.tensor(0.0))


def group_lasso_penalty(model: nn.Module) -> torch.Tensor:
    """``sum_g sqrt(|g|) * ||w_g||_2`` over output neurons / channels of all prunable layers but
    the last (the classifier)."""
    total = torch.tensor(0.0)
    for _, m in prunable_modules(model)[:-1]:
        rows = weight(m).flatten(1)
        total = total + math.sqrt(rows.shape[1]) * rows.norm(dim=1).sum()
    return total


PENALTIES = {"l1": l1_penalty, "l2": l2_penalty, "group-lasso": group_lasso_penalty}


def _check_args(spec: PruneSpec) -> str | None:
    strength = spec.args.get("strength", 1e-3)
    if not isinstance(strength, int | float) or isinstance(strength, bool) or strength < 0:
        return f"strength = {strength!r}: must be a number >= 0"
    epochs = spec.args.get("epochs", 1)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        return f"epochs = {epochs!r}: must be a positive integer"
    lr = spec.args.get("lr", 1e-3)
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not 0 < lr < math.inf:
        return f"lr = {lr!r}: must be a number > 0"
    return None


class _Regularize:
    """Mixin: the regularized training phase, run once before the first pruning round."""

    spec: PruneSpec
    name: ClassVar[str]

    def regularize(self, model: nn.Module, ctx: PruneContext) -> None:
        if getattr(self, "_done", False):
            return
        self._done = True
        strength = float(self.spec.args.get("strength", _DEFAULT_STRENGTH[self.name]))
        if strength == 0:
            return
        base = ctx.train or TrainSpec()
        spec = replace(
            base,
            epochs=int(self.spec.args.get("epochs", 10)),
            lr=float(self.spec.args.get("lr", 1e-3)),
            optimizer="adam",
            scheduler="cosine",
            weight_decay=0.0,
        )
        from harness.training import fit

        penalty = PENALTIES[self.name]
        fit(
            model,
            ctx.X_train,
            ctx.y_train,
            spec,
            seed=ctx.seed + 7,
            penalty=lambda m: strength * penalty(m),
        )


class _UnstructuredRegularized(_Regularize, MaskPruner):
    arg_names: ClassVar[tuple[str, ...]] = _ARGS

    @classmethod
    def check(cls, spec: PruneSpec) -> str | None:
        return super().check(spec) or _check_args(spec)

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        self.regularize(model, ctx)
        return super().step(model, target, ctx)

    def scores(self, model: nn.Module, ctx: PruneContext) -> Mapping[nn.Module, torch.Tensor]:
        return {m: weight(m).abs() for _, m in prunable_modules(model)}


@register
class L1Pruner(_UnstructuredRegularized):
    name = "l1"
    summary = "Unstructured: train with an L1 penalty, then remove weights below the threshold."
    reference = "Han et al. 2015, Learning both Weights and Connections (L1/L2 regularization)"


@register
class L2Pruner(_UnstructuredRegularized):
    name = "l2"
    summary = "Unstructured: train with an L2 penalty, then remove weights below the threshold."
    reference = "Han et al. 2015, Learning both Weights and Connections (L1/L2 regularization)"


@register
class GroupLassoPruner(_Regularize, StructuredMagnitudePruner):
    name = "group-lasso"
    summary = "Structured: train with a group-lasso penalty per neuron/channel, remove weak ones."
    reference = "Wen et al. 2016, Learning Structured Sparsity in Deep Neural Networks"
    arg_names: ClassVar[tuple[str, ...]] = (*_ARGS, "ignore")

    @classmethod
    def check(cls, spec: PruneSpec) -> str | None:
        # the generic key check of Pruner, not the parent's norm check
        return super(StructuredMagnitudePruner, cls).check(spec) or _check_args(spec)

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        self.regularize(model, ctx)
        return super().step(model, target, ctx)

    def importance(self, model: nn.Module, ctx: PruneContext) -> Any:
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=2)
