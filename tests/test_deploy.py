"""Sparse CSR deployment (harness.deploy): same outputs as the dense model, right layers converted,
the input untouched, and a module that copies, saves and loads like any other."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness.deploy import SparseLinear, csr_layers, to_sparse_csr
from harness.metrics import model_stats
from harness.models import mlp
from harness.pruning import PruneContext, create
from harness.spec import PruneSpec

torch.set_num_threads(1)


def _zero_smallest(layer: nn.Linear, sparsity: float) -> nn.Linear:
    """Zero the ``round(sparsity * n)`` weights of smallest |w| (masks folded)."""
    with torch.no_grad():
        w = layer.weight.view(-1)
        w[torch.argsort(w.abs(), stable=True)[: round(sparsity * w.numel())]] = 0
    return layer


def _linear(d_in: int, d_out: int, sparsity: float, *, seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return _zero_smallest(nn.Linear(d_in, d_out, bias=bias), sparsity)


def _x(n: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _pruned_mlp(sparsity: float, *, finalize: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """The digits MLP shape, magnitude-pruned globally through harness.pruning."""
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=[256, 128]).eval()
    X = _x(300, 64)
    ctx = PruneContext(X[:8], X.numpy(), torch.zeros(300, dtype=torch.long).numpy(), 0)
    pruner = create(PruneSpec("magnitude", sparsity))
    pruner.step(model, sparsity, ctx)
    if finalize:
        pruner.finalize(model)
    return model, X


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    d_in=st.integers(1, 96),
    d_out=st.integers(1, 96),
    sparsity=st.floats(0.0, 1.0),
    batch=st.sampled_from([1, 2, 7, 256]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_outputs_equal_the_dense_layer(
    d_in: int, d_out: int, sparsity: float, batch: int, bias: bool, seed: int
) -> None:
    dense = nn.Sequential(_linear(d_in, d_out, sparsity, seed=seed, bias=bias), nn.ReLU())
    sparse = to_sparse_csr(dense, min_sparsity=0.0)
    assert csr_layers(sparse) == ["0"]
    x = _x(batch, d_in, seed)
    with torch.no_grad():
        expected = dense(x)
        _close(sparse(x), expected)
    _close(sparse(x).detach(), expected)  # gradients on
    with torch.inference_mode():
        _close(sparse(x), expected)


@pytest.mark.parametrize("batch", [1, 256])
def test_pruned_mlp_outputs_equal_at_batch_1_and_256(batch: int) -> None:
    dense, X = _pruned_mlp(0.95)
    sparse = to_sparse_csr(dense)
    assert csr_layers(sparse)  # magnitude-95 makes some layer >= 0.9
    x = X[torch.arange(batch) % len(X)]
    with torch.inference_mode():
        _close(sparse(x), dense(x))
    with torch.no_grad():
        _close(sparse(x), dense(x))


def test_only_layers_at_min_sparsity_or_more_are_converted() -> None:
    # 0.895 < 0.9 (no), exactly 0.9 (yes), 0.95 (yes) on layers of 200 weights
    model = nn.Sequential(
        _linear(20, 10, 0.895, seed=0), nn.ReLU(), _linear(10, 20, 0.9, seed=1), nn.ReLU()
    )
    model.append(_linear(20, 10, 0.95, seed=2))
    sparse = to_sparse_csr(model, min_sparsity=0.9)
    assert csr_layers(sparse) == ["2", "4"]
    assert type(sparse[0]) is nn.Linear
    assert [round(m.sparsity, 3) for m in (sparse[2], sparse[4])] == [0.9, 0.95]
    assert csr_layers(to_sparse_csr(model, min_sparsity=0.0)) == ["0", "2", "4"]
    assert csr_layers(to_sparse_csr(model, min_sparsity=1.0)) == []


def test_a_layer_pruned_to_min_sparsity_is_converted_despite_rounding() -> None:
    # 256 x 128 at 90 %: round(0.9 * 32768) = 29491 zeros, a fraction of 0.89999...
    model = nn.Sequential(_linear(256, 128, 0.9, seed=0), nn.ReLU(), _linear(128, 10, 0.9, seed=1))
    assert int((model[0].weight == 0).sum()) == 29491 and 29491 / 32768 < 0.9
    assert csr_layers(to_sparse_csr(model)) == ["0", "2"]
    one_short = _linear(256, 128, 29490 / 32768, seed=0)
    assert csr_layers(to_sparse_csr(nn.Sequential(one_short))) == []


def test_input_model_is_untouched_even_with_pruning_masks() -> None:
    dense, X = _pruned_mlp(0.95, finalize=False)  # weight_orig / weight_mask still in place
    dense(X).sum().backward()  # the masked weights are now non-leaf tensors (no deepcopy)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    sparse = to_sparse_csr(dense)
    after = dense.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m) is not SparseLinear for m in dense.modules())
    assert all(hasattr(dense[i], "weight_mask") for i in (0, 2, 4))
    # the copy has the masks folded in
    assert not any(hasattr(m, "weight_mask") or hasattr(m, "weight_orig") for m in sparse.modules())
    assert not any(m._forward_pre_hooks for m in sparse.modules())
    with torch.inference_mode():
        _close(sparse(X), dense(X))


def test_weight_property_nnz_and_sparsity() -> None:
    layer = _linear(30, 12, 0.8, seed=3)
    sparse = to_sparse_csr(nn.Sequential(layer), min_sparsity=0.5)[0]
    assert isinstance(sparse, SparseLinear)
    assert torch.equal(sparse.weight, layer.weight.detach())
    assert sparse.weight.layout == torch.strided
    assert sparse.weight_csr.layout == torch.sparse_csr
    assert sparse.nnz == int(torch.count_nonzero(layer.weight)) == 72  # 360 - round(0.8 * 360)
    assert sparse.sparsity == pytest.approx(0.8)
    assert (sparse.in_features, sparse.out_features) == (30, 12)
    assert layer.bias is not None and sparse.bias is not None
    assert torch.equal(sparse.bias, layer.bias)
    # code that counts zeros through module.weight and isinstance(m, nn.Linear) keeps working
    assert isinstance(sparse, nn.Linear)
    assert int((sparse.weight == 0).sum()) == 360 - 72


def test_model_stats_of_the_csr_model_match_the_dense_model() -> None:
    dense, X = _pruned_mlp(0.95)
    sparse = to_sparse_csr(dense, min_sparsity=0.0)
    a, b = model_stats(dense, X[:1]), model_stats(sparse, X[:1])
    for key in ("nonzero_params", "sparsity", "flops", "flops_nonzero"):
        assert b[key] == pytest.approx(a[key]), key
    nnz = sum(m.nnz for m in sparse.modules() if isinstance(m, SparseLinear))
    assert b["params"] == nnz + (256 + 128 + 10)  # stored values and biases
    assert b["size_bytes"] < a["size_bytes"]


def test_deepcopy_state_dict_and_torch_save_round_trip() -> None:
    dense, X = _pruned_mlp(0.95)
    sparse = to_sparse_csr(dense, min_sparsity=0.0)
    with torch.inference_mode():
        expected = sparse(X)  # also fills the CSR cache, which deepcopy must skip
    twin = copy.deepcopy(sparse)
    with torch.inference_mode():
        assert torch.equal(twin(X), expected)

    buf = io.BytesIO()
    torch.save(sparse.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(t.layout == torch.strided for t in state.values())
    # a model with another sparsity pattern (other nnz per layer) takes the saved one
    other = to_sparse_csr(_pruned_mlp(0.5)[0], min_sparsity=0.0)
    assert other[2].nnz != sparse[2].nnz
    other.load_state_dict(state)
    assert [m.nnz for m in other if isinstance(m, SparseLinear)] == [
        m.nnz for m in sparse if isinstance(m, SparseLinear)
    ]
    with torch.inference_mode():
        _close(other(X), expected)

    buf = io.BytesIO()
    torch.save(sparse, buf)
    buf.seek(0)
    with torch.inference_mode():
        assert torch.equal(torch.load(buf, weights_only=False)(X), expected)


def test_loading_an_invalid_csr_state_is_an_error() -> None:
    sparse = SparseLinear(torch.eye(3))
    state = sparse.state_dict()
    state["weight_col_indices"] = torch.tensor([0, 1, 7], dtype=torch.int32)  # column 7 of 3
    with pytest.raises(RuntimeError, match="not a valid CSR matrix"):
        sparse.load_state_dict(state)


def test_model_without_eligible_layer_comes_back_as_an_equal_copy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2))
    out = to_sparse_csr(model)
    assert out is not model and out[0] is not model[0]
    assert csr_layers(out) == []
    assert [type(m) for m in out.modules()] == [type(m) for m in model.modules()]
    a, b = model.state_dict(), out.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert out[0].weight.data_ptr() != model[0].weight.data_ptr()


def test_root_linear_and_shared_modules_are_converted() -> None:
    layer = _linear(10, 4, 0.9, seed=5)
    root = to_sparse_csr(layer)
    assert isinstance(root, SparseLinear) and csr_layers(root) == [""]
    shared = _linear(6, 6, 0.95, seed=6)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    out = to_sparse_csr(model)
    assert out[0] is out[2] and isinstance(out[0], SparseLinear)
    x = _x(5, 6)
    with torch.no_grad():
        _close(out(x), model(x))
    assert to_sparse_csr(out)[0].nnz == out[0].nnz  # SparseLinear is not converted again


def test_other_input_ranks_dtype_change_and_weight_assignment() -> None:
    layer = _linear(5, 3, 0.6, seed=7)
    sparse = SparseLinear.from_linear(layer)
    with torch.no_grad():
        x3 = _x(6, 5).view(2, 3, 5)
        _close(sparse(x3), layer(x3))
        _close(sparse(x3[0, 0]), layer(x3[0, 0]))
        assert sparse(torch.zeros(0, 5)).shape == (0, 3)
        double = copy.deepcopy(sparse).double()
        assert double(x3.double()).dtype == torch.float64
        _close(double(x3.double()).float(), layer(x3))
    w = torch.zeros(3, 5)
    w[1, 2] = 2.0
    sparse.weight = w
    assert sparse.nnz == 1 and torch.equal(sparse.weight, w)
    with torch.no_grad():
        assert layer.bias is not None
        _close(sparse(x3), x3 @ w.T + layer.bias)
    with pytest.raises(ValueError, match="weight shape"):
        sparse.weight = torch.zeros(5, 3)


def test_gradients_to_the_input_after_use_under_inference_mode() -> None:
    # a CSR view built under inference_mode must not be reused where autograd saves it
    sparse = SparseLinear.from_linear(_linear(7, 4, 0.5, seed=8))
    x = _x(3, 7)
    with torch.inference_mode():
        sparse(x)
    x.requires_grad_(True)
    sparse(x).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, sparse.weight.sum(0).expand(3, 7))


def test_min_sparsity_must_be_a_fraction() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_sparsity"):
            to_sparse_csr(model, bad)


def test_a_case_with_deploy_csr_serves_the_same_predictions_from_csr_layers() -> None:
    """``deploy = "csr"`` in a case: the runner evaluates (and times) the CSR model, whose
    predictions and quality metrics equal those of the same case without deployment."""
    from harness.data import load_dataset, make_folds
    from harness.runner import run_fold
    from harness.spec import suite_from_dict

    def suite(**case: object) -> object:
        return suite_from_dict(
            {
                "suite": {"name": "t", "dataset": "sklearn:digits", "model_args": {"hidden": [64]}},
                "cv": {"folds": 2},
                "train": {"epochs": 3, "lr": 3e-3},
                "checks": {"properties": False, "differential": False},
                "latency": {"repeats": 2, "warmup": 1, "batch": 16},
                "case": [
                    {
                        "name": "c",
                        "prune": {"method": "magnitude", "scope": "layer", "sparsity": 0.9},
                        "finetune": {"epochs": 1},
                        **case,
                    }
                ],
            }
        )

    ds = load_dataset("sklearn:digits", {}, None)
    fold = make_folds(ds, 2, seed=0)[0]
    deployed, plain = suite(deploy="csr"), suite()
    got = run_fold(deployed, deployed.cases[0], ds, fold)  # type: ignore[attr-defined]
    ref = run_fold(plain, plain.cases[0], ds, fold)  # type: ignore[attr-defined]
    assert csr_layers(got.pruned) == ["0", "2"]  # both linear layers at 90 % zeros
    assert not csr_layers(ref.pruned)
    assert np.array_equal(got.pruned_pred, ref.pruned_pred)
    for key in ("pruned.f1_macro", "pruned.accuracy", "pruned.sparsity", "pruned.nonzero_params"):
        assert got.metrics[key] == ref.metrics[key], key
    assert got.metrics["pruned.sparsity"] == pytest.approx(0.9, abs=0.01)
