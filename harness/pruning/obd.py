"""Optimal Brain Damage (LeCun, Denker & Solla 1990), unstructured.

OBD approximates the increase of the training loss ``L`` when weight ``w_i`` is set to zero by a
second-order Taylor expansion around a minimum (gradient ~ 0) with a diagonal Hessian:

    s_i = 1/2 * h_ii * w_i ** 2,    h_ii = d^2 L / d w_i^2,

and removes the weights of lowest saliency ``s_i``. ``L`` is the mean cross-entropy over the first
``n_samples`` rows of the training fold, evaluated in eval mode (no dropout noise), on the model as
it is at each pruning round. Only the weights of the prunable layers are scored (biases are not
pruned). The derivatives are taken through the leaf parameter, ``weight_orig`` when a pruning mask
exists: since ``weight = weight_orig * weight_mask``, the diagonal w.r.t. the leaf is
``mask * h_ii`` and masked weights get ``h = 0`` and ``w = 0``, hence saliency 0 (and
:class:`~harness.pruning.base.MaskPruner` keeps them pruned anyway).

Estimators of the Hessian diagonal (``args.hessian``):

``"exact"``
    The true diagonal by autograd: one Hessian-vector product ``H e_i`` per weight (reverse over
    reverse mode, ``torch.func.vjp`` of ``torch.func.grad``, vectorized over chunks of basis
    vectors with ``torch.func.vmap``), layer by layer. Only for layers with at most ``max_exact``
    weights; a larger layer raises :class:`ValueError` at step time.
``"hutchinson"``
    ``E[z * (H z)]`` over ``samples`` Rademacher probes ``z`` (Bekas et al. 2007), drawn from a
    local generator seeded with the fold's seed. The probes span all prunable weights at once
    (one Hessian-vector product per probe for the whole model; unbiased, since the off-diagonal
    terms vanish in expectation), so the cost does not grow with the number of layers.
``"fisher"``
    The empirical Fisher diagonal ``mean_n (dL_n / dw_i) ** 2`` of the per-sample losses ``L_n``
    (per-sample gradients by ``torch.func.vmap(torch.func.grad(...))``): one backward pass per
    sample, positive by construction. It approximates the Hessian of a well-fit cross-entropy
    loss (Gauss-Newton), but tends to underestimate it where the model fits its data very well.
``"auto"`` (default)
    ``"exact"`` for layers with at most ``max_exact`` weights, ``"fisher"`` for larger ones: the
    exact diagonal costs one Hessian-vector product (a forward and two backward passes over the
    ``n_samples`` rows) per weight, affordable for small layers only, while the Fisher diagonal
    costs one backward pass per sample whatever the layer size.

Negative curvature: at a point that is not a minimum, ``h_ii`` can be negative (never for a
piecewise-linear net such as a ReLU MLP, whose loss is, weight by weight, a convex function of a
piecewise-linear map; it can for tanh / GELU nets, and Hutchinson estimates can be negative by
noise). OBD assumes a minimum, where the diagonal is non-negative; we use ``|h_ii|``, the size of
the curvature, as the sensitivity: ``s_i = 1/2 * |h_ii| * w_i ** 2``. Clamping at 0 instead would
rank a large weight on a negative-curvature direction as free to remove, which the quadratic
model only justifies for infinitesimal changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from harness import inputs
from harness.inputs import Batch
from harness.pruning.base import (
    MaskArgs,
    MaskPruner,
    PruneContext,
    PruneError,
    accumulate_gradients,
    batch_of,
    count,
    first_rows,
    labels,
    prunable_modules,
    weight,
)
from harness.pruning.registry import register
from harness.schema import option

Hessian = Literal["exact", "hutchinson", "fisher", "auto"]
HESSIANS: tuple[str, ...] = get_args(Hessian)

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OBDArgs(MaskArgs):
    """The Hessian-diagonal estimator and its sizes (module docstring); ``max_layer``."""

    hessian: Hessian = "auto"
    samples: int = option(16, check=count)  # Hutchinson probes
    n_samples: int = option(512, check=count)  # training rows the loss is taken over
    max_exact: int = option(4096, check=count)  # largest layer of the exact diagonal


def _leaf_key(name: str, module: nn.Module) -> str:
    """Name of the leaf parameter holding a layer's weight (``weight_orig`` under a mask)."""
    prefix = f"{name}." if name else ""
    return f"{prefix}weight_orig" if hasattr(module, "weight_orig") else f"{prefix}weight"


def _leaf(module: nn.Module) -> torch.Tensor:
    param = module.weight_orig if hasattr(module, "weight_orig") else module.weight
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return param


def _layers(
    model: nn.Module, layers: Sequence[nn.Module] | None
) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, leaf key)`` of the requested prunable layers (all if None)."""
    chosen = None if layers is None else {id(m) for m in layers}
    out = [
        (name, m, _leaf_key(name, m))
        for name, m in prunable_modules(model)
        if chosen is None or id(m) in chosen
    ]
    if chosen is not None and len(out) != len(chosen):
        raise ValueError("layers must be prunable modules of the model")
    return out


@contextmanager
def _scoring(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients on while scoring; afterwards the training flag and the masked
    layers' ``weight`` attributes (which the mask hooks overwrite during every forward, here
    with functorch-transformed tensors) are put back."""
    was_training = model.training
    saved = {m: m.__dict__["weight"] for _, m in prunable_modules(model) if "weight" in m.__dict__}
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)
        for m, w in saved.items():
            m.weight = w


def _loss_fn(
    model: nn.Module, X: Batch, y: torch.Tensor, fixed: Params
) -> Callable[[Params], torch.Tensor]:
    """Mean cross-entropy of ``model`` on ``(X, y)`` as a function of some leaf parameters
    (named inputs passed as keyword arguments)."""

    def loss(params: Params) -> torch.Tensor:
        values = {**fixed, **params}
        if isinstance(X, Mapping):
            out = functional_call(model, values, (), dict(X))
        else:
            out = functional_call(model, values, (X,))
        return nn.functional.cross_entropy(inputs.logits_of(out), y)

    return loss


def _base(layers: Sequence[tuple[str, nn.Module, str]]) -> Params:
    return {key: _leaf(m).detach() for _, m, key in layers}


def exact_diagonal(
    model: nn.Module,
    X: Batch,
    y: torch.Tensor,
    layers: Sequence[nn.Module] | None = None,
    *,
    chunk: int = 64,
) -> dict[nn.Module, torch.Tensor]:
    """True Hessian diagonal of the mean cross-entropy w.r.t. each layer's weight leaf.

    One Hessian-vector product against each basis vector, ``chunk`` of them per vmapped call.
    """
    chosen = _layers(model, layers)
    out: dict[nn.Module, torch.Tensor] = {}
    with _scoring(model):
        base = _base(chosen)
        loss = _loss_fn(model, X, y, base)
        for _, m, key in chosen:
            w0 = base[key]
            shape, n = w0.shape, w0.numel()

            def flat_loss(w: torch.Tensor, key: str = key, shape: torch.Size = shape) -> Any:
                return loss({key: w.view(shape)})

            hvp = vjp(grad(flat_loss), w0.flatten())[1]
            diag = torch.empty(n, dtype=w0.dtype, device=w0.device)
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(start + chunk, n), device=w0.device)
                basis = torch.zeros(len(idx), n, dtype=w0.dtype, device=w0.device)
                at = torch.arange(len(idx), device=w0.device)
                basis[at, idx] = 1
                (rows,) = vmap(hvp)(basis)
                diag[idx] = rows[at, idx].detach()
            out[m] = diag.view(shape)
    return out


def hutchinson_diagonal(
    model: nn.Module,
    X: Batch,
    y: torch.Tensor,
    layers: Sequence[nn.Module] | None = None,
    *,
    samples: int = OBDArgs.samples,
    seed: int = 0,
    chunk: int = 64,
) -> dict[nn.Module, torch.Tensor]:
    """Hutchinson estimate ``mean_k z_k * (H z_k)`` of the Hessian diagonal, ``samples``
    Rademacher probes spanning the weights of all requested layers jointly, seeded by ``seed``."""
    chosen = _layers(model, layers)
    with _scoring(model):
        base = _base(chosen)
        loss = _loss_fn(model, X, y, base)
        keys = [key for _, _, key in chosen]
        sizes = [base[k].numel() for k in keys]
        theta = torch.cat([base[k].flatten() for k in keys])

        def flat_loss(t: torch.Tensor) -> Any:
            parts = torch.split(t, sizes)
            return loss({k: p.view(base[k].shape) for k, p in zip(keys, parts, strict=True)})

        hvp = vjp(grad(flat_loss), theta)[1]
        gen = torch.Generator().manual_seed(seed)
        total = torch.zeros_like(theta)
        for start in range(0, samples, chunk):
            k = min(chunk, samples - start)
            z = torch.randint(0, 2, (k, theta.numel()), generator=gen) * 2 - 1  # on the CPU
            z = z.to(device=theta.device, dtype=theta.dtype)
            (hz,) = vmap(hvp)(z)
            total += (z * hz.detach()).sum(0)
        est = total / samples
    parts = torch.split(est, sizes)
    return {m: p.view(base[key].shape) for (_, m, key), p in zip(chosen, parts, strict=True)}


def fisher_diagonal(
    model: nn.Module,
    X: Batch,
    y: torch.Tensor,
    layers: Sequence[nn.Module] | None = None,
    *,
    chunk: int = 64,
) -> dict[nn.Module, torch.Tensor]:
    """Empirical Fisher diagonal ``mean_n (dL_n/dw) ** 2`` (per-sample cross-entropy ``L_n``),
    per-sample gradients by ``vmap(grad)``, ``chunk`` samples at a time."""
    chosen = _layers(model, layers)
    with _scoring(model):
        summed = accumulate_gradients(
            model,
            X,
            y,
            [_leaf(m) for _, m, _ in chosen],
            batches=math.ceil(inputs.count(X) / chunk),
            batch_size=chunk,
            per_sample=True,
            term=lambda i, g: (g.detach() ** 2).sum(0),
        )
    return {
        m: (torch.zeros_like(_leaf(m)) if s is None else s) / max(inputs.count(X), 1)
        for (_, m, _), s in zip(chosen, summed.sums, strict=True)
    }


def hessian_diagonal(
    model: nn.Module,
    X: Batch,
    y: torch.Tensor,
    *,
    hessian: str = OBDArgs.hessian,
    samples: int = OBDArgs.samples,
    max_exact: int = OBDArgs.max_exact,
    seed: int = 0,
) -> dict[nn.Module, torch.Tensor]:
    """Signed Hessian-diagonal estimate per prunable layer with the chosen estimator (module doc).

    Raises
    ------
    ValueError
        ``hessian = "exact"`` and a layer has more than ``max_exact`` weights, or an unknown
        ``hessian``.
    """
    if hessian not in HESSIANS:
        raise ValueError(f"hessian = {hessian!r}: must be one of {', '.join(HESSIANS)}")
    layers = prunable_modules(model)
    if hessian == "hutchinson":
        return hutchinson_diagonal(model, X, y, samples=samples, seed=seed)
    if hessian == "fisher":
        return fisher_diagonal(model, X, y)
    small = [m for _, m in layers if weight(m).numel() <= max_exact]
    large = [(n, m) for n, m in layers if weight(m).numel() > max_exact]
    if hessian == "exact" and large:
        name, m = large[0]
        raise PruneError(
            f'obd: hessian = "exact" but layer {name or "<root>"!r} has {weight(m).numel()} '
            f"weights, more than max_exact = {max_exact} (one Hessian-vector product per "
            'weight); raise max_exact or use hessian = "auto", "fisher" or "hutchinson"'
        )
    out = exact_diagonal(model, X, y, small) if small else {}
    if large:
        out.update(fisher_diagonal(model, X, y, [m for _, m in large]))
    return out


def obd_saliency(
    model: nn.Module,
    X: Batch,
    y: torch.Tensor,
    *,
    hessian: str = OBDArgs.hessian,
    samples: int = OBDArgs.samples,
    max_exact: int = OBDArgs.max_exact,
    seed: int = 0,
) -> dict[nn.Module, torch.Tensor]:
    """OBD saliency ``1/2 * |h_ii| * w_i ** 2`` per weight of every prunable layer (``w`` the
    effective, masked weight)."""
    h = hessian_diagonal(
        model, X, y, hessian=hessian, samples=samples, max_exact=max_exact, seed=seed
    )
    return {
        m: 0.5 * h[m].abs() * weight(m).detach().reshape(h[m].shape) ** 2
        for _, m in prunable_modules(model)
    }


def obd_criterion(
    model: nn.Module, ctx: PruneContext, args: OBDArgs
) -> dict[nn.Module, torch.Tensor]:
    """:func:`obd_saliency` over the first ``n_samples`` rows of the training fold, Hutchinson
    probes seeded with the fold's seed."""
    X = batch_of(first_rows(ctx.X_train, args.n_samples), ctx.device)
    y = labels(ctx.y_train[: args.n_samples], ctx.device).long()
    return obd_saliency(
        model,
        X,
        y,
        hessian=args.hessian,
        samples=args.samples,
        max_exact=args.max_exact,
        seed=ctx.seed,
    )


@register
class OBDPruner(MaskPruner):
    """Optimal Brain Damage: prune the weights of least ``1/2 * |h_ii| * w_i ** 2``."""

    name = "obd"
    summary = "Unstructured: remove weights of least OBD saliency h_ii*w^2/2 (Hessian diagonal)."
    reference = "LeCun, Denker & Solla 1990, Optimal Brain Damage"
    Args = OBDArgs
    args: OBDArgs
    criterion = staticmethod(obd_criterion)
