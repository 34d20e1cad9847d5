"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter 2023), unstructured or N:M.

Score
    For a layer with weight matrix ``W`` (``r`` output rows, ``d`` inputs; a convolution's
    weight flattened to ``(out_channels, in_channels * prod(kernel))`` and its input unfolded
    into columns of that size, as in :mod:`harness.pruning.obs`) and calibration inputs ``X``
    (``d x n``: the inputs the layer sees on the first ``n_samples`` rows of the training fold,
    one column per sample and position, model in eval mode), the importance of ``W_ij`` is

        ``S_ij = |W_ij| * ||X_j||_2``

    with ``||X_j||_2 = sqrt(sum_k X_jk^2)`` the norm of input feature ``j`` over all ``n``
    columns (the paper's ``N * L`` tokens). It is the first-order size of the weight's
    contribution to the layer's output, so a small weight on a large-activation feature (the
    outlier features of large language models) is kept where magnitude would remove it.

Comparison group
    Wanda compares the scores within each output row: every row of every layer loses its
    ``round(sparsity * d)`` lowest scores (the paper's per-output comparison, which it finds
    better than per layer); ``scope`` does not apply. With ``prune.pattern = "N:M"`` the
    comparison group is every group of ``M`` consecutive inputs of a row instead
    (:func:`harness.pruning.base.nm_keep_mask`). There is no weight update.

Calibration
    The norms come from one forward pass of the model as it is (:func:`harness.pruning.obs.
    stream_columns`: every layer's inputs from the same pass, not re-propagated through the
    layers pruned before it, as in :mod:`~harness.pruning.obs`; the paper's reference code
    prunes transformer blocks in sequence). Already-masked weights (an earlier round of an
    iterative schedule) stay masked. Supported layers: ``nn.Linear``, ``nn.Conv1d`` and
    ``nn.Conv2d`` with ``groups = 1`` and zero padding (:func:`harness.pruning.obs.
    layer_problem`); anything else is refused in one line naming the layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.inputs import Batch
from harness.pruning.base import (
    IgnoreArgs,
    MaskPruner,
    PruneContext,
    PruneError,
    batch_of,
    count,
    first_rows,
    layers_to_prune,
    row_keep_mask,
    weight,
)
from harness.pruning.obs import layer_problem, stream_columns, weight_matrix
from harness.pruning.registry import register
from harness.schema import option


@dataclass(frozen=True)
class WandaArgs(IgnoreArgs):
    """``n_samples`` calibration rows of the training fold; ``ignore``: layers left dense (the
    target applies to the others). No ``max_layer``: every row is pruned to the target."""

    n_samples: int = option(512, check=count)


def wanda_score(W: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| * norms_j`` of a ``(rows, d)`` weight matrix and the ``(d,)`` input
    feature norms ``||X_j||_2``."""
    return W.abs() * norms.to(device=W.device, dtype=W.dtype)[None, :]


def input_norms(
    model: nn.Module, layers: Sequence[nn.Module], X: Batch, *, batch_size: int = 256
) -> dict[nn.Module, tuple[torch.Tensor, int]]:
    """Per layer, ``||X_j||_2`` of each of its ``d`` input features over the columns it sees in
    a forward pass of ``X`` (float64, on the CPU), and the number of columns."""
    sums = {m: torch.zeros(weight_matrix(m).shape[1], dtype=torch.float64) for m in layers}
    seen = dict.fromkeys(layers, 0)

    def add(module: nn.Module, cols: torch.Tensor) -> None:
        sums[module] += cols.detach().to(torch.float64).pow(2).sum(0).cpu()
        seen[module] += cols.shape[0]

    stream_columns(model, layers, X, add, batch_size=batch_size)
    return {m: (sums[m].sqrt(), seen[m]) for m in layers}


def wanda_criterion(
    model: nn.Module, ctx: PruneContext, args: WandaArgs
) -> dict[nn.Module, torch.Tensor]:
    """:func:`wanda_score` of every layer to prune, the norms over the first ``n_samples`` rows
    of the training fold; a layer that cannot be scored is refused in one line."""
    named = layers_to_prune(model, args.ignore)
    for name, m in named:
        if (problem := layer_problem(name, m)) is not None:
            raise PruneError(f"wanda: {problem}")
    if not named:
        return {}
    dtype = weight(named[0][1]).dtype
    X = batch_of(first_rows(ctx.X_train, args.n_samples), ctx.device, dtype)
    norms = input_norms(model, [m for _, m in named], X)
    out = {}
    for name, m in named:
        norm, seen = norms[m]
        if seen == 0:
            raise PruneError(
                f"wanda: layer {name!r} received no input in the calibration forward pass "
                "(used outside its forward()?)"
            )
        W = weight_matrix(m).detach()
        out[m] = wanda_score(W, norm).reshape(weight(m).shape)
    return out


@register
class WandaPruner(MaskPruner):
    """Wanda's scores compared per output row, or per ``N:M`` group (module docstring)."""

    name = "wanda"
    summary = "Unstructured or N:M: remove weights of smallest |w| * ||x||_2, per output row."
    reference = "Sun et al. 2023, A Simple and Effective Pruning Approach for Large Language Models"
    Args = WandaArgs
    args: WandaArgs
    criterion = staticmethod(wanda_criterion)

    def keep_masks(
        self, modules: Sequence[nn.Module], ranked: Mapping[nn.Module, torch.Tensor], target: float
    ) -> dict[nn.Module, torch.Tensor]:
        if self.spec.nm is not None:
            return super().keep_masks(modules, ranked, target)
        return {m: row_keep_mask(ranked[m], target) for m in modules}
