"""Pruning by explaining: structured pruning by Layer-wise Relevance Propagation (LRP).

Yeom et al. 2021 rank the units of a network (neurons of linear layers, channels of
convolutions) by the relevance that LRP assigns to them when explaining the model's decisions on
a small reference set, and remove the least relevant units. Implemented here with captum's LRP
(:class:`captum.attr.LayerLRP`) and Torch-Pruning's dependency graph, which removes whole neurons
of ``nn.Linear`` layers and whole output channels of ``nn.Conv1d`` layers together with everything
that depends on them; the model really shrinks. The final classifier layer keeps its outputs.

Relevance. Every reference sample ``x`` (the first ``n_samples`` rows of the training fold) is
explained for its true class ``c``: the relevance at the output layer is the logit ``f_c(x)`` at
``c`` and 0 elsewhere, and is propagated down with the LRP-epsilon rule at every linear and
convolution layer::

    R_i = sum_j  a_i w_ij / (z_j + eps * sign(z_j))  R_j ,    z_j = sum_i a_i w_ij + b_j

(``sign(0) = +1``, as captum does). Batch normalization and pooling layers get the same
epsilon rule (captum's defaults for them). ReLU and (evaluation-mode) dropout pass relevance
through unchanged, and ``nn.Flatten`` / ``nn.Unflatten`` / ``nn.Identity`` pass it through
reshaped (a rule of this module: captum has no rule for them and its ``IdentityRule`` does not
reshape). A residual addition written in ``forward`` (not a module) hands the relevance of its
output to both of its inputs. A module with no rule (``LayerNorm``, ``Embedding``, ``GELU``, ...)
makes the method refuse the model in one line (:class:`NoRuleError`), and so do integer token
ids: relevance flows back to floating-point inputs only. Named inputs (a mapping) are explained
through their floating-point fields, the others (an attention mask) passed along. ``eps`` is
the ``epsilon`` argument (default ``1e-6``); ``0`` gives LRP-0 but is floored at captum's own
stabilizer ``1e-9`` so that a unit with ``z_j = 0`` cannot turn the backward pass into NaNs.

Unit score. The relevance of unit ``k`` of layer ``l`` is the relevance at the layer's output
(for a linear neuron its pre-activation, which carries the same relevance as the ReLU output),
summed over the spatial positions of a channel and over the reference samples::

    R_k = sum_x sum_t R_{k,t}(x)          (signed: no absolute value)
    r_k = R_k / |sum_k' R_k'|             (normalized per layer)

The sum is signed, as in Yeom et al. (the criterion aggregates the relevance over the
reference samples, and the authors' MLP code, LRP_Pruning_toy_example, sums the raw relevance):
a unit whose relevance is negative speaks against the true class on balance and is the first to
go, where a sum of ``|R|`` would keep it as "important" (the authors' VGG/ResNet code,
LRP_pruning, sums ``|R|`` over filters; not done here). The per-layer normalization is the one
of the authors' code (``v / sum(v)`` per layer before the global ranking); dividing by the
absolute total keeps the order if a total is negative, and a layer whose relevance is all zero
is left as is. With LRP-0 and zero biases relevance is
conserved, every layer's total is the sum of the explained logits and the normalization is a
common factor; with biases and ``epsilon`` some relevance is absorbed, differently per layer, and
the normalization puts the layers on the same scale. ``scope = "global"`` ranks all units of all
prunable layers together (Torch-Pruning's global pruning), ``"layer"`` prunes each layer to the
target separately (the normalization does not matter there). Ties at the global threshold are
removed together (Torch-Pruning's ``imp <= threshold``), as for the ``structured`` method.

The relevance is computed on a deep copy of the model in evaluation mode: captum attaches
``rule`` and ``activations`` attributes and hooks to the modules it explains (and leaves the
``activations`` behind), none of which reach the user's model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from harness import inputs
from harness.inputs import Batch
from harness.pruning.base import (
    IgnoreArgs,
    PruneContext,
    PruneError,
    batch_of,
    count,
    first_rows,
    labels,
    non_negative,
    prunable_modules,
    require_float_inputs,
)
from harness.pruning.registry import register
from harness.pruning.structured import StructuralPruner
from harness.schema import option

STABILIZER = 1e-9  # captum's PropagationRule.STABILITY_FACTOR: the smallest epsilon used
_RELU_LIKE = (nn.ReLU, nn.Dropout, nn.Tanh)  # captum passes relevance through these
_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)
# captum's default rule for these (its SUPPORTED_LAYERS_WITH_RULES): the epsilon rule
_EPSILON_LIKE = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
)


class NoRuleError(PruneError, TypeError):
    """A module that LRP cannot propagate relevance through (one line naming it)."""


_BATCH = 256  # reference rows explained per captum call


@dataclass(frozen=True)
class LRPArgs(IgnoreArgs):
    """``n_samples`` reference rows, the ``epsilon`` of the LRP-epsilon rule; ``ignore``."""

    n_samples: int = option(256, check=count)
    epsilon: float = option(1e-6, check=non_negative)


def _reshape_rule(epsilon: float) -> Any:
    """A captum rule passing the relevance of a reshaping module's output to its input."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    class ReshapeIdentityRule(EpsilonRule):
        def _create_backward_hook_input(self, inputs: torch.Tensor) -> Callable[..., Any]:
            def hook(grad: torch.Tensor) -> torch.Tensor:
                relevance = self.relevance_output[grad.device].reshape(grad.shape)
                grad.replace_out = relevance  # type: ignore[attr-defined]  # read by ReLU hooks
                return relevance

            return hook

    return ReshapeIdentityRule(epsilon)


def attach_rules(model: nn.Module, epsilon: float) -> None:
    """Give every leaf module of ``model`` its captum LRP rule (in place; use it on a copy).

    Linear and convolution layers (and batch normalization, pooling) get the epsilon rule with
    ``max(epsilon, STABILIZER)``, ``Flatten`` / ``Unflatten`` / ``Identity`` the reshaping
    identity rule; ReLU, Dropout and Tanh need none. Raises :class:`NoRuleError` (a
    ``TypeError`` and a one-line :class:`~harness.pruning.base.PruneError`) naming a module
    captum cannot propagate through.
    """
    from captum.attr._utils.lrp_rules import EpsilonRule

    eps = max(float(epsilon), STABILIZER)
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, *_EPSILON_LIKE)):
            module.rule = EpsilonRule(eps)
        elif isinstance(module, _RESHAPES):
            module.rule = _reshape_rule(eps)
        elif not isinstance(module, _RELU_LIKE):
            raise NoRuleError(
                f"lrp: LRP has no propagation rule for module {name!r} ({type(module).__name__})"
            )


class _Keywords(nn.Module):
    """A model of named inputs called with positional tensors (captum's ``attribute`` takes a
    tuple): ``forward(*values)`` is ``model(**dict(zip(keys, values)))``, its logits."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, *values: torch.Tensor) -> Any:
        return inputs.logits_of(self.model(**dict(zip(self.keys, values, strict=True))))


def layer_relevance(
    model: nn.Module,
    X: Batch,
    target: torch.Tensor,
    *,
    epsilon: float = LRPArgs.epsilon,
    batch_size: int = _BATCH,
) -> dict[str, torch.Tensor]:
    """LRP relevance at the output of every prunable layer, per sample.

    Parameters
    ----------
    model:
        Left untouched: the relevance is computed on a deep copy in evaluation mode.
    X, target:
        Inputs ``(N, ...)`` (or named inputs: the floating-point ones are explained, the others,
        such as an attention mask, passed along) and the class explained for each ``(N,)``.
    epsilon:
        Of the LRP-epsilon rule (floored at :data:`STABILIZER`).

    Returns
    -------
    ``{layer name: relevance}``, each of the layer's output shape ``(N, units[, positions])``.
    """
    from captum.attr import LayerLRP

    n = inputs.count(X)
    if n == 0:
        raise ValueError("LRP needs at least one reference sample")
    require_float_inputs("lrp", X)
    explained = copy.deepcopy(model).eval()
    layers = prunable_modules(explained)
    param = next(explained.parameters())
    batch = batch_of(X, param.device, param.dtype)
    target = torch.as_tensor(target).to(device=param.device, dtype=torch.long)
    called: nn.Module = explained
    keys: list[str] = []
    explained_keys: list[str] = []
    if isinstance(batch, Mapping):
        keys = sorted(batch, key=lambda k: not batch[k].is_floating_point())  # floats first
        explained_keys = [k for k in keys if batch[k].is_floating_point()]
        called = _Keywords(explained, keys)
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, n, batch_size):
        attach_rules(explained, epsilon)  # captum removes the rules after every call
        part = inputs.take(batch, slice(start, start + batch_size))
        rest: tuple[torch.Tensor, ...] = ()
        if isinstance(part, Mapping):
            xb: Any = tuple(part[k].detach().clone().requires_grad_(True) for k in explained_keys)
            rest = tuple(part[k] for k in keys[len(explained_keys) :])
        else:
            xb = part.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = LayerLRP(called, [m for _, m in layers]).attribute(
                xb,
                target=target[start : start + batch_size],
                additional_forward_args=rest or None,
            )
        chunks.append([r.detach() for r in out])
    return {name: torch.cat([c[i] for c in chunks]) for i, (name, _) in enumerate(layers)}


def unit_scores(
    model: nn.Module,
    X: Batch,
    target: torch.Tensor,
    *,
    epsilon: float = LRPArgs.epsilon,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """Relevance of every unit of every prunable layer: ``R_k = sum_x sum_t R_{k,t}(x)``,
    divided by ``|sum_k R_k|`` per layer when ``normalize`` (and that total is not 0)."""
    out = {}
    for name, rel in layer_relevance(model, X, target, epsilon=epsilon).items():
        per_unit = rel.transpose(0, 1).flatten(1).sum(1)  # over samples and positions
        total = per_unit.sum().abs()
        out[name] = per_unit / total if normalize and total > 0 else per_unit
    return out


class RelevanceImportance(tp.importance.Importance):
    """Torch-Pruning importance: for a group, the scores of its root layer's output units.

    ``scores`` maps a layer to one score per output unit. Groups whose root is not scored (or
    that are not rooted at output units) get ``None``, which Torch-Pruning skips.
    """

    def __init__(self, scores: Mapping[nn.Module, torch.Tensor]) -> None:
        self.scores = scores

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        dep, idxs = group[0]
        score = self.scores.get(dep.target.module)
        if score is None or dep.handler not in (
            tp.pruner.function.prune_linear_out_channels,
            tp.pruner.function.prune_conv_out_channels,
        ):
            return None
        return score[torch.as_tensor(list(idxs), dtype=torch.long)].float()


def lrp_scores(model: nn.Module, ctx: PruneContext, args: LRPArgs) -> dict[str, torch.Tensor]:
    """Normalized relevance per unit of every prunable layer, by layer name
    (:func:`unit_scores` over the first ``n_samples`` rows of the training fold)."""
    X = first_rows(ctx.X_train, args.n_samples)
    require_float_inputs("lrp", X)  # before any work: token ids are refused in one line
    return unit_scores(
        model,
        batch_of(X, ctx.device),
        labels(ctx.y_train[: args.n_samples], ctx.device),
        epsilon=args.epsilon,
    )


def lrp_importance(model: nn.Module, ctx: PruneContext, args: LRPArgs) -> RelevanceImportance:
    """:class:`RelevanceImportance` of the :func:`lrp_scores`."""
    scores = lrp_scores(model, ctx, args)
    return RelevanceImportance({m: scores[n] for n, m in prunable_modules(model)})


@register
class LRPPruner(StructuralPruner):
    name = "lrp"
    summary = "Structured: remove whole neurons/channels of least LRP relevance (dependency graph)."
    reference = (
        "Yeom et al. 2021, Pruning by explaining: A novel criterion for deep neural network pruning"
    )
    Args = LRPArgs
    args: LRPArgs
    importance = staticmethod(lrp_importance)
