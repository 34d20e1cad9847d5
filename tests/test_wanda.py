"""Wanda (harness.pruning.wanda) pinned to its formula ``S_ij = |W_ij| * ||X_j||_2`` and to
hand-computed masks: compared per output row, or per N:M group."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.pruning import PruneContext, create, prunable_modules
from harness.pruning.base import PruneError
from harness.pruning.wanda import WandaArgs, input_norms, wanda_criterion, wanda_score
from harness.spec import PruneSpec

torch.set_num_threads(1)


def _ctx(X: np.ndarray) -> PruneContext:
    y = (np.arange(len(X)) % 2).astype(np.int64)
    return PruneContext(torch.as_tensor(X[:4]), X, y, 0)


def _linear(W: list[list[float]]) -> nn.Sequential:
    w = torch.tensor(W)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return nn.Sequential(layer)


def _features(scales: list[float], n: int = 6, seed: int = 0) -> np.ndarray:
    """``n`` rows whose feature ``j`` has norm exactly ``scales[j]`` over the rows."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(scales)))
    X = X / np.linalg.norm(X, axis=0) * np.asarray(scales)
    return X.astype(np.float32)


def test_score_is_weight_magnitude_times_input_feature_norm() -> None:
    W = torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.0, 4.0]])
    norms = torch.tensor([2.0, 0.5, 10.0])
    expected = torch.tensor([[2.0, 1.0, 30.0], [1.0, 0.0, 40.0]])
    torch.testing.assert_close(wanda_score(W, norms), expected)
    X = _features([3.0, 1.0, 0.25])
    model = _linear([[1.0, -2.0, 3.0], [-0.5, 0.0, 4.0]])
    scores = wanda_criterion(model, _ctx(X), WandaArgs())
    norm = torch.as_tensor(np.linalg.norm(X.astype(np.float64), axis=0), dtype=torch.float32)
    torch.testing.assert_close(scores[model[0]], model[0].weight.detach().abs() * norm)


def test_row_wise_wanda_differs_from_magnitude_by_the_exact_mask() -> None:
    # feature 0 is ten times louder than the others; row 1 is a hundred times larger
    X = _features([10.0, 1.0, 1.0, 1.0])
    W = [[1.0, 2.0, 3.0, 4.0], [400.0, 300.0, 200.0, 100.0]]
    wanda = create(PruneSpec("wanda", 0.5)).step(_linear(W), 0.5, _ctx(X))
    # scores: row 0 [10, 2, 3, 4], row 1 [4000, 300, 200, 100]: each row loses its 2 lowest
    assert wanda[0].weight_mask.tolist() == [[1, 0, 0, 1], [1, 1, 0, 0]]
    # magnitude per layer drops the 4 smallest |w| of the layer: all of row 0
    magnitude = create(PruneSpec("magnitude", 0.5, scope="layer")).step(_linear(W), 0.5, _ctx(X))
    assert magnitude[0].weight_mask.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]
    # the comparison group is the row whatever the scope
    wanda_layer = create(PruneSpec("wanda", 0.5, scope="layer")).step(_linear(W), 0.5, _ctx(X))
    assert torch.equal(wanda_layer[0].weight_mask, wanda[0].weight_mask)
    # and every row loses round(sparsity * d)
    wanda = create(PruneSpec("wanda", 0.25)).step(_linear(W), 0.25, _ctx(X))
    assert wanda[0].weight_mask.tolist() == [[1, 0, 1, 1], [1, 1, 1, 0]]


def test_wanda_with_a_pattern_compares_within_every_group_of_m() -> None:
    X = _features([10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.1, 5.0])
    W = [[1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 30.0, 1.0]]
    # scores [10, 2, 3, 4 | 1, 2, 3, 5]: keep 2 per group of 4
    net = create(PruneSpec("wanda", 0.5, pattern="2:4")).step(_linear(W), 0.5, _ctx(X))
    assert net[0].weight_mask.tolist() == [[1, 0, 0, 1, 0, 0, 1, 1]]
    net = create(PruneSpec("wanda", 0.75, pattern="1:4")).step(_linear(W), 0.75, _ctx(X))
    assert net[0].weight_mask.tolist() == [[1, 0, 0, 0, 0, 0, 0, 1]]


def test_conv_norms_are_those_of_the_unfolded_columns() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    x = torch.randn(5, 2, 6, 6)
    (norm, seen) = input_norms(nn.Sequential(conv), [conv], x)[conv]
    cols = F.unfold(x.double(), 3, padding=1, stride=2)  # (N, 18, positions)
    assert seen == 5 * 9
    torch.testing.assert_close(norm, cols.pow(2).sum((0, 2)).sqrt())
    conv1 = nn.Conv1d(1, 1, 2, bias=False)
    x1 = torch.tensor([[[1.0, 2.0, 3.0]]])
    (norm1, seen1) = input_norms(nn.Sequential(conv1), [conv1], x1)[conv1]
    assert seen1 == 2  # the columns [1, 2] and [2, 3]
    torch.testing.assert_close(norm1, torch.tensor([5.0, 13.0], dtype=torch.float64).sqrt())


def test_only_the_first_n_samples_training_rows_calibrate() -> None:
    X = _features([1.0, 2.0, 3.0, 4.0], n=8)
    model = _linear([[4.0, 3.0, 2.5, 1.0], [1.0, 1.0, 1.0, 1.0]])
    args = WandaArgs(n_samples=4)
    base = wanda_criterion(model, _ctx(X), args)[model[0]]
    later = X.copy()
    later[4:] *= 100  # rows past n_samples: no effect
    torch.testing.assert_close(wanda_criterion(model, _ctx(later), args)[model[0]], base)
    first = X.copy()
    first[0] *= 100
    assert not torch.allclose(wanda_criterion(model, _ctx(first), args)[model[0]], base)


def test_iterative_rounds_keep_pruned_weights_pruned_with_exact_row_counts() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    X = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    pruner = create(PruneSpec("wanda", 0.5, schedule="iterative", steps=2))
    model = pruner.step(model, 0.25, _ctx(X))
    first = {n: m.weight_mask.clone() for n, m in prunable_modules(model)}
    model = pruner.step(model, 0.5, _ctx(X))
    for name, m in prunable_modules(model):
        assert bool((m.weight_mask <= first[name]).all())
        d = m.weight.shape[1]
        assert (m.weight_mask == 0).sum(1).tolist() == [round(0.5 * d)] * m.weight.shape[0]


def test_ignored_layers_stay_dense_and_unsupported_layers_are_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    X = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    before = model[2].weight.detach().clone()
    pruner = create(PruneSpec("wanda", 0.5, args={"ignore": ["2"]}))
    net = pruner.finalize(pruner.step(copy.deepcopy(model), 0.5, _ctx(X)))
    assert torch.equal(net[2].weight, before)
    assert float((net[0].weight == 0).float().mean()) == 0.5
    grouped = nn.Sequential(nn.Conv1d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    Xc = np.random.default_rng(0).normal(size=(4, 2, 6)).astype(np.float32)
    with pytest.raises(PruneError) as info:
        create(PruneSpec("wanda", 0.5)).step(grouped, 0.5, _ctx(Xc))
    assert str(info.value) == "wanda: layer '0': grouped convolution (groups=2) not supported"
