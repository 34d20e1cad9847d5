"""Knowledge distillation into a smaller architecture (Hinton, Vinyals & Dean 2015).

Not pruning of the trained weights but the baseline every pruning result should beat: a student of
the suite's own architecture with narrower layers, trained from scratch on the training fold with
the distillation loss ``alpha * T**2 * KL(teacher^T || student^T) + (1 - alpha) * CE`` against the
dense model of the same fold (the teacher), using the suite's ``[train]`` spec.

The student's widths: ``args.model_args`` if given (merged over the suite's ``model_args``), else
every width of the built-in factories (``hidden`` of ``mlp``, ``channels`` of ``cnn1d``) scaled by
the largest factor whose student has at most ``1 - sparsity`` of the dense parameters, so
``sparsity`` reads as for structured pruning: the fraction of parameters removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from harness.pruning.base import (
    Problems,
    PruneContext,
    PruneError,
    Pruner,
    PrunerArgs,
    positive,
    unit,
)
from harness.pruning.registry import register
from harness.schema import option
from harness.spec import DistillSpec, PruneSpec

WIDTH_KEYS = ("hidden", "channels")
_DEFAULT_WIDTHS = {"hidden": [256, 128], "channels": [32, 32, 32]}


@dataclass(frozen=True)
class StudentArgs(PrunerArgs):
    """The student's ``model_args`` (empty: scaled widths) and the distillation's
    ``temperature`` and ``alpha`` (module docstring)."""

    model_args: Mapping[str, Any] = option(default_factory=dict)
    temperature: float = option(4.0, check=positive)
    alpha: float = option(0.7, check=unit)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def scaled_args(
    build: Callable[[Mapping[str, Any]], nn.Module],
    dense_params: int,
    target: float,
    widths: Sequence[int],
    key: str,
) -> dict[str, Any]:
    """``{key: widths * f}`` for the largest ``f`` (in steps of 1/256) whose model has at most
    ``(1 - target) * dense_params`` parameters (binary search: parameters grow with ``f``);
    every width stays >= 1."""

    def args(step: int) -> dict[str, Any]:
        return {key: [max(1, round(w * step / 256)) for w in widths]}

    budget = (1 - target) * dense_params
    low, high = 1, 256  # invariant: args(low) fits, or low == 1
    while low < high:
        mid = (low + high + 1) // 2
        if _params(build(args(mid))) <= budget:
            low = mid
        else:
            high = mid - 1
    return args(low)


@register
class StudentPruner(Pruner):
    name = "student"
    summary = "Structured baseline: distill the dense model into a narrower one from scratch."
    reference = "Hinton et al. 2015, Distilling the Knowledge in a Neural Network"
    structured = True
    Args = StudentArgs
    args: StudentArgs

    @classmethod
    def spec_problems(cls, spec: PruneSpec, args: PrunerArgs) -> Problems:
        if spec.schedule != "oneshot":
            yield "schedule", spec.schedule, "the student is trained once"

    def student_args(self, ctx: PruneContext) -> dict[str, Any]:
        """The student's ``model_args`` overrides (explicit, or scaled widths)."""
        if ctx.build is None or ctx.teacher is None:
            raise PruneError("the student needs the suite's model builder and the dense teacher")
        explicit = self.args.model_args
        if explicit:
            return dict(explicit)
        for key in WIDTH_KEYS:
            widths = ctx.model_args.get(key, _DEFAULT_WIDTHS[key])
            if _accepts(ctx.build, key, widths):
                return scaled_args(ctx.build, _params(ctx.teacher), self.spec.sparsity, widths, key)
        raise PruneError(
            "student: cannot scale this architecture's widths (no 'hidden' or 'channels' "
            "model_args): give args.model_args for the student"
        )

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        import torch

        from harness.training import fit

        args = self.student_args(ctx)
        torch.manual_seed(ctx.seed)
        assert ctx.build is not None and ctx.teacher is not None and ctx.train is not None
        student = ctx.build(args).to(ctx.device)
        fit(
            student,
            ctx.X_train,
            ctx.y_train,
            ctx.train,
            seed=ctx.seed,
            device=ctx.device,
            teacher=ctx.teacher,
            distill=DistillSpec(
                temperature=self.args.temperature,
                alpha=self.args.alpha,
            ),
        )
        return student


def _accepts(build: Callable[[Mapping[str, Any]], nn.Module], key: str, widths: Any) -> bool:
    """Whether the suite's factory takes ``key`` (a list of widths)."""
    try:
        build({key: list(widths)})
    except Exception:  # the factory rejects the key: not this architecture
        return False
    return True
