"""SNIP: single-shot network pruning at initialization (Lee, Ajanthan & Torr 2019).

Connection sensitivity of weight ``w_j`` at initialization: ``s_j = |g_j * w_j|`` with ``g`` the
gradient of the mean cross-entropy over the first ``batches`` mini-batches of ``batch_size``
training rows (one mini-batch in the paper; more batches average the gradient). The weights of
lowest sensitivity are masked before any training; the runner then trains the sparse network with
the suite's ``[train]`` spec, the masks held (``at_init``). Normalizing ``s`` by its sum, as the
paper writes it, does not change the ranking and is skipped.
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
    Problems,
    PruneContext,
    PrunerArgs,
    accumulate_gradients,
    batch_of,
    count,
    first_rows,
    labels,
    leaf_weight,
    prunable_modules,
    weight,
)
from harness.pruning.registry import register
from harness.schema import option
from harness.spec import PruneSpec


@dataclass(frozen=True)
class SnipArgs(MaskArgs, GradientArgs):
    """One mini-batch by default, as in the paper; ``max_layer``."""

    batches: int = option(1, check=count)


def snip_scores(
    model: nn.Module, X: Batch, y: torch.Tensor, *, batches: int, batch_size: int
) -> dict[nn.Module, torch.Tensor]:
    """``|dL/dw * w|`` per weight of every prunable layer, ``L`` the mean loss over the batches."""
    layers = [m for _, m in prunable_modules(model)]
    params = [leaf_weight(m) for m in layers]
    summed = accumulate_gradients(
        model, X, y, params, batches=batches, batch_size=batch_size, mean=True
    )
    grads = [
        torch.zeros_like(p) if g is None else g for p, g in zip(params, summed.sums, strict=True)
    ]
    return {m: (g * weight(m).detach()).abs() for m, g in zip(layers, grads, strict=True)}


def snip_criterion(
    model: nn.Module, ctx: PruneContext, args: SnipArgs
) -> dict[nn.Module, torch.Tensor]:
    """:func:`snip_scores` on the training fold."""
    n = args.batches * args.batch_size  # the rows the mini-batches take
    return snip_scores(
        model,
        batch_of(first_rows(ctx.X_train, n), ctx.device),
        labels(ctx.y_train[:n], ctx.device),
        batches=args.batches,
        batch_size=args.batch_size,
    )


@register
class SnipPruner(MaskPruner):
    name = "snip"
    summary = "Unstructured, at initialization: remove connections of least sensitivity |g*w|."
    reference = "Lee et al. 2019, SNIP: Single-shot Network Pruning based on Connection Sensitivity"
    at_init = True
    Args = SnipArgs
    args: SnipArgs
    criterion = staticmethod(snip_criterion)

    @classmethod
    def spec_problems(cls, spec: PruneSpec, args: PrunerArgs) -> Problems:
        yield from super().spec_problems(spec, args)
        if spec.schedule != "oneshot":
            yield "schedule", spec.schedule, "SNIP prunes once, at initialization"
