"""Optimal Brain Surgeon, layer-wise and greedy per row (unstructured).

Hassibi & Stork 1993 (OBS) remove the weight whose deletion raises a quadratic loss least and
update the remaining weights to compensate; L-OBS (Dong et al. 2017) applies it layer by layer to
the reconstruction error of each layer; OBC (Frantar & Alistarh 2022) makes it exact and fast by
running the greedy per output row with one shared Hessian. This module implements OBC's greedy.

Layer problem
    For a layer with weight matrix ``W`` (``r`` output rows, ``d`` inputs; a convolution's weight
    is flattened to ``(out_channels, in_channels * prod(kernel))`` and its input unfolded into
    columns of that size, respecting stride, padding and dilation) and calibration inputs
    ``X`` (``d x n``, the inputs the layer sees on the first ``n_samples`` rows of the training
    fold, model in eval mode), the reconstruction error of a row ``w`` replaced by ``w_hat`` is
    ``E = ||(w - w_hat) X||^2 / n``. Its Hessian, shared by all rows, is
    ``H = 2 X X^T / n + damp * mean(diag(2 X X^T / n)) * I`` (``damp`` relative dampening;
    ``damp * I`` when the inputs are all zero), so ``E = 1/2 dw^T H dw`` (undamped).

OBS step (per row, float64)
    ``q = argmin_q w_q^2 / [H^-1]_qq`` over the weights not yet removed; the error grows by
    ``dE = 1/2 * w_q^2 / [H^-1]_qq``; the row is updated ``w <- w - (w_q / [H^-1]_qq) H^-1[:, q]``
    (``w_q`` becomes 0) and ``q`` is eliminated from the inverse
    ``H^-1 <- H^-1 - H^-1[:, q] H^-1[q, :] / [H^-1]_qq``. All rows of a layer step together on
    batched per-row inverses; rows are processed in chunks that bound the memory, and the
    inverses are compacted to the weights still present as rows empty out.

Final weights
    After removing a set ``P`` the sequential updates give the constrained least-squares optimum
    ``argmin_{w_hat_P = 0} (w_hat - w)^T H (w_hat - w)``; since the rows stop after different
    numbers of removals the final weights are computed as that optimum directly (one batched solve
    of ``H_SS w_hat_S = (H w)_S`` on the kept support ``S``), which the tests pin to the greedy's
    own updates.

Already-masked weights (earlier rounds of an iterative schedule) start out removed: their rows
and columns are eliminated from ``H^-1`` before the greedy, so they stay zero. Biases are left as
they are. Inputs of all layers come from one forward pass of the model as it is (not re-propagated
through the layers pruned before it).

Sparsity allocation
    ``scope = "layer"``: every layer loses ``round(target * numel)`` weights, spread over its rows
    as evenly as possible (water-filling over what each row already lost; the rows that take one
    more are those whose next greedy removal costs least).
    ``scope = "global"``: ``round(target * total)`` weights over all layers, allocated from the
    greedy error curves as in OBC: every row's greedy is run to the end, each step's ``dE`` is
    divided by the layer's output energy ``||W X||^2 / n`` (so every layer's error is relative
    and a whole layer is worth about 1), each row's curve is made non-decreasing (running maximum)
    and the smallest steps over all rows of all layers are taken; this minimises the summed
    relative reconstruction error of the layers for convex curves, with each row's removals a
    prefix of its greedy order.

Supported layers: ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` with ``groups = 1`` and zero
padding; anything else raises a ``ValueError`` naming the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from harness import inputs
from harness.inputs import Batch
from harness.pruning.base import (
    IgnoreArgs,
    PruneContext,
    PruneError,
    Pruner,
    batch_of,
    count,
    first_rows,
    layers_to_prune,
    positive,
    remove_masks,
    weight,
)
from harness.pruning.registry import register
from harness.schema import option

_CHUNK_BYTES = 1 << 27  # per-row inverses held at once (float64)
_COMPACT = 0.75  # compact the inverses once the largest row keeps at most this fraction
_TINY = 1e-300


# --------------------------------------------------------------------------------------------
# Layer inputs and Hessians


def layer_problem(name: str, module: nn.Module) -> str | None:
    """Why ``module`` cannot be pruned by OBS, or None."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups != 1:
            return f"layer {name!r}: grouped convolution (groups={module.groups}) not supported"
        if module.padding_mode != "zeros":
            return f"layer {name!r}: padding_mode={module.padding_mode!r} not supported"
        return None
    return f"layer {name!r}: {type(module).__name__} not supported (Linear, Conv1d, Conv2d)"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's effective weight as ``(rows, d)``: a convolution's kernel flattened."""
    w = weight(module)
    return w.reshape(w.shape[0], -1)


def input_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as ``(n, d)`` rows ``x_j`` with ``output_j = W x_j + b``.

    A Linear layer's input is flattened over its leading dimensions; a Conv1d / Conv2d input is
    unfolded into patches of size ``in_channels * prod(kernel_size)`` (channel-major, matching
    ``weight.reshape(out_channels, -1)``), one per output position.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if not isinstance(module, nn.Conv1d | nn.Conv2d):
        raise TypeError(f"{type(module).__name__} has no column form")
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)  # (N, C, 1, L): a 1 x k convolution
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        dilation = (1, *module.dilation)
    else:
        kernel, stride = tuple(module.kernel_size), tuple(module.stride)
        dilation = tuple(module.dilation)
    if x.dim() == 3:  # unbatched input
        x = x.unsqueeze(0)
    x = F.pad(x, _pads(module))
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, d, positions)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _pads(module: nn.Conv1d | nn.Conv2d) -> list[int]:
    """Zero padding of the (height, width) of the 2-D view, as ``F.pad`` wants it (last dim
    first); ``padding = "same"`` puts the odd extra on the right, as torch does."""
    kernel = list(module.kernel_size)
    dilation = list(module.dilation)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pairs = [(0, 0)] * len(kernel)
        else:  # "same"
            totals = [dil * (k - 1) for dil, k in zip(dilation, kernel, strict=True)]
            pairs = [(t // 2, t - t // 2) for t in totals]
    else:
        pairs = [(p, p) for p in module.padding]
    if isinstance(module, nn.Conv1d):
        pairs = [(0, 0), *pairs]
    return [p for pair in reversed(pairs) for p in pair]


@dataclass
class InputStats:
    """Running ``sum_j x_j x_j^T`` (float64) and the number of columns ``n`` of one layer."""

    xtx: torch.Tensor
    n: int = 0

    def add(self, cols: torch.Tensor) -> None:
        c = cols.detach().to(torch.float64)
        self.xtx += (c.T @ c).to(self.xtx.device)  # the solves run on the CPU
        self.n += c.shape[0]


def collect_inputs(
    model: nn.Module, layers: Sequence[nn.Module], X: Batch, *, batch_size: int = 256
) -> dict[nn.Module, InputStats]:
    """``X X^T`` of every layer's inputs over a forward pass of ``X`` (eval mode, no grad;
    named inputs passed as keyword arguments); ``X X^T`` is kept on the CPU."""
    stats = {m: InputStats(torch.zeros(_cols(m), _cols(m), dtype=torch.float64)) for m in layers}
    stream_columns(model, layers, X, lambda m, cols: stats[m].add(cols), batch_size=batch_size)
    return stats


def stream_columns(
    model: nn.Module,
    layers: Sequence[nn.Module],
    X: Batch,
    add: Callable[[nn.Module, torch.Tensor], None],
    *,
    batch_size: int = 256,
) -> None:
    """``add(layer, input_columns(layer, input))`` for every call of each of ``layers`` in a
    forward pass of ``X`` in mini-batches of ``batch_size`` (eval mode, no grad; named inputs
    passed as keyword arguments); the model's training flag is put back afterwards."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        add(module, input_columns(module, args[0]))

    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, inputs.count(X), batch_size):
                inputs.forward(model, inputs.take(X, slice(start, start + batch_size)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _cols(module: nn.Module) -> int:
    return int(weight_matrix(module).shape[1])


def hessian(stats: InputStats, damp: float) -> torch.Tensor:
    """``H = 2 X X^T / n + damp * mean(diag) * I`` (float64); ``damp * I`` if the inputs are 0."""
    if stats.n == 0:
        raise ValueError("the layer received no input in the calibration forward pass")
    H = 2 * stats.xtx / stats.n
    level = float(H.diagonal().mean())
    H.diagonal().add_(damp * (level if level > 0 else 1.0))
    return H


def row_inverses(H: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Per-row ``H^-1`` with the row's ``removed`` coordinates eliminated: ``(H_SS)^-1`` on the
    kept support ``S``, zero rows and columns elsewhere; shape ``(rows, d, d)``."""
    r, d = removed.shape
    if not bool(removed.any()):
        return torch.linalg.inv(H).expand(r, d, d).clone()
    keep = (~removed).to(H.dtype)
    masked = H * keep[:, :, None] * keep[:, None, :]
    masked.diagonal(dim1=1, dim2=2).add_(1 - keep)
    inv = torch.linalg.inv(masked)
    return inv * keep[:, :, None] * keep[:, None, :]


# --------------------------------------------------------------------------------------------
# The greedy and the refit


@dataclass(frozen=True)
class Trace:
    """The greedy of every row: ``order[i, t]`` the weight removed at step ``t`` (-1 once the row
    is empty), ``losses[i, t]`` its ``dE`` (inf once empty), ``weights`` after all steps."""

    order: torch.Tensor
    losses: torch.Tensor
    weights: torch.Tensor


def obs_greedy(W: torch.Tensor, H: torch.Tensor, removed: torch.Tensor, steps: int) -> Trace:
    """Run ``steps`` OBS removals on every row of ``W`` (``(rows, d)``) with Hessian ``H``,
    starting with ``removed`` (bool, ``(rows, d)``) already eliminated (their weights are taken
    as 0). Rows are processed in memory-bounded chunks."""
    W64, H64 = W.detach().to(torch.float64), H.to(torch.float64)
    r, d = W64.shape
    chunk = max(1, _CHUNK_BYTES // (8 * d * d))
    parts = [
        _greedy_chunk(
            W64[i : i + chunk] * ~removed[i : i + chunk],
            row_inverses(H64, removed[i : i + chunk]),
            removed[i : i + chunk].clone(),
            steps,
        )
        for i in range(0, r, chunk)
    ]
    return Trace(
        torch.cat([p.order for p in parts]),
        torch.cat([p.losses for p in parts]),
        torch.cat([p.weights for p in parts]),
    )


def _greedy_chunk(W: torch.Tensor, Hinv: torch.Tensor, removed: torch.Tensor, steps: int) -> Trace:
    r, d = W.shape
    rows = torch.arange(r)
    cols = torch.arange(d).expand(r, d).clone()  # original column of each compacted one
    order = torch.full((r, steps), -1, dtype=torch.long)
    losses = torch.full((r, steps), math.inf, dtype=torch.float64)
    W = W.clone()
    for t in range(steps):
        left = int((~removed).sum(1).max())
        if left == 0:
            break
        if left <= _COMPACT * W.shape[1]:
            W, Hinv, removed, cols = _compact(W, Hinv, removed, cols, left)
        diag = Hinv.diagonal(dim1=1, dim2=2).clamp_min(_TINY)
        score = torch.where(removed, math.inf, W**2 / diag)
        best, q = score.min(1)
        active = torch.isfinite(best)
        hq = Hinv[rows, :, q]  # column q of every row's inverse (zero for an empty row)
        dq = torch.where(active, diag[rows, q], 1.0)
        W -= (W[rows, q] / dq)[:, None] * hq
        W[rows, q] = 0.0
        Hinv.baddbmm_(hq.unsqueeze(2), (hq / dq[:, None]).unsqueeze(1), alpha=-1)
        Hinv[rows, q, :] = 0.0
        Hinv[rows, :, q] = 0.0
        removed[rows, q] = True
        order[:, t] = torch.where(active, cols[rows, q], -1)
        losses[:, t] = torch.where(active, 0.5 * best, math.inf)
    out = torch.zeros(r, d, dtype=torch.float64).scatter_(1, cols, W)
    return Trace(order, losses, out)


def _compact(
    W: torch.Tensor, Hinv: torch.Tensor, removed: torch.Tensor, cols: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``size`` coordinates per row, all the remaining ones first (removed ones pad)."""
    pick = torch.argsort(removed.to(torch.int8), dim=1, stable=True)[:, :size]
    rows = torch.arange(W.shape[0])[:, None, None]
    Hinv = Hinv[rows, pick[:, :, None], pick[:, None, :]]
    return W.gather(1, pick), Hinv, removed.gather(1, pick), cols.gather(1, pick)


def obs_refit(W: torch.Tensor, H: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``argmin_{w_hat: w_hat = 0 off keep} (w_hat - w)^T H (w_hat - w)`` per row (float64):
    ``H_SS w_hat_S = (H w)_S`` on every row's kept support ``S``."""
    W64, H64 = W.detach().to(torch.float64), H.to(torch.float64)
    r, d = W64.shape
    chunk = max(1, _CHUNK_BYTES // (8 * d * d))
    out = []
    for i in range(0, r, chunk):
        k = keep[i : i + chunk].to(torch.float64)
        system = H64 * k[:, :, None] * k[:, None, :]
        system.diagonal(dim1=1, dim2=2).add_(1 - k)
        rhs = (W64[i : i + chunk] @ H64) * k
        out.append(torch.linalg.solve(system, rhs) * k)
    return torch.cat(out)


def reconstruction_error(W: torch.Tensor, W_hat: torch.Tensor, xtx: torch.Tensor, n: int) -> float:
    """``||(W - W_hat) X||^2 / n`` summed over rows, from ``X X^T``."""
    D = (W - W_hat).to(torch.float64)
    return float(torch.einsum("ri,ij,rj->", D, xtx.to(torch.float64), D)) / n


# --------------------------------------------------------------------------------------------
# Sparsity allocation


def layer_counts(done: torch.Tensor, total: int, d: int, losses: torch.Tensor) -> torch.Tensor:
    """Removals per row (``>= done``) summing to ``max(total, done.sum())``, as even as
    possible; the rows that take one more are those whose next greedy step (``losses``, indexed
    by new removals) costs least (ties: lower row)."""
    extra = total - int(done.sum())
    if extra <= 0:
        return done.clone()
    levels = torch.arange(d + 1)
    added = torch.maximum(levels[:, None], done[None, :]).sum(1) - done.sum()
    level = int(torch.searchsorted(added, torch.tensor([extra]), right=True)[0]) - 1
    counts = torch.maximum(done, torch.tensor(level))
    rest = extra - int(added[level])
    if rest:
        candidates = torch.nonzero(counts == level).flatten()
        step = level - done[candidates]
        cost = losses[candidates, step]
        chosen = candidates[torch.argsort(cost, stable=True)[:rest]]
        counts[chosen] += 1
    return counts


def global_counts(
    losses: Sequence[torch.Tensor], scales: Sequence[float], extra: int
) -> list[torch.Tensor]:
    """New removals per row of every layer: the ``extra`` smallest of all rows' running-maximum
    greedy curves ``cummax(losses / scale)`` (each row's pick a prefix of its greedy order)."""
    curves = [torch.cummax(lo / s, dim=1).values for lo, s in zip(losses, scales, strict=True)]
    flat = torch.cat([c.flatten() for c in curves])
    picked = torch.zeros(flat.numel(), dtype=torch.bool)
    picked[torch.argsort(flat, stable=True)[: max(extra, 0)]] = True
    out, offset = [], 0
    for c in curves:
        out.append(picked[offset : offset + c.numel()].view_as(c).sum(1))
        offset += c.numel()
    return out


def removal_mask(removed: torch.Tensor, order: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``removed`` plus the first ``new[i]`` weights of row ``i``'s greedy ``order``."""
    out = removed.clone()
    take = torch.arange(order.shape[1])[None, :] < new[:, None]
    rows = torch.arange(order.shape[0])[:, None].expand_as(order)
    out[rows[take], order[take]] = True
    return out


# --------------------------------------------------------------------------------------------
# The pruner


@dataclass
class _Layer:
    module: nn.Module
    W: torch.Tensor  # (rows, d) float64, effective (masked) weights
    H: torch.Tensor
    removed: torch.Tensor
    energy: float  # ||W X||^2 / n


@dataclass(frozen=True)
class OBSArgs(IgnoreArgs):
    """Calibration rows and the Hessian's relative dampening (module docstring); ``ignore``:
    layers left dense (the target applies to the others)."""

    n_samples: int = option(512, check=count)
    damp: float = option(0.01, check=positive)


@register
class OBSPruner(Pruner):
    """Layer-wise OBS with OBC's greedy per row (module docstring); its own global allocation
    (relative reconstruction errors), so no ``max_layer``."""

    name = "obs"
    summary = "Unstructured: layer-wise Optimal Brain Surgeon (OBC greedy per row, weight update)."
    reference = (
        "Hassibi & Stork 1993, Second order derivatives for network pruning: Optimal Brain "
        "Surgeon; Frantar & Alistarh 2022, Optimal Brain Compression"
    )
    no_pattern = (
        "OBC's greedy sweep removes one weight per row at a time; sparsegpt is the OBS update"
        " with N:M masks"
    )
    Args = OBSArgs
    args: OBSArgs

    def _layers(self, model: nn.Module, ctx: PruneContext) -> list[_Layer]:
        named = layers_to_prune(model, self.args.ignore)
        for name, m in named:
            if (problem := layer_problem(name, m)) is not None:
                raise PruneError(f"obs: {problem}")
        dtype = weight(named[0][1]).dtype if named else torch.float32
        X = batch_of(first_rows(ctx.X_train, self.args.n_samples), ctx.device, dtype)
        stats = collect_inputs(model, [m for _, m in named], X)
        out = []
        for name, m in named:
            if stats[m].n == 0:
                raise PruneError(
                    f"obs: layer {name!r} received no input in the calibration forward pass "
                    "(used outside its forward()?)"
                )
            W = weight_matrix(m).detach().to(torch.float64).cpu()
            mask = getattr(m, "weight_mask", None)
            removed = (
                (mask.reshape(W.shape).cpu() == 0)
                if mask is not None
                else torch.zeros_like(W, dtype=torch.bool)
            )
            energy = reconstruction_error(W, torch.zeros_like(W), stats[m].xtx, stats[m].n)
            out.append(_Layer(m, W, hessian(stats[m], self.args.damp), removed, energy))
        return out

    def scores(self, model: nn.Module, ctx: PruneContext) -> Mapping[nn.Module, torch.Tensor]:
        """Single-removal OBS saliency ``1/2 w_q^2 / [H^-1]_qq`` under the current masks (0 for
        masked weights)."""
        out = {}
        with torch.no_grad():
            for layer in self._layers(model, ctx):
                diag = row_inverses(layer.H, layer.removed).diagonal(dim1=1, dim2=2)
                s = torch.where(layer.removed, 0.0, 0.5 * layer.W**2 / diag.clamp_min(_TINY))
                out[layer.module] = s.reshape(weight(layer.module).shape).to(torch.float32)
        return out

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        with torch.no_grad():
            layers = self._layers(model, ctx)
            if self.spec.scope == "layer":
                masks = [self._layer_scope(layer, target) for layer in layers]
            else:
                masks = self._global_scope(layers, target)
            for layer, removed in zip(layers, masks, strict=True):
                apply_weights(layer.module, obs_refit(layer.W, layer.H, ~removed), ~removed)
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        return remove_masks(model)

    @staticmethod
    def _layer_scope(layer: _Layer, target: float) -> torch.Tensor:
        r, d = layer.W.shape
        done = layer.removed.sum(1)
        total = round(target * r * d)
        extra = total - int(done.sum())
        if extra <= 0:
            return layer.removed
        level = min(d, -(-total // r))  # no row needs more than ceil(total / rows)
        steps = max(1, min(d, int((level + 1 - done).clamp(min=0).max())))
        trace = obs_greedy(layer.W, layer.H, layer.removed, steps)
        counts = layer_counts(done, total, d, trace.losses)
        return removal_mask(layer.removed, trace.order, counts - done)

    @staticmethod
    def _global_scope(layers: list[_Layer], target: float) -> list[torch.Tensor]:
        total = sum(layer.removed.numel() for layer in layers)
        done = sum(int(layer.removed.sum()) for layer in layers)
        extra = round(target * total) - done
        if extra <= 0:
            return [layer.removed for layer in layers]
        traces = [
            obs_greedy(layer.W, layer.H, layer.removed, int((~layer.removed).sum(1).max()))
            for layer in layers
        ]
        scales = [layer.energy if layer.energy > 0 else 1.0 for layer in layers]
        new = global_counts([t.losses for t in traces], scales, extra)
        return [
            removal_mask(layer.removed, t.order, k)
            for layer, t, k in zip(layers, traces, new, strict=True)
        ]


def apply_weights(module: nn.Module, W_hat: torch.Tensor, keep: torch.Tensor) -> None:
    """Updated weights ``W_hat`` (any shape holding the weight's entries, such as the
    ``(rows, d)`` matrix) into ``weight_orig`` (or ``weight``), then the mask ``keep`` on top
    (``torch.nn.utils.prune`` multiplies it with a mask already there)."""
    target = module.weight_orig if hasattr(module, "weight_orig") else module.weight
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    shape = target.shape
    target.copy_(W_hat.reshape(shape).to(target.dtype))
    mask = keep.reshape(shape).to(device=target.device, dtype=target.dtype)
    prune.custom_from_mask(module, "weight", mask)
