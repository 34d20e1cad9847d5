"""N:M semi-structured masks (harness.pruning.base.nm_keep_mask): every group of M consecutive
input weights of a row keeps exactly its N highest scores, for every mask criterion; methods that
cannot prune to a pattern refuse it in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.pruning import PruneContext, create, get, names, prunable_modules
from harness.pruning.base import MaskPruner, nm_keep_mask, pattern_layers, row_length
from harness.schema import SpecError
from harness.spec import PruneSpec

torch.set_num_threads(1)

# cheap settings of the mask criteria that differentiate or train
FAST: dict[str, dict[str, Any]] = {
    "taylor": {"batches": 1, "batch_size": 16},
    "snip": {"batch_size": 16},
    "obd": {"n_samples": 16},
    "l1": {"epochs": 1},
    "l2": {"epochs": 1},
    "wanda": {"n_samples": 16},
}
MASK_METHODS = sorted(n for n in names() if issubclass(get(n), MaskPruner))


def _ctx(n_features: int, n: int = 16, seed: int = 0) -> PruneContext:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    return PruneContext(torch.as_tensor(X), X, y, seed)


def _groups(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Kept entries per group of ``m`` consecutive entries of each row of the 2-D view."""
    flat = mask.reshape(mask.shape[0], -1)
    return flat.reshape(flat.shape[0], -1, m).sum(-1)


# --------------------------------------------------------------------------------------------
# The mask itself


def test_nm_keep_mask_keeps_the_n_highest_of_every_group_of_m_consecutive_entries() -> None:
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.3, 4.0, 3.0, 2.0, 1.0],
            [1.0, 1.0, 1.0, 1.0, -1.0, 0.0, -2.0, 5.0],  # ties: the earlier entry goes first
        ]
    )
    expected = torch.tensor(
        [[0.0, 1, 1, 0, 1, 1, 0, 0], [0.0, 0, 1, 1, 0, 1, 0, 1]],
    )
    keep = nm_keep_mask(scores, 2, 4)
    assert keep is not None and torch.equal(keep, expected)
    one_of_two = nm_keep_mask(scores, 1, 2)
    assert one_of_two is not None
    assert torch.equal(one_of_two[0], torch.tensor([0.0, 1, 1, 0, 1, 0, 1, 0]))
    # a convolution's (out, in, k) scores group in the order of weight.reshape(out, -1)
    # (across channels: the middle group takes channel 0's last two and channel 1's first two)
    conv = torch.arange(12.0).reshape(1, 2, 6).flip(-1)  # flattened: 5..0, 11..6
    keep = nm_keep_mask(conv, 2, 4)
    assert keep is not None
    assert keep.shape == conv.shape
    assert keep.reshape(-1).tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    # a row length that is not a multiple of M: no mask (the layer stays dense)
    assert nm_keep_mask(torch.ones(3, 6), 2, 4) is None
    with pytest.raises(ValueError, match="0 < N < M"):
        nm_keep_mask(scores, 4, 4)


def test_magnitude_with_a_pattern_gives_the_hand_computed_mask_whatever_the_scope() -> None:
    layer = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(
            torch.tensor(
                [[1.0, -8.0, 2.0, 7.0, 0.5, 0.1, -0.2, 0.3], [9.0, 9.5, -0.1, 0.2, 1, 2, 3, 4]]
            )
        )
    masks = []
    for scope in ("global", "layer"):
        model = nn.Sequential(layer.__class__(8, 2, bias=False))
        model[0].load_state_dict(layer.state_dict())
        pruner = create(PruneSpec("magnitude", 0.5, scope=scope, pattern="2:4"))
        model = pruner.step(model, 0.5, _ctx(8))
        masks.append(model[0].weight_mask.clone())
    expected = torch.tensor([[0.0, 1, 0, 1, 1, 0, 0, 1], [1.0, 1, 0, 0, 0, 0, 1, 1]])
    assert torch.equal(masks[0], expected) and torch.equal(masks[1], expected)


def test_layers_whose_rows_do_not_split_into_groups_stay_dense() -> None:
    torch.manual_seed(0)
    # Conv1d(2, 4, 3): rows of 6 inputs (dense under 2:4); Conv1d(4, 4, 3): 12 (pruned);
    # Linear(4 * 6, 3): 24 (pruned)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3), nn.Flatten(), nn.Linear(24, 3)
    )
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 2, 10)).astype(np.float32)
    ctx = PruneContext(torch.as_tensor(X), X, (np.arange(16) % 3).astype(np.int64), 0)
    assert [row_length(m) for _, m in prunable_modules(model)] == [6, 12, 24]
    assert [n for n, _ in pattern_layers(model, (2, 4))] == ["2", "4"]
    for method in ("magnitude", "wanda"):
        net = create(PruneSpec(method, 0.5, pattern="2:4")).step(_copy(model), 0.5, ctx)
        assert not hasattr(net[0], "weight_mask")
        for m in (net[2], net[4]):
            assert bool((_groups(m.weight_mask, 4) == 2).all())
            assert float((m.weight == 0).float().mean()) == 0.5


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_weights_pruned_before_stay_pruned_under_a_pattern() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    create(PruneSpec("magnitude", 0.25, scope="layer")).step(model, 0.25, _ctx(8))
    before = model[0].weight_mask.clone()
    create(PruneSpec("magnitude", 0.5, pattern="2:4")).step(model, 0.5, _ctx(8))
    after = model[0].weight_mask
    assert bool((after <= before).all())  # nothing pruned came back
    assert bool((_groups(after, 4) <= 2).all())


# --------------------------------------------------------------------------------------------
# Every mask criterion


def test_every_unstructured_mask_method_takes_a_pattern() -> None:
    assert {"magnitude", "taylor", "snip", "obd", "l1", "l2", "wanda"} <= set(MASK_METHODS)
    assert all(get(n).patterns for n in MASK_METHODS) and get("sparsegpt").patterns


@pytest.mark.parametrize("method", MASK_METHODS)
@settings(max_examples=8, deadline=None)
@given(
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 3), (4, 8)]),
    widths=st.lists(st.integers(1, 4), min_size=2, max_size=2),
    odd=st.booleans(),
    ignore_first=st.booleans(),
    seed=st.integers(0, 3),
)
def test_property_every_group_keeps_exactly_n_for_every_mask_criterion(
    method: str,
    nm: tuple[int, int],
    widths: list[int],
    odd: bool,
    ignore_first: bool,
    seed: int,
) -> None:
    n, m = nm
    n_in = m * widths[0] + (1 if odd else 0)  # odd: the first layer cannot take the pattern
    hidden = m * widths[1]
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 3),
    )
    args = {**FAST.get(method, {}), **({"ignore": ["0"]} if ignore_first else {})}
    spec = PruneSpec(method, 1 - n / m, pattern=f"{n}:{m}", args=args)
    pruner = create(spec)
    model = pruner.step(model, spec.sparsity, _ctx(n_in, seed=seed))
    taking = {name for name, _ in pattern_layers(model, nm, args.get("ignore", ()))}
    assert taking >= {"2"}  # the hidden layer always takes it
    for name, layer in prunable_modules(model):
        mask = getattr(layer, "weight_mask", None)
        if name not in taking:
            assert mask is None, name
            continue
        assert mask is not None, name
        assert bool((_groups(mask, m) == n).all()), (name, _groups(mask, m))
    model = pruner.finalize(model)
    for name, layer in prunable_modules(model):
        if name in taking:
            assert bool((_groups(layer.weight != 0, m) <= n).all())


# --------------------------------------------------------------------------------------------
# Refusals


def test_methods_that_cannot_take_a_pattern_refuse_it_in_one_line() -> None:
    able = ", ".join(n for n in names() if get(n).patterns)
    with pytest.raises(SpecError) as info:
        create(PruneSpec("structured", 0.5, pattern="2:4"))
    assert info.value.key == "prune.pattern" and info.value.value == "2:4"
    assert info.value.problem == (
        "structured cannot prune to an N:M pattern (a structured method, it removes whole "
        f"units); methods that can: {able}"
    )
    for method in ("obs", "auto", "student", "lrp", "group-lasso"):
        with pytest.raises(SpecError) as info:
            create(PruneSpec(method, 0.5, pattern="2:4"))
        assert info.value.key == "prune.pattern", method
        assert "\n" not in str(info.value)
    for method in ("magnitude", "wanda", "sparsegpt"):
        with pytest.raises(SpecError) as info:
            create(PruneSpec(method, 0.5, pattern="2:4", schedule="iterative", steps=2))
        assert (info.value.key, info.value.value, info.value.problem) == (
            "prune.schedule",
            "iterative",
            "must be \"oneshot\" with pattern = '2:4'",
        )


def test_an_unstructured_method_refusing_a_pattern_says_why_and_what_to_use() -> None:
    with pytest.raises(SpecError) as info:
        create(PruneSpec("obs", 0.5, pattern="2:4"))
    assert "obs cannot prune to an N:M pattern (OBC's greedy sweep" in info.value.problem
    assert "sparsegpt is the OBS update with N:M masks" in info.value.problem
    with pytest.raises(SpecError) as info:
        create(PruneSpec("auto", 0.5, pattern="2:4"))
    assert "(it allocates a sparsity per layer" in info.value.problem


def test_resolution_names_the_file_and_the_case_key_of_a_refused_pattern(tmp_path: Path) -> None:
    from harness.resolution import resolve
    from harness.spec import suite_from_dict

    source = str(tmp_path / "s.toml")

    def suite(method: str) -> Any:
        return suite_from_dict(
            {
                "suite": {"dataset": "sklearn:digits", "model_args": {"hidden": [8]}},
                "case": [
                    {"name": "c", "prune": {"method": method, "sparsity": 0.5, "pattern": "2:4"}}
                ],
            },
            source=source,
        )

    with pytest.raises(SpecError) as info:
        resolve(suite("structured"))
    assert info.value.key == "case[c].prune.pattern"
    assert str(info.value).startswith(f"{source}: case[c].prune.pattern = '2:4': structured ")
    assert resolve(suite("magnitude")).cases[0].prune.nm == (2, 4)


def test_the_methods_named_as_taking_a_pattern_are_the_registrys() -> None:
    from harness.pruning import registry
    from harness.pruning.base import PATTERN_METHODS

    able = {n for n in registry.names() if registry.get(n).patterns}
    assert set(PATTERN_METHODS) == able


def test_max_layer_with_a_pattern_is_refused_in_one_line() -> None:
    from harness.pruning import registry
    from harness.spec import PruneSpec, SpecError

    spec = PruneSpec("magnitude", 0.5, pattern="2:4", args={"max_layer": 0.9})
    with pytest.raises(SpecError, match=r"prune\.args\.max_layer = 0\.9: does not apply"):
        registry.get("magnitude").parse_spec(spec)
