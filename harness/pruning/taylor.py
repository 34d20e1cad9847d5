"""First-order Taylor importance (Molchanov et al. 2019), unstructured.

The loss change from removing weight ``w`` is approximated to first order by ``g * w`` (``g`` the
gradient of the training loss); the importance is its square, averaged over mini-batches of the
training fold: ``I(w) = mean_b (g_b * w) ** 2``. Scored on the model as it is at each pruning
round (after the previous rounds' fine-tuning), under its current masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.inputs import Batch
from harness.pruning.base import (
    GradientArgs,
    MaskArgs,
    MaskPruner,
    PruneContext,
    accumulate_gradients,
    batch_of,
    first_rows,
    labels,
    leaf_weight,
    prunable_modules,
    weight,
)
from harness.pruning.registry import register


@dataclass(frozen=True)
class TaylorArgs(MaskArgs, GradientArgs):
    """``batches`` mini-batches of ``batch_size`` training rows; ``max_layer``."""


def taylor_scores(
    model: nn.Module, X: Batch, y: torch.Tensor, *, batches: int, batch_size: int
) -> dict[nn.Module, torch.Tensor]:
    """``mean_b (dL_b/dw * w) ** 2`` per weight of every prunable layer (cross-entropy loss)."""
    layers = [m for _, m in prunable_modules(model)]
    # the leaf parameter: under a pruning mask, weight = weight_orig * weight_mask, and the
    # gradient reaching weight_orig is dL/dweight where the mask keeps the weight
    summed = accumulate_gradients(
        model,
        X,
        y,
        [leaf_weight(m) for m in layers],
        batches=batches,
        batch_size=batch_size,
        term=lambda i, g: (g.detach() * weight(layers[i]).detach()) ** 2,
    )
    n = max(summed.batches, 1)
    return {
        m: (torch.zeros_like(weight(m)) if s is None else s) / n
        for m, s in zip(layers, summed.sums, strict=True)
    }


def taylor_criterion(
    model: nn.Module, ctx: PruneContext, args: TaylorArgs
) -> dict[nn.Module, torch.Tensor]:
    """:func:`taylor_scores` on the training fold."""
    n = args.batches * args.batch_size  # the rows the mini-batches take
    return taylor_scores(
        model,
        batch_of(first_rows(ctx.X_train, n), ctx.device),
        labels(ctx.y_train[:n], ctx.device),
        batches=args.batches,
        batch_size=args.batch_size,
    )


@register
class TaylorPruner(MaskPruner):
    name = "taylor"
    summary = "Unstructured: remove weights of smallest first-order Taylor importance (g*w)^2."
    reference = "Molchanov et al. 2019, Importance Estimation for Neural Network Pruning"
    Args = TaylorArgs
    args: TaylorArgs
    criterion = staticmethod(taylor_criterion)
