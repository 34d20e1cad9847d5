"""Structured neuron / channel pruning with dependency handling by Torch-Pruning.

The model really gets smaller: whole output neurons of linear layers and output channels of
convolutions are removed together with everything that depends on them (the inputs of the next
layer, biases, flatten -> linear blocks). ``sparsity`` is the fraction of neurons / channels removed
from every prunable layer (``scope = "layer"``) or across layers (``scope = "global"``). The final
classifier layer keeps its outputs.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from harness.pruning.base import PruneContext, Pruner, prunable_modules
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
        ignore = spec.args.get("ignore", [])
        if not isinstance(ignore, list) or not all(isinstance(n, str) for n in ignore):
            return f"ignore = {ignore!r}: must be a list of module names"
        return None

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        import torch_pruning as tp

        # Torch-Pruning prunes a ratio of what is there now: convert the cumulative target.
        ratio = 1 - (1 - target) / (1 - self.reached)
        self.reached = target
        if ratio <= 0:
            return model
        layers = prunable_modules(model)
        names = set(self.spec.args.get("ignore", []))
        ignored = [m for n, m in layers if n in names] + [layers[-1][1]]
        pruner = tp.pruner.BasePruner(
            model,
            ctx.example[:1],
            importance=tp.importance.GroupMagnitudeImportance(p=self.spec.args.get("norm", 2)),
            pruning_ratio=ratio,
            global_pruning=self.spec.scope == "global",
            max_pruning_ratio=0.95,
            ignored_layers=ignored,
        )
        pruner.step()
        return model
