"""Deployment runtimes (harness.deploy): ONNX Runtime matches torch on every reference model and
is deterministic, int8 is exact where it says so and keeps quality, 2:4 runs dense without a
kernel, and a deployed case reports its metrics through the runner."""

from __future__ import annotations

import copy
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from harness import inputs
from harness._util import add_import_path
from harness.data import load_dataset
from harness.deploy import (
    DEPLOY_RTOL,
    Deployed,
    DeployError,
    DeployWarning,
    Int8Linear,
    Int8Module,
    OnnxModule,
    check,
    counted,
    deploy,
    deploy_metrics,
    is_2_4,
    missing_runtime,
    to_int8,
    to_onnx,
    to_semi_structured,
)
from harness.metricnames import parse
from harness.metrics import model_stats
from harness.models import build, mlp
from harness.runner import DenseCache, run_case
from harness.spec import SpecError, load_suite, suite_from_dict

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "suites").glob("*.toml"))
HAS_ORT = missing_runtime("onnx") is None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="needs prune-harness[onnx]")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

torch.set_num_threads(1)


def _x(n: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _within(deployed: np.ndarray, source: np.ndarray) -> None:
    found = deploy_metrics(deployed, source)
    assert found["deploy_rel_diff"] <= DEPLOY_RTOL, found


# -- output equivalence metric


def test_deploy_metrics_by_hand() -> None:
    source = np.array([[1.0, -3.0], [0.5, 2.0]])
    deployed = np.array([[1.0, -2.5], [0.75, 2.0]])
    found = deploy_metrics(deployed, source)
    assert found == {"deploy_max_abs_diff": 0.5, "deploy_rel_diff": 0.5 / 4.0}
    for name in found:
        assert parse(name).name == name and parse(name).model == ""
    assert parse("deploy_accelerated_layers").name == "deploy_accelerated_layers"
    with pytest.raises(DeployError, match="logits"):
        deploy_metrics(np.zeros((2, 3)), source)


# -- ONNX Runtime


def _reference_models() -> list[tuple[str, nn.Module, inputs.Inputs]]:
    """Every reference suite's model, randomly initialized, with 16 rows of its data."""
    out: list[tuple[str, nn.Module, inputs.Inputs]] = []
    seen: set[str] = set()
    for path in SUITES:
        suite = load_suite(path)
        add_import_path(suite.base_dir)
        ds = load_dataset(suite.dataset, suite.dataset_args, suite.base_dir)
        for own in [suite, *(suite.for_case(c) for c in suite.cases)]:
            key = f"{own.model}{sorted(own.model_args.items())}{suite.dataset}"
            if key in seen:
                continue
            seen.add(key)
            torch.manual_seed(0)
            model = build(own.model, ds.spec, ds.n_classes, own.model_args).eval()
            rows = inputs.take(ds.X, slice(0, 16))
            rows = inputs.map_arrays(rows, lambda a: np.array(a, dtype=a.dtype))
            out.append((f"{suite.name}:{own.model}", model, rows))
    return out


@pytest.fixture(scope="module")
def reference_models() -> list[tuple[str, nn.Module, inputs.Inputs]]:
    return _reference_models()


@needs_ort
def test_onnx_matches_torch_on_every_reference_model(
    reference_models: list[tuple[str, nn.Module, inputs.Inputs]],
) -> None:
    kinds = set()
    for name, model, rows in reference_models:
        batch = inputs.to_batch(rows)
        deployed = to_onnx(model, batch)
        kinds.add(type(model).__name__)
        with torch.inference_mode():
            want = inputs.forward(model, batch).numpy()
            got = inputs.forward(deployed, batch).numpy()
            one = inputs.forward(deployed, inputs.take(batch, slice(3, 4))).numpy()
            again = inputs.forward(deployed, batch).numpy()
        assert got.shape == want.shape, name
        _within(got, want)
        _within(one, want[3:4])  # batch 1 runs the same graph (dynamic batch axis)
        assert np.array_equal(got, again), f"{name}: ONNX Runtime is not deterministic"
        restored = pickle.loads(pickle.dumps(deployed))
        with torch.inference_mode():
            assert np.array_equal(inputs.forward(restored, batch).numpy(), got), name
    # an MLP, the CNN, the ResNet and the token transformer are all among them
    assert {"Sequential", "_Transformer"} <= kinds and len(reference_models) >= 5


@pytest.fixture(scope="module")
def onnx_mlp() -> tuple[nn.Module, OnnxModule]:
    torch.manual_seed(0)
    model = mlp(12, 4, hidden=[16]).eval()
    return model, to_onnx(model, _x(4, 12), threads=1)


@needs_ort
@settings(max_examples=25, deadline=None, derandomize=True)
@given(rows=st.integers(1, 40), seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1, 1e3]))
def test_onnx_matches_torch_for_any_batch(
    onnx_mlp: tuple[nn.Module, OnnxModule], rows: int, seed: int, scale: float
) -> None:
    model, deployed = onnx_mlp
    x = _x(rows, 12, seed) * scale
    with torch.inference_mode():
        _within(deployed(x).numpy(), model(x).numpy())


@needs_ort
def test_onnx_module_keeps_the_torch_model_for_counting(
    onnx_mlp: tuple[nn.Module, OnnxModule],
) -> None:
    model, deployed = onnx_mlp
    assert isinstance(deployed, Deployed) and counted(deployed)[0] is deployed.source
    assert model_stats(deployed, _x(1, 12)) == model_stats(model, _x(1, 12))
    copied = copy.deepcopy(deployed)
    assert copied._session is None or copied._session is not deployed._session
    with torch.inference_mode():
        assert torch.equal(copied(_x(3, 12)), deployed(_x(3, 12)))
    with pytest.raises(TypeError, match="missing input"):
        deployed()


@needs_ort
def test_onnx_session_uses_the_given_threads_sequentially(
    onnx_mlp: tuple[nn.Module, OnnxModule],
) -> None:
    import onnxruntime as ort

    _, deployed = onnx_mlp
    two = OnnxModule(deployed.source, deployed.model_bytes, deployed.names, threads=2)
    options = two.session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert two.session.get_providers() == ["CPUExecutionProvider"]


def test_a_missing_onnxruntime_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    problem = missing_runtime("onnx")
    assert problem == (
        "needs onnxruntime, which is not installed (pip install 'prune-harness[onnx]')"
    )
    with pytest.raises(DeployError, match=r"prune-harness\[onnx\]"):
        deploy("onnx", mlp(4, 2, hidden=[3]), _x(2, 4))


# -- int8


def test_int8_linear_by_hand() -> None:
    """W = [[1, -0.25], [0, 2]], b = [0.1, 0], x = [1, 0.25]: s = (1/63, 2/63),
    Q = [[63, -16], [0, 63]] (-15.75 rounds to -16), t = 1/127, q = [127, 32] (31.75)."""
    layer = Int8Linear(torch.tensor([[1.0, -0.25], [0.0, 2.0]]), torch.tensor([0.1, 0.0]))
    assert layer.weight_int8.T.tolist() == [[63, -16], [0, 63]]
    assert layer.weight_int8.dtype == torch.int8
    y = layer(torch.tensor([[1.0, 0.25]]))
    want = [(127 * 63 - 32 * 16) / (127 * 63) + 0.1, 2 * 32 * 63 / (127 * 63)]
    assert y[0].tolist() == pytest.approx(want, abs=1e-6)
    assert layer(torch.zeros(1, 2))[0].tolist() == pytest.approx([0.1, 0.0])  # zero scale -> 1


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    d_in=st.integers(1, 70),
    d_out=st.integers(1, 40),
    rows=st.integers(1, 33),
    seed=st.integers(0, 2**16),
)
def test_int8_linear_is_exact_integer_arithmetic_and_batch_invariant(
    d_in: int, d_out: int, rows: int, seed: int
) -> None:
    torch.manual_seed(seed)
    linear = nn.Linear(d_in, d_out)
    with torch.no_grad():
        linear.weight[linear.weight.abs() < 0.05] = 0  # pruned weights
    layer = Int8Linear.from_linear(linear)
    assert torch.equal(layer.weight == 0, linear.weight == 0)  # zeros stay zeros
    x = _x(rows, d_in, seed)
    y = layer(x)
    # the reference: the same quantization with an int64 product
    t = (x.abs().amax(1, keepdim=True) / 127).clamp_min(1e-30)
    q = torch.round(x / t).clamp(-127, 127).long()
    want = (q @ layer.weight_int8.long()).float() * t * layer.weight_scale + linear.bias
    assert torch.allclose(y, want, rtol=1e-6, atol=1e-6)
    for i in range(rows):  # a row alone gives the bits it gives in the batch
        assert torch.equal(layer(x[i : i + 1]), y[i : i + 1])
    assert torch.equal(layer(x), y)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return X, y.astype(np.int64)


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    X, y = _digits()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=[64, 32])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):  # full-batch: deterministic, about a second
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xt[:1200]), yt[:1200]).backward()
        opt.step()
    with torch.no_grad():  # prune half of every layer's weights by magnitude
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    return model.eval(), Xt[1200:], yt[1200:]


def test_int8_keeps_the_quality_of_a_trained_mlp(
    trained_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, X, y = trained_mlp
    deployed = to_int8(model)
    assert isinstance(deployed, Int8Module) and deployed.accelerated_layers == 3
    with torch.inference_mode():
        dense, quant = model(X), deployed(X)
    acc_float = float((dense.argmax(1) == y).float().mean())
    acc_int8 = float((quant.argmax(1) == y).float().mean())
    assert acc_float > 0.85
    assert abs(acc_int8 - acc_float) <= 0.01
    assert float((dense.argmax(1) != quant.argmax(1)).float().mean()) <= 0.02
    with torch.inference_mode():
        assert torch.equal(deployed(X), quant)  # deterministic


def test_int8_survives_deepcopy_and_pickle_and_counts_int8_storage(
    trained_mlp: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, X, _ = trained_mlp
    deployed = to_int8(model)
    with torch.inference_mode():
        want = deployed(X)
        for other in (copy.deepcopy(deployed), pickle.loads(pickle.dumps(deployed))):
            assert torch.equal(other(X), want)
    stats, float_stats = model_stats(deployed, X[:1]), model_stats(model, X[:1])
    for key in ("params", "nonzero_params", "sparsity", "flops", "flops_nonzero"):
        assert stats[key] == float_stats[key], key
    # 1 byte per weight (+ a float scale per output) against 4: under a third of the bytes
    assert stats["size_bytes"] < float_stats["size_bytes"] / 3 + 4096


def test_int8_runs_on_the_cpu_whatever_the_device() -> None:
    assert check("int8", device="cuda:0") is None  # a CUDA suite keeps its int8 case
    model = mlp(4, 2, hidden=[3]).eval()
    deployed = deploy("int8", model, _x(2, 4), device="cuda:0")
    assert {t.device.type for t in deployed.quantized.state_dict().values()} == {"cpu"}
    with torch.inference_mode():
        assert deployed(_x(5, 4)).device.type == "cpu"


@needs_cuda
def test_int8_copies_cuda_inputs_to_the_cpu_and_back() -> None:
    model = mlp(4, 2, hidden=[3]).eval()
    deployed = deploy("int8", model, _x(2, 4), device="cuda:0")
    with torch.inference_mode():
        out = deployed(_x(5, 4).cuda())
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), deployed(_x(5, 4)))


# -- 2:4


def test_is_2_4_by_hand() -> None:
    assert is_2_4(torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3]]))
    assert not is_2_4(torch.tensor([[1.0, 1, 2, 0, 0, 0, 0, 3]]))  # three in the first four
    assert not is_2_4(torch.ones(2, 6))  # columns not a multiple of 4


def test_2_4_needs_the_pattern_and_runs_dense_without_a_kernel() -> None:
    model = mlp(8, 2, hidden=[4])
    with pytest.raises(DeployError, match=r'needs prune.pattern = "2:4"'):
        deploy("2:4", model, _x(2, 8), pattern=None)
    with pytest.warns(DeployWarning, match="no kernel accelerates 2:4 sparsity on cpu"):
        deployed = to_semi_structured(model, "cpu")
    assert deployed.accelerated_layers == 0 and "runs dense" in deployed.note
    with torch.inference_mode():
        assert torch.equal(deployed(_x(5, 8)), model.eval()(_x(5, 8)))


@needs_cuda
def test_2_4_runs_semi_structured_kernels_on_cuda() -> None:
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        pytest.skip("needs compute capability >= 8.0")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().half()
    with torch.no_grad():  # keep the 2 largest of every 4 inputs
        for m in model:
            if isinstance(m, nn.Linear):
                w = m.weight.view(m.out_features, -1, 4)
                drop = w.abs().argsort(-1)[..., :2]
                w.scatter_(-1, drop, 0)
    deployed = to_semi_structured(model.eval(), "cuda")
    assert deployed.accelerated_layers == 2
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    with torch.inference_mode():
        got, want = deployed(x).float(), model(x).float()
    assert torch.allclose(got, want, rtol=1e-2, atol=1e-2)


# -- through the runner


@pytest.fixture(scope="module")
def deployed_runs() -> dict[str, object]:
    suite = suite_from_dict(
        {
            "suite": {"dataset": "sklearn:digits", "model_args": {"hidden": [32]}},
            "cv": {"folds": 2},
            "train": {"epochs": 3},
            "latency": {"batch": 16, "warmup": 1, "repeats": 3},
            "checks": {"properties": True, "differential": False, "examples": 5},
            "case": [
                {"name": "plain", "prune": {"method": "magnitude", "sparsity": 0.5}},
                *(
                    {"name": k, "prune": {"method": "magnitude", "sparsity": 0.5}, "deploy": k}
                    for k in (["onnx", "int8"] if HAS_ORT else ["int8"])
                ),
            ],
        },
        "<deploy>",
    )
    cache = DenseCache()
    return {c.name: run_case(suite, c, cache=cache) for c in suite.cases}


@pytest.mark.parametrize("kind", ["onnx", "int8"])
def test_a_deployed_case_reports_runtime_metrics_and_torch_counts(
    deployed_runs: dict[str, object], kind: str
) -> None:
    if kind not in deployed_runs:
        pytest.skip("needs prune-harness[onnx]")
    plain, run = deployed_runs["plain"], deployed_runs[kind]
    for key in ("pruned.params", "pruned.nonzero_params", "pruned.sparsity", "pruned.flops"):
        assert run.value(key) == plain.value(key), key  # type: ignore[attr-defined]
    assert run.value("property_failures") == 0.0  # type: ignore[attr-defined]
    assert run.layer_sparsity == plain.layer_sparsity  # type: ignore[attr-defined]
    for key in ("deploy_max_abs_diff", "deploy_rel_diff", "speedup", "pruned.latency_ms_p50"):
        assert run.value(key) is not None, key  # type: ignore[attr-defined]
    if kind == "onnx":
        assert run.value("deploy_rel_diff") <= DEPLOY_RTOL  # type: ignore[attr-defined]
        assert run.value("pruned.accuracy") == plain.value("pruned.accuracy")  # type: ignore[attr-defined]
    else:
        assert run.value("deploy_accelerated_layers") == 2.0  # type: ignore[attr-defined]
        assert run.value("pruned.size_bytes") < plain.value("pruned.size_bytes") / 2  # type: ignore[attr-defined,operator]
        assert abs(run.value("pruned.accuracy") - plain.value("pruned.accuracy")) <= 0.02  # type: ignore[attr-defined,operator]


def test_a_deployment_that_cannot_run_is_one_line_at_the_case_key() -> None:
    suite = suite_from_dict(
        {
            "suite": {"dataset": "sklearn:digits", "model_args": {"hidden": [8]}},
            "cv": {"folds": 2},
            "train": {"epochs": 1},
            "latency": {"batch": 8, "warmup": 0, "repeats": 1},
            "checks": {"properties": False, "differential": False},
            "case": [
                {"name": "c", "prune": {"method": "magnitude", "sparsity": 0.5}, "deploy": "2:4"}
            ],
        },
        "<deploy>",
    )
    with warnings.catch_warnings(), pytest.raises(SpecError) as err:
        run_case(suite, suite.cases[0])
    assert str(err.value).startswith("<deploy>: case[c].deploy = '2:4': needs prune.pattern")
    assert "\n" not in str(err.value)


def test_2_4_accepts_the_pattern_however_it_is_spaced() -> None:
    assert check("2:4", pattern=" 2 : 4") is None
    assert check("2:4", pattern="1:4") is not None  # another pattern: refused, named
