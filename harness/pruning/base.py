"""The pruning interface.

A :class:`Pruner` is created from a :class:`~harness.spec.PruneSpec`. The runner calls
:meth:`Pruner.step` once per round with the cumulative target sparsity of that round (one round for
``oneshot``, ``steps`` rounds for ``iterative``), fine-tunes between rounds, and finally calls
:meth:`Pruner.finalize` to make the pruning permanent.

Every technique declares its ``prune.args`` as a frozen dataclass, its ``Args`` (fields: type by
annotation, check by :func:`harness.schema.option`, the default; shared fields come from the base
dataclasses here): :meth:`Pruner.parse_args` builds it from the suite's table, and the pruner reads
``self.args``. Unstructured techniques name a criterion, a function ``(model, ctx, args) -> scores
per layer``, for the generic :class:`MaskPruner`; structured ones name a Torch-Pruning importance
for :class:`~harness.pruning.structured.StructuralPruner`.

``prune.pattern = "N:M"`` (semi-structured sparsity, :func:`nm_keep_mask`) is taken by the
techniques whose :attr:`Pruner.patterns` is True (every :class:`MaskPruner` criterion, SparseGPT)
with ``schedule = "oneshot"``; :meth:`Pruner.parse_spec` refuses it in one line for the others.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import prune

from harness import inputs
from harness._util import HarnessError
from harness.inputs import Batch, Inputs
from harness.schema import SpecError, Table, option, validate
from harness.spec import PruneSpec, TrainSpec

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Problems = Iterator[tuple[str, Any, str]]  # (key, value, problem), as schema's ``problems()``


class PruneError(HarnessError):
    """A technique cannot prune this model or these inputs (one line naming the method and
    why: ``lrp: needs floating-point inputs (the data are int64 token ids)``)."""


@dataclass(frozen=True, eq=False)
class PruneContext:
    """What a technique may use: a batch of example inputs, the (scaled) training fold, the seed
    of this fold, the suite's dense training spec, the dense model of this fold (the teacher for
    distillation) and a builder for the suite's architecture with other ``model_args``."""

    example: Batch  # a tensor, or named tensors for a multi-input model (harness.inputs)
    X_train: Inputs  # an array (N, *sample_shape), or named arrays
    y_train: np.ndarray
    seed: int
    train: TrainSpec | None = None
    teacher: nn.Module | None = None
    build: Callable[[Mapping[str, Any]], nn.Module] | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)  # the suite's
    device: str = "cpu"  # where the model and every batch live (torch.device string)


# --------------------------------------------------------------------------------------------
# Inputs (any shape and type, harness.inputs): what the techniques feed the model


def batch_of(
    X: Inputs | Batch, device: str | torch.device = "cpu", float_dtype: torch.dtype | None = None
) -> Batch:
    """Tensors of inputs ``X`` on ``device`` (:func:`harness.inputs.to_batch`); floating-point
    arrays cast to ``float_dtype`` when given (token ids and masks keep their integer type)."""
    batch = inputs.to_batch(X, device)
    if float_dtype is None:
        return batch

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(float_dtype) if t.is_floating_point() else t

    if isinstance(batch, Mapping):
        return {k: cast(v) for k, v in batch.items()}
    return cast(batch)


def first_rows(X: Inputs, n: int) -> Inputs:
    """The first ``n`` samples of inputs (all of them if fewer)."""
    return inputs.take(X, slice(0, n))


def labels(y: Any, device: str | torch.device = "cpu") -> torch.Tensor:
    """Labels as a tensor on ``device``."""
    return torch.as_tensor(y).to(device)


def example_of(ctx: PruneContext) -> Any:
    """Torch-Pruning's ``example_inputs``: the first sample of ``ctx.example`` (a tensor, or
    the dict of named tensors that Torch-Pruning passes as keyword arguments)."""
    return inputs.example_inputs(inputs.take(ctx.example, slice(0, 1)))


def float_inputs_problem(X: Inputs | Batch) -> str | None:
    """Why the main input (:func:`harness.inputs.main`: the array, or the token field / first
    field of named inputs) cannot be differentiated, being integer token ids; or None."""
    value: Any = inputs.main(X)  # type: ignore[arg-type]  # a Batch as well
    if isinstance(value, torch.Tensor):
        floating, dtype = value.is_floating_point(), str(value.dtype).removeprefix("torch.")
    else:
        kind = np.asarray(value).dtype
        floating, dtype = kind.kind == "f", kind.name
    return None if floating else f"the data are {dtype} token ids"


def require_float_inputs(method: str, X: Inputs | Batch) -> None:
    """Raise :class:`PruneError` (one line) when a technique that differentiates the model's
    inputs gets token ids: ``lrp: needs floating-point inputs (the data are int64 token ids)``."""
    problem = float_inputs_problem(X)
    if problem is not None:
        raise PruneError(f"{method}: needs floating-point inputs ({problem})")


# --------------------------------------------------------------------------------------------
# Arguments


def positive(value: float) -> str | None:
    """Check of a count or a scale: ``> 0``."""
    return None if value > 0 else "must be > 0"


COUNT_MAX = 1_000_000  # any count a method takes: far above real use, refuses a typo at once


def count(value: int) -> str | None:
    """Check of a count (batches, samples, epochs): ``> 0`` and at most :data:`COUNT_MAX`."""
    if value <= 0:
        return "must be > 0"
    return None if value <= COUNT_MAX else f"must be <= {COUNT_MAX} (the harness's bound)"


def non_negative(value: float) -> str | None:
    """Check of a weight or an exponent: ``>= 0``."""
    return None if value >= 0 else "must be >= 0"


def unit(value: float) -> str | None:
    """Check of a fraction: in ``[0, 1]``."""
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def open_unit(value: float) -> str | None:
    """Check of a fraction that cannot be 0 or 1: in ``(0, 1)``."""
    return None if 0 < value < 1 else "must be in (0, 1)"


@dataclass(frozen=True)
class PrunerArgs:
    """The ``prune.args`` of a technique, validated however they are built (a TOML table, in
    Python, ``dataclasses.replace``). This base takes none; every technique's ``Args`` extends it
    (and the shared dataclasses below) with its fields, each with its type, check and default."""

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class IgnoreArgs(PrunerArgs):
    """``ignore``: prunable layers (module names) left alone (structured methods also always
    keep the classifier's outputs)."""

    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class MaskArgs(IgnoreArgs):
    """Of :class:`MaskPruner`: ``ignore`` (layers that stay dense, outside the ranking) and
    ``max_layer``, the per-layer cap of a global ranking (none by default; at least the target
    sparsity)."""

    max_layer: float | None = option(None, check=unit)


@dataclass(frozen=True)
class GradientArgs(PrunerArgs):
    """Gradients over the first ``batches`` mini-batches of ``batch_size`` training rows."""

    batches: int = option(8, check=count)
    batch_size: int = option(128, check=count)


# --------------------------------------------------------------------------------------------
# Layers and gradients


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and convolution layers, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def layers_to_prune(model: nn.Module, ignore: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """:func:`prunable_modules` without the layers named in ``ignore``."""
    return [(name, m) for name, m in prunable_modules(model) if name not in ignore]


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


@dataclass(frozen=True, eq=False)
class GradientSums:
    """What :func:`accumulate_gradients` summed: one entry per parameter (None where the loss
    does not reach it) and the number of mini-batches."""

    sums: list[torch.Tensor | None]
    batches: int


def accumulate_gradients(
    model: nn.Module,
    X: Batch,
    y: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    batches: int,
    batch_size: int,
    mean: bool = False,
    per_sample: bool = False,
    term: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> GradientSums:
    """Sum ``term(i, g)`` (default ``g``) over the first ``batches`` mini-batches of
    ``batch_size`` rows of ``(X, y)``, for every parameter ``params[i]`` of ``model``.

    Parameters
    ----------
    model
        In eval mode meanwhile (no dropout noise); its training flag is put back afterwards.
    X
        A batch of inputs (:data:`harness.inputs.Batch`): a tensor ``(N, ...)``, or named
        tensors passed to the model as keyword arguments.
    params
        Leaf parameters of ``model`` (``weight_orig`` under a mask, :func:`leaf_weight`).
    mean
        ``g`` is the gradient of the mini-batch's mean cross-entropy divided by the number of
        mini-batches, so that the plain sums are the gradient of the mean over the mini-batches;
        otherwise of the mini-batch's mean cross-entropy.
    per_sample
        ``g`` holds the gradients of the rows' own cross-entropies instead, stacked
        ``(rows, *shape)`` (``torch.func.vmap`` of ``torch.func.grad`` through
        ``torch.func.functional_call``; the masked layers' ``weight`` attributes, which the mask
        hooks overwrite with transformed tensors, are put back afterwards).
    term
        What is summed of parameter ``i``'s gradient ``g`` (``(g * w) ** 2``, ``g ** 2``, ...).
    """
    starts = list(range(0, min(inputs.count(X), batches * batch_size), batch_size))
    sums: list[torch.Tensor | None] = [None] * len(params)
    gradients = _per_sample_gradients(model, params) if per_sample else None
    saved = {
        m: m.__dict__["weight"]
        for _, m in (prunable_modules(model) if per_sample else ())
        if "weight" in m.__dict__
    }
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for start in starts:
                xb = inputs.take(X, slice(start, start + batch_size))
                yb = y[start : start + batch_size]
                if gradients is not None:
                    grads: Sequence[torch.Tensor | None] = gradients(xb, yb)
                else:
                    loss = nn.functional.cross_entropy(inputs.forward(model, xb), yb)
                    if mean:
                        loss = loss / len(starts)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                for i, g in enumerate(grads):
                    if g is not None:
                        t = g if term is None else term(i, g)
                        total = sums[i]
                        sums[i] = t if total is None else total + t
    finally:
        model.train(was_training)
        for m, w in saved.items():
            m.weight = w
    return GradientSums(sums, len(starts))


def _per_sample_gradients(
    model: nn.Module, params: Sequence[torch.Tensor]
) -> Callable[[Batch, torch.Tensor], list[torch.Tensor]]:
    """``(xb, yb) -> [per-row gradients of params[i], (rows, *shape)]`` by vmap of grad (named
    inputs: every field's row, passed as keyword arguments)."""
    names = {id(p): name for name, p in model.named_parameters()}
    if any(id(p) not in names for p in params):
        raise ValueError("params must be parameters of the model")
    keys = [names[id(p)] for p in params]
    fixed = {key: p.detach() for key, p in zip(keys, params, strict=True)}

    def sample_loss(values: dict[str, torch.Tensor], x: Batch, t: torch.Tensor) -> Any:
        if isinstance(x, Mapping):
            kwargs = {k: v.unsqueeze(0) for k, v in x.items()}
            out = functional_call(model, values, (), kwargs)
        else:
            out = functional_call(model, values, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(inputs.logits_of(out), t.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))

    def gradients(xb: Batch, yb: torch.Tensor) -> list[torch.Tensor]:
        out = per_sample(fixed, xb, yb)
        return [out[key] for key in keys]

    return gradients


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


def remove_masks(model: nn.Module) -> nn.Module:
    """Make mask pruning permanent: every layer's mask folded into its weight."""
    for _, m in prunable_modules(model):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return model


# --------------------------------------------------------------------------------------------
# Pruners


# The built-in techniques that take ``prune.pattern``, sorted (their ``patterns`` is True; a
# test checks the list against the registry): named here, since the registry imports this module.
PATTERN_METHODS = ("l1", "l2", "magnitude", "obd", "snip", "sparsegpt", "taylor", "wanda")


class Pruner(ABC):
    """One pruning technique. Subclasses set ``name``, ``summary``, ``reference`` and ``Args``
    (and annotate ``args`` with it)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]
    structured: ClassVar[bool] = False
    # True: the runner prunes the freshly initialized model (same init as the dense one), then
    # trains the sparse network with the suite's [train] spec, masks held (SNIP and kin)
    at_init: ClassVar[bool] = False
    # True: the technique prunes to ``prune.pattern = "N:M"`` (N of every M consecutive input
    # weights of a row kept, :func:`nm_keep_mask`); the others refuse a pattern
    patterns: ClassVar[bool] = False
    # why a technique refuses a pattern, in its refusal (structured ones say so by default)
    no_pattern: ClassVar[str] = ""
    Args: ClassVar[type[PrunerArgs]] = PrunerArgs
    args: PrunerArgs

    def __init__(self, spec: PruneSpec) -> None:
        """Raises :class:`~harness.schema.SpecError` if ``spec`` does not suit the technique."""
        self.spec = spec
        self.args = type(self).parse_spec(spec)

    @classmethod
    def parse_args(
        cls, args: Mapping[str, Any], *, source: str = "<python>", path: str = "prune.args"
    ) -> PrunerArgs:
        """The technique's :attr:`Args` from a case's ``prune.args`` table.

        Parameters
        ----------
        args
            The table as written (TOML arrays are lists).
        source, path
            Where it comes from, for the messages: the suite file and the table's key.

        Raises
        ------
        SpecError
            One line naming ``source``, the key (``prune.args.batches``) and the problem; an
            unknown key is refused.
        """
        table = Table(dict(args) if isinstance(args, Mapping) else args, source, path)
        parsed: PrunerArgs = table.build(cls.Args)
        return parsed

    @classmethod
    def spec_problems(cls, spec: PruneSpec, args: PrunerArgs) -> Problems:
        """Problems of ``args`` (parsed) with the rest of ``spec`` (its sparsity, schedule):
        ``(key below the prune table, value, problem)``."""
        return iter(())

    @classmethod
    def pattern_problems(cls, spec: PruneSpec) -> Problems:
        """Problems of ``spec.pattern`` with this technique: a technique whose :attr:`patterns`
        is False refuses it (naming those that take one), and a pattern is pruned in one shot
        (an iterative or AGP schedule would have to grow ``N:M`` masks round by round)."""
        if spec.pattern is None:
            return
        if not cls.patterns:
            kind = cls.no_pattern or (
                "a structured method, it removes whole units" if cls.structured else ""
            )
            yield (
                "pattern",
                spec.pattern,
                f"{cls.name} cannot prune to an N:M pattern{f' ({kind})' if kind else ''}; "
                f"methods that can: {', '.join(PATTERN_METHODS)}",
            )
        elif spec.schedule != "oneshot":
            yield "schedule", spec.schedule, f'must be "oneshot" with pattern = {spec.pattern!r}'

    @classmethod
    def parse_spec(
        cls, spec: PruneSpec, *, source: str = "<python>", path: str = "prune"
    ) -> PrunerArgs:
        """:meth:`parse_args` of ``spec.args`` (at ``path.args``), then :meth:`spec_problems`.

        Raises
        ------
        SpecError
            The first problem, named below ``path`` (``prune.args.max_layer``, ``prune.schedule``,
            ``prune.pattern``: :meth:`pattern_problems` come first).
        """
        args = cls.parse_args(spec.args, source=source, path=f"{path}.args")
        for key, value, problem in cls.pattern_problems(spec):
            raise SpecError(source, f"{path}.{key}", value, problem)
        for key, value, problem in cls.spec_problems(spec, args):
            raise SpecError(source, f"{path}.{key}", value, problem)
        return args

    @classmethod
    def known_args(cls) -> tuple[str, ...]:
        """The ``args`` keys this technique accepts (the fields of its :attr:`Args`)."""
        return tuple(f.name for f in dataclasses.fields(cls.Args))

    @abstractmethod
    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        """Prune ``model`` to the cumulative ``target`` sparsity; returns the (new) model."""

    def finalize(self, model: nn.Module) -> nn.Module:
        """Make the pruning permanent (masks folded into the weights)."""
        return model


# Importance per weight of every prunable layer (same shape as its weight; lowest pruned first)
# from the model, the context and the technique's args; a class attribute holds it as a
# ``staticmethod``
Criterion: TypeAlias = (
    "staticmethod[[nn.Module, PruneContext, Any], Mapping[nn.Module, torch.Tensor]]"
)


class MaskPruner(Pruner):
    """Unstructured pruning by a criterion's scores through ``torch.nn.utils.prune`` masks.

    A technique names its :attr:`criterion`, ``(model, ctx, args) -> {layer: scores}`` (as
    ``staticmethod(function)``). ``scope = "global"`` ranks all weights of all prunable layers
    together, ``"layer"`` prunes every layer to the target separately. Already-pruned weights
    stay pruned.

    Layers named in ``args.ignore`` get no mask and take no part in the ranking: the target
    applies to the other layers' weights.

    ``args.max_layer`` (global scope, optional): no layer loses more than
    ``round(max_layer * n)`` of its ``n`` weights. A global ranking can otherwise prune a whole
    layer away at high sparsity (layer collapse, Tanaka et al. 2020), which cuts the network in
    two; the weights a capped layer keeps go to the next lowest scores of the other layers.

    ``spec.pattern = "N:M"`` (:func:`nm_keep_mask`): every layer keeps the ``N`` highest scores of
    every group of ``M`` consecutive weights of each row of its weight matrix (a convolution's
    ``(out_channels, in_channels * prod(kernel))`` view), so every group has exactly ``M - N``
    zeros; scope, global ranking and ``max_layer`` do not apply, nor does the step's ``target``
    (the pattern is the target: ``sparsity = 1 - N/M``). A layer whose row length ``d`` is not a
    multiple of ``M`` (a first convolution of ``in_channels * 9 = 27`` inputs under ``2:4``) gets
    no mask and stays dense, like a layer in ``ignore`` (:func:`pattern_layers` names the layers
    that take the pattern); the model's sparsity is then ``1 - N/M`` over those layers only.
    """

    patterns: ClassVar[bool] = True
    Args: ClassVar[type[PrunerArgs]] = MaskArgs
    args: IgnoreArgs  # MaskArgs for all but those that compare per row (Wanda)
    criterion: ClassVar[Criterion]

    @classmethod
    def spec_problems(cls, spec: PruneSpec, args: PrunerArgs) -> Problems:
        cap = args.max_layer if isinstance(args, MaskArgs) else None
        if cap is not None and spec.pattern is not None:
            yield "args.max_layer", cap, f"does not apply with pattern = {spec.pattern!r}"
        elif cap is not None and cap < spec.sparsity:
            yield "args.max_layer", cap, f"must be in [sparsity, 1] (sparsity = {spec.sparsity})"

    def scores(self, model: nn.Module, ctx: PruneContext) -> Mapping[nn.Module, torch.Tensor]:
        """The criterion's importance per weight (same shape as ``module.weight``)."""
        return type(self).criterion(model, ctx, self.args)

    def step(self, model: nn.Module, target: float, ctx: PruneContext) -> nn.Module:
        modules = [m for _, m in layers_to_prune(model, self.args.ignore)]
        with torch.no_grad():
            scores = self.scores(model, ctx)
            ranked = {}
            for m in modules:
                s = scores[m].detach().clone().float()
                mask = getattr(m, "weight_mask", None)
                if mask is not None:
                    s[mask == 0] = -torch.inf  # keep what is pruned pruned
                ranked[m] = s
            for m, keep in self.keep_masks(modules, ranked, target).items():
                prune.custom_from_mask(m, "weight", keep.view_as(weight(m)))
        return model

    def keep_masks(
        self, modules: Sequence[nn.Module], ranked: Mapping[nn.Module, torch.Tensor], target: float
    ) -> dict[nn.Module, torch.Tensor]:
        """The masks (1: kept) of the layers that get one, from their scores ``ranked`` (already
        pruned weights at ``-inf``; ``torch.nn.utils.prune`` also multiplies the new mask with
        the old one): the ``N:M`` pattern, else the scope's ranking (class docstring)."""
        nm = self.spec.nm
        if nm is not None:
            masks = {m: nm_keep_mask(ranked[m], *nm) for m in modules}
            return {m: k for m, k in masks.items() if k is not None}
        if self.spec.scope != "global":
            return {m: _keep_mask(ranked[m].flatten(), target) for m in modules}
        cap = self.args.max_layer if isinstance(self.args, MaskArgs) else None
        if cap is None:
            keep = _keep_mask(torch.cat([ranked[m].flatten() for m in modules]), target)
        else:
            keep = _keep_mask_capped([ranked[m].flatten() for m in modules], target, cap)
        out, offset = {}, 0
        for m in modules:
            n = ranked[m].numel()
            out[m] = keep[offset : offset + n]
            offset += n
        return out

    def finalize(self, model: nn.Module) -> nn.Module:
        return remove_masks(model)


def lowest_within_caps(
    scores: Sequence[torch.Tensor], k: int, caps: Sequence[int]
) -> list[list[int]]:
    """Per group (layer), the sorted indices of its share of the ``k`` lowest scores over all
    groups when group ``i`` gives up at most ``caps[i]`` entries: only each group's
    ``caps[i]`` lowest scores compete (stable order within and across groups), and fewer than
    ``k`` are taken if the caps allow fewer."""
    eligible = []
    for s, cap in zip(scores, caps, strict=True):
        allowed = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
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


def row_length(module: nn.Module) -> int:
    """The inputs ``d`` of one output row: a Linear's ``in_features``, a convolution's
    ``in_channels / groups * prod(kernel_size)`` (its weight viewed as ``(out_channels, d)``)."""
    w = weight(module)
    return int(w[0].numel()) if w.shape[0] else 0


def pattern_layers(
    model: nn.Module, nm: tuple[int, int], ignore: Sequence[str] = ()
) -> list[tuple[str, nn.Module]]:
    """The layers an ``N:M`` pattern applies to: those of :func:`layers_to_prune` whose row
    length (:func:`row_length`) is a multiple of ``M``; the others stay dense."""
    return [(name, m) for name, m in layers_to_prune(model, ignore) if row_length(m) % nm[1] == 0]


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """``N:M`` semi-structured keep mask (1: kept) of one layer's ``scores``.

    The scores are viewed as ``(rows, d)`` (``scores.reshape(rows, -1)``: a convolution's
    ``(in_channels, *kernel)`` entries in that C-contiguous, channel-major order, as
    ``weight.reshape(out_channels, -1)`` lays them out) and every row is cut into ``d / m``
    groups of ``m`` consecutive entries, the grouping of torch's 2:4 semi-structured format
    along each row of a 2-D weight. In every group the ``m - n`` lowest scores are masked
    (stable order: of equal scores the earlier entry goes first), so exactly ``n`` are kept.

    Returns
    -------
    torch.Tensor or None
        The mask, shaped like ``scores``; None when ``d`` is not a multiple of ``m`` (the layer
        stays dense).
    """
    if not 0 < n < m:
        raise ValueError(f"an N:M pattern needs 0 < N < M, got {n}:{m}")
    rows = scores.shape[0]
    flat = scores.reshape(rows, -1)
    d = flat.shape[1]
    if d % m:
        return None
    groups = flat.reshape(rows, d // m, m)
    keep = torch.ones_like(groups)
    keep.scatter_(-1, torch.argsort(groups, dim=-1, stable=True)[..., : m - n], 0)
    return keep.reshape(scores.shape)


def row_keep_mask(scores: torch.Tensor, target: float) -> torch.Tensor:
    """Keep mask (1: kept) comparing the scores within each output row: every row of the
    ``(rows, d)`` view (as :func:`nm_keep_mask`) loses its ``round(target * d)`` lowest scores
    (stable order); shaped like ``scores``."""
    rows = scores.shape[0]
    flat = scores.reshape(rows, -1)
    k = round(target * flat.shape[1])
    keep = torch.ones_like(flat)
    if k:
        keep.scatter_(1, torch.argsort(flat, dim=1, stable=True)[:, :k], 0)
    return keep.reshape(scores.shape)


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
