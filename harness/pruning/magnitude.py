"""Unstructured magnitude pruning (Han et al. 2015), layer-wise or global."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from harness.pruning.base import MaskPruner, PruneContext, prunable_modules, weight
from harness.pruning.registry import register


@register
class MagnitudePruner(MaskPruner):
    name = "magnitude"
    summary = "Unstructured: remove the weights of smallest |w|, per layer or globally."
    reference = (
        "Han et al. 2015, Learning both Weights and Connections for Efficient Neural Networks"
    )

    def scores(self, model: nn.Module, ctx: PruneContext) -> Mapping[nn.Module, torch.Tensor]:
        return {m: weight(m).abs() for _, m in prunable_modules(model)}
