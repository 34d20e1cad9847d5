"""Training: determinism, every optimizer and scheduler, the learning-rate log."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from harness.models import mlp
from harness.spec import OPTIMIZERS, SCHEDULERS, TrainSpec
from harness.training import TrainLog, fit, predict_logits

N, D, C = 120, 8, 3


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Three well separated Gaussian blobs: an easy problem."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(C, D))
    y = np.repeat(np.arange(C), N // C).astype(np.int64)
    X = (centers[y] + rng.normal(size=(N, D))).astype(np.float32)
    return X, y


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp(D, C, hidden=(16,))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_is_deterministic_per_seed(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    spec = TrainSpec(epochs=3, lr=1e-2, batch_size=32)
    models = [_model(), _model(), _model()]
    logs = [fit(m, X, y, spec, seed=s) for m, s in zip(models, (7, 7, 8), strict=True)]
    a, b, c = (_state(m) for m in models)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert logs[0] == logs[1]
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another seed shuffles differently


def test_fit_returns_log_and_leaves_eval_mode(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    model = _model()
    log = fit(model, X, y, TrainSpec(epochs=4, lr=1e-2, scheduler="constant"), seed=0)
    assert isinstance(log, TrainLog)
    assert len(log.loss) == len(log.lr) == 4
    assert all(math.isfinite(v) and v > 0 for v in log.loss)
    assert not model.training


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_optimizer_and_scheduler_lowers_the_loss(
    blobs: tuple[np.ndarray, np.ndarray], optimizer: str, scheduler: str
) -> None:
    X, y = blobs
    lr = 0.05 if optimizer == "sgd" else 1e-2
    spec = TrainSpec(
        epochs=6,
        lr=lr,
        optimizer=optimizer,
        scheduler=scheduler,
        batch_size=32,
        step_size=2,
        gamma=0.5,
    )
    model = _model()
    log = fit(model, X, y, spec, seed=0)
    assert log.loss[-1] < log.loss[0]
    assert all(math.isfinite(v) for v in log.loss)
    accuracy = (predict_logits(model, X).argmax(1) == y).mean()
    assert accuracy > 0.9


def test_weight_decay_is_passed_to_the_optimizer(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = blobs
    plain, decayed = _model(), _model()
    base = TrainSpec(epochs=2, lr=1e-2, optimizer="adamw", scheduler="constant")
    fit(plain, X, y, base, seed=0)
    fit(decayed, X, y, replace(base, weight_decay=0.5), seed=0)
    a, b = _state(plain), _state(decayed)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _lrs(blobs: tuple[np.ndarray, np.ndarray], **kwargs: object) -> tuple[float, ...]:
    X, y = blobs
    return fit(_model(), X, y, TrainSpec(batch_size=40, **kwargs), seed=0).lr  # type: ignore[arg-type]


def test_lr_log_constant(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    assert _lrs(blobs, epochs=4, lr=3e-3, scheduler="constant") == (3e-3,) * 4


def test_lr_log_cosine(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    epochs, lr = 10, 1e-2
    lrs = _lrs(blobs, epochs=epochs, lr=lr, scheduler="cosine")
    # stepped per batch over all epochs: the rate at the start of epoch e
    expected = [lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert lrs[0] == pytest.approx(lr)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] < 0.03 * lr  # ends near 0


def test_lr_log_step(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    lrs = _lrs(blobs, epochs=7, lr=0.1, scheduler="step", step_size=2, gamma=0.5, optimizer="sgd")
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125])


def test_lr_log_onecycle(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    lr = 1e-2
    lrs = _lrs(blobs, epochs=8, lr=lr, scheduler="onecycle")
    assert lrs[0] == pytest.approx(lr / 25)  # torch's default div_factor
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 0 < peak < len(lrs) - 1
    assert lrs[peak] <= lr + 1e-12
    assert all(a <= b for a, b in itertools.pairwise(lrs[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))
    assert lrs[-1] < lrs[0]


def test_lr_log_plateau_reduces_on_a_flat_loss(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    # a tiny SGD rate leaves the loss flat: every 3 epochs without improvement divide by 1/gamma
    lrs = _lrs(
        blobs, epochs=8, lr=1e-6, scheduler="plateau", gamma=0.1, optimizer="sgd", momentum=0.0
    )
    assert lrs == pytest.approx([1e-6] * 4 + [1e-7] * 3 + [1e-8], rel=1e-9)


def test_predict_logits_batches(blobs: tuple[np.ndarray, np.ndarray]) -> None:
    X, _ = blobs
    model = _model()
    whole = predict_logits(model, X)
    chunked = predict_logits(model, X, batch_size=7)
    assert whole.shape == (N, C)
    np.testing.assert_allclose(whole, chunked, rtol=1e-6, atol=1e-6)
