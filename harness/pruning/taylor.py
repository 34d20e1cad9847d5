"""First-order Taylor importance (Molchanov et al. 2019), unstructured.

The loss change from removing weight ``w`` is approximated to first order by ``g * w`` (``g`` the
gradient of the training loss); the importance is its square, averaged over mini-batches of the
training fold: ``I(w) = mean_b (g_b * w) ** 2``. Scored on the model as it is at each pruning
round (after the previous rounds' fine-tuning), under its current masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from harness.pruning.base import (
    MaskPruner,
    PruneContext,
    leaf_weight,
    positive_int_problem,
    prunable_modules,
    weight,
)
from harness.pruning.registry import register
from harness.spec import PruneSpec


def taylor_scores(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, batches: int, batch_size: int
) -> dict[nn.Module, torch.Tensor]:
    """``mean_b (dL_b/dw * w) ** 2`` per weight of every prunable layer (cross-entropy loss)."""
    layers = [m for _, m in prunable_modules(model)]
    totals = {m: torch.zeros_like(weight(m)) for m in layers}
    was_training = model.training
    model.eval()  # no dropout noise in the scores
    loss_fn = nn.CrossEntropyLoss()
    n = 0
    for start in range(0, min(len(X), batches * batch_size), batch_size):
        xb, yb = X[start : start + batch_size], y[start : start + batch_size]
        # the leaf parameter: under a pruning mask, weight = weight_orig * weight_mask, and the
        # gradient reaching weight_orig is dL/dweight where the mask keeps the weight
        params = [leaf_weight(m) for m in layers]
        grads = torch.autograd.grad(loss_fn(model(xb), yb), params, allow_unused=True)
        for m, g in zip(layers, grads, strict=True):
            if g is not None:
                totals[m] += (g.detach() * weight(m).detach()) ** 2
        n += 1
    model.train(was_training)
    return {m: t / max(n, 1) for m, t in totals.items()}


@register
class TaylorPruner(MaskPruner):
    name = "taylor"
    summary = "Unstructured: remove weights of smallest first-order Taylor importance (g*w)^2."
    reference = "Molchanov et al. 2019, Importance Estimation for Neural Network Pruning"
    arg_names: ClassVar[tuple[str, ...]] = ("batches", "batch_size")

    @classmethod
    def check(cls, spec: PruneSpec) -> str | None:
        if (problem := super().check(spec)) is not None:
            return problem
        if (problem := positive_int_problem(spec.args, *cls.arg_names)) is not None:
            return problem
        return None

    def scores(self, model: nn.Module, ctx: PruneContext) -> Mapping[nn.Module, torch.Tensor]:
        with torch.enable_grad():
            return taylor_scores(
                model,
                torch.as_tensor(ctx.X_train),
                torch.as_tensor(ctx.y_train),
                batches=int(self.spec.args.get("batches", 8)),
                batch_size=int(self.spec.args.get("batch_size", 128)),
            )
