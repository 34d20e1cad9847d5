"""Metrics: classification quality (scikit-learn), model statistics, FLOPs, size and latency.

What the values are called, their direction and whether they depend on the machine is the metric
vocabulary of :mod:`harness.metricnames`; this module measures them.
"""

from __future__ import annotations

import io
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import inputs

if TYPE_CHECKING:
    from torch import nn


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision / recall / F1 (macro, micro, weighted, per class).

    The values are scikit-learn's (``accuracy_score``, ``balanced_accuracy_score`` and
    ``precision_recall_fscore_support`` with ``labels = range(n_classes)``, ``zero_division=0``:
    a class never predicted scores 0), computed here from one confusion matrix with scikit-learn's
    own arithmetic, in the same order, so they are equal to the last bit
    (``tests/test_metrics.py`` checks that against scikit-learn on random labels). Calling
    scikit-learn five times per model per fold validated the same labels five times over: about
    4 % of a small case's time.

    With ``C`` the confusion matrix (rows: true class), ``tp = diag(C)``, ``pred = C.sum(0)``,
    ``true = C.sum(1)``: precision ``tp / pred``, recall ``tp / true``, F1
    ``2 tp / (true + pred)`` (0 where a denominator is 0); macro: their mean; weighted: their
    average weighted by ``true``; micro: the same ratios of the sums; balanced accuracy: the mean
    recall over the classes that occur in ``y_true``.
    """
    true_idx = np.asarray(y_true).astype(np.int64, copy=False).ravel()
    pred_idx = np.asarray(y_pred).astype(np.int64, copy=False).ravel()
    if true_idx.size == 0:
        raise ValueError("classification_metrics: no samples")
    inside = (true_idx >= 0) & (true_idx < n_classes) & (pred_idx >= 0) & (pred_idx < n_classes)
    if not inside.all():
        bad = int(np.flatnonzero(~inside)[0])
        raise ValueError(
            f"classification_metrics: label {true_idx[bad]} / prediction {pred_idx[bad]} at "
            f"sample {bad} is outside 0..{n_classes - 1}"
        )
    C = np.bincount(true_idx * n_classes + pred_idx, minlength=n_classes * n_classes)
    C = C.reshape(n_classes, n_classes)
    tp, pred, true = np.diagonal(C).copy(), C.sum(axis=0), C.sum(axis=1)

    precision, recall, f1 = _prf(tp, pred, true)
    present = true > 0
    out = {
        "accuracy": float(np.average(true_idx == pred_idx)),
        "balanced_accuracy": float(np.mean(tp[present] / true[present])),
    }
    tp_all, pred_all, true_all = (np.reshape(np.sum(v), (1,)) for v in (tp, pred, true))
    averages = {
        "macro": [float(np.nanmean(v)) for v in (precision, recall, f1)],
        "micro": [float(np.nanmean(v)) for v in _prf(tp_all, pred_all, true_all)],
        "weighted": [float(np.average(v, weights=true)) for v in (precision, recall, f1)],
    }
    for avg, (p, r, f) in averages.items():
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = p, r, f
    for k in range(n_classes):
        out[f"precision.class_{k}"] = float(precision[k])
        out[f"recall.class_{k}"] = float(recall[k])
        out[f"f1.class_{k}"] = float(f1[k])
    return out


def _prf(
    tp: np.ndarray, pred: np.ndarray, true: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from true positives, predicted and true counts (F1 as
    scikit-learn's F-beta at beta = 1: ``(1 + b^2) tp / (b^2 true + pred)``)."""
    f1 = _ratio(2.0 * tp.astype(np.float64), 1.0 * true.astype(np.float64) + pred)
    return _ratio(tp, pred), _ratio(tp, true), f1


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` in float64, 0 where the denominator is 0 (scikit-learn's
    ``_prf_divide`` with ``zero_division=0``)."""
    mask = denominator == 0
    safe = np.asarray(denominator, dtype=np.float64).copy()
    safe[mask] = 1
    result = np.asarray(numerator, dtype=np.float64) / safe
    result[mask] = 0.0
    return result


def model_stats(model: nn.Module, example: inputs.Batch) -> dict[str, float]:
    """Parameters, non-zero parameters, weight sparsity, FLOPs (batch 1), serialized size and
    the estimated energy of one inference (``energy_nj``, the analytic model of harness.energy).

    ``sparsity`` is the fraction of zeros among the weights of linear and convolution layers.
    ``flops`` comes from ``torch.utils.flop_counter`` (dense arithmetic, what runs without sparse
    kernels); ``flops_nonzero`` scales each layer's FLOPs by the density of its weights.

    A deployed model (:class:`harness.deploy.Deployed`: ONNX Runtime, int8, 2:4) is counted on
    the torch model it runs; ``size_bytes`` is what the deployment stores (int8: the int8
    weights) -- :func:`harness.deploy.counted`.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.deploy import counted
    from harness.energy import estimate
    from harness.pruning.base import prunable_modules, weight

    model, stored = counted(model)
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    layers = prunable_modules(model)
    w_total = sum(weight(m).numel() for _, m in layers)
    w_zero = sum(weight(m).numel() - int(torch.count_nonzero(weight(m))) for _, m in layers)

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        inputs.forward(model, inputs.take(example, slice(0, 1)))
    flops = counter.get_total_flops()
    by_module = counter.get_flop_counts()
    saved = 0.0
    for name, m in layers:
        key = f"{type(model).__name__}.{name}" if name else type(model).__name__
        layer_flops = sum(by_module.get(key, {}).values())
        density = int(torch.count_nonzero(weight(m))) / weight(m).numel()
        saved += layer_flops * (1 - density)

    buf = io.BytesIO()
    torch.save(stored, buf)
    raw = buf.getvalue()
    return {
        "params": float(params),
        "nonzero_params": float(nonzero),
        "sparsity": w_zero / w_total if w_total else 0.0,
        "flops": float(flops),
        "flops_nonzero": float(flops - saved),
        "size_bytes": float(len(raw)),
        "size_gzip_bytes": float(len(zlib.compress(raw, 6))),
        "energy_nj": estimate(model, example).total_pj / 1000,
    }


@dataclass(frozen=True)
class Latency:
    """Latency percentiles in milliseconds at batch 1 and at the larger batch."""

    p50: float
    p95: float
    batch_p50: float
    batch_p95: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "latency_ms_p50": self.p50,
            "latency_ms_p95": self.p95,
            "latency_batch_ms_p50": self.batch_p50,
            "latency_batch_ms_p95": self.batch_p95,
        }


def measure_latency(
    models: list[nn.Module],
    X: inputs.Inputs,
    *,
    batch: int,
    warmup: int,
    repeats: int,
    device: str = "cpu",
) -> list[Latency]:
    """Time each model at batch 1 and at ``batch`` with interleaved repeats (same conditions).

    Models are timed in turn within each repeat so that drift of the machine affects all alike;
    ``torch``'s thread count is whatever the caller fixed. On a CUDA device each call is timed
    with CUDA events after a synchronization (kernels run asynchronously; a host clock would
    time the launch only); on MPS the host clock brackets a synchronization.
    """
    import torch

    xs = inputs.to_batch(X, device)
    one = inputs.take(xs, slice(0, 1))
    big = inputs.take(xs, (torch.arange(batch) % inputs.count(xs)).to(device))
    timer = _timer(device)
    results = []
    times: dict[tuple[int, int], list[float]] = {}
    with torch.inference_mode():
        for m in models:
            m.eval()
        for inp_i, inp in enumerate((one, big)):
            for _ in range(warmup):
                for m in models:
                    inputs.forward(m, inp)
            for _ in range(repeats):
                for mi, m in enumerate(models):
                    times.setdefault((mi, inp_i), []).append(timer(m, inp))
    for mi in range(len(models)):
        a, b = times[(mi, 0)], times[(mi, 1)]
        results.append(Latency(_pct(a, 50), _pct(a, 95), _pct(b, 50), _pct(b, 95)))
    return results


def _timer(device: str) -> Any:
    """``time(model, batch) -> milliseconds`` of one forward pass on ``device``."""
    import torch

    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_time(m: nn.Module, inp: Any) -> float:
            torch.cuda.synchronize(device)
            start.record()
            inputs.forward(m, inp)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return cuda_time
    from harness.devices import synchronize

    def host_time(m: nn.Module, inp: Any) -> float:
        t0 = time.perf_counter_ns()
        inputs.forward(m, inp)
        if device != "cpu":
            synchronize(device)
        return (time.perf_counter_ns() - t0) / 1e6

    return host_time


def _pct(values: list[float], q: int) -> float:
    return float(np.percentile(values, q))
