"""Run one case over k folds: train dense, prune (+ fine-tune per round), evaluate both."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import metrics as M
from harness.data import Dataset, Fold, load_dataset, make_folds
from harness.models import build
from harness.pruning import PruneContext, create
from harness.pruning.base import prunable_modules, schedule_targets, weight
from harness.spec import CaseSpec, SuiteSpec
from harness.training import fit, predict_logits


@dataclass(frozen=True)
class MetricSummary:
    """One metric over the folds."""

    folds: tuple[float, ...]
    mean: float
    std: float

    @classmethod
    def of(cls, values: list[float]) -> MetricSummary:
        mean, std = M.summarize(values)
        return cls(tuple(values), mean, std)

    def to_dict(self) -> dict[str, Any]:
        """The baseline / report form: ``{"folds": [...], "mean": x, "std": x}``."""
        return {"folds": list(self.folds), "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricSummary:
        return cls(tuple(float(v) for v in data["folds"]), float(data["mean"]), float(data["std"]))


@dataclass(frozen=True)
class CaseResult:
    """Everything measured for one case: per-fold metric maps and their summaries."""

    suite: str
    case: str
    spec_hash: str
    dataset_digest: str
    folds: tuple[dict[str, float], ...]
    metrics: dict[str, MetricSummary]
    seconds: float
    dataset: dict[str, Any] = field(default_factory=dict)  # name, digest, rows, features, classes
    class_names: tuple[str, ...] = ()
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # summed over folds
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # mean over folds
    pruned_states: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)

    def value(self, name: str) -> float | None:
        summary = self.metrics.get(name)
        return summary.mean if summary else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "case": self.case,
            "spec_hash": self.spec_hash,
            "dataset_digest": self.dataset_digest,
            "seconds": self.seconds,
            "folds": list(self.folds),
            "metrics": {k: v.to_dict() for k, v in sorted(self.metrics.items())},
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "confusion": self.confusion,
            "layer_sparsity": self.layer_sparsity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        return cls(
            suite=data["suite"],
            case=data["case"],
            spec_hash=data["spec_hash"],
            dataset_digest=data["dataset_digest"],
            seconds=data["seconds"],
            folds=tuple(data["folds"]),
            metrics={k: MetricSummary.from_dict(v) for k, v in data["metrics"].items()},
            dataset=data["dataset"],
            class_names=tuple(data["class_names"]),
            confusion=data["confusion"],
            layer_sparsity=data["layer_sparsity"],
        )


@dataclass(frozen=True)
class _Dense:
    state: dict[str, torch.Tensor]
    metrics: dict[str, float]  # deterministic dense metrics (no latency)
    confusion: np.ndarray


_DENSE_CACHE: dict[tuple[str, int], _Dense] = {}


@contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the duration of a case."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _new_model(suite: SuiteSpec, ds: Dataset, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build(suite.model, ds.n_features, ds.n_classes, suite.model_args)


def _evaluate(model: nn.Module, fold: Fold, ds: Dataset) -> tuple[dict[str, float], np.ndarray]:
    """Metrics on the validation fold and its confusion matrix."""
    from sklearn.metrics import confusion_matrix

    val_pred = predict_logits(model, fold.X_val).argmax(1)
    train_pred = predict_logits(model, fold.X_train).argmax(1)
    out = M.classification_metrics(fold.y_val, val_pred, ds.n_classes)
    out["train_accuracy"] = float((train_pred == fold.y_train).mean())
    out["train_val_gap"] = out["train_accuracy"] - out["accuracy"]
    out.update(M.model_stats(model, torch.as_tensor(fold.X_val[:1])))
    confusion = confusion_matrix(fold.y_val, val_pred, labels=list(range(ds.n_classes)))
    return out, confusion


def _layer_sparsity(dense: nn.Module, pruned: nn.Module) -> dict[str, float]:
    """Per prunable layer: fraction of the dense layer's weights that are gone (zeroed or
    removed), so unstructured and structured pruning read the same way."""
    sizes = {name: weight(m).numel() for name, m in prunable_modules(dense)}
    return {
        name: 1 - int(torch.count_nonzero(weight(m))) / sizes[name]
        for name, m in prunable_modules(pruned)
        if name in sizes
    }


def _dense(suite: SuiteSpec, ds: Dataset, fold: Fold) -> _Dense:
    key = (suite.dense_key(), fold.index)
    if key not in _DENSE_CACHE:
        seed = suite.seed * 1000 + fold.index
        model = _new_model(suite, ds, seed)
        fit(model, fold.X_train, fold.y_train, suite.train, seed=seed)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics, confusion = _evaluate(model, fold, ds)
        _DENSE_CACHE[key] = _Dense(state, metrics, confusion)
    return _DENSE_CACHE[key]


@dataclass(frozen=True, eq=False)
class FoldResult:
    """One fold: its metrics (``dense.*``, ``pruned.*``, same-run ratios) and what plots need."""

    metrics: dict[str, float]
    confusion_dense: np.ndarray
    confusion_pruned: np.ndarray
    layer_sparsity: dict[str, float]
    pruned: nn.Module


def run_fold(suite: SuiteSpec, case: CaseSpec, ds: Dataset, fold: Fold) -> FoldResult:
    """Prune and evaluate one fold (the dense model comes from the per-process cache)."""
    cached = _dense(suite, ds, fold)
    dense = _new_model(suite, ds, 0)
    dense.load_state_dict(cached.state)
    dense.eval()

    pruned = copy.deepcopy(dense)
    pruner = create(case.prune)
    ctx = PruneContext(
        torch.as_tensor(fold.X_train[:64]),
        fold.X_train,
        fold.y_train,
        suite.seed * 1000 + fold.index,
    )
    for round_i, target in enumerate(schedule_targets(case.prune)):
        pruned = pruner.step(pruned, target, ctx)
        if case.finetune is not None:
            fit(
                pruned,
                fold.X_train,
                fold.y_train,
                case.finetune,
                seed=suite.seed * 1000 + fold.index + 100 * (round_i + 1),
            )
    pruned = pruner.finalize(pruned)
    pruned.eval()

    pruned_metrics, pruned_confusion = _evaluate(pruned, fold, ds)
    lat = M.measure_latency(
        [dense, pruned],
        fold.X_val,
        batch=suite.latency.batch,
        warmup=suite.latency.warmup,
        repeats=suite.latency.repeats,
    )
    dense_metrics = {**cached.metrics, **lat[0].as_metrics()}
    pruned_metrics.update(lat[1].as_metrics())

    out = {f"dense.{k}": v for k, v in dense_metrics.items()}
    out.update({f"pruned.{k}": v for k, v in pruned_metrics.items()})
    out["speedup"] = lat[0].p50 / lat[1].p50
    out["speedup_batch"] = lat[0].batch_p50 / lat[1].batch_p50
    out["param_reduction"] = 1 - pruned_metrics["nonzero_params"] / dense_metrics["params"]
    out["flops_reduction"] = 1 - pruned_metrics["flops_nonzero"] / dense_metrics["flops"]
    return FoldResult(
        out, cached.confusion, pruned_confusion, _layer_sparsity(dense, pruned), pruned
    )


def run_case(suite: SuiteSpec, case: CaseSpec, *, keep_models: bool = False) -> CaseResult:
    """Run ``case`` over the suite's k folds; deterministic for the same spec, seeds and machine.

    With ``keep_models`` the pruned ``state_dict`` of every fold is kept in
    ``CaseResult.pruned_states`` (not serialized).
    """
    start = time.perf_counter()
    ds = load_dataset(suite.dataset, suite.dataset_args, suite.base_dir)
    folds: list[FoldResult] = []
    with _torch_settings(suite.threads):
        for fold in make_folds(ds, suite.folds, seed=suite.seed):
            folds.append(run_fold(suite, case, ds, fold))
    per_fold = [f.metrics for f in folds]
    summary = {n: MetricSummary.of([f[n] for f in per_fold]) for n in sorted(per_fold[0])}
    layers = {
        n: float(np.mean([f.layer_sparsity[n] for f in folds])) for n in folds[0].layer_sparsity
    }
    return CaseResult(
        suite=suite.name,
        case=case.name,
        spec_hash=suite.spec_hash(case),
        dataset_digest=ds.digest,
        folds=tuple(per_fold),
        metrics=summary,
        seconds=time.perf_counter() - start,
        dataset={
            "name": ds.name,
            "digest": ds.digest,
            "rows": len(ds.y),
            "features": ds.n_features,
            "classes": ds.n_classes,
        },
        class_names=ds.class_names,
        confusion={
            "dense": np.sum([f.confusion_dense for f in folds], axis=0).tolist(),
            "pruned": np.sum([f.confusion_pruned for f in folds], axis=0).tolist(),
        },
        layer_sparsity=layers,
        pruned_states=tuple(f.pruned.state_dict() for f in folds) if keep_models else (),
    )
