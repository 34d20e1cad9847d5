"""Metrics: classification quality (scikit-learn), model statistics, FLOPs, size and latency.

Every metric has a declared direction. Names are dotted: ``<model>.<metric>[.class_<k>]`` with
``<model>`` ``dense`` or ``pruned`` (``pruned.f1_macro``, ``dense.recall.class_1``), plus same-run
ratios at the top level (``speedup``, ``speedup_batch``, ``param_reduction``, ``flops_reduction``).
In gate rules, ``vs_dense.<metric>`` compares the pruned model with the dense model of the same run.
"""

from __future__ import annotations

import io
import re
import statistics
import time
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn


class Direction(Enum):
    HIGHER = "higher"
    LOWER = "lower"


class UnknownMetricError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


_QUALITY = (
    "accuracy",
    "balanced_accuracy",
    *(
        f"{m}_{avg}"
        for m in ("precision", "recall", "f1")
        for avg in ("macro", "micro", "weighted")
    ),
)
MODEL_METRICS: dict[str, Direction] = {
    **dict.fromkeys(_QUALITY, Direction.HIGHER),
    "train_accuracy": Direction.HIGHER,
    "train_val_gap": Direction.LOWER,
    "sparsity": Direction.HIGHER,
    "params": Direction.LOWER,
    "nonzero_params": Direction.LOWER,
    "flops": Direction.LOWER,
    "flops_nonzero": Direction.LOWER,
    "size_bytes": Direction.LOWER,
    "size_gzip_bytes": Direction.LOWER,
    "latency_ms_p50": Direction.LOWER,
    "latency_ms_p95": Direction.LOWER,
    "latency_batch_ms_p50": Direction.LOWER,
    "latency_batch_ms_p95": Direction.LOWER,
    "pie_accuracy": Direction.HIGHER,  # accuracy on the pruning-identified exemplars
    "energy_nj": Direction.LOWER,  # estimated energy of one inference (harness.energy)
    "energy_measured_uj": Direction.LOWER,  # RAPL, per sample at the latency batch (if present)
}
RUN_METRICS: dict[str, Direction] = {
    "speedup": Direction.HIGHER,
    "speedup_batch": Direction.HIGHER,
    "param_reduction": Direction.HIGHER,
    "flops_reduction": Direction.HIGHER,
    "energy_reduction": Direction.HIGHER,
    "pie_rate": Direction.LOWER,  # fraction of samples that are pruning-identified exemplars
    "pie_count": Direction.LOWER,
    "disagreement_rate": Direction.LOWER,  # dense and pruned predict differently
    "perturbed_disagreement_rate": Direction.LOWER,  # ... on perturbations near the samples
    "property_failures": Direction.LOWER,  # hypothesis property checks of the pruned model
}
EDGE_METRICS = ("accuracy", "f1_macro")  # measured on every edge-case set
# Metrics whose absolute values depend on the machine: compared against a baseline only when the
# baseline was measured on the same hardware.
HARDWARE_BOUND = frozenset(k for k in MODEL_METRICS if k.startswith("latency")) | {
    "energy_measured_uj",
    "speedup",
    "speedup_batch",
}

_PER_CLASS_RE = re.compile(r"^(precision|recall|f1)\.class_(\d+|\*)$")
_EDGE_RE = re.compile(r"^edge\.[a-z0-9_.]+\.(" + "|".join(EDGE_METRICS) + ")$")


@dataclass(frozen=True)
class MetricRef:
    """A parsed metric name: ``model`` is "dense", "pruned" or "" (a same-run ratio)."""

    model: str
    base: str
    direction: Direction

    @property
    def name(self) -> str:
        return f"{self.model}.{self.base}" if self.model else self.base

    @property
    def hardware_bound(self) -> bool:
        return self.base in HARDWARE_BOUND


def parse_metric(name: str) -> MetricRef:
    """Parse a metric name; raises :class:`UnknownMetricError` for names nobody produces."""
    if name in RUN_METRICS:
        return MetricRef("", name, RUN_METRICS[name])
    model, _, base = name.partition(".")
    if model in ("dense", "pruned"):
        if base in MODEL_METRICS:
            return MetricRef(model, base, MODEL_METRICS[base])
        if _PER_CLASS_RE.match(base):
            return MetricRef(model, base, Direction.HIGHER)
        if _EDGE_RE.match(base):
            return MetricRef(model, base, Direction.HIGHER)
    raise UnknownMetricError(
        f"{name!r} is not a metric; use dense.<m>, pruned.<m> or vs_dense.<m> with <m> one of "
        f"{', '.join(MODEL_METRICS)}, <precision|recall|f1>.class_<k|*>, "
        f"edge.<set>.<{'|'.join(EDGE_METRICS)}>; or {', '.join(RUN_METRICS)}"
    )


def rule_target(key: str) -> tuple[MetricRef, bool]:
    """Parse a gate key: the metric it checks and whether it compares with the dense model."""
    if key.startswith("vs_dense."):
        ref = parse_metric("pruned." + key.removeprefix("vs_dense."))
        return ref, True
    return parse_metric(key), False


def direction(name: str) -> Direction:
    return parse_metric(name).direction


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision / recall / F1 (macro, micro, weighted, per class).

    Computed by scikit-learn with ``zero_division=0`` (a class never predicted scores 0).
    """
    from sklearn import metrics as skm

    labels = list(range(n_classes))
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
    }
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = (
            float(p),
            float(r),
            float(f),
        )
    p, r, f, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    for k in labels:
        out[f"precision.class_{k}"] = float(p[k])
        out[f"recall.class_{k}"] = float(r[k])
        out[f"f1.class_{k}"] = float(f[k])
    return out


def model_stats(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """Parameters, non-zero parameters, weight sparsity, FLOPs (batch 1), serialized size and
    the estimated energy of one inference (``energy_nj``, the analytic model of harness.energy).

    ``sparsity`` is the fraction of zeros among the weights of linear and convolution layers.
    ``flops`` comes from ``torch.utils.flop_counter`` (dense arithmetic, what runs without sparse
    kernels); ``flops_nonzero`` scales each layer's FLOPs by the density of its weights.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.energy import estimate
    from harness.pruning.base import prunable_modules, weight

    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    layers = prunable_modules(model)
    w_total = sum(weight(m).numel() for _, m in layers)
    w_zero = sum(weight(m).numel() - int(torch.count_nonzero(weight(m))) for _, m in layers)

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(example[:1])
    flops = counter.get_total_flops()
    by_module = counter.get_flop_counts()
    saved = 0.0
    for name, m in layers:
        key = f"{type(model).__name__}.{name}" if name else type(model).__name__
        layer_flops = sum(by_module.get(key, {}).values())
        density = int(torch.count_nonzero(weight(m))) / weight(m).numel()
        saved += layer_flops * (1 - density)

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
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
    models: list[nn.Module], X: np.ndarray, *, batch: int, warmup: int, repeats: int
) -> list[Latency]:
    """Time each model at batch 1 and at ``batch`` with interleaved repeats (same conditions).

    Models are timed in turn within each repeat so that drift of the machine affects all alike;
    ``torch``'s thread count is whatever the caller fixed.
    """
    import torch

    xs = torch.as_tensor(X)
    one = xs[:1]
    big = xs[torch.arange(batch) % len(xs)]
    results = []
    times: dict[tuple[int, int], list[float]] = {}
    with torch.inference_mode():
        for m in models:
            m.eval()
        for inp_i, inp in enumerate((one, big)):
            for _ in range(warmup):
                for m in models:
                    m(inp)
            for _ in range(repeats):
                for mi, m in enumerate(models):
                    t0 = time.perf_counter_ns()
                    m(inp)
                    times.setdefault((mi, inp_i), []).append((time.perf_counter_ns() - t0) / 1e6)
    for mi in range(len(models)):
        a, b = times[(mi, 0)], times[(mi, 1)]
        results.append(Latency(_pct(a, 50), _pct(a, 95), _pct(b, 50), _pct(b, 95)))
    return results


def _pct(values: list[float], q: int) -> float:
    return float(np.percentile(values, q))


def summarize(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = float(statistics.fmean(values))
    std = float(statistics.stdev(values)) if len(values) > 1 else 0.0
    return mean, std
