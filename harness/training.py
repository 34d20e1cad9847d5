"""Seeded, deterministic training and fine-tuning loops with learning-rate schedulers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness import inputs
from harness._util import HarnessError, check_budget
from harness.spec import DistillSpec, TrainSpec


class TrainingError(HarnessError):
    """Training diverged (a non-finite loss); one line saying where and what to change."""


@dataclass(frozen=True)
class TrainLog:
    """Mean training loss and learning rate per epoch."""

    loss: tuple[float, ...]
    lr: tuple[float, ...]


def _optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


class _Schedule:
    """Uniform stepping for torch's schedulers: per batch, per epoch, or on the epoch loss."""

    def __init__(self, opt: torch.optim.Optimizer, spec: TrainSpec, steps_per_epoch: int) -> None:
        lr_sched = torch.optim.lr_scheduler
        total = spec.epochs * steps_per_epoch
        self.per_batch: lr_sched.LRScheduler | None = None
        self.per_epoch: lr_sched.LRScheduler | None = None
        self.on_loss: lr_sched.ReduceLROnPlateau | None = None
        if spec.scheduler == "cosine":
            self.per_batch = lr_sched.CosineAnnealingLR(opt, T_max=total)
        elif spec.scheduler == "onecycle":
            self.per_batch = lr_sched.OneCycleLR(opt, max_lr=spec.lr, total_steps=total)
        elif spec.scheduler == "step":
            self.per_epoch = lr_sched.StepLR(opt, step_size=spec.step_size, gamma=spec.gamma)
        elif spec.scheduler == "plateau":
            self.on_loss = lr_sched.ReduceLROnPlateau(opt, factor=spec.gamma, patience=2)

    def after_batch(self) -> None:
        if self.per_batch is not None:
            self.per_batch.step()

    def after_epoch(self, loss: float) -> None:
        if self.per_epoch is not None:
            self.per_epoch.step()
        if self.on_loss is not None:
            self.on_loss.step(loss)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. 2015: ``alpha * T**2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE``.

    The ``T**2`` factor keeps the soft-target gradients on the scale of the hard-label ones.
    """
    t = temperature
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / t, dim=1),
        nn.functional.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = nn.functional.cross_entropy(student_logits, target)
    return alpha * t * t * soft + (1 - alpha) * hard


def fit(
    model: nn.Module,
    X: inputs.Inputs,
    y: np.ndarray,
    spec: TrainSpec,
    *,
    seed: int,
    device: str | None = None,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    distill: DistillSpec | None = None,
) -> TrainLog:
    """Train ``model`` in place with cross-entropy; same inputs and seed -> same weights.

    Pruning masks registered with ``torch.nn.utils.prune`` stay in force: masked weights get no
    gradient and stay zero. ``penalty(model)`` is added to every batch's loss (sparsity-inducing
    regularization). With ``teacher`` and ``distill`` the loss is the distillation loss against
    the teacher's logits (the teacher is not trained).
    """
    if (teacher is None) != (distill is None):
        raise ValueError("distillation needs both a teacher and a DistillSpec")
    if teacher is not None:
        teacher.eval()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # a streamed training fold is read batch by batch; arrays become tensors once
    lazy = inputs.is_lazy(X)
    Xt = X if lazy else inputs.to_batch(X, device)
    yt = torch.as_tensor(y).to(device or "cpu")
    n = inputs.count(Xt)
    steps = max(1, -(-n // spec.batch_size))
    opt = _optimizer(model, spec)
    schedule = _Schedule(opt, spec, steps)
    loss_fn = nn.CrossEntropyLoss()
    losses, lrs = [], []
    model.train()
    for epoch in range(spec.epochs):
        check_budget(f"training, epoch {epoch + 1} of {spec.epochs}")
        order = torch.randperm(n, generator=gen)
        total = 0.0
        lrs.append(float(opt.param_groups[0]["lr"]))
        for start in range(0, n, spec.batch_size):
            idx = order[start : start + spec.batch_size]
            if device is not None and device != "cpu":
                idx = idx.to(device)
            opt.zero_grad(set_to_none=True)
            xb = inputs.to_batch(inputs.take(Xt, idx), device) if lazy else inputs.take(Xt, idx)
            out = inputs.forward(model, xb)
            if teacher is not None and distill is not None:
                with torch.no_grad():
                    teacher_out = inputs.forward(teacher, xb)
                loss = distillation_loss(
                    out,
                    teacher_out,
                    yt[idx],
                    temperature=distill.temperature,
                    alpha=distill.alpha,
                )
            else:
                loss = loss_fn(out, yt[idx])
            if penalty is not None:
                loss = loss + penalty(model)
            loss.backward()
            opt.step()
            schedule.after_batch()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
        if not math.isfinite(losses[-1]):
            raise TrainingError(
                f"training diverged: the loss is {losses[-1]} in epoch {len(losses)} of "
                f"{spec.epochs} (lr {spec.lr:g}, optimizer {spec.optimizer}); lower lr or "
                "check the data and the model"
            )
        schedule.after_epoch(losses[-1])
    model.eval()
    return TrainLog(tuple(losses), tuple(lrs))


@torch.inference_mode()
def predict_logits(
    model: nn.Module, X: inputs.Inputs, batch_size: int = 1024, *, device: str | None = None
) -> np.ndarray:
    """Logits for every sample of ``X`` (evaluation mode), as float numpy on the CPU."""
    model.eval()
    lazy = inputs.is_lazy(X)  # a streamed view: each batch is read, then made a tensor
    Xt = X if lazy else inputs.to_batch(X, device)
    n = inputs.count(Xt)
    out = [
        inputs.forward(
            model,
            inputs.to_batch(inputs.take(Xt, slice(i, i + batch_size)), device)
            if lazy
            else inputs.take(Xt, slice(i, i + batch_size)),
        )
        for i in range(0, n, batch_size)
    ]
    return torch.cat(out).float().cpu().numpy()
