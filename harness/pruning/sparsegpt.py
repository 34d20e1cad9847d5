"""SparseGPT: one-shot pruning with approximate OBS reconstruction (Frantar & Alistarh 2023).

Layer problem (as :mod:`harness.pruning.obs`)
    A layer's weight matrix ``W`` (``r`` rows, ``d`` inputs; a convolution's kernel flattened to
    ``(out_channels, in_channels * prod(kernel))`` and its input unfolded into columns of that
    size) and calibration inputs ``X`` (``d x n``) give the Hessian of the reconstruction error
    ``E = ||(W - W_hat) X||^2 / n`` shared by all rows,
    ``H = 2 X X^T / n + damp * mean(diag(2 X X^T / n)) * I`` (:func:`harness.pruning.obs.hessian`).

Column sweep (:func:`sparsegpt_prune`, float64)
    ``H^-1`` comes from a Cholesky factorization of ``H`` and ``U``, the upper Cholesky factor of
    ``H^-1`` (``H^-1 = U^T U``), is all the sweep needs: ``[U]_qq^2 = [(H_{q:,q:})^-1]_qq`` and
    ``U[q, q:] / [U]_qq`` is row ``q`` of that inverse over ``q:``, the OBS inverse once the
    columns before ``q`` are fixed. The columns are processed left to right; removing (or
    keeping) column ``q`` of every row at once sets ``err = (w_q - w_hat_q) / [U]_qq`` and updates
    the columns after it ``W[:, q+1:] -= err * U[q, q+1:]`` (the OBS update restricted to the
    columns not yet fixed), which raises ``E`` by ``1/2 (w_q - w_hat_q)^2 / [U]_qq^2``. The
    columns go in blocks of ``blocksize``: updates inside a block are applied at once, those to
    the later columns are gathered and applied when the block is done
    (``W[:, i2:] -= Err @ U[i1:i2, i2:]``, the lazy batched update).

Adaptive mask selection
    Unstructured: at the start of each block (the weights updated by all earlier blocks) every
    row removes the weights of lowest ``w^2 / [U]_qq^2`` among the block's columns; block
    ``[i1, i2)`` takes ``round(s * i2) - round(s * i1)`` of every row, so every row loses exactly
    ``round(s * d)`` weights in all (SparseGPT selects per block over the whole layer; per row here
    gives every row the same count, as Wanda's comparison group does). ``N:M``
    (``prune.pattern``): at the first column of every group of ``M`` (the block rounded down to a
    multiple of ``M``, at least ``M``, so groups never straddle blocks) every row removes the
    ``M - N`` of lowest ``w^2 / [U]_qq^2`` in the group, with the weights updated by all columns
    before it. A layer whose ``d`` is not a multiple of ``M`` stays dense
    (:func:`harness.pruning.base.pattern_layers`). Ties: the earlier column goes first.
    Unstructured selection is only adaptive across columns within a block: with
    ``blocksize * s`` below 1 the per-block counts, fixed by the column index, choose alone; the
    paper's 128 covers the whole row of most small layers. The sweep fixes columns in order, so
    its error is not always below magnitude's (``tests/test_sparsegpt.py`` keeps a
    counterexample with densely mixed inputs).

Layers and calibration
    Layers are pruned in definition order, each on the inputs it sees in a forward pass of the
    first ``n_samples`` training rows through the model as pruned so far (SparseGPT runs the
    calibration data through the already compressed blocks). ``scope`` does not apply: every
    layer loses the target fraction of every row. Weights already masked stay removed and count
    towards the removals of their block (group). Biases are left as they are. Supported layers:
    ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` with ``groups = 1`` and zero padding
    (:func:`harness.pruning.obs.layer_problem`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from harness.pruning.base import (
    IgnoreArgs,
    Problems,
    PruneContext,
    PruneError,
    Pruner,
    PrunerArgs,
    batch_of,
    count,
    first_rows,
    layers_to_prune,
    pattern_layers,
    positive,
    remove_masks,
    weight,
)
from harness.pruning.obs import (
    apply_weights,
    collect_inputs,
    hessian,
    layer_problem,
    weight_matrix,
)
from harness.pruning.registry import register
from harness.schema import option
from harness.spec import PruneSpec


@dataclass(frozen=True)
class SparseGPTArgs(IgnoreArgs):
    """Calibration rows, the column block of the lazy updates and of the mask selection, the
    Hessian's relative dampening (module docstring); ``ignore``: layers left dense."""

    n_samples: int = option(512, check=count)
    blocksize: int = option(128, check=count)
    damp: float = option(0.01, check=positive)


@dataclass(frozen=True, eq=False)
class Sweep:
    """What :func:`sparsegpt_prune` returns: the new weights ``(rows, d)`` (float64, zero where
    removed), the removal mask and every row's error ``sum 1/2 (w_q - w_hat_q)^2 / [U]_qq^2``
    (equal to ``1/2 dW H dW^T`` of the row under the damped ``H``)."""

    weights: torch.Tensor
    removed: torch.Tensor
    losses: torch.Tensor


def inverse_factor(H: torch.Tensor) -> torch.Tensor:
    """``U``, the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``), float64.

    Raises
    ------
    ValueError
        ``H`` is not positive definite.
    """
    H64 = H.to(torch.float64)
    L, info = torch.linalg.cholesky_ex(H64)
    if int(info):
        raise ValueError("the Hessian is not positive definite (raise damp)")
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info):
        raise ValueError("the inverse Hessian is not positive definite (raise damp)")
    return U


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    removed: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
) -> Sweep:
    """SparseGPT's column sweep over ``W`` (``(rows, d)``) with Hessian ``H`` (module docstring).

    Parameters
    ----------
    sparsity
        Unstructured: the fraction of every row removed (``round(sparsity * d)`` weights).
    nm
        ``(N, M)``: keep ``N`` of every ``M`` consecutive columns of each row instead.
    blocksize
        Columns per block of the lazy updates and of the unstructured mask selection.
    removed
        Weights already removed (bool, ``(rows, d)``): they stay removed and count towards each
        block's (each group's) removals; where a block already has more, it keeps them all.
    given
        Remove exactly these weights (bool, ``(rows, d)``) instead of selecting (the sweep's
        updates only; with ``removed`` on top).
    """
    W = W.detach().to(torch.float64).clone()
    r, d = W.shape
    if nm is not None:
        n, m = nm
        if not 0 < n < m or d % m:
            raise ValueError(f"{d} columns do not split into groups of {m} (pattern {n}:{m})")
        blocksize = max(m, blocksize // m * m)
    U = inverse_factor(H)
    prior = torch.zeros_like(W, dtype=torch.bool) if removed is None else removed.clone()
    mask = torch.zeros_like(prior)
    losses = torch.zeros(r, dtype=torch.float64)
    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        diag = U1.diagonal()
        Err1 = torch.zeros_like(W1)
        mask1 = prior[:, i1:i2].clone()
        if given is not None:
            mask1 |= given[:, i1:i2]
        elif nm is None:
            k = round(sparsity * i2) - round(sparsity * i1)
            _remove_lowest(mask1, W1**2 / diag**2, k)
        for i in range(i2 - i1):
            if nm is not None and given is None and i % nm[1] == 0:
                group = slice(i, i + nm[1])
                _remove_lowest(mask1[:, group], W1[:, group] ** 2 / diag[group] ** 2, nm[1] - nm[0])
            w = W1[:, i].clone()
            q = torch.where(mask1[:, i], 0.0, w)
            err = (w - q) / diag[i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            W1[:, i] = q
            Err1[:, i] = err
            losses += 0.5 * err**2
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        mask[:, i1:i2] = mask1
    return Sweep(W, mask, losses)


def _remove_lowest(mask: torch.Tensor, score: torch.Tensor, k: int) -> None:
    """Grow every row of ``mask`` (in place) to ``k`` removed entries by the lowest scores of
    those not yet in it (stable order: of equal scores the earlier column goes first); a row
    that already has ``k`` or more keeps them all."""
    if k <= 0:
        return
    ranked = torch.where(mask, -math.inf, score)
    want = mask.sum(1).clamp(min=k)  # what is masked already comes first in the order
    order = torch.argsort(ranked, dim=1, stable=True)
    take = torch.arange(mask.shape[1])[None, :] < want[:, None]
    mask.scatter_(1, order, take | mask.gather(1, order))


@register
class SparseGPTPruner(Pruner):
    """SparseGPT per layer, unstructured or ``N:M`` (module docstring)."""

    name = "sparsegpt"
    summary = "Unstructured or N:M: one-shot OBS reconstruction in column blocks, adaptive masks."
    reference = (
        "Frantar & Alistarh 2023, SparseGPT: Massive Language Models Can Be Accurately Pruned "
        "in One-Shot"
    )
    patterns: ClassVar[bool] = True
    Args = SparseGPTArgs
    args: SparseGPTArgs

    @classmethod
    def spec_problems(cls, spec: PruneSpec, args: PrunerArgs) -> Problems:
        yield from super().spec_problems(spec, args)
        if spec.schedule != "oneshot":
            yield "schedule", spec.schedule, "SparseGPT prunes in one shot"

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        nm = self.spec.nm
        named = (
            layers_to_prune(model, self.args.ignore)
            if nm is None
            else pattern_layers(model, nm, self.args.ignore)
        )
        for name, m in named:
            if (problem := layer_problem(name, m)) is not None:
                raise PruneError(f"sparsegpt: {problem}")
        if not named:
            return model
        dtype = weight(named[0][1]).dtype
        X = batch_of(first_rows(ctx.X_train, self.args.n_samples), ctx.device, dtype)
        with torch.no_grad():
            for name, m in named:
                stats = collect_inputs(model, [m], X)[m]
                if stats.n == 0:
                    raise PruneError(
                        f"sparsegpt: layer {name!r} received no input in the calibration "
                        "forward pass (used outside its forward()?)"
                    )
                W = weight_matrix(m).detach().to(torch.float64).cpu()
                mask = getattr(m, "weight_mask", None)
                removed = None if mask is None else mask.reshape(W.shape).cpu() == 0
                try:
                    sweep = sparsegpt_prune(
                        W,
                        hessian(stats, self.args.damp),
                        sparsity=target,
                        nm=nm,
                        blocksize=self.args.blocksize,
                        removed=removed,
                    )
                except ValueError as err:
                    raise PruneError(f"sparsegpt: layer {name!r}: {err}") from err
                apply_weights(m, sweep.weights, ~sweep.removed)
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        return remove_masks(model)
