"""Unstructured magnitude pruning (Han et al. 2015), layer-wise or global."""

from __future__ import annotations

import torch
from torch import nn

from harness.pruning.base import MaskArgs, MaskPruner, PruneContext, prunable_modules, weight
from harness.pruning.registry import register


def magnitude_scores(
    model: nn.Module, ctx: PruneContext, args: MaskArgs
) -> dict[nn.Module, torch.Tensor]:
    """``|w|`` per weight of every prunable layer."""
    return {m: weight(m).abs() for _, m in prunable_modules(model)}


@register
class MagnitudePruner(MaskPruner):
    name = "magnitude"
    summary = "Unstructured: remove the weights of smallest |w|, per layer or globally."
    reference = (
        "Han et al. 2015, Learning both Weights and Connections for Efficient Neural Networks"
    )
    criterion = staticmethod(magnitude_scores)
