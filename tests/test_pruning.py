"""Pruning techniques: registry, unstructured magnitude masks, schedules, structured shrinking."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from harness.models import cnn1d, mlp
from harness.pruning import PruneContext, create, get, names, prunable_modules, register
from harness.pruning.base import (
    Pruner,
    _keep_mask,
    _keep_mask_capped,
    accumulate_gradients,
    schedule_targets,
)
from harness.schema import SpecError
from harness.spec import PruneSpec, TrainSpec
from harness.training import fit

N_FEATURES, N_CLASSES = 12, 3


def _ctx(n_features: int = N_FEATURES, n: int = 64, seed: int = 0) -> PruneContext:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    y = (np.arange(n) % N_CLASSES).astype(np.int64)
    return PruneContext(torch.as_tensor(X), X, y, seed)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp(N_FEATURES, N_CLASSES, hidden=(16, 8))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for _, m in prunable_modules(model)]


def _zeros(model: nn.Module) -> int:
    return sum(int((w == 0).sum()) for w in _weights(model))


# --------------------------------------------------------------------------------------------
# registry


def test_registry_names_and_lookup() -> None:
    assert {"magnitude", "structured"} <= set(names())
    assert names() == sorted(names())
    assert get("magnitude").name == "magnitude"
    assert get("structured").structured
    assert not get("magnitude").structured
    pruner = create(PruneSpec("magnitude", 0.5))
    assert isinstance(pruner, Pruner)
    with pytest.raises(KeyError, match="unknown pruning method 'nope'"):
        get("nope")


def test_register_rejects_a_second_class_under_the_same_name() -> None:
    cls = get("magnitude")
    assert register(cls) is cls  # re-registering the same class is fine

    class Impostor(cls):  # type: ignore[misc, valid-type]
        name = "magnitude"

    with pytest.raises(ValueError, match="registered twice"):
        register(Impostor)
    assert get("magnitude") is cls


# --------------------------------------------------------------------------------------------
# typed args: every method's Args, parse_args, spec problems

# per method, per arg: a bad value and the problem named for it
BAD_ARGS: dict[str, dict[str, tuple[object, str]]] = {
    "auto": {
        "budget": ("bytes", "must be one of params, flops, energy"),
        "grid": ([0.5, 0.2], "must be sorted ascending without repeats"),
        "calibration": (1, "must be in (0, 1)"),
        "max_layer": (0, "must be in (0, 1)"),
        "ignore": ("2", "must be an array"),
    },
    "energy-aware": {
        "batches": (0, "must be > 0"),
        "batch_size": (True, "must be an integer"),
        "ignore": ("0", "must be an array"),
        "importance": ("l1", "must be one of magnitude, taylor"),
        "energy_exponent": (-1, "must be >= 0"),
    },
    "group-lasso": {
        "strength": (-1, "must be >= 0"),
        "epochs": (0, "must be > 0"),
        "lr": (0, "must be > 0"),
        "ignore": ([0], "must be an array of strings"),
    },
    "l1": {
        "strength": ("1e-4", "must be a number"),
        "epochs": (1.5, "must be an integer"),
        "lr": (-1e-3, "must be > 0"),
        "max_layer": (1.5, "must be in [0, 1]"),
        "ignore": ([2], "must be an array of strings"),
    },
    "l2": {
        "strength": (-0.5, "must be >= 0"),
        "epochs": (-1, "must be > 0"),
        "lr": (True, "must be a number"),
        "max_layer": ("0.98", "must be a number"),
        "ignore": ({"a": 1}, "must be an array"),
    },
    "lrp": {
        "ignore": ("0", "must be an array"),
        "n_samples": (2.5, "must be an integer"),
        "epsilon": (-1e-3, "must be >= 0"),
    },
    "magnitude": {"max_layer": (True, "must be a number"), "ignore": ("2", "must be an array")},
    "obd": {
        "max_layer": (-0.1, "must be in [0, 1]"),
        "hessian": ("diag", "must be one of exact, hutchinson, fisher, auto"),
        "samples": (0, "must be > 0"),
        "n_samples": ("512", "must be an integer"),
        "max_exact": (True, "must be an integer"),
        "ignore": ([True], "must be an array of strings"),
    },
    "obs": {
        "n_samples": (0, "must be > 0"),
        "damp": (0, "must be > 0"),
        "ignore": ("2", "must be an array"),
    },
    "sparsegpt": {
        "n_samples": (0, "must be > 0"),
        "blocksize": (1.5, "must be an integer"),
        "damp": (-0.1, "must be > 0"),
        "ignore": ("0", "must be an array"),
    },
    "wanda": {
        "n_samples": ("16", "must be an integer"),
        "ignore": ([1], "must be an array of strings"),
    },
    "snip": {
        "batches": (0, "must be > 0"),
        "batch_size": (-1, "must be > 0"),
        "max_layer": (2, "must be in [0, 1]"),
        "ignore": ([0.5], "must be an array of strings"),
    },
    "structured": {"ignore": ("0", "must be an array"), "norm": (3, "must be one of 1, 2")},
    "structured-taylor": {
        "batches": (2.0, "must be an integer"),
        "batch_size": (0, "must be > 0"),
        "ignore": (["0", 1], "must be an array of strings"),
    },
    "student": {
        "model_args": ([32], "must be a table"),
        "temperature": (0, "must be > 0"),
        "alpha": (1.5, "must be in [0, 1]"),
    },
    "taylor": {
        "batches": (-2, "must be > 0"),
        "batch_size": ("128", "must be an integer"),
        "max_layer": (1.01, "must be in [0, 1]"),
        "ignore": ("0", "must be an array"),
    },
}


def test_every_method_and_arg_has_a_bad_value_case() -> None:
    assert set(BAD_ARGS) == set(names())
    for method, cases in BAD_ARGS.items():
        assert set(cases) == set(get(method).known_args()), method


@pytest.mark.parametrize(
    ("method", "key"), [(m, k) for m, cases in BAD_ARGS.items() for k in cases]
)
def test_parse_args_names_the_bad_key_and_the_problem(method: str, key: str) -> None:
    value, problem = BAD_ARGS[method][key]
    with pytest.raises(SpecError) as info:
        get(method).parse_args({key: value})
    assert (info.value.key, info.value.problem) == (f"prune.args.{key}", problem)
    assert str(info.value) == f"<python>: prune.args.{key} = {value!r}: {problem}"
    with pytest.raises(SpecError) as info:  # the same through the constructor
        create(PruneSpec(method, 0.0, args={key: value}))
    assert info.value.key == f"prune.args.{key}"


@pytest.mark.parametrize("method", sorted(BAD_ARGS))
def test_parse_args_defaults_are_the_args_dataclass_defaults(method: str) -> None:
    cls = get(method)
    assert cls.parse_args({}) == cls.Args()
    assert cls.known_args() == tuple(f.name for f in dataclasses.fields(cls.Args))
    assert dataclasses.is_dataclass(cls.Args) and cls.Args.__dataclass_params__.frozen
    assert create(PruneSpec(method, 0.0)).args == cls.Args()


def test_parse_args_refuses_unknown_keys_and_names_the_source() -> None:
    with pytest.raises(SpecError) as info:
        get("magnitude").parse_args({"foo": 1})
    assert str(info.value) == "<python>: prune.args.foo = 1: unknown key"
    with pytest.raises(SpecError) as info:
        get("structured").parse_args(
            {"norm": 0, "b": 1}, source="suite.toml", path="case[s30].prune.args"
        )
    assert str(info.value) == "suite.toml: case[s30].prune.args.norm = 0: must be one of 1, 2"
    with pytest.raises(SpecError) as info:
        get("obs").parse_args({"max_layer": 0.98})  # obs allocates on its own: no cap
    assert (info.value.key, info.value.problem) == ("prune.args.max_layer", "unknown key")
    with pytest.raises(SpecError, match=r"^<python>: prune.args = \[1\]: must be a table$"):
        get("taylor").parse_args([1])


@pytest.mark.parametrize(
    ("method", "key"),
    [("l1", "epochs"), ("obd", "samples"), ("snip", "batches"), ("obs", "n_samples")],
)
def test_counts_have_the_harness_bound(method: str, key: str) -> None:
    from harness.pruning.base import COUNT_MAX

    with pytest.raises(SpecError) as info:
        get(method).parse_args({key: 10**9})
    assert str(info.value) == (
        f"<python>: prune.args.{key} = 1000000000: must be <= {COUNT_MAX} (the harness's bound)"
    )
    assert getattr(get(method).parse_args({key: COUNT_MAX}), key) == COUNT_MAX


def test_parse_args_normalizes_values() -> None:
    args = get("structured").parse_args({"norm": 1, "ignore": ["0", "2"]})
    assert args.ignore == ("0", "2") and args.norm == 1
    for bad in (True, 2.0, "2"):  # Literal[1, 2]: by type, not by ==
        with pytest.raises(SpecError, match=r"prune\.args\.norm = .*: must be one of 1, 2"):
            get("structured").parse_args({"norm": bad})
    obd = get("obd").parse_args({"max_layer": 1, "hessian": "fisher"})
    assert obd.max_layer == 1.0 and isinstance(obd.max_layer, float)
    grid = get("auto").parse_args({"grid": [0, 0.5]}).grid
    assert grid == (0.0, 0.5) and all(isinstance(g, float) for g in grid)
    assert get("snip").parse_args({}).batches == 1
    assert get("taylor").parse_args({}).batches == 8
    assert get("l1").parse_args({}).strength == 1e-4
    assert get("l2").parse_args({}).strength == 1e-3


def test_args_built_in_python_are_validated_too() -> None:
    cls = get("taylor").Args
    with pytest.raises(SpecError) as info:
        cls(batches=0)
    assert str(info.value) == f"<python>: {cls.__name__}.batches = 0: must be > 0"
    args = cls(batch_size=16)
    with pytest.raises(SpecError, match=r"\.max_layer = 3\.0: must be in \[0, 1\]"):
        dataclasses.replace(args, max_layer=3.0)


def test_spec_problems_name_the_key_of_the_prune_table() -> None:
    for method in ("magnitude", "taylor", "obd", "snip", "l1", "l2"):
        cls = get(method)
        assert create(PruneSpec(method, 0.9, args={"max_layer": 0.98})).args.max_layer == 0.98
        spec = PruneSpec(method, 0.9, args={"max_layer": 0.5})
        with pytest.raises(SpecError) as info:
            cls.parse_spec(spec, source="suite.toml", path="case[c].prune")
        assert str(info.value) == (
            "suite.toml: case[c].prune.args.max_layer = 0.5: "
            "must be in [sparsity, 1] (sparsity = 0.9)"
        )
        with pytest.raises(SpecError, match=r"^<python>: prune\.args\.max_layer = 0\.5: "):
            create(spec)
        assert cls.parse_args(spec.args).max_layer == 0.5  # alone, the args are fine
    assert "max_layer" not in get("structured").known_args()
    with pytest.raises(SpecError) as info:
        create(PruneSpec("auto", 0.99))  # above the default cap: budget unreachable
    assert info.value.key == "prune.args.max_layer" and "no allocation" in info.value.problem
    for method, problem in (
        ("snip", "SNIP prunes once, at initialization"),
        ("student", "the student is trained once"),
    ):
        with pytest.raises(SpecError) as info:
            create(PruneSpec(method, 0.5, schedule="iterative", steps=2))
        assert (info.value.key, info.value.value, info.value.problem) == (
            "prune.schedule",
            "iterative",
            problem,
        )


# --------------------------------------------------------------------------------------------
# the shared gradient accumulation


def _data(n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N_FEATURES, generator=g), torch.arange(n) % N_CLASSES


def test_accumulate_gradients_mean_is_the_gradient_of_the_mean_batch_loss() -> None:
    model, (X, y) = _mlp(), _data(20)
    params = list(model.parameters())
    model.train()
    summed = accumulate_gradients(model, X, y, params, batches=3, batch_size=6, mean=True)
    assert summed.batches == 3 and model.training  # 18 of the 20 rows; the flag put back

    def losses() -> list[torch.Tensor]:
        return [nn.functional.cross_entropy(model(X[i : i + 6]), y[i : i + 6]) for i in (0, 6, 12)]

    expected = torch.autograd.grad(sum(losses()) / 3, params)
    for got, want in zip(summed.sums, expected, strict=True):
        torch.testing.assert_close(got, want)
    plain = accumulate_gradients(model, X, y, params, batches=3, batch_size=6)
    for got, want in zip(plain.sums, expected, strict=True):
        torch.testing.assert_close(got, 3 * want)
    squares = accumulate_gradients(
        model, X, y, params, batches=3, batch_size=6, term=lambda i, g: g**2
    )
    per_batch = [torch.autograd.grad(loss, params) for loss in losses()]
    for i, got in enumerate(squares.sums):
        torch.testing.assert_close(got, sum(gs[i] ** 2 for gs in per_batch))


def test_accumulate_gradients_per_sample_and_unreached_parameters() -> None:
    model, (X, y) = _mlp(), _data(7)
    prune.l1_unstructured(model[0], "weight", amount=0.5)  # a masked layer: its leaf
    params = [model[0].weight_orig, model[2].weight]
    weight_attr = model[0].__dict__["weight"]
    summed = accumulate_gradients(
        model,
        X,
        y,
        params,
        batches=3,
        batch_size=3,
        per_sample=True,
        term=lambda i, g: (g**2).sum(0),  # g: (rows, *shape)
    )
    assert summed.batches == 3 and model[0].__dict__["weight"] is weight_attr
    model.eval()
    for i, p in enumerate(params):
        expected = torch.zeros_like(p)
        for j in range(7):
            loss = nn.functional.cross_entropy(model(X[j : j + 1]), y[j : j + 1])
            expected += torch.autograd.grad(loss, p)[0] ** 2
        torch.testing.assert_close(summed.sums[i], expected)
    spare = nn.Parameter(torch.ones(3))
    model.spare = spare  # a parameter the loss does not reach
    out = accumulate_gradients(model, X, y, [spare, model[4].weight], batches=1, batch_size=4)
    assert out.sums[0] is None and out.sums[1] is not None
    assert accumulate_gradients(model, X[:0], y[:0], [spare], batches=2, batch_size=4).batches == 0


def test_prunable_modules_are_linear_and_conv_layers_in_order() -> None:
    model = cnn1d(40, 10, channels=(4, 4))
    found = prunable_modules(model)
    assert [type(m) for _, m in found] == [nn.Conv1d, nn.Conv1d, nn.Linear]
    assert [n for n, _ in found] == ["1", "3", "6"]


# --------------------------------------------------------------------------------------------
# unstructured magnitude pruning


@pytest.mark.parametrize("target", [0.0, 0.1, 0.3, 0.5, 0.77, 0.95])
def test_magnitude_global_reaches_exact_count_of_smallest_weights(target: float) -> None:
    model = _mlp()
    original = _weights(model)
    biases = [m.bias.detach().clone() for _, m in prunable_modules(model)]
    n = sum(w.numel() for w in original)
    model = create(PruneSpec("magnitude", target, scope="global")).step(model, target, _ctx())
    assert _zeros(model) == round(target * n)
    # the pruned weights are globally the smallest in magnitude
    pruned = torch.cat([o[w == 0].abs() for o, w in zip(original, _weights(model), strict=True)])
    kept = torch.cat([o[w != 0].abs() for o, w in zip(original, _weights(model), strict=True)])
    if len(pruned) and len(kept):
        assert pruned.max() <= kept.min()
    # biases are not pruned; kept weights keep their values
    for (_, m), b in zip(prunable_modules(model), biases, strict=True):
        assert torch.equal(m.bias, b)
    for o, w in zip(original, _weights(model), strict=True):
        assert torch.equal(w[w != 0], o[w != 0])


@pytest.mark.parametrize("target", [0.1, 0.5, 0.9])
def test_magnitude_layer_scope_prunes_every_layer_to_the_target(target: float) -> None:
    model = _mlp()
    original = _weights(model)
    model = create(PruneSpec("magnitude", target, scope="layer")).step(model, target, _ctx())
    for o, w in zip(original, _weights(model), strict=True):
        assert int((w == 0).sum()) == round(target * w.numel())
        if (w == 0).any() and (w != 0).any():
            assert o[w == 0].abs().max() <= o[w != 0].abs().min()


def test_magnitude_prunes_conv_layers_too() -> None:
    torch.manual_seed(0)
    model = cnn1d(40, 10, channels=(4, 4))
    n = sum(m.weight.numel() for _, m in prunable_modules(model))
    model = create(PruneSpec("magnitude", 0.6)).step(model, 0.6, _ctx(40))
    assert _zeros(model) == round(0.6 * n)
    assert all(hasattr(m, "weight_mask") for _, m in prunable_modules(model))


def test_schedule_targets() -> None:
    assert schedule_targets(PruneSpec("magnitude", 0.7)) == [0.7]
    assert schedule_targets(PruneSpec("magnitude", 0.7, schedule="iterative", steps=1)) == [0.7]
    s, steps = 0.9, 4
    targets = schedule_targets(PruneSpec("magnitude", s, schedule="iterative", steps=steps))
    assert len(targets) == steps
    for t, value in enumerate(targets, start=1):
        assert value == pytest.approx(1 - (1 - s) ** (t / steps))
    assert targets[-1] == pytest.approx(s)
    assert all(a < b for a, b in itertools.pairwise(targets))
    # every round removes the same fraction of what remains
    remaining = [1.0] + [1 - t for t in targets]
    ratios = [b / a for a, b in itertools.pairwise(remaining)]
    assert ratios == pytest.approx([(1 - s) ** (1 / steps)] * steps)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_iterative_steps_keep_pruned_weights_pruned(scope: str) -> None:
    spec = PruneSpec("magnitude", 0.8, scope=scope, schedule="iterative", steps=3)
    pruner = create(spec)
    model = _mlp()
    n = sum(w.numel() for w in _weights(model))
    previous: list[torch.Tensor] | None = None
    for target in schedule_targets(spec):
        if previous is not None:
            # weights pruned earlier become the largest ones underneath the mask
            with torch.no_grad():
                for (_, m), was in zip(prunable_modules(model), previous, strict=True):
                    m.weight_orig[was] = 100.0
        model = pruner.step(model, target, _ctx())
        masks = [w == 0 for w in _weights(model)]
        if scope == "global":
            assert _zeros(model) == round(target * n)
        else:
            for w in _weights(model):
                assert int((w == 0).sum()) == round(target * w.numel())
        if previous is not None:
            for was, now in zip(previous, masks, strict=True):
                assert now[was].all()
        previous = masks


def test_masks_stay_in_force_during_fit_and_finalize_removes_reparametrization() -> None:
    ctx = _ctx(n=96)
    model = _mlp()
    pruner = create(PruneSpec("magnitude", 0.6, scope="layer"))
    model = pruner.step(model, 0.6, ctx)
    masks = [w == 0 for w in _weights(model)]
    orig_before = [m.weight_orig.detach().clone() for _, m in prunable_modules(model)]
    spec = TrainSpec(epochs=3, lr=1e-2, batch_size=32, weight_decay=1e-2, optimizer="adamw")
    fit(model, ctx.X_train, ctx.y_train, spec, seed=0)
    # what the forward pass uses: weight_orig * weight_mask (``m.weight`` is only refreshed by the
    # next forward pass)
    trained = [(m.weight_orig * m.weight_mask).detach() for _, m in prunable_modules(model)]
    for mask, w, (_, m) in zip(masks, trained, prunable_modules(model), strict=True):
        assert torch.all(w[mask] == 0)
        assert torch.equal(m.weight_mask == 0, mask)
        assert torch.all(m.weight[mask] == 0)  # as used by the last training forward pass
    changed = any(
        not torch.equal(m.weight_orig, o)
        for (_, m), o in zip(prunable_modules(model), orig_before, strict=True)
    )
    assert changed  # training did happen

    model = pruner.finalize(model)
    keys = set(model.state_dict())
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in keys)
    for (_, m), mask, w in zip(prunable_modules(model), masks, trained, strict=True):
        assert not torch.nn.utils.prune.is_pruned(m)
        assert isinstance(m.weight, nn.Parameter)
        assert torch.all(m.weight[mask] == 0)
        assert torch.equal(m.weight.detach(), w)
    assert model(ctx.example).shape == (len(ctx.example), N_CLASSES)


def test_finalize_on_unpruned_model_is_harmless() -> None:
    model = _mlp()
    before = _weights(model)
    model = create(PruneSpec("magnitude", 0.5)).finalize(model)
    for a, b in zip(before, _weights(model), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# structured pruning


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _widths(model: nn.Module) -> list[int]:
    return [m.weight.shape[0] for _, m in prunable_modules(model)]


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize(
    ("factory", "n_features", "n_classes"),
    [
        (lambda: mlp(N_FEATURES, 3, hidden=(16, 8)), N_FEATURES, 3),
        (lambda: cnn1d(40, 10, channels=(8, 8)), 40, 10),
    ],
    ids=["mlp", "cnn1d"],
)
def test_structured_pruning_shrinks_the_model(
    factory: object, n_features: int, n_classes: int, scope: str
) -> None:
    torch.manual_seed(0)
    model = factory()  # type: ignore[operator]
    before_params, before_widths = _params(model), _widths(model)
    pruner = create(PruneSpec("structured", 0.5, scope=scope))
    model = pruner.finalize(pruner.step(model, 0.5, _ctx(n_features)))
    after_widths = _widths(model)
    assert _params(model) < before_params
    assert after_widths[-1] == before_widths[-1] == n_classes  # the classifier keeps its outputs
    assert all(a <= b for a, b in zip(after_widths[:-1], before_widths[:-1], strict=True))
    assert sum(after_widths[:-1]) < sum(before_widths[:-1])
    last = prunable_modules(model)[-1][1]
    assert isinstance(last, nn.Linear) and last.out_features == n_classes
    out = model(torch.randn(5, n_features))
    assert out.shape == (5, n_classes)
    assert torch.isfinite(out).all()


def test_structured_layer_scope_halves_every_hidden_layer() -> None:
    torch.manual_seed(0)
    model = mlp(N_FEATURES, 3, hidden=(16, 8))
    pruner = create(PruneSpec("structured", 0.5, scope="layer"))
    model = pruner.step(model, 0.5, _ctx())
    assert _widths(model) == [8, 4, 3]
    first = prunable_modules(model)[1][1]
    assert isinstance(first, nn.Linear) and first.in_features == 8  # dependent inputs removed


def test_structured_iterative_targets_are_cumulative() -> None:
    spec = PruneSpec("structured", 0.75, scope="layer", schedule="iterative", steps=2)
    torch.manual_seed(0)
    model = mlp(N_FEATURES, 3, hidden=(16, 8))
    pruner = create(spec)
    for target in schedule_targets(spec):
        model = pruner.step(model, target, _ctx())
    # 75 % of the neurons of every hidden layer are gone after both rounds
    assert _widths(model) == [4, 2, 3]
    assert model(torch.randn(2, N_FEATURES)).shape == (2, 3)


def test_structured_ignore_keeps_named_layers() -> None:
    torch.manual_seed(0)
    model = mlp(N_FEATURES, 3, hidden=(16, 8))
    pruner = create(PruneSpec("structured", 0.5, scope="layer", args={"ignore": ["0"]}))
    model = pruner.step(model, 0.5, _ctx())
    assert _widths(model) == [16, 4, 3]


def test_structured_zero_target_changes_nothing() -> None:
    torch.manual_seed(0)
    model = mlp(N_FEATURES, 3, hidden=(16, 8))
    before = _params(model)
    model = create(PruneSpec("structured", 0.0)).step(model, 0.0, _ctx())
    assert _params(model) == before


# --------------------------------------------------------------------------------------------
# per-layer cap of global mask pruning (args.max_layer)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    target=st.floats(0.0, 0.99),
    slack=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_capped_global_selection_is_the_lowest_scores_within_the_caps(
    sizes: list[int], target: float, slack: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randn(n, generator=g) * (i + 1) for i, n in enumerate(sizes)]
    cap = target + slack * (1 - target)
    keep = _keep_mask_capped(scores, target, cap)
    total = sum(sizes)
    removed = [int((k == 0).sum()) for k in keep.split(sizes)]
    allowed = [round(cap * n) for n in sizes]
    assert all(r <= a for r, a in zip(removed, allowed, strict=True))  # no layer above its cap
    assert sum(removed) == min(round(target * total), sum(allowed))  # the target, if reachable
    # optimal under the caps: every removed score is <= every kept score its layer could lose
    flat = torch.cat(scores)
    for layer, (s, k) in enumerate(zip(scores, keep.split(sizes), strict=True)):
        within = torch.argsort(s, stable=True)[: allowed[layer]]
        candidates = torch.zeros_like(k, dtype=torch.bool)
        candidates[within] = True
        free = s[(k == 1) & candidates]
        if len(free) and (keep == 0).any():
            assert flat[keep == 0].max() <= free.min()
    if cap == 1.0:  # no cap: the plain global selection
        assert torch.equal(keep, _keep_mask(flat, target))


def test_max_layer_prevents_a_layer_from_being_pruned_away() -> None:
    # the middle layer's weights are scaled down: a plain global ranking removes all of them
    def model() -> nn.Module:
        net = _mlp()
        with torch.no_grad():
            net[2].weight.mul_(1e-3)
        return net

    plain = create(PruneSpec("magnitude", 0.6)).step(model(), 0.6, _ctx())
    assert bool((plain[2].weight == 0).all())
    capped = create(PruneSpec("magnitude", 0.6, args={"max_layer": 0.9}))
    net = capped.step(model(), 0.6, _ctx())
    n = sum(m.weight.numel() for _, m in prunable_modules(net))
    assert _zeros(net) == round(0.6 * n)
    assert int((net[2].weight == 0).sum()) == round(0.9 * net[2].weight.numel())
    # a second round keeps the first round's zeros and the cap
    net = capped.step(net, 0.7, _ctx())
    assert _zeros(net) == round(0.7 * n)
    assert int((net[2].weight == 0).sum()) == round(0.9 * net[2].weight.numel())


UNSTRUCTURED_WITH_IGNORE = ["magnitude", "taylor", "snip", "obd", "obs", "auto", "l1", "l2"]


@pytest.mark.parametrize("method", UNSTRUCTURED_WITH_IGNORE)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_methods_leave_ignored_layers_dense(method: str, scope: str) -> None:
    names = [n for n, _ in prunable_modules(_mlp())]
    kept = names[-1]  # the classifier, the layer users most often keep dense
    args: dict[str, Any] = {"ignore": [kept], **({"epochs": 1} if method in ("l1", "l2") else {})}
    model, ctx = _mlp(), _ctx()
    before = dict(zip(names, _weights(model), strict=True))
    pruner = create(PruneSpec(method, 0.6, scope=scope, args=args))
    model = pruner.step(model, 0.6, ctx)
    layers = dict(prunable_modules(model))
    assert not hasattr(layers[kept], "weight_mask")  # no mask at all on the ignored layer
    model = pruner.finalize(model)
    layers = dict(prunable_modules(model))
    if method not in ("l1", "l2"):  # the regularized methods train before pruning
        assert torch.equal(layers[kept].weight, before[kept])
    assert int(torch.count_nonzero(layers[kept].weight)) == layers[kept].weight.numel()
    others = [layers[n].weight for n in names if n != kept]
    zeros = sum(int((w == 0).sum()) for w in others)
    total = sum(w.numel() for w in others)
    assert zeros / total == pytest.approx(0.6, abs=0.01)  # the target applies to the others


def test_ignore_leaves_nothing_to_prune_is_refused_at_resolution(tmp_path: Path) -> None:
    from harness.resolution import resolve
    from harness.spec import suite_from_dict

    def suite(method: str, ignore: list[str]) -> Any:
        return suite_from_dict(
            {
                "suite": {"dataset": "sklearn:digits", "model_args": {"hidden": [8]}},
                "case": [
                    {
                        "name": "c",
                        "prune": {"method": method, "sparsity": 0.5, "args": {"ignore": ignore}},
                    }
                ],
            },
            source=str(tmp_path / "s.toml"),
        )

    with pytest.raises(SpecError) as info:
        resolve(suite("magnitude", ["0", "2"]))
    assert info.value.key == "case[c].prune.args.ignore"
    assert info.value.problem == "names every prunable layer: nothing left to prune"
    with pytest.raises(SpecError) as info:
        resolve(suite("structured", ["0"]))
    assert info.value.problem == (
        "names every prunable layer (the classifier is always kept): nothing left to prune"
    )
    resolve(suite("magnitude", ["2"]))  # the classifier alone: fine
