"""The pruning interface.

A :class:`Pruner` is created from a :class:`~harness.spec.PruneSpec`. The runner calls
:meth:`Pruner.step` once per round with the cumulative target sparsity of that round (one round for
``oneshot``, ``steps`` rounds for ``iterative``), fine-tunes between rounds, and finally calls
:meth:`Pruner.finalize` to make the pruning permanent. Unstructured techniques only override
:meth:`MaskPruner.scores`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from harness.spec import PruneSpec, TrainSpec

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True, eq=False)
class PruneContext:
    """What a technique may use: a batch of example inputs, the (scaled) training fold, the seed
    of this fold, the suite's dense training spec, the dense model of this fold (the teacher for
    distillation) and a builder for the suite's architecture with other ``model_args``."""

    example: torch.Tensor
    X_train: np.ndarray
    y_train: np.ndarray
    seed: int
    train: TrainSpec | None = None
    teacher: nn.Module | None = None
    build: Callable[[Mapping[str, Any]], nn.Module] | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)  # the suite's


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and convolution layers, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def weight(module: nn.Module) -> torch.Tensor:
    """A layer's (effective, masked) weight tensor."""
    w = module.weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is not a tensor")
    return w


def leaf_weight(module: nn.Module) -> torch.Tensor:
    """The trainable weight parameter: ``weight_orig`` under a pruning mask (where
    ``weight = weight_orig * weight_mask``), else ``weight``. Gradients w.r.t. it are
    ``dL/dweight`` where the mask keeps the weight and 0 where it does not."""
    param = module.weight_orig if hasattr(module, "weight_orig") else module.weight
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return param


def positive_int_problem(args: Mapping[str, Any], *keys: str) -> str | None:
    """The problem with the first of ``args[key]`` that is set and not a positive integer."""
    for key in keys:
        value = args.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{key} = {value!r}: must be a positive integer"
    return None


def module_names_problem(args: Mapping[str, Any], key: str = "ignore") -> str | None:
    """The problem with ``args[key]`` if it is set and not a list of module names."""
    names = args.get(key, [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return f"{key} = {names!r}: must be a list of module names"
    return None


def ratio_of_remaining(reached: float, target: float) -> float:
    """The fraction of what is left at cumulative sparsity ``reached`` that must go to reach
    ``target`` (Torch-Pruning prunes a ratio of what is there now)."""
    return 1 - (1 - target) / (1 - reached)


def ignored_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The prunable layers named in ``names``, plus the last one (the classifier keeps its
    outputs)."""
    layers = prunable_modules(model)
    wanted = set(names)
    return [m for n, m in layers if n in wanted] + [layers[-1][1]]


class Pruner(ABC):
    """One pruning technique. Subclasses set ``name``, ``summary`` and ``reference``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]
    structured: ClassVar[bool] = False
    # True: the runner prunes the freshly initialized model (same init as the dense one), then
    # trains the sparse network with the suite's [train] spec, masks held (SNIP and kin)
    at_init: ClassVar[bool] = False
    arg_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: PruneSpec) -> None:
        self.spec = spec

    @classmethod
    def known_args(cls) -> tuple[str, ...]:
        """The ``args`` keys this technique accepts."""
        return cls.arg_names

    @classmethod
    def check(cls, spec: PruneSpec) -> str | None:
        """The problem with ``spec`` for this technique, or None."""
        unknown = set(spec.args) - set(cls.known_args())
        if unknown:
            known = ", ".join(cls.known_args()) or "none"
            return f"unknown key(s) {', '.join(sorted(unknown))} (known: {known})"
        return None

    @abstractmethod
    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        """Prune ``model`` to the cumulative ``target`` sparsity; returns the (new) model."""

    def finalize(self, model: nn.Module) -> nn.Module:
        """Make the pruning permanent (masks folded into the weights)."""
        return model


class MaskPruner(Pruner):
    """Unstructured pruning by score through ``torch.nn.utils.prune`` masks.

    ``scope = "global"`` ranks all weights of all prunable layers together, ``"layer"`` prunes
    every layer to the target separately. Already-pruned weights stay pruned.

    ``args.max_layer`` (global scope, optional): no layer loses more than
    ``round(max_layer * n)`` of its ``n`` weights. A global ranking can otherwise prune a whole
    layer away at high sparsity (layer collapse, Tanaka et al. 2020), which cuts the network in
    two; the weights a capped layer keeps go to the next lowest scores of the other layers.
    Techniques with an allocation of their own set ``layer_cap = False``.
    """

    layer_cap: ClassVar[bool] = True

    @classmethod
    def known_args(cls) -> tuple[str, ...]:
        extra = ("max_layer",) if cls.layer_cap and "max_layer" not in cls.arg_names else ()
        return (*cls.arg_names, *extra)

    @classmethod
    def check(cls, spec: PruneSpec) -> str | None:
        if (problem := super().check(spec)) is not None:
            return problem
        if cls.layer_cap and "max_layer" in spec.args:
            cap = spec.args["max_layer"]
            if (
                not isinstance(cap, int | float)
                or isinstance(cap, bool)
                or not spec.sparsity <= cap <= 1
            ):
                return (
                    f"max_layer = {cap!r}: must be a number in [sparsity, 1] "
                    f"(sparsity = {spec.sparsity})"
                )
        return None

    @abstractmethod
    def scores(self, model: nn.Module, ctx: PruneContext) -> Mapping[nn.Module, torch.Tensor]:
        """Importance per weight (same shape as ``module.weight``); lowest is pruned first."""

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        modules = [m for _, m in prunable_modules(model)]
        with torch.no_grad():
            scores = self.scores(model, ctx)
            ranked = {}
            for m in modules:
                s = scores[m].detach().clone().float()
                mask = getattr(m, "weight_mask", None)
                if mask is not None:
                    s[mask == 0] = -torch.inf  # keep what is pruned pruned
                ranked[m] = s
            if self.spec.scope == "global":
                cap = self.spec.args.get("max_layer") if self.layer_cap else None
                if cap is None:
                    keep = _keep_mask(torch.cat([ranked[m].flatten() for m in modules]), target)
                else:
                    keep = _keep_mask_capped([ranked[m].flatten() for m in modules], target, cap)
                offset = 0
                for m in modules:
                    n = ranked[m].numel()
                    prune.custom_from_mask(
                        m, "weight", keep[offset : offset + n].view_as(weight(m))
                    )
                    offset += n
            else:
                for m in modules:
                    keep = _keep_mask(ranked[m].flatten(), target)
                    prune.custom_from_mask(m, "weight", keep.view_as(weight(m)))
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        for _, m in prunable_modules(model):
            if prune.is_pruned(m) and hasattr(m, "weight_mask"):
                prune.remove(m, "weight")
        return model


def lowest_within_caps(
    scores: Sequence[torch.Tensor], k: int, caps: Sequence[int]
) -> list[list[int]]:
    """Per group (layer), the sorted indices of its share of the ``k`` lowest scores over all
    groups when group ``i`` gives up at most ``caps[i]`` entries: only each group's
    ``caps[i]`` lowest scores compete (stable order within and across groups), and fewer than
    ``k`` are taken if the caps allow fewer."""
    eligible = []
    for s, cap in zip(scores, caps, strict=True):
        allowed = torch.zeros(s.numel(), dtype=torch.bool)
        allowed[torch.argsort(s.flatten(), stable=True)[:cap]] = True
        eligible.append(allowed)
    if not eligible:
        return []
    flat = torch.cat([s.flatten() for s in scores])
    ok = torch.cat(eligible)
    chosen = torch.argsort(torch.where(ok, flat, torch.inf), stable=True)[: min(k, int(ok.sum()))]
    out, offset = [], 0
    for s in scores:
        mine = chosen[(chosen >= offset) & (chosen < offset + s.numel())] - offset
        out.append(sorted(mine.tolist()))
        offset += s.numel()
    return out


def _keep_mask_capped(scores: list[torch.Tensor], target: float, cap: float) -> torch.Tensor:
    """Global :func:`_keep_mask` over the concatenated ``scores`` where no layer loses more than
    ``round(cap * n)`` of its ``n`` weights (:func:`lowest_within_caps`)."""
    total = sum(s.numel() for s in scores)
    plan = lowest_within_caps(
        scores, round(target * total), [round(cap * s.numel()) for s in scores]
    )
    keep = []
    for s, removed in zip(scores, plan, strict=True):
        k = torch.ones_like(s)
        k[removed] = 0
        keep.append(k)
    return torch.cat(keep)


def _keep_mask(scores: torch.Tensor, target: float) -> torch.Tensor:
    """1 for the weights kept, 0 for the ``round(target * n)`` lowest scores (stable order)."""
    n_prune = round(target * scores.numel())
    keep = torch.ones_like(scores)
    if n_prune:
        keep[torch.argsort(scores, stable=True)[:n_prune]] = 0
    return keep


def schedule_targets(spec: PruneSpec) -> list[float]:
    """Cumulative sparsity per round.

    ``iterative`` rounds remove the same fraction of what remains (Han et al. 2015), so round
    ``t`` of ``N`` reaches ``1 - (1 - s) ** (t / N)``. ``agp`` is the automated gradual pruner
    of Zhu & Gupta 2017 with initial sparsity 0: ``s_t = s * (1 - (1 - t / N) ** 3)``, fast early
    while many redundant weights remain, slow towards the end.
    """
    if spec.schedule == "oneshot" or spec.steps == 1:
        return [spec.sparsity]
    n = spec.steps
    if spec.schedule == "agp":
        return [spec.sparsity * (1 - (1 - t / n) ** 3) for t in range(1, n + 1)]
    return [1 - (1 - spec.sparsity) ** (t / n) for t in range(1, n + 1)]
