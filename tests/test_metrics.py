"""Metric names and directions, classification metrics vs scikit-learn, model stats, latency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from torch import nn

from harness.metricnames import parse as parse_metric
from harness.metrics import Latency, classification_metrics, measure_latency, model_stats

# --------------------------------------------------------------------------------------------
# classification metrics


@st.composite
def label_arrays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n_classes = draw(st.integers(2, 6))
    n = draw(st.integers(1, 40))
    labels = st.integers(0, n_classes - 1)
    y_true = np.array(draw(st.lists(labels, min_size=n, max_size=n)), dtype=np.int64)
    y_pred = np.array(draw(st.lists(labels, min_size=n, max_size=n)), dtype=np.int64)
    return y_true, y_pred, n_classes


def _sklearn_reference(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    labels = list(range(n_classes))
    out = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
    }
    for avg in ("macro", "micro", "weighted"):
        out[f"precision_{avg}"] = skm.precision_score(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"recall_{avg}"] = skm.recall_score(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"f1_{avg}"] = skm.f1_score(y_true, y_pred, labels=labels, average=avg, zero_division=0)
    p = skm.precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    r = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    for k in labels:
        out[f"precision.class_{k}"] = p[k]
        out[f"recall.class_{k}"] = r[k]
        out[f"f1.class_{k}"] = f[k]
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # balanced accuracy on classes not in y_true
@settings(max_examples=300, deadline=None)
@given(label_arrays())
def test_classification_metrics_match_sklearn(arrays: tuple[np.ndarray, np.ndarray, int]) -> None:
    y_true, y_pred, n_classes = arrays
    got = classification_metrics(y_true, y_pred, n_classes)
    expected = _sklearn_reference(y_true, y_pred, n_classes)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert isinstance(got[name], float)
        assert got[name] == float(value), name  # bit for bit: the baselines hold these values
        parse_metric(f"pruned.{name}")  # every produced name is a known metric


def test_class_never_predicted_scores_zero() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])  # class 2 never predicted
    got = classification_metrics(y_true, y_pred, 3)
    assert got["precision.class_2"] == 0.0
    assert got["recall.class_2"] == 0.0
    assert got["f1.class_2"] == 0.0
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["recall_macro"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["precision_macro"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # a class absent from both arrays still gets (zero) per-class entries
    wide = classification_metrics(y_true, y_pred, 5)
    assert wide["f1.class_4"] == 0.0 and wide["precision.class_3"] == 0.0


# --------------------------------------------------------------------------------------------
# names and directions


# --------------------------------------------------------------------------------------------
# model statistics


def _linear(in_f: int, out_f: int, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def test_flop_counter_reports_2_in_out_for_linear() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        nn.Linear(7, 5)(torch.zeros(1, 7))
    assert counter.get_total_flops() == 2 * 7 * 5


def test_model_stats_exact_on_hand_built_linear() -> None:
    weight = torch.tensor(
        [[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, 4.0], [5.0, 0.0, 0.0, 6.0]]
    )  # 6 zeros of 12
    model = nn.Sequential(_linear(4, 3, weight, torch.tensor([1.0, 0.0, -1.0])))
    stats = model_stats(model, torch.ones(8, 4))  # batch 8: FLOPs are counted at batch 1
    assert stats["params"] == 15
    assert stats["nonzero_params"] == 6 + 2
    assert stats["sparsity"] == 0.5  # weights only, biases do not count
    assert stats["flops"] == 2 * 4 * 3
    assert stats["flops_nonzero"] == pytest.approx(2 * 4 * 3 * 0.5)
    assert stats["size_bytes"] > 0 and stats["size_gzip_bytes"] > 0
    assert set(stats) == {
        "params",
        "nonzero_params",
        "sparsity",
        "flops",
        "flops_nonzero",
        "size_bytes",
        "size_gzip_bytes",
        "energy_nj",
    }
    # 6 nonzero weights: 6 MACs (4.6 pJ) + 6 DRAM fetches (640 pJ); 4 inputs read, 3 outputs
    # written in SRAM (5 pJ each) -- the table of harness.energy
    assert stats["energy_nj"] == pytest.approx((6 * 4.6 + 6 * 640 + 4 * 5 + 3 * 5) / 1000)


@pytest.mark.parametrize("zeros", [0, 3, 6, 12])
def test_flops_nonzero_scales_with_density_per_layer(zeros: int) -> None:
    first = torch.ones(4, 3).flatten()
    first[:zeros] = 0  # layer 1: 4x3 weights, ``zeros`` of them zero
    model = nn.Sequential(
        _linear(3, 4, first.view(4, 3), torch.zeros(4)),
        nn.ReLU(),
        _linear(4, 2, torch.ones(2, 4), torch.zeros(2)),  # dense
    )
    stats = model_stats(model, torch.ones(1, 3))
    assert stats["flops"] == 2 * 3 * 4 + 2 * 4 * 2
    density = (12 - zeros) / 12
    assert stats["flops_nonzero"] == pytest.approx(2 * 3 * 4 * density + 2 * 4 * 2)
    assert stats["sparsity"] == pytest.approx(zeros / (12 + 8))
    assert stats["params"] == 12 + 4 + 8 + 2
    assert stats["nonzero_params"] == (12 - zeros) + 8


def test_flops_nonzero_counts_nested_layers() -> None:
    inner = _linear(4, 4, torch.zeros(4, 4), torch.zeros(4))  # fully pruned, nested
    model = nn.Sequential(nn.Sequential(inner), _linear(4, 2, torch.ones(2, 4), torch.zeros(2)))
    stats = model_stats(model, torch.ones(1, 4))
    assert stats["flops"] == 2 * 4 * 4 + 2 * 4 * 2
    assert stats["flops_nonzero"] == pytest.approx(2 * 4 * 2)


def test_flops_nonzero_on_a_bare_linear_model() -> None:
    model = _linear(4, 3, torch.zeros(3, 4), torch.zeros(3))  # every weight zero
    stats = model_stats(model, torch.ones(1, 4))
    assert stats["sparsity"] == 1.0
    assert stats["flops"] == 2 * 4 * 3
    assert stats["flops_nonzero"] == 0.0


# --------------------------------------------------------------------------------------------
# latency and summaries


def test_measure_latency_percentiles() -> None:
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), nn.Linear(6, 3)]
    X = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    results = measure_latency(models, X, batch=12, warmup=1, repeats=7)
    assert len(results) == 2
    for lat in results:
        assert isinstance(lat, Latency)
        values = [lat.p50, lat.p95, lat.batch_p50, lat.batch_p95]
        assert all(math.isfinite(v) and v > 0 for v in values)
        assert lat.p95 >= lat.p50
        assert lat.batch_p95 >= lat.batch_p50
        assert lat.as_metrics() == {
            "latency_ms_p50": lat.p50,
            "latency_ms_p95": lat.p95,
            "latency_batch_ms_p50": lat.batch_p50,
            "latency_batch_ms_p95": lat.batch_p95,
        }
    assert not any(m.training for m in models)
