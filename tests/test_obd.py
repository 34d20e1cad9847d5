"""Optimal Brain Damage (LeCun et al. 1990) pinned to its formula on a tiny net.

The reference Hessians come from ``torch.autograd.functional.hessian`` of a hand-written forward
pass (no ``functional_call``, no hooks), so they are independent of the implementation.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from harness.pruning import PruneContext, create, get, prunable_modules
from harness.pruning.base import weight
from harness.pruning.obd import (
    OBDArgs,
    OBDPruner,
    exact_diagonal,
    fisher_diagonal,
    hessian_diagonal,
    hutchinson_diagonal,
    obd_saliency,
)
from harness.schema import SpecError
from harness.spec import PruneSpec

torch.set_num_threads(1)


def _net(act: type[nn.Module] = nn.ReLU, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), act(), nn.Linear(5, 3))


def _data(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _ctx(X: torch.Tensor, y: torch.Tensor, seed: int = 0) -> PruneContext:
    return PruneContext(X[:8], X.numpy(), y.numpy(), seed)


def _reference_diagonals(
    model: nn.Sequential, X: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonals of the full Hessians of the mean cross-entropy w.r.t. each layer's weight leaf
    (``weight_orig`` under a mask), by ``torch.autograd.functional.hessian``."""
    l1, act, l2 = model[0], model[1], model[2]

    def leaf(m: nn.Module) -> torch.Tensor:
        return (m.weight_orig if hasattr(m, "weight_orig") else m.weight).detach().clone()

    def mask(m: nn.Module) -> torch.Tensor:
        return m.weight_mask if hasattr(m, "weight_mask") else torch.ones_like(leaf(m))

    w1, w2 = leaf(l1), leaf(l2)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = act(X @ (a.view_as(w1) * mask(l1)).T + l1.bias.detach())
        out = h @ (b.view_as(w2) * mask(l2)).T + l2.bias.detach()
        return nn.functional.cross_entropy(out, y)

    h1 = torch.autograd.functional.hessian(lambda a: loss(a, w2.flatten()), w1.flatten())
    h2 = torch.autograd.functional.hessian(lambda b: loss(w1.flatten(), b), w2.flatten())
    return h1.diagonal().view_as(w1), h2.diagonal().view_as(w2)


def test_exact_diagonal_is_the_autograd_hessian_diagonal_and_saliency_half_h_w2() -> None:
    model, (X, y) = _net(), _data()
    h = exact_diagonal(model, X, y)
    ref1, ref2 = _reference_diagonals(model, X, y)
    torch.testing.assert_close(h[model[0]], ref1)
    torch.testing.assert_close(h[model[2]], ref2)
    assert ref1.abs().sum() > 0 and ref2.abs().sum() > 0
    s = obd_saliency(model, X, y, hessian="exact")
    for layer, ref in ((model[0], ref1), (model[2], ref2)):
        torch.testing.assert_close(s[layer], 0.5 * ref * layer.weight.detach() ** 2)


def test_exact_diagonal_under_a_mask_is_taken_through_weight_orig() -> None:
    model, (X, y) = _net(), _data()
    prune.l1_unstructured(model[0], "weight", amount=0.4)
    prune.random_unstructured(model[2], "weight", amount=0.3)
    before = model[0].weight
    h = exact_diagonal(model, X, y)
    ref1, ref2 = _reference_diagonals(model, X, y)
    torch.testing.assert_close(h[model[0]], ref1)
    torch.testing.assert_close(h[model[2]], ref2)
    s = obd_saliency(model, X, y, hessian="exact")
    for layer in (model[0], model[2]):
        assert torch.all(h[layer][layer.weight_mask == 0] == 0)
        assert torch.all(s[layer][layer.weight_mask == 0] == 0)
        assert torch.count_nonzero(s[layer][layer.weight_mask == 1]) > 0
    assert model[0].weight is before  # the mask hook's attribute is put back
    assert model(X).shape == (24, 3)


def test_negative_curvature_uses_its_magnitude() -> None:
    # a tanh net at initialization is no minimum: some diagonal entries are negative
    model, (X, y) = _net(nn.Tanh, seed=3), _data()
    h = hessian_diagonal(model, X, y, hessian="exact")
    ref1, _ = _reference_diagonals(model, X, y)
    torch.testing.assert_close(h[model[0]], ref1)  # the estimate itself stays signed
    assert (ref1 < 0).any()
    s = obd_saliency(model, X, y, hessian="exact")
    for layer in (model[0], model[2]):
        torch.testing.assert_close(s[layer], 0.5 * h[layer].abs() * layer.weight.detach() ** 2)
        assert torch.all(s[layer] >= 0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_relu_nets_have_a_nonnegative_hessian_diagonal(seed: int) -> None:
    # piecewise linear in every single weight: d2L/dw2 = J^T (softmax Hessian) J >= 0
    model, (X, y) = _net(seed=seed), _data(seed=seed + 1)
    for d in exact_diagonal(model, X, y).values():
        assert torch.all(d >= -1e-7)


def test_hutchinson_converges_to_the_exact_diagonal_and_is_seeded() -> None:
    model, (X, y) = _net(), _data()
    exact = exact_diagonal(model, X, y)
    est = hutchinson_diagonal(model, X, y, samples=4000, seed=0)
    for layer in (model[0], model[2]):
        rel = (est[layer] - exact[layer]).norm() / exact[layer].norm()
        assert rel < 0.1, f"relative error {float(rel):.3f}"
    few = hutchinson_diagonal(model, X, y, samples=4, seed=0)
    rel_few = max(float((few[m] - exact[m]).norm() / exact[m].norm()) for m in (model[0], model[2]))
    assert rel_few > 0.1  # few probes are noisy: the convergence above is real
    again = hutchinson_diagonal(model, X, y, samples=4, seed=0)
    other = hutchinson_diagonal(model, X, y, samples=4, seed=1)
    for layer in (model[0], model[2]):
        assert torch.equal(few[layer], again[layer])
    assert any(not torch.equal(few[m], other[m]) for m in (model[0], model[2]))


def test_hutchinson_leaves_the_global_rng_alone() -> None:
    model, (X, y) = _net(), _data()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    hutchinson_diagonal(model, X, y, samples=8, seed=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_fisher_is_the_mean_of_squared_per_sample_gradients() -> None:
    model, (X, y) = _net(), _data()
    prune.l1_unstructured(model[2], "weight", amount=0.4)
    fisher = fisher_diagonal(model, X, y, chunk=5)  # chunks that do not divide 24
    layers = (model[0], model[2])
    leaves = [model[0].weight, model[2].weight_orig]
    expected = [torch.zeros_like(w) for w in leaves]
    for i in range(len(X)):
        loss = nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        for e, g in zip(expected, torch.autograd.grad(loss, leaves), strict=True):
            e += g**2
    for layer, e in zip(layers, expected, strict=True):
        torch.testing.assert_close(fisher[layer], e / len(X))
    assert torch.all(fisher[model[2]][model[2].weight_mask == 0] == 0)


def test_exact_refuses_a_layer_above_max_exact_and_auto_falls_back_to_fisher() -> None:
    model, (X, y) = _net(), _data()  # layers of 20 and 15 weights
    with pytest.raises(ValueError, match=r"layer '0' has 20 weights.*max_exact = 16"):
        hessian_diagonal(model, X, y, hessian="exact", max_exact=16)
    pruner = create(PruneSpec("obd", 0.5, args={"hessian": "exact", "max_exact": 16}))
    with pytest.raises(ValueError, match="layer '0' has 20 weights"):
        pruner.step(model, 0.5, _ctx(X, y))
    auto = hessian_diagonal(model, X, y, hessian="auto", max_exact=16)
    torch.testing.assert_close(auto[model[0]], fisher_diagonal(model, X, y)[model[0]])
    torch.testing.assert_close(auto[model[2]], exact_diagonal(model, X, y)[model[2]])


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("hessian", ["exact", "hutchinson", "fisher"])
def test_a_step_prunes_exactly_the_lowest_saliencies(scope: str, hessian: str) -> None:
    model, (X, y) = _net(), _data()
    ctx = _ctx(X, y, seed=7)
    pruner = create(PruneSpec("obd", 0.45, scope=scope, args={"hessian": hessian}))
    s = pruner.scores(model, ctx)
    scores = {id(m): v.clone() for m, v in s.items()}
    pruner.step(model, 0.45, ctx)
    layers = [m for _, m in prunable_modules(model)]
    pruned = [(weight(m) == 0).flatten() for m in layers]
    flat = [scores[id(m)].flatten() for m in layers]
    if scope == "global":
        pruned, flat = [torch.cat(pruned)], [torch.cat(flat)]
    for p, sc in zip(pruned, flat, strict=True):
        assert int(p.sum()) == round(0.45 * p.numel())
        assert sc[p].max() <= sc[~p].min()


def test_iterative_steps_keep_earlier_zeros_and_add_more() -> None:
    model, (X, y) = _net(), _data()
    ctx = _ctx(X, y)
    pruner = create(PruneSpec("obd", 0.6, schedule="iterative", steps=2))
    layers = [m for _, m in prunable_modules(model)]
    total = sum(weight(m).numel() for m in layers)
    pruner.step(model, 0.3, ctx)
    first = [(weight(m) == 0).clone() for m in layers]
    assert sum(int(z.sum()) for z in first) == round(0.3 * total)
    s = pruner.scores(model, ctx)  # scored under the masks: pruned weights score 0
    for m, z in zip(layers, first, strict=True):
        assert torch.all(s[m][z] == 0)
    pruner.step(model, 0.6, ctx)
    second = [weight(m) == 0 for m in layers]
    assert sum(int(z.sum()) for z in second) == round(0.6 * total)
    for a, b in zip(first, second, strict=True):
        assert torch.all(b[a])
    pruner.finalize(model)
    assert sum(int((m.weight == 0).sum()) for m in layers) == round(0.6 * total)


def test_scores_use_the_first_n_samples_and_are_deterministic() -> None:
    model, (X, y) = _net(), _data(40)
    args = {"hessian": "hutchinson", "samples": 8, "n_samples": 16}
    pruner = create(PruneSpec("obd", 0.5, args=args))
    s = pruner.scores(model, _ctx(X, y, seed=3))
    ref = obd_saliency(model, X[:16], y[:16], hessian="hutchinson", samples=8, seed=3)
    other = obd_saliency(model, X[:17], y[:17], hessian="hutchinson", samples=8, seed=3)
    for m in (model[0], model[2]):
        assert torch.equal(s[m], ref[m])
    assert any(not torch.equal(s[m], other[m]) for m in (model[0], model[2]))
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    create(PruneSpec("obd", 0.5, args=args)).step(a, 0.5, _ctx(X, y, seed=3))
    create(PruneSpec("obd", 0.5, args=args)).step(b, 0.5, _ctx(X, y, seed=3))
    for la, lb in zip((a[0], a[2]), (b[0], b[2]), strict=True):
        assert torch.equal(la.weight_mask, lb.weight_mask)


def test_registration_and_parse_args_rejects_bad_args() -> None:
    cls = get("obd")
    assert cls is OBDPruner and cls.summary.startswith("Unstructured:")
    ok = [{}, {"hessian": "auto"}, {"hessian": "fisher", "n_samples": 64}, {"max_exact": 1}]
    for args in ok:
        assert cls.parse_args(args) == OBDArgs(**args), args
    hessians = "must be one of exact, hutchinson, fisher, auto"
    bad = [
        ("hessian", "diag", hessians),
        ("hessian", 1, hessians),
        ("samples", 0, "must be > 0"),
        ("samples", 2.0, "must be an integer"),
        ("n_samples", -5, "must be > 0"),
        ("n_samples", "512", "must be an integer"),
        ("max_exact", True, "must be an integer"),
        ("max_layer", 1.5, "must be in [0, 1]"),
        ("hessain", "exact", "unknown key"),
    ]
    for key, value, problem in bad:
        with pytest.raises(SpecError) as info:
            cls.parse_args({key: value})
        assert (info.value.key, info.value.problem) == (f"prune.args.{key}", problem), value


def test_digits_90_percent_without_finetuning_vs_magnitude() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from harness.models import mlp
    from harness.spec import TrainSpec
    from harness.training import fit, predict_logits

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xte = (scaler.transform(a).astype(np.float32) for a in (Xtr, Xte))
    torch.manual_seed(0)
    dense = mlp(64, 10, hidden=[64, 32])
    fit(dense, Xtr, ytr, TrainSpec(epochs=10, lr=1e-2), seed=0)
    ctx = PruneContext(torch.as_tensor(Xtr[:8]), Xtr, ytr, 0)

    def accuracy(model: nn.Module) -> float:
        return float((predict_logits(model, Xte).argmax(1) == yte).mean())

    acc = {"dense": accuracy(dense)}
    for method in ("magnitude", "obd"):
        model, pruner = copy.deepcopy(dense), create(PruneSpec(method, 0.9))
        model = pruner.finalize(pruner.step(model, 0.9, ctx))
        layers = [m for _, m in prunable_modules(model)]
        zeros = sum(int((m.weight == 0).sum()) for m in layers)
        assert zeros == round(0.9 * sum(m.weight.numel() for m in layers))
        acc[method] = accuracy(model)
    print(f"digits, 90% global sparsity, no fine-tuning: {acc}")
    assert acc["dense"] > 0.9
    assert acc["obd"] > 0.2  # well above chance (0.1) with 90% of the weights gone
