"""SNIP: single-shot network pruning at initialization (Lee, Ajanthan & Torr 2019).

Connection sensitivity of weight ``w_j`` at initialization: ``s_j = |g_j * w_j|`` with ``g`` the
gradient of the mean cross-entropy over the first ``batches`` mini-batches of ``batch_size``
training rows (one mini-batch in the paper; more batches average the gradient). The weights of
lowest sensitivity are masked before any training; the runner then trains the sparse network with
the suite's ``[train]`` spec, the masks held (``at_init``). Normalizing ``s`` by its sum, as the
paper writes it, does not change the ranking and is skipped.
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


def snip_scores(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, batches: int, batch_size: int
) -> dict[nn.Module, torch.Tensor]:
    """``|dL/dw * w|`` per weight of every prunable layer, ``L`` the mean loss over the batches."""
    layers = [m for _, m in prunable_modules(model)]
    params = [leaf_weight(m) for m in layers]
    starts = list(range(0, min(len(X), batches * batch_size), batch_size))
    was_training = model.training
    model.eval()
    grads = [torch.zeros_like(p) for p in params]
    for start in starts:
        xb, yb = X[start : start + batch_size], y[start : start + batch_size]
        loss = nn.functional.cross_entropy(model(xb), yb) / len(starts)
        for total, g in zip(grads, torch.autograd.grad(loss, params), strict=True):
            total += g
    model.train(was_training)
    return {m: (g * weight(m).detach()).abs() for m, g in zip(layers, grads, strict=True)}


@register
class SnipPruner(MaskPruner):
    name = "snip"
    summary = "Unstructured, at initialization: remove connections of least sensitivity |g*w|."
    reference = "Lee et al. 2019, SNIP: Single-shot Network Pruning based on Connection Sensitivity"
    at_init = True
    arg_names: ClassVar[tuple[str, ...]] = ("batches", "batch_size")

    @classmethod
    def check(cls, spec: PruneSpec) -> str | None:
        if (problem := super().check(spec)) is not None:
            return problem
        if spec.schedule != "oneshot":
            return f"schedule = {spec.schedule!r}: SNIP prunes once, at initialization"
        if (problem := positive_int_problem(spec.args, *cls.arg_names)) is not None:
            return problem
        return None

    def scores(self, model: nn.Module, ctx: PruneContext) -> Mapping[nn.Module, torch.Tensor]:
        with torch.enable_grad():
            return snip_scores(
                model,
                torch.as_tensor(ctx.X_train),
                torch.as_tensor(ctx.y_train),
                batches=int(self.spec.args.get("batches", 1)),
                batch_size=int(self.spec.args.get("batch_size", 128)),
            )
