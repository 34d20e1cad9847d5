"""SNIP, structured Taylor, AGP, sparsity-inducing regularization, distillation and the distilled
student, each pinned to its formula on tiny nets; the prune-at-initialization flow end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.pruning import PruneContext, create, get, prunable_modules
from harness.pruning.base import schedule_targets, weight
from harness.pruning.regularized import group_lasso_penalty, l1_penalty, l2_penalty
from harness.pruning.snip import snip_scores
from harness.pruning.student import scaled_args
from harness.schema import SpecError
from harness.spec import DistillSpec, PruneSpec, TrainSpec, suite_from_dict
from harness.training import distillation_loss, fit


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _ctx(X: torch.Tensor, y: torch.Tensor, **kw: object) -> PruneContext:
    return PruneContext(X[:8], X.numpy(), y.numpy(), 0, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ SNIP


def test_snip_scores_are_gradient_times_weight_at_initialization() -> None:
    model, (X, y) = _net(), _data()
    scores = snip_scores(model, X, y, batches=2, batch_size=24)
    model.zero_grad()
    loss = (
        nn.functional.cross_entropy(model(X[:24]), y[:24])
        + nn.functional.cross_entropy(model(X[24:]), y[24:])
    ) / 2
    loss.backward()
    for _, layer in prunable_modules(model):
        torch.testing.assert_close(scores[layer], (layer.weight.grad * layer.weight).abs())


def test_snip_prunes_lowest_sensitivity_globally() -> None:
    model, (X, y) = _net(), _data()
    pruner = create(PruneSpec("snip", 0.7, args={"batches": 1, "batch_size": 48}))
    sens = snip_scores(model, X, y, batches=1, batch_size=48)
    flat = {id(m): s.clone() for m, s in sens.items()}
    pruner.finalize(pruner.step(model, 0.7, _ctx(X, y)))
    kept, cut = [], []
    for _, layer in prunable_modules(model):
        s = flat[id(layer)].flatten()
        zero = (layer.weight == 0).flatten()
        kept.append(s[~zero])
        cut.append(s[zero])
    assert torch.cat(cut).max() <= torch.cat(kept).min()
    total = sum(t.numel() for t in kept + cut)
    assert sum(t.numel() for t in cut) == round(0.7 * total)


def test_snip_rejects_schedules_and_bad_args() -> None:
    cls = get("snip")
    assert cls.at_init
    with pytest.raises(SpecError) as info:
        cls.parse_spec(PruneSpec("snip", 0.9, schedule="iterative"))
    assert (info.value.key, info.value.problem) == (
        "prune.schedule",
        "SNIP prunes once, at initialization",
    )
    with pytest.raises(SpecError) as info:
        cls.parse_args({"batches": 0})
    assert (info.value.key, info.value.problem) == ("prune.args.batches", "must be > 0")
    assert cls.parse_spec(PruneSpec("snip", 0.9, args={"batches": 2})).batches == 2


def _digits_suite(case: dict[str, object], **suite: object) -> object:
    return suite_from_dict(
        {
            "suite": {"name": "t", "dataset": "sklearn:digits", "model_args": {"hidden": [32]}},
            "cv": {"folds": 2},
            "train": {"epochs": 3, "lr": 3e-3},
            "checks": {"properties": False, "differential": False},
            "latency": {"repeats": 2, "warmup": 1, "batch": 16},
            **suite,
            "case": [{"name": "c", **case}],
        }
    )


def test_snip_case_trains_the_network_pruned_at_initialization() -> None:
    """The runner prunes the dense model's initialization and trains it with masks held: the
    final zeros are exactly SNIP's mask of the initial weights."""
    from harness.data import load_dataset, make_folds
    from harness.runner import _new_model, run_fold

    suite = _digits_suite({"prune": {"method": "snip", "sparsity": 0.8}})
    case = suite.cases[0]  # type: ignore[attr-defined]
    ds = load_dataset("sklearn:digits", {}, None)
    fold = make_folds(ds, 2, seed=0)[0]
    seed = suite.seed * 1000 + fold.index  # type: ignore[attr-defined]
    init = _new_model(suite, ds, seed)  # type: ignore[arg-type]
    sens = snip_scores(
        init,
        torch.as_tensor(fold.X_train),
        torch.as_tensor(fold.y_train),
        batches=1,
        batch_size=128,
    )
    flat = torch.cat([sens[m].flatten() for _, m in prunable_modules(init)])
    expected_zero = torch.zeros_like(flat, dtype=torch.bool)
    expected_zero[torch.argsort(flat, stable=True)[: round(0.8 * flat.numel())]] = True

    result = run_fold(suite, case, ds, fold)  # type: ignore[arg-type]
    got = torch.cat([(weight(m) == 0).flatten() for _, m in prunable_modules(result.pruned)])
    assert torch.equal(got, expected_zero)
    assert result.metrics["pruned.accuracy"] > 0.5  # it trained
    trained = torch.cat([weight(m).flatten() for _, m in prunable_modules(result.pruned)])
    initial = torch.cat([weight(m).flatten() for _, m in prunable_modules(init)])
    assert not torch.equal(trained[~got], initial[~got])


# ------------------------------------------------------------------ AGP


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.floats(0.05, 0.99), st.integers(2, 20))
def test_agp_follows_the_cubic_formula(sparsity: float, steps: int) -> None:
    targets = schedule_targets(PruneSpec("magnitude", sparsity, schedule="agp", steps=steps))
    assert len(targets) == steps
    for t, s in enumerate(targets, start=1):
        assert s == pytest.approx(sparsity + (0 - sparsity) * (1 - t / steps) ** 3)
    assert targets[-1] == pytest.approx(sparsity)
    gains = np.diff([0.0, *targets])
    assert np.all(gains > 0) and np.all(np.diff(gains) <= 1e-12)  # fast early, slow late


def test_agp_in_a_suite_file() -> None:
    suite = _digits_suite(
        {"prune": {"method": "magnitude", "sparsity": 0.9, "schedule": "agp", "steps": 4}}
    )
    assert suite.cases[0].prune.steps == 4  # type: ignore[attr-defined]


# ------------------------------------------------------------------ structured Taylor


def test_structured_taylor_removes_neurons_of_least_first_order_importance() -> None:
    """Per neuron of the first layer: |sum g*w| over its incoming row and its outgoing column
    (Torch-Pruning's group of that neuron), mean over the two layers."""
    model, (X, y) = _net(), _data()
    model.zero_grad()
    nn.functional.cross_entropy(model(X[:32]), y[:32]).backward()
    w0, g0 = model[0].weight.detach(), model[0].weight.grad
    w2, g2 = model[2].weight.detach(), model[2].weight.grad
    hand0 = ((w0 * g0).sum(1).abs() + (w2 * g2).sum(0).abs()) / 2
    keep0 = set(torch.argsort(hand0, descending=True)[:3].tolist())  # 6 neurons, remove 3
    rows0 = {tuple(r) for r in w0[sorted(keep0)].tolist()}
    model.zero_grad(set_to_none=True)

    spec = PruneSpec("structured-taylor", 0.5, scope="layer", args={"batches": 1, "batch_size": 32})
    pruned = create(spec).step(model, 0.5, _ctx(X, y))
    assert pruned[0].out_features == 3 and pruned[2].out_features < 5
    assert pruned[4].out_features == 3  # the classifier keeps its outputs
    assert {tuple(r) for r in pruned[0].weight.detach().tolist()} == rows0
    assert all(p.grad is None for p in pruned.parameters())


def test_structured_taylor_parse_args() -> None:
    cls = get("structured-taylor")
    assert cls.structured
    for key, bad, problem in (
        ("batch_size", -1, "must be > 0"),
        ("batches", "8", "must be an integer"),
        ("norm", 2, "unknown key"),  # the structured method's, not this one's
    ):
        with pytest.raises(SpecError) as info:
            cls.parse_args({key: bad})
        assert (info.value.key, info.value.problem) == (f"prune.args.{key}", problem)
    assert cls.parse_args({"ignore": ["0"]}).ignore == ("0",)


# ------------------------------------------------------------------ regularization


def test_penalties_equal_their_formulas() -> None:
    model = _net()
    ws = [m.weight.detach() for _, m in prunable_modules(model)]
    assert float(l1_penalty(model).detach()) == pytest.approx(sum(float(w.abs().sum()) for w in ws))
    assert float(l2_penalty(model).detach()) == pytest.approx(sum(float((w**2).sum()) for w in ws))
    expected = sum(
        math.sqrt(w.shape[1]) * float(w.norm(dim=1).sum()) for w in ws[:-1]
    )  # classifier excluded
    assert float(group_lasso_penalty(model).detach()) == pytest.approx(expected)


def _norms(model: nn.Module) -> tuple[float, float]:
    w = torch.cat([weight(m).flatten() for _, m in prunable_modules(model)])
    rows = torch.cat([weight(m).norm(dim=1) for _, m in prunable_modules(model)[:-1]])
    return float(w.abs().sum()), float((rows < 0.05).float().mean())


@pytest.mark.parametrize("method", ["l1", "l2", "group-lasso"])
def test_regularized_training_shrinks_what_it_penalizes(method: str) -> None:
    X, y = _data(96)
    spec = PruneSpec(method, 0.0, args={"strength": 0.05, "epochs": 30, "lr": 1e-2})
    plain = create(PruneSpec(method, 0.0, args={"strength": 0.0, "epochs": 30, "lr": 1e-2}))
    a, b = _net(), _net()
    plain.step(a, 0.0, _ctx(X, y, train=TrainSpec(batch_size=32)))
    create(spec).step(b, 0.0, _ctx(X, y, train=TrainSpec(batch_size=32)))
    (l1_a, dead_a), (l1_b, dead_b) = _norms(a), _norms(b)
    assert l1_b < 0.8 * l1_a
    if method == "group-lasso":
        assert dead_b > dead_a  # whole neurons go to ~0


def test_regularized_then_threshold_pruned_once() -> None:
    X, y = _data(96)
    pruner = create(PruneSpec("l1", 0.6, args={"strength": 1e-3, "epochs": 2}))
    model = _net()
    ctx = _ctx(X, y, train=TrainSpec(batch_size=32))
    pruner.step(model, 0.3, ctx)
    before = [weight(m).detach().clone() for _, m in prunable_modules(model)]
    pruner.step(model, 0.6, ctx)  # second round: no further regularized training
    for w0, (_, m) in zip(before, prunable_modules(model), strict=True):
        kept = weight(m) != 0
        torch.testing.assert_close(weight(m)[kept], w0[kept])
    w = torch.cat([weight(m).flatten() for _, m in prunable_modules(model)])
    assert int((w == 0).sum()) == round(0.6 * w.numel())


def test_regularization_parse_args() -> None:
    for method in ("l1", "l2", "group-lasso"):
        cls = get(method)
        for key, bad, problem in (
            ("strength", -1, "must be >= 0"),
            ("epochs", 0, "must be > 0"),
            ("lr", 0, "must be > 0"),
            ("lr", float("inf"), "must be finite"),
            ("what", 1, "unknown key"),
        ):
            with pytest.raises(SpecError) as info:
                cls.parse_args({key: bad})
            assert (info.value.key, info.value.problem) == (f"prune.args.{key}", problem), method
        args = cls.parse_args({"strength": 1e-4, "epochs": 3})
        assert (args.strength, args.epochs, args.lr) == (1e-4, 3, 1e-3)
    assert get("group-lasso").structured
    assert "ignore" in get("group-lasso").known_args()
    assert {"max_layer", "ignore"} <= set(get("l1").known_args())


# ------------------------------------------------------------------ distillation


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.floats(0.5, 8.0), st.floats(0.0, 1.0), st.integers(0, 1000))
def test_distillation_loss_is_hintons(temperature: float, alpha: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    y = torch.randint(0, 4, (7,), generator=g)
    p_t = torch.softmax(t / temperature, 1)
    log_p_s = torch.log_softmax(s / temperature, 1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean()
    ce = nn.functional.cross_entropy(s, y)
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce
    got = distillation_loss(s, t, y, temperature=temperature, alpha=alpha)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_distilled_student_follows_its_teacher() -> None:
    X, y = _data(96)
    teacher = _net(1)
    fit(teacher, X.numpy(), y.numpy(), TrainSpec(epochs=40, lr=1e-2, batch_size=32), seed=0)
    soft = TrainSpec(epochs=40, lr=1e-2, batch_size=32)
    a, b = _net(2), _net(2)
    fit(a, X.numpy(), y.numpy(), soft, seed=0)
    fit(b, X.numpy(), y.numpy(), soft, seed=0, teacher=teacher, distill=DistillSpec(2.0, 1.0))
    c = _net(2)
    fit(c, X.numpy(), y.numpy(), soft, seed=0, teacher=teacher, distill=DistillSpec(2.0, 1.0))
    for p, q in zip(b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q)  # deterministic

    def kl(model: nn.Module) -> float:
        with torch.no_grad():
            return float(
                nn.functional.kl_div(
                    torch.log_softmax(model(X), 1),
                    torch.softmax(teacher(X), 1),
                    reduction="batchmean",
                )
            )

    assert kl(b) < kl(a)
    with pytest.raises(ValueError, match="teacher"):
        fit(a, X.numpy(), y.numpy(), soft, seed=0, teacher=teacher)


def test_distill_and_deploy_keys_validated() -> None:
    from harness.spec import SpecError

    prune = {"method": "magnitude", "sparsity": 0.9}
    with pytest.raises(SpecError, match=r"case\[c\]\.distill = .*needs a finetune"):
        _digits_suite({"prune": prune, "distill": {"alpha": 0.5}})
    with pytest.raises(SpecError, match=r"distill\.alpha = 1\.5: must be in \[0, 1\]"):
        _digits_suite({"prune": prune, "finetune": {"epochs": 1}, "distill": {"alpha": 1.5}})
    with pytest.raises(SpecError, match=r"distill\.temperature = 0: must be > 0"):
        _digits_suite({"prune": prune, "finetune": {"epochs": 1}, "distill": {"temperature": 0}})
    with pytest.raises(SpecError, match=r"distill\.beta = 1: unknown key"):
        _digits_suite({"prune": prune, "finetune": {"epochs": 1}, "distill": {"beta": 1}})
    with pytest.raises(SpecError, match=r"case\[c\]\.deploy = 'coo': must be one of csr"):
        _digits_suite({"prune": prune, "deploy": "coo"})
    s = _digits_suite({"prune": prune, "finetune": {"epochs": 1}, "distill": {}})
    plain = _digits_suite({"prune": prune, "finetune": {"epochs": 1}})
    assert s.cases[0].distill == DistillSpec()  # type: ignore[attr-defined]
    assert s.spec_hash(s.cases[0]) != plain.spec_hash(plain.cases[0])  # type: ignore[attr-defined]


def test_student_width_meets_the_parameter_budget() -> None:
    from harness.models import build

    def make(args: dict[str, object]) -> nn.Module:
        return build("harness.models:mlp", 64, 10, {"hidden": [256, 128], **args})

    dense = sum(p.numel() for p in make({}).parameters())
    args = scaled_args(make, dense, 0.8, [256, 128], "hidden")
    small = sum(p.numel() for p in make(args).parameters())
    assert small <= 0.2 * dense
    wider = {"hidden": [w + 2 for w in args["hidden"]]}
    assert sum(p.numel() for p in make(wider).parameters()) > 0.2 * dense


def test_student_case_runs_and_is_smaller() -> None:
    from harness.data import load_dataset, make_folds
    from harness.runner import run_fold

    suite = _digits_suite(
        {"prune": {"method": "student", "sparsity": 0.75}}, train={"epochs": 15, "lr": 1e-2}
    )
    ds = load_dataset("sklearn:digits", {}, None)
    fold = make_folds(ds, 2, seed=0)[0]
    result = run_fold(suite, suite.cases[0], ds, fold)  # type: ignore[arg-type, attr-defined]
    assert result.metrics["param_reduction"] >= 0.75
    assert result.metrics["pruned.accuracy"] > 0.8
    student = get("student")
    with pytest.raises(SpecError) as info:
        student.parse_args({"alpha": 2})
    assert (info.value.key, info.value.problem) == ("prune.args.alpha", "must be in [0, 1]")
    with pytest.raises(SpecError) as info:
        student.parse_spec(PruneSpec("student", 0.5, schedule="agp", steps=2))
    assert (info.value.key, info.value.problem) == ("prune.schedule", "the student is trained once")
