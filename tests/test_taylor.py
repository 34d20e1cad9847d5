"""Taylor importance (Molchanov et al. 2019) pinned to its formula on a tiny net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.pruning import PruneContext, create, get, prunable_modules
from harness.pruning.base import weight
from harness.pruning.taylor import taylor_scores
from harness.schema import SpecError
from harness.spec import PruneSpec


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_scores_equal_squared_gradient_times_weight_averaged_over_batches() -> None:
    model, (X, y) = _net(), _data()
    scores = taylor_scores(model, X, y, batches=3, batch_size=8)
    for layer in (model[0], model[2]):
        expected = torch.zeros_like(layer.weight)
        for b in range(3):
            model.zero_grad()
            nn.functional.cross_entropy(
                model(X[8 * b : 8 * b + 8]), y[8 * b : 8 * b + 8]
            ).backward()
            expected += (layer.weight.grad * layer.weight.detach()) ** 2
        torch.testing.assert_close(scores[layer], expected / 3)


def test_scores_under_a_mask_use_the_masked_weights() -> None:
    model, (X, y) = _net(), _data()
    X_np, y_np = X.numpy(), y.numpy()
    pruner = create(PruneSpec("taylor", 0.5, args={"batches": 1, "batch_size": 24}))
    ctx = PruneContext(X[:8], X_np, y_np, 0)
    pruner.step(model, 0.3, ctx)  # masks in place now
    scores = pruner.scores(model, ctx)
    for _, layer in prunable_modules(model):
        w = weight(layer)
        assert torch.all(scores[layer][w == 0] == 0)
        assert torch.count_nonzero(scores[layer][w != 0]) > 0  # real gradients, not stale ones
    pruner.step(model, 0.5, ctx)
    total = sum(weight(m).numel() for _, m in prunable_modules(model))
    zeros = sum(int((weight(m) == 0).sum()) for _, m in prunable_modules(model))
    assert zeros == round(0.5 * total)


def test_taylor_prunes_the_lowest_scores_and_keeps_the_model_working() -> None:
    model, (X, y) = _net(), _data()
    ctx = PruneContext(X[:8], X.numpy(), y.numpy(), 0)
    pruner = create(PruneSpec("taylor", 0.4, scope="layer", args={"batches": 1, "batch_size": 24}))
    scores = {
        id(m): s.clone() for m, s in taylor_scores(model, X, y, batches=1, batch_size=24).items()
    }
    pruner.finalize(pruner.step(model, 0.4, ctx))
    for _, layer in prunable_modules(model):
        s = scores[id(layer)].flatten()
        pruned = (layer.weight == 0).flatten()
        assert int(pruned.sum()) == round(0.4 * s.numel())
        assert s[pruned].max() <= s[~pruned].min()
    assert np.isfinite(model(X).detach().numpy()).all()


def test_parse_args_rejects_bad_args() -> None:
    cls = get("taylor")
    for key, bad, problem in (
        ("batches", 0, "must be > 0"),
        ("batch_size", 1.5, "must be an integer"),
        ("max_layer", "0.9", "must be a number"),
        ("nope", 1, "unknown key"),
    ):
        with pytest.raises(SpecError) as info:
            cls.parse_args({key: bad})
        assert (info.value.key, info.value.problem) == (f"prune.args.{key}", problem)
    args = cls.parse_args({"batches": 2})
    assert (args.batches, args.batch_size, args.max_layer) == (2, 128, None)
