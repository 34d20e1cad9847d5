"""The one metric vocabulary: every metric name is built, parsed and formatted here.

Names are dotted. A model metric is ``<model>.<metric>`` with ``<model>`` ``dense`` or ``pruned``
(``pruned.f1_macro``), per class ``<model>.<precision|recall|f1>.class_<k>``, on an edge-case set
``<model>.edge.<set>.<accuracy|f1_macro>`` (set names may contain dots: ``gaussian_noise_0.1``;
the metric is the last component); on the suite's fixed test split ``<model>.test.<metric>`` (a
quality metric, or per class ``<model>.test.<precision|recall|f1>.class_<k>``); same-run
ratios have no model (``speedup``). In gate rules,
``vs_dense.<metric>`` compares the pruned model with the dense model of the same run, and
``class_*`` stands for every class.

The catalogue (:data:`MODEL_METRICS`, :data:`RUN_METRICS`, :data:`HARDWARE_BOUND`,
:data:`HEADLINE`) is what the gate, reports, plugin, tracking and baselines all read. This module
imports nothing of the ML stack.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

MODELS = ("dense", "pruned")
VS_DENSE = "vs_dense"
ALL_CLASSES = "*"


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
    # log(speedup_batch) / log(dense / pruned FLOPs): 1 where latency fell as much as the FLOPs
    # did, 0 where it did not move (speedup_vs_flops below)
    "speedup_vs_flops": Direction.HIGHER,
    "param_reduction": Direction.HIGHER,
    "flops_reduction": Direction.HIGHER,
    "energy_reduction": Direction.HIGHER,
    "pie_rate": Direction.LOWER,  # fraction of samples that are pruning-identified exemplars
    "pie_count": Direction.LOWER,
    "disagreement_rate": Direction.LOWER,  # dense and pruned predict differently
    "perturbed_disagreement_rate": Direction.LOWER,  # ... on perturbations near the samples
    "property_failures": Direction.LOWER,  # hypothesis property checks of the pruned model
    # deploy = "onnx" / "int8" / "2:4": the runtime's logits against the torch model's
    "deploy_max_abs_diff": Direction.LOWER,  # max |z_runtime - z_torch| (validation inputs)
    "deploy_rel_diff": Direction.LOWER,  # ... / (1 + max |z_torch|); harness.deploy.DEPLOY_RTOL
    "deploy_accelerated_layers": Direction.HIGHER,  # linear layers in the runtime's kernels
}
PER_CLASS_METRICS = ("precision", "recall", "f1")
EDGE_METRICS = ("accuracy", "f1_macro")  # measured on every edge-case set
# Metrics whose absolute values depend on the machine: compared against a baseline only when the
# baseline was measured on the same hardware.
HARDWARE_BOUND = frozenset(k for k in MODEL_METRICS if k.startswith("latency")) | {
    "energy_measured_uj",
    "speedup",
    "speedup_batch",
    "speedup_vs_flops",
    # the runtime's kernels (MLAS's, per instruction set) set the last bits
    "deploy_max_abs_diff",
    "deploy_rel_diff",
}
# Metrics that are part of the case run itself, not of a model: no per-fold values.
CASE_LEVEL = ("pie_rate", "pie_count")
EDGE_SET_NAME = re.compile(r"^[a-z0-9_.]+$")

_CLASS_RE = re.compile(r"^(precision|recall|f1)\.class_(\d+|\*)$")


@dataclass(frozen=True)
class MetricRef:
    """One metric, parsed. ``model`` is "dense", "pruned" or "" (a same-run ratio); ``metric``
    the measure (``f1_macro``, ``recall``, ``speedup``); ``cls`` the class index of a per-class
    metric (``"*"`` in a wildcard rule), ``edge`` the edge-case set it was measured on."""

    model: str
    metric: str
    cls: int | str | None = None
    edge: str | None = None
    test: bool = False  # measured on the suite's fixed test split

    # -- building

    @classmethod
    def of(cls, model: str, metric: str) -> MetricRef:
        """A model metric (``of("pruned", "f1_macro")``) or, with model "", a run metric."""
        return _checked(cls(model, metric))

    @classmethod
    def run(cls, metric: str) -> MetricRef:
        return _checked(cls("", metric))

    @classmethod
    def per_class(cls, model: str, metric: str, k: int | str) -> MetricRef:
        return _checked(cls(model, metric, cls=k))

    @classmethod
    def on_edge(cls, model: str, edge: str, metric: str) -> MetricRef:
        return _checked(cls(model, metric, edge=edge))

    @classmethod
    def on_test(cls, model: str, metric: str, k: int | None = None) -> MetricRef:
        """A quality metric on the fixed test split (per class with ``k``)."""
        return _checked(cls(model, metric, cls=k, test=True))

    def with_model(self, model: str) -> MetricRef:
        """The same metric of the other model (``pruned.x`` -> ``dense.x``)."""
        return MetricRef(model, self.metric, self.cls, self.edge, self.test)

    def with_class(self, k: int) -> MetricRef:
        return MetricRef(self.model, self.metric, k, self.edge, self.test)

    # -- formatting

    @property
    def base(self) -> str:
        """The name without its model (``f1_macro``, ``recall.class_1``, ``edge.blur.accuracy``)."""
        if self.edge is not None:
            return f"edge.{self.edge}.{self.metric}"
        split = "test." if self.test else ""
        if self.cls is not None:
            return f"{split}{self.metric}.class_{self.cls}"
        return f"{split}{self.metric}"

    @property
    def name(self) -> str:
        return f"{self.model}.{self.base}" if self.model else self.base

    def __str__(self) -> str:
        return self.name

    @property
    def vs_dense_key(self) -> str:
        """The gate key comparing this (pruned) metric with the dense model's."""
        return f"{VS_DENSE}.{self.base}"

    # -- catalogue

    @property
    def direction(self) -> Direction:
        if self.edge is not None or self.cls is not None or self.test:
            return Direction.HIGHER
        return (MODEL_METRICS if self.model else RUN_METRICS)[self.metric]

    @property
    def hardware_bound(self) -> bool:
        return (
            self.edge is None
            and self.cls is None
            and not self.test
            and self.metric in HARDWARE_BOUND
        )

    @property
    def wildcard(self) -> bool:
        return self.cls == ALL_CLASSES


def _checked(ref: MetricRef) -> MetricRef:
    parsed = parse(ref.name)  # one grammar: what is built parses back to itself
    if parsed != ref:
        raise UnknownMetricError(f"{ref.name!r} is not a metric name")
    return ref


def parse(name: str) -> MetricRef:
    """Parse a metric name; raises :class:`UnknownMetricError` for names nobody produces."""
    if not isinstance(name, str):
        raise UnknownMetricError(f"{name!r} is not a metric name")
    if name in RUN_METRICS:
        return MetricRef("", name)
    model, _, base = name.partition(".")
    if model in MODELS:
        if base in MODEL_METRICS:
            return MetricRef(model, base)
        if match := _CLASS_RE.match(base):
            k = match.group(2)
            return MetricRef(model, match.group(1), cls=k if k == ALL_CLASSES else int(k))
        if base.startswith("test."):
            rest = base.removeprefix("test.")
            if rest in _QUALITY:
                return MetricRef(model, rest, test=True)
            if match := _CLASS_RE.match(rest):
                k = match.group(2)
                return MetricRef(
                    model, match.group(1), cls=k if k == ALL_CLASSES else int(k), test=True
                )
        if base.startswith("edge."):
            edge, _, metric = base.removeprefix("edge.").rpartition(".")
            if metric in EDGE_METRICS and edge and EDGE_SET_NAME.match(edge):
                return MetricRef(model, metric, edge=edge)
    raise UnknownMetricError(
        f"{name!r} is not a metric; use dense.<m>, pruned.<m> or vs_dense.<m> with <m> one of "
        f"{', '.join(MODEL_METRICS)}, <precision|recall|f1>.class_<k|*>, "
        f"edge.<set>.<{'|'.join(EDGE_METRICS)}>, test.<quality metric or per-class metric>; "
        f"or {', '.join(RUN_METRICS)}"
    )


def rule_target(key: str) -> tuple[MetricRef, bool]:
    """Parse a gate key: the metric it checks and whether it compares with the dense model."""
    if isinstance(key, str) and key.startswith(VS_DENSE + "."):
        return parse("pruned." + key.removeprefix(VS_DENSE + ".")), True
    return parse(key), False


def direction(name: str) -> Direction:
    return parse(name).direction


def is_known(name: str) -> bool:
    try:
        parse(name)
    except UnknownMetricError:
        return False
    return True


def model_names(model: str, values: dict[str, float]) -> dict[str, float]:
    """``{metric: v}`` of one model as full names (``{"dense.accuracy": v, ...}``); keys are
    model metric bases (``accuracy``, ``recall.class_0``)."""
    return {f"{model}.{base}": v for base, v in values.items()}


# What faces show (one catalogue; the gate's rules may name any metric):
KEY_METRIC = "pruned.f1_macro"  # the terminal table's and job summary's quality column
# `prune-harness compare`'s default metrics
HEADLINE: tuple[str, ...] = (
    "pruned.f1_macro",
    "pruned.accuracy",
    "dense.f1_macro",
    "pruned.sparsity",
    "param_reduction",
    "flops_reduction",
    "speedup_batch",
)
# junit XML properties of every case item
PROPERTIES: tuple[str, ...] = (
    "pruned.f1_macro",
    "dense.f1_macro",
    "pruned.sparsity",
    "speedup_batch",
)
# a case report's dense-vs-pruned table (model metrics) and its same-run rows
CASE_MODEL_METRICS: tuple[str, ...] = (
    "accuracy",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "train_val_gap",
    "params",
    "nonzero_params",
    "sparsity",
    "flops",
    "flops_nonzero",
    "size_gzip_bytes",
    "latency_ms_p50",
    "latency_batch_ms_p50",
)
CASE_RUN_METRICS: tuple[str, ...] = (
    "speedup",
    "speedup_batch",
    "speedup_vs_flops",
    "param_reduction",
    "flops_reduction",
    "disagreement_rate",
    "perturbed_disagreement_rate",
    "property_failures",
    "pie_rate",
)


def speedup_vs_flops(speedup: float, flops_pruned: float, flops_dense: float) -> float:
    """How much of the FLOPs reduction shows up as speed, as the exponent ``e`` of
    ``speedup = (flops_dense / flops_pruned) ** e``: ``log(speedup) / log(flops factor)``.

    1 where the latency fell as much as the FLOPs did, 0 where it did not move, below 0 where
    the pruned model is slower, above 1 where it fell more. On a log scale because a latency
    that did not move must read the same whatever the FLOPs factor: the plain ratio
    ``speedup / factor`` puts it at ``1 - flops_reduction``, so any fixed bound sits on the
    latency noise of some sparsity (at 50 %, 1.00x against 2x fewer FLOPs reads 0.50, flagged
    on one run and not the next by a bound of 0.5); here it reads 0 +- noise / log(factor), far
    from the flag's 0.5 wherever the flag applies. ``speedup`` is the
    runner's ``speedup_batch`` (p50 latency dense / pruned at the latency batch, same run): at
    batch 1 the latency of a small model is per-call overhead that no pruning removes, so even
    structured pruning that really runs fewer operations reads as ~1x there (docs/results.md:
    the digits MLP at 75 % of its neurons removed, 4x fewer FLOPs: 1.15x at batch 1, 2.5x at
    batch 256). Without a FLOPs reduction (``flops_pruned >= flops_dense``, or a dense model
    without counted FLOPs) it is 1.0, neutral: there is no saving to compare with; a model with
    zero FLOPs left (an infinite factor) gives 0.0.
    """
    if flops_dense <= 0 or flops_pruned >= flops_dense:
        return 1.0
    if flops_pruned <= 0 or not speedup > 0 or not math.isfinite(speedup):
        return 0.0
    return float(math.log(speedup) / math.log(flops_dense / flops_pruned))
