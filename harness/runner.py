"""Run one case over k folds: get the dense model (trained, or from the cache), prune it
(+ fine-tune per round), measure both. ``run_case`` is the entry point; the dense models come
from a :class:`DenseCache` the caller owns (one per session), keyed by content."""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import _util, devices, inputs, numerics
from harness import metrics as M
from harness._util import HarnessError
from harness.cache import DiskCache, Entry
from harness.data import Dataset, Fold, load_dataset, make_folds
from harness.data.split import TestSplit, bootstrap_mean_ci, split_test
from harness.executors import Executor, Resources, SerialExecutor
from harness.metricnames import MODELS, MetricRef, model_names, speedup_vs_flops
from harness.models import (
    build,
    checkpoint_digest,
    checkpoint_path,
    load_checkpoint,
    probe,
    source_digest,
)
from harness.power import measure_energy, rapl_counter
from harness.pruning import PruneContext, create
from harness.pruning.base import prunable_modules, schedule_targets, weight
from harness.results import CaseResult, MetricSummary
from harness.spec import CaseSpec, LatencySpec, SpecError, SuiteSpec, TrainSpec
from harness.training import TrainingError, fit, predict_logits

__all__ = [
    "CaseError",
    "CaseResult",
    "DenseCache",
    "FoldJob",
    "FoldResult",
    "MetricSummary",
    "fold_job",
    "run_case",
]


@dataclass(frozen=True, eq=False)
class _Evaluation:
    """A model on one validation fold: metrics, confusion matrix, predictions and logits."""

    metrics: dict[str, float]
    confusion: np.ndarray
    pred: np.ndarray
    logits: np.ndarray


@dataclass(frozen=True, eq=False)
class _Dense:
    state: dict[str, torch.Tensor]
    evaluation: _Evaluation  # deterministic dense metrics (no latency)

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.state.values())

    def to_entry(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and meta of a disk-cache entry (:class:`harness.cache.DiskCache`)."""
        ev = self.evaluation
        tensors = {f"state/{k}": v.detach().cpu() for k, v in self.state.items()}
        for name in ("confusion", "pred", "logits"):
            tensors[f"eval/{name}"] = torch.from_numpy(np.ascontiguousarray(getattr(ev, name)))
        return tensors, {"metrics": ev.metrics}

    @classmethod
    def from_entry(cls, entry: Entry) -> _Dense:
        t = entry.tensors
        state = {k.removeprefix("state/"): v for k, v in t.items() if k.startswith("state/")}
        evaluation = _Evaluation(
            {k: float(v) for k, v in entry.meta["metrics"].items()},
            t["eval/confusion"].numpy(),
            t["eval/pred"].numpy(),
            t["eval/logits"].numpy(),
        )
        return cls(state, evaluation)


DENSE_KEY = ("dense", "data", "model_source", "checkpoint", "numerics", "torch", "fold", "device")


class DenseCache:
    """Trained dense models, keyed by content: the dense spec, the data's digest (not its name:
    two files called d.npz in two suites are two datasets), the model factory's source, the
    numerics mode, the torch version, the fold and the device. Least recently used entries are
    dropped beyond ``max_bytes`` of weights. A session owns one and passes it to every case;
    without one, each :func:`run_case` call trains its own dense models.

    With ``disk`` (a :class:`harness.cache.DiskCache`) the models also go to disk, keyed by the
    same content plus the harness's code and the CPU's instruction-set level: other processes
    (xdist workers, executor workers) and later sessions load them instead of training. A
    process that misses on disk takes the entry's lock first, so two processes that need the
    same dense model train it once. ``results`` (opt-in) also keeps every fold's results on
    disk (:func:`fold_job`), keyed by everything that determines them and the hardware."""

    def __init__(
        self,
        max_bytes: int = 2 * 1024**3,
        *,
        disk: DiskCache | None = None,
        results: bool = False,
    ) -> None:
        self.max_bytes = max_bytes
        self.disk, self.results = disk, results and disk is not None
        self._entries: dict[tuple[str, ...], _Dense] = {}
        self.hits = self.misses = self.disk_hits = self.trained = 0

    @staticmethod
    def key(suite: SuiteSpec, ds: Dataset, fold: Fold) -> tuple[str, ...]:
        checkpoint = _checkpoint_digest(suite) if suite.checkpoint is not None else ""
        return (
            suite.dense_key(),
            ds.digest,
            source_digest(suite.model),
            checkpoint,
            numerics.current().mode,
            torch.__version__,
            str(fold.index),
            *([_device(suite)] if _device(suite) != "cpu" else []),
        )

    def get(self, key: tuple[str, ...]) -> _Dense | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries[key] = entry  # most recently used last
        return entry

    def put(self, key: tuple[str, ...], entry: _Dense) -> None:
        self._entries[key] = entry
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            del self._entries[next(iter(self._entries))]

    def dense(self, key: tuple[str, ...], train: Callable[[], _Dense]) -> _Dense:
        """The dense model of ``key``: from memory, from disk, or ``train()``-ed (and stored)."""
        if (entry := self.get(key)) is not None:
            return entry
        if self.disk is None:
            entry = train()
            self.trained += 1
            self.put(key, entry)
            return entry
        entry = self._from_disk(key, train, wait=True)
        assert entry is not None
        return entry

    def claim(self, key: tuple[str, ...], train: Callable[[], _Dense]) -> bool:
        """:meth:`dense` unless another process is training that model now (its disk entry is
        locked): then nothing, and False. A process that finds its next model being trained
        elsewhere trains another one meanwhile instead of waiting (:func:`_claim_dense`)."""
        if key in self._entries:  # not counted: the fold's own lookup counts
            return True
        if self.disk is None:
            self.dense(key, train)
            return True
        return self._from_disk(key, train, wait=False) is not None

    def _from_disk(
        self, key: tuple[str, ...], train: Callable[[], _Dense], *, wait: bool
    ) -> _Dense | None:
        assert self.disk is not None
        disk_key = _disk_key(key)
        # one process trains, the others wait and load (or, not waiting, go on to other folds)
        with self.disk.lock("dense", disk_key, wait=wait) as free:
            if not free:
                return None
            if (stored := self.disk.get("dense", disk_key)) is not None:
                entry = _Dense.from_entry(stored)
                self.disk_hits += 1
            else:
                entry = train()
                self.trained += 1
                self.disk.put("dense", disk_key, *entry.to_entry())
        self.put(key, entry)
        return entry

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:  # an empty cache is still a cache (`cache or ...` keeps it)
        return True


def _machine_key() -> dict[str, str]:
    """What makes two machines compute the same bits: the architecture and instruction-set
    level, and in native mode the CPU itself."""
    import platform

    from harness.cache import code_digest
    from harness.provenance import cpu_name

    state = numerics.current()
    return {
        "code": code_digest(),
        "machine": platform.machine(),
        "level": state.level,
        **({"cpu": cpu_name()} if state.mode == "native" else {}),
    }


def _disk_key(key: tuple[str, ...]) -> dict[str, str]:
    names = DENSE_KEY if len(key) == len(DENSE_KEY) else DENSE_KEY[:-1]
    return {**dict(zip(names, key, strict=True)), **_machine_key()}


@contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the duration of a case."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    _deterministic(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        _deterministic(old_det, warn_only=old_warn)


def _deterministic(mode: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=...)`` without its first-call cost.

    torch's function also sets Inductor's ``deterministic`` flag, importing
    ``torch._inductor.config`` to do so: 1-4 s on the first call of every process (each xdist
    and executor worker), for a compiler the harness never runs. The eager kernels' flag is set
    here directly; Inductor's only when the user's code has already imported it (a model that
    calls ``torch.compile``), as torch would.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # not in this torch: the public call
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        return
    setter(mode, warn_only=warn_only)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode  # type: ignore[attr-defined]


class CaseError(HarnessError):
    """A case cannot be measured (the model's outputs are unusable, training diverged); one
    line naming the model, the fold and the problem."""


@functools.cache
def _resolved_device(text: str) -> str:
    return devices.resolve(text)


def _device(suite: SuiteSpec) -> str:
    """The torch device the suite runs on (``device = "auto"`` resolved once per process)."""
    return _resolved_device(suite.device)


def _new_model(suite: SuiteSpec, ds: Dataset, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build(suite.model, ds.spec, ds.n_classes, suite.model_args).to(_device(suite))


def _evaluate(
    model: nn.Module, fold: Fold, ds: Dataset, what: str, device: str = "cpu"
) -> _Evaluation:
    from sklearn.metrics import confusion_matrix

    logits = predict_logits(model, fold.X_val, device=device)
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).any(axis=1).sum())
        raise CaseError(
            f"fold {fold.index}: the {what} model returns NaN or infinite logits for {bad} of "
            f"{len(logits)} validation samples"
        )
    val_pred = logits.argmax(1)
    train_pred = predict_logits(model, fold.X_train, device=device).argmax(1)
    out = M.classification_metrics(fold.y_val, val_pred, ds.n_classes)
    out["train_accuracy"] = float((train_pred == fold.y_train).mean())
    out["train_val_gap"] = out["train_accuracy"] - out["accuracy"]
    out.update(M.model_stats(model, inputs.to_batch(inputs.take(fold.X_val, slice(0, 1)), device)))
    confusion = confusion_matrix(fold.y_val, val_pred, labels=list(range(ds.n_classes)))
    return _Evaluation(out, confusion, val_pred, logits)


def _layer_sparsity(dense: nn.Module, pruned: nn.Module) -> dict[str, float]:
    """Per prunable layer: fraction of the dense layer's weights that are gone (zeroed or
    removed), so unstructured and structured pruning read the same way."""
    sizes = {name: weight(m).numel() for name, m in prunable_modules(dense)}
    return {
        name: 1 - int(torch.count_nonzero(weight(m))) / sizes[name]
        for name, m in prunable_modules(pruned)
        if name in sizes
    }


def _margin(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logit of the true class minus the best other logit (negative: misclassified)."""
    true = logits[np.arange(len(y)), y]
    other = logits.copy()
    other[np.arange(len(y)), y] = -np.inf
    return np.asarray(true - other.max(1))


def _dense(suite: SuiteSpec, ds: Dataset, fold: Fold, cache: DenseCache) -> _Dense:
    return cache.dense(cache.key(suite, ds, fold), lambda: _train_dense(suite, ds, fold))


def _train_dense(suite: SuiteSpec, ds: Dataset, fold: Fold) -> _Dense:
    seed = suite.seed * 1000 + fold.index
    model = _new_model(suite, ds, seed)
    if suite.checkpoint is not None:  # the user's trained weights
        load_checkpoint(model, checkpoint_path(suite.checkpoint, suite.base_dir))
    device = _device(suite)
    probe(model, suite.model, inputs.take(fold.X_train, slice(0, 2)), ds.n_classes, device=device)
    try:
        _fit(model, fold.X_train, fold.y_train, suite.train, seed=seed, device=device)
    except TrainingError as err:
        raise CaseError(f"fold {fold.index}: dense {err}") from None
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return _Dense(state, _evaluate(model, fold, ds, "dense", device))


def _edge_metrics(
    suite: SuiteSpec,
    case: CaseSpec,
    ds: Dataset,
    fold: Fold,
    dense_eval: _Evaluation,
    models: dict[str, nn.Module],
) -> dict[str, float]:
    """``<model>.edge.<set>.<metric>`` for every edge-case set of the case."""
    if not suite.edge_sets(case):
        return {}
    from sklearn.metrics import accuracy_score, f1_score

    from harness.data.edge import make_edge_set
    from harness.edgesets import parse_edge

    out: dict[str, float] = {}
    margin = _margin(dense_eval.logits, fold.y_val)
    for text in suite.edge_sets(case):
        edge = parse_edge(text)
        X, y = make_edge_set(
            edge,
            fold,
            ds,
            dense_margin=margin,
            seed=suite.seed * 1000 + fold.index,
            base=suite.base_dir,
        )
        present = np.unique(y)  # slices hold some classes only: average over those
        for model_name, model in models.items():
            pred = predict_logits(model, X, device=_device(suite)).argmax(1)
            out[MetricRef.on_edge(model_name, edge.name, "accuracy").name] = float(
                accuracy_score(y, pred)
            )
            out[MetricRef.on_edge(model_name, edge.name, "f1_macro").name] = float(
                f1_score(y, pred, labels=present, average="macro", zero_division=0)
            )
    return out


@dataclass(frozen=True, eq=False)
class FoldResult:
    """One fold: its metrics (``dense.*``, ``pruned.*``, same-run ratios), the per-sample
    predictions (for exemplars and McNemar) and what plots need."""

    metrics: dict[str, float]
    val_idx: np.ndarray
    dense_pred: np.ndarray
    pruned_pred: np.ndarray
    confusion_dense: np.ndarray
    confusion_pruned: np.ndarray
    layer_sparsity: dict[str, float]
    pruned: nn.Module | None  # in the process that pruned it; None once sent back by a worker
    findings: list[dict[str, Any]] = field(default_factory=list)
    test_pred: dict[str, np.ndarray] = field(default_factory=dict)  # per model, on the test split
    pruned_state: dict[str, torch.Tensor] | None = None  # kept for ``keep_models`` (CPU tensors)


def run_fold(
    suite: SuiteSpec,
    case: CaseSpec,
    ds: Dataset,
    fold: Fold,
    *,
    cache: DenseCache | None = None,
    test: TestSplit | None = None,
) -> FoldResult:
    """Prune and measure one fold (the dense model from ``cache``, trained on a miss), and both
    models on the fixed ``test`` split when there is one."""
    cached = _dense(suite, ds, fold, cache if cache is not None else DenseCache())
    dense = _new_model(suite, ds, 0)
    dense.load_state_dict(cached.state)
    dense.eval()
    pruned = prune_fold(suite, case, ds, fold, dense)
    result = measure_fold(suite, case, ds, fold, dense, cached.evaluation, pruned)
    if test is None:
        return result
    X_test = fold.scale(test.X)  # with the fold's training scaler, like its validation data
    for model_name, model in (("dense", dense), ("pruned", pruned)):
        logits = predict_logits(model, X_test, device=_device(suite))
        if not np.isfinite(logits).all():
            raise CaseError(
                f"fold {fold.index}: the {model_name} model returns NaN or infinite logits on the "
                "test split"
            )
        pred = logits.argmax(1)
        result.test_pred[model_name] = pred
        quality = M.classification_metrics(test.y, pred, ds.n_classes)
        for base, value in quality.items():
            result.metrics[f"{model_name}.test.{base}"] = value
    return result


def prune_fold(
    suite: SuiteSpec, case: CaseSpec, ds: Dataset, fold: Fold, dense: nn.Module
) -> nn.Module:
    """The pruned model of one fold: the case's method on its schedule (or at initialization),
    fine-tuned after each round, made permanent, and deployed (``deploy = "csr"``)."""
    seed = suite.seed * 1000 + fold.index
    device = _device(suite)
    pruner = create(case.prune)
    ctx = PruneContext(
        inputs.to_batch(inputs.take(fold.X_train, slice(0, 64)), device),
        fold.X_train,
        fold.y_train,
        seed,
        train=suite.train,
        teacher=dense,
        model_args=suite.model_args,
        build=lambda args: build(
            suite.model, ds.spec, ds.n_classes, {**suite.model_args, **args}
        ).to(device),
        device=device,
    )
    if pruner.at_init:
        # prune the dense model's initialization, then train the sparse network (masks held)
        pruned = pruner.step(_new_model(suite, ds, seed), case.prune.sparsity, ctx)
        _fit(pruned, fold.X_train, fold.y_train, suite.train, seed=seed, device=device)
        targets: list[float] = []
    else:
        pruned = copy.deepcopy(dense)
        targets = schedule_targets(case.prune)
    for round_i, target in enumerate(targets):
        pruned = pruner.step(pruned, target, ctx)
        if case.finetune is not None:
            _finetune(pruned, case, fold, dense, seed=seed + 100 * (round_i + 1), device=device)
    if pruner.at_init and case.finetune is not None:
        _finetune(pruned, case, fold, dense, seed=seed + 100, device=device)
    pruned = pruner.finalize(pruned)
    if case.deploy is not None:
        pruned = _deploy(suite, case, fold, pruned, device)
    pruned.eval()
    return pruned


def _deploy(suite: SuiteSpec, case: CaseSpec, fold: Fold, pruned: nn.Module, device: str) -> Any:
    """``pruned`` as ``case.deploy`` ships it (:func:`harness.deploy.deploy`); a deployment that
    cannot run here is the case's one-line error at ``case[NAME].deploy``."""
    from harness.deploy import DeployError, deploy

    assert case.deploy is not None
    example = inputs.to_batch(inputs.take(fold.X_train, slice(0, 2)), device)
    try:
        return deploy(
            case.deploy,
            pruned,
            example,
            threads=suite.threads,
            device=device,
            pattern=case.prune.pattern,
        )
    except DeployError as err:
        raise SpecError(suite.source, f"case[{case.name}].deploy", case.deploy, str(err)) from None


def _deployed_dense(suite: SuiteSpec, case: CaseSpec, fold: Fold, dense: nn.Module) -> nn.Module:
    """The dense model as ``case.deploy`` ships it, for timing (``"csr"``: as it is, none of
    its layers has the zeros CSR needs)."""
    if case.deploy is None or case.deploy == "csr":
        return dense
    import warnings

    from harness.deploy import DeployWarning

    with warnings.catch_warnings():  # "2:4 runs dense here" is said for the pruned model
        warnings.simplefilter("ignore", DeployWarning)
        deployed: nn.Module = _deploy(suite, case, fold, copy.deepcopy(dense), _device(suite))
    return deployed.eval()


def _torch_model(model: nn.Module) -> nn.Module:
    """The torch model of a deployed one (:class:`harness.deploy.Deployed`), else ``model``."""
    from harness.deploy import Deployed

    return model.source if isinstance(model, Deployed) else model


def _deploy_metrics(
    pruned: nn.Module, pruned_eval: _Evaluation, fold: Fold, device: str
) -> dict[str, float]:
    """A deployment's logits against its torch model's on the fold's validation inputs
    (:func:`harness.deploy.deploy_metrics`), and the layers its runtime's kernels run."""
    from harness.deploy import Deployed, deploy_metrics

    if not isinstance(pruned, Deployed):
        return {}
    source = predict_logits(pruned.source, fold.X_val, device=device)
    out = deploy_metrics(pruned_eval.logits, source)
    if pruned.accelerated_layers is not None:
        out["deploy_accelerated_layers"] = float(pruned.accelerated_layers)
    return out


def measure_fold(
    suite: SuiteSpec,
    case: CaseSpec,
    ds: Dataset,
    fold: Fold,
    dense: nn.Module,
    dense_eval: _Evaluation,
    pruned: nn.Module,
) -> FoldResult:
    """Every metric of one fold: quality and statistics of both models, latency (and RAPL
    energy), same-run ratios, edge-case sets and the checks.

    With ``deploy = "onnx" | "int8" | "2:4"`` the dense model's latency is measured deployed the
    same way (its quality stays the torch model's), so ``speedup`` is what the pruning buys in
    the runtime the model ships in, not the runtime's own gain over torch."""
    pruned_eval = _evaluate(pruned, fold, ds, "pruned", _device(suite))
    timed_dense = _deployed_dense(suite, case, fold, dense)
    lat, uj = measure_speed([timed_dense, pruned], fold.X_val, suite)
    dense_metrics = {**dense_eval.metrics, **lat[0].as_metrics()}
    pruned_metrics = {**pruned_eval.metrics, **lat[1].as_metrics()}
    if uj is not None:  # measured energy where RAPL is readable
        dense_metrics["energy_measured_uj"], pruned_metrics["energy_measured_uj"] = uj

    out = {**model_names("dense", dense_metrics), **model_names("pruned", pruned_metrics)}
    out["speedup"] = lat[0].p50 / lat[1].p50
    out["speedup_batch"] = lat[0].batch_p50 / lat[1].batch_p50
    out["speedup_vs_flops"] = speedup_vs_flops(
        out["speedup_batch"], pruned_metrics["flops_nonzero"], dense_metrics["flops"]
    )
    out["param_reduction"] = 1 - pruned_metrics["nonzero_params"] / dense_metrics["params"]
    out["flops_reduction"] = 1 - pruned_metrics["flops_nonzero"] / dense_metrics["flops"]
    out["energy_reduction"] = 1 - pruned_metrics["energy_nj"] / dense_metrics["energy_nj"]
    out["disagreement_rate"] = float((dense_eval.pred != pruned_eval.pred).mean())
    out.update(_deploy_metrics(pruned, pruned_eval, fold, _device(suite)))
    out.update(_edge_metrics(suite, case, ds, fold, dense_eval, {"dense": dense, "pruned": pruned}))
    findings = _checks(suite, fold, dense, pruned, out, vocab=ds.spec.vocab)
    return FoldResult(
        out,
        fold.val_idx,
        dense_eval.pred,
        pruned_eval.pred,
        dense_eval.confusion,
        pruned_eval.confusion,
        _layer_sparsity(dense, _torch_model(pruned)),
        pruned,
        findings,
    )


def measure_speed(
    models: list[nn.Module], X: np.ndarray, suite: SuiteSpec, *, native_process: bool | None = None
) -> tuple[list[M.Latency], tuple[float, ...] | None]:
    """Latency (and RAPL energy where readable) of ``models``, measured with the machine's
    native kernels: in this process, or, when this process is pinned below the CPU's own level
    (portable numerics on an AVX-512 CPU), in a native child process (``native_process``
    forces either way)."""
    device = _device(suite)
    if device != "cpu":  # accelerator kernels are not the CPU numerics this process pins
        return _measure_speed(models, X, suite.latency, suite.threads, device)
    if native_process is None:
        native_process = numerics.latency_needs_native_process()
    if native_process:
        try:
            return numerics.run_in(
                "native", _measure_speed, models, X, suite.latency, suite.threads
            )
        except numerics.NotPicklableError:  # a model holding a lambda: measured here, pinned
            pass
    return _measure_speed(models, X, suite.latency, suite.threads)


def _measure_speed(
    models: list[nn.Module], X: Any, spec: LatencySpec, threads: int, device: str = "cpu"
) -> tuple[list[M.Latency], tuple[float, ...] | None]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lat = M.measure_latency(
            models, X, batch=spec.batch, warmup=spec.warmup, repeats=spec.repeats, device=device
        )
        counter = rapl_counter()
        uj = None
        if counter is not None and device == "cpu":
            uj = tuple(measure_energy(models, X, batch=spec.batch, counter=counter))
        return lat, uj
    finally:
        torch.set_num_threads(old)


def _fit(model: nn.Module, X: np.ndarray, y: np.ndarray, spec: TrainSpec, **kwargs: Any) -> None:
    """``training.fit``, or nothing with ``epochs = 0`` (the model is used as it is)."""
    if spec.epochs > 0:
        fit(model, X, y, spec, **kwargs)


def _finetune(
    model: nn.Module, case: CaseSpec, fold: Fold, dense: nn.Module, *, seed: int, device: str
) -> None:
    assert case.finetune is not None
    teacher = dense if case.distill is not None else None
    _fit(
        model,
        fold.X_train,
        fold.y_train,
        case.finetune,
        seed=seed,
        teacher=teacher,
        distill=case.distill,
        device=device,
    )


def _checks(
    suite: SuiteSpec,
    fold: Fold,
    dense: nn.Module,
    pruned: nn.Module,
    out: dict[str, float],
    *,
    vocab: int | None = None,
) -> list[dict[str, Any]]:
    """Hypothesis property checks of the pruned model and the dense-vs-pruned differential
    search (harness.checks); adds their metrics to ``out`` and returns the minimal findings."""
    from harness.checks import Finding, differential_check, property_checks

    spec, seed = suite.checks, suite.seed * 1000 + fold.index
    found: list[Finding] = []
    if spec.properties:
        failures = property_checks(
            pruned,
            fold.X_val,
            seed=seed,
            max_examples=spec.examples,
            vocab=vocab,
            device=_device(suite),
        )
        out["property_failures"] = float(len(failures))
        found += failures
    if spec.differential:
        rate, disagreements = differential_check(
            dense,
            pruned,
            fold.X_val,
            seed=seed,
            radius=spec.radius,
            max_examples=spec.examples,
            vocab=vocab,
            device=_device(suite),
        )
        out["perturbed_disagreement_rate"] = rate
        found += disagreements
    return [{"fold": fold.index, **dataclasses.asdict(f)} for f in found]


def exemplars(folds: list[FoldResult], y: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Pruning-identified exemplars (Hooker et al. 2019): samples whose modal prediction over the
    pruned models that validated them differs from the dense models' modal prediction.

    With ``repeats`` > 1 every sample has a population of models (one per repeat); with one
    repeat the mode is the single prediction. Ties go to the lower class index. Also returns
    McNemar's discordant counts of dense vs pruned over all (fold, sample) pairs.
    """
    dense_votes = np.zeros((len(y), n_classes), dtype=np.int64)
    pruned_votes = np.zeros_like(dense_votes)
    b = c = 0
    for f in folds:
        np.add.at(dense_votes, (f.val_idx, f.dense_pred), 1)
        np.add.at(pruned_votes, (f.val_idx, f.pruned_pred), 1)
        truth = y[f.val_idx]
        b += int(((f.dense_pred == truth) & (f.pruned_pred != truth)).sum())
        c += int(((f.dense_pred != truth) & (f.pruned_pred == truth)).sum())
    seen = dense_votes.sum(1) > 0
    dense_mode, pruned_mode = dense_votes.argmax(1), pruned_votes.argmax(1)
    ids = np.flatnonzero(seen & (dense_mode != pruned_mode))
    return {
        "ids": [int(i) for i in ids],
        "count": len(ids),
        "rate": len(ids) / int(seen.sum()),
        "dense_accuracy": float((dense_mode[ids] == y[ids]).mean()) if len(ids) else None,
        "pruned_accuracy": float((pruned_mode[ids] == y[ids]).mean()) if len(ids) else None,
        "mcnemar_b": b,
        "mcnemar_c": c,
    }


def run_case(
    suite: SuiteSpec,
    case: CaseSpec,
    *,
    cache: DenseCache | None = None,
    keep_models: bool = False,
    time_budget: float | None = None,
    device: str | None = None,
    executor: Executor | None = None,
) -> CaseResult:
    """Run ``case`` over the suite's k folds; deterministic for the same spec, seeds and machine.

    The suite is resolved first (:func:`harness.resolution.resolve`: one line for a dataset, model
    or method argument that does not fit). Dense models come from ``cache`` (a session passes
    its own; None: trained for this call). With ``keep_models`` the pruned ``state_dict`` of
    every fold is kept in ``CaseResult.pruned_states`` (not serialized). ``time_budget``
    (seconds; the tighter of it and the suite's ``time_budget``) stops the case with
    :class:`harness._util.BudgetError`. ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``,
    ``"mps"``, ``"auto"``) overrides the suite's. ``executor`` runs the folds
    (:mod:`harness.executors`: serial by default, a process pool, Ray); the results are the same
    whichever runs them.
    """
    from harness.resolution import resolve

    if device is not None and device != suite.device:
        suite = dataclasses.replace(suite, device=device)
    suite = resolve(suite).for_case(case)  # the case's own model, if it names one
    budgets = [b for b in (time_budget, suite.time_budget) if b is not None]
    budget = min(budgets) if budgets else None
    mode = suite.numerics
    if mode is not None and mode != numerics.current().requested:
        # the suite asks for other numerics than this process has: run it in a child of that
        # mode (its folds one after the other), which keeps its own dense cache across cases
        return numerics.run_in(mode, _run_in_child, suite, case, keep_models, budget)
    with _util.time_budget(budget):
        return _run_case(
            suite,
            case,
            keep_models,
            cache if cache is not None else DenseCache(),
            executor or SerialExecutor(),
            budget,
        )


def _checkpoint_digest(suite: SuiteSpec) -> str:
    assert suite.checkpoint is not None
    return checkpoint_digest(checkpoint_path(suite.checkpoint, suite.base_dir))


@functools.cache
def _child_cache() -> DenseCache:
    return DenseCache()


def _run_in_child(
    suite: SuiteSpec, case: CaseSpec, keep_models: bool, budget: float | None
) -> CaseResult:
    with _util.time_budget(budget):
        return _run_case(suite, case, keep_models, _child_cache(), SerialExecutor(), budget)


@dataclass(frozen=True, eq=False)
class _Prepared:
    """A suite's data as its folds see it: the dataset, the fixed test split, the folds."""

    ds: Dataset
    test: TestSplit | None
    folds: list[Fold]


_PREPARED: dict[str, _Prepared] = {}
_PREPARED_KEEP = 2  # datasets kept per process (the cases of a suite run one after another)


def _data_key(suite: SuiteSpec) -> str:
    import json

    return json.dumps(
        [
            suite.dataset,
            suite.dataset_args,
            str(suite.base_dir),
            suite.test,
            suite.split_seed,
            suite.folds,
            suite.cv_seed,
            suite.repeats,
            suite.standardize,
        ],
        sort_keys=True,
        default=str,
    )


def _prepared(suite: SuiteSpec, digest: str | None = None) -> _Prepared:
    """The suite's dataset, test split and folds. ``digest`` None (the controller, once per
    case): loaded afresh, so a file that changed between cases is read again. Else (a fold
    job): the data loaded last in this process if its digest is ``digest``, else loaded afresh
    (the most recent :data:`_PREPARED_KEEP` suites' data are kept)."""
    key = _data_key(suite)
    hit = _PREPARED.pop(key, None)
    if hit is not None and digest is not None and hit.ds.digest == digest:
        _PREPARED[key] = hit
        return hit
    ds = load_dataset(suite.dataset, suite.dataset_args, suite.base_dir)
    test: TestSplit | None = None
    if suite.test is not None:
        ds, test = split_test(
            ds, suite.test, seed=suite.split_seed, base=suite.base_dir, args=suite.dataset_args
        )
    with _torch_settings(suite.threads):
        folds = make_folds(
            ds,
            suite.folds,
            seed=suite.cv_seed,
            repeats=suite.repeats,
            standardize=suite.standardize,
        )
    _PREPARED[key] = prepared = _Prepared(ds, test, folds)
    while len(_PREPARED) > _PREPARED_KEEP:
        del _PREPARED[next(iter(_PREPARED))]
    return prepared


# the dense cache of the case running in this thread: the session's, for the serial executor
_SESSION_CACHE: contextvars.ContextVar[DenseCache | None] = contextvars.ContextVar(
    "harness_session_cache", default=None
)


@functools.cache
def _worker_cache(root: str | None, max_bytes: int, results: bool) -> DenseCache:
    """The dense cache of a worker process (a process-pool child, a Ray worker): on the
    controller's disk cache, when it has one."""
    disk = DiskCache(root, max_bytes) if root is not None else None
    return DenseCache(disk=disk, results=results)


@dataclass(frozen=True)
class FoldJob:
    """One fold of one case: what an executor sends to a worker (it pickles). The worker loads
    the suite's data itself and checks that it is the controller's (``digest``)."""

    suite: SuiteSpec  # resolved, with the case's model
    case: CaseSpec
    fold: int
    n_folds: int
    digest: str
    keep_model: bool = False
    deadline: float | None = None  # wall-clock time (time.time()) the case's budget ends
    budget: float | None = None  # the budget's length in seconds, for its message
    cache_dir: str | None = None  # the controller's disk cache (None: none)
    cache_bytes: int = 0
    cache_results: bool = False


def fold_job(job: FoldJob) -> FoldResult:
    """Run one fold where an executor put it; the result carries no module (only the pruned
    ``state_dict`` when ``keep_model``), so it pickles whatever the model holds."""
    left = None if job.deadline is None else job.deadline - time.time()
    with _util.time_budget(left, total=job.budget):
        _util.check_budget(f"before fold {job.fold + 1} of {job.n_folds}")
        prepared = _prepared(job.suite, job.digest)
        if prepared.ds.digest != job.digest:
            raise CaseError(
                f"fold {job.fold}: this worker reads other data for {job.suite.dataset} (digest "
                f"{prepared.ds.digest[:12]}, the controller's is {job.digest[:12]}); every "
                "worker must see the same files"
            )
        cache = _SESSION_CACHE.get() or _worker_cache(
            job.cache_dir, job.cache_bytes, job.cache_results
        )
        if cache.results and cache.disk is not None:
            key = _fold_key(job, prepared.ds, prepared.folds[job.fold])
            if (stored := cache.disk.get("fold", key)) is not None:
                hit = _fold_from_entry(stored)
                if hit.pruned_state is not None or not job.keep_model:
                    return hit if job.keep_model else dataclasses.replace(hit, pruned_state=None)
        with _torch_settings(job.suite.threads):
            try:
                result = run_fold(
                    job.suite,
                    job.case,
                    prepared.ds,
                    prepared.folds[job.fold],
                    cache=cache,
                    test=prepared.test,
                )
            except TrainingError as err:  # fine-tuning, or training inside a pruning method
                raise CaseError(f"fold {job.fold}: pruned model's {err}") from None
    assert result.pruned is not None
    state = (
        {k: v.detach().cpu() for k, v in _torch_model(result.pruned).state_dict().items()}
        if job.keep_model  # a deployed model's torch model: it loads into the suite's model
        else None
    )
    result = dataclasses.replace(result, pruned=None, pruned_state=state)
    if cache.results and cache.disk is not None:
        cache.disk.put("fold", key, *_fold_to_entry(result))
    return result


def _claim_dense(
    suite: SuiteSpec,
    prepared: _Prepared,
    cache: DenseCache,
    deadline: float | None,
    budget: float | None,
) -> None:
    """Before a serial case's folds, train (or load) every fold's dense model that no other
    process is training now, and leave the others to the folds (which wait for them and load).

    Two processes that start the same suite together (xdist workers with ``--dist load``, two
    sessions on one cache) would otherwise train its dense models in turns, one waiting on each
    fold's lock while the other trains; this way they divide them. Each model is trained from its
    fold's own seed, so which process trains which, and in what order, changes no result. Not with
    ``--harness-cache-results`` (a case whose fold results are stored needs no dense model)."""
    if cache.disk is None or cache.results:
        return
    left = None if deadline is None else deadline - time.time()
    with _util.time_budget(left, total=budget), _torch_settings(suite.threads):
        for fold in prepared.folds:
            _util.check_budget(f"before the dense model of fold {fold.index + 1}")
            cache.claim(cache.key(suite, prepared.ds, fold), _trainer(suite, prepared.ds, fold))


def _trainer(suite: SuiteSpec, ds: Dataset, fold: Fold) -> Callable[[], _Dense]:
    return lambda: _train_dense(suite, ds, fold)


def _fold_key(job: FoldJob, ds: Dataset, fold: Fold) -> dict[str, str]:
    """Everything one fold's results depend on: its dense model's key, the case's spec, the
    harness's code and the hardware (latency is measured, so the same CPU and threads)."""
    return {
        **_disk_key(DenseCache.key(job.suite, ds, fold)),
        "spec": job.suite.spec_hash(job.case),
        "hardware": _hardware_json(job.suite.threads, devices.name(_device(job.suite))),
    }


@functools.cache
def _hardware_json(threads: int, device: str) -> str:
    """The hardware fingerprint of :func:`harness.provenance.environment`, once per process
    (it reads the CPU and package metadata; the machine does not change under a session)."""
    import json

    from harness.provenance import environment

    return json.dumps(environment(threads, device=device)["hardware"], sort_keys=True)


_FOLD_ARRAYS = ("val_idx", "dense_pred", "pruned_pred", "confusion_dense", "confusion_pruned")


def _fold_to_entry(f: FoldResult) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {n: torch.from_numpy(np.ascontiguousarray(getattr(f, n))) for n in _FOLD_ARRAYS}
    tensors.update({f"test/{m}": torch.from_numpy(p) for m, p in f.test_pred.items()})
    tensors.update({f"pruned/{k}": v for k, v in (f.pruned_state or {}).items()})
    meta = {
        "metrics": f.metrics,
        "layer_sparsity": f.layer_sparsity,
        "findings": f.findings,
        "has_state": f.pruned_state is not None,
    }
    return tensors, meta


def _fold_from_entry(entry: Entry) -> FoldResult:
    t, meta = entry.tensors, entry.meta
    state = {k.removeprefix("pruned/"): v for k, v in t.items() if k.startswith("pruned/")}
    tests = {k.removeprefix("test/"): v.numpy() for k, v in t.items() if k.startswith("test/")}
    return FoldResult(
        {k: float(v) for k, v in meta["metrics"].items()},
        val_idx=t["val_idx"].numpy(),
        dense_pred=t["dense_pred"].numpy(),
        pruned_pred=t["pruned_pred"].numpy(),
        confusion_dense=t["confusion_dense"].numpy(),
        confusion_pruned=t["confusion_pruned"].numpy(),
        layer_sparsity={k: float(v) for k, v in meta["layer_sparsity"].items()},
        pruned=None,
        findings=list(meta["findings"]),
        test_pred=tests,
        pruned_state=state if meta["has_state"] else None,
    )


def _run_case(
    suite: SuiteSpec,
    case: CaseSpec,
    keep_models: bool,
    cache: DenseCache,
    executor: Executor,
    budget: float | None = None,
) -> CaseResult:
    from harness.provenance import environment

    start = time.perf_counter()
    deadline = None if budget is None else time.time() + budget  # the workers' clock
    prepared = _prepared(suite)
    ds, test = prepared.ds, prepared.test
    n_folds = len(prepared.folds)
    disk = cache.disk
    jobs = [
        FoldJob(
            suite,
            case,
            i,
            n_folds,
            ds.digest,
            keep_models,
            deadline,
            budget,
            cache_dir=str(disk.root) if disk is not None else None,
            cache_bytes=disk.max_bytes if disk is not None else 0,
            cache_results=cache.results,
        )
        for i in range(n_folds)
    ]
    if isinstance(executor, SerialExecutor):
        _claim_dense(suite, prepared, cache, deadline, budget)
    device = _device(suite)
    resources = Resources(cpus=suite.threads, gpus=1.0 if device.startswith("cuda") else 0.0)
    token = _SESSION_CACHE.set(cache)
    try:
        folds = executor.map(fold_job, jobs, resources=resources, label=lambda i: f"fold {i}")
    finally:
        _SESSION_CACHE.reset(token)
    per_fold = [f.metrics for f in folds]
    summary = {n: MetricSummary.of([f[n] for f in per_fold]) for n in sorted(per_fold[0])}
    if test is not None:  # bootstrap CIs over the test split's samples
        for model_name in MODELS:
            preds = [f.test_pred[model_name] for f in folds]
            for metric in ("accuracy", "f1_macro"):
                name = MetricRef.on_test(model_name, metric).name
                ci = bootstrap_mean_ci(test.y, preds, ds.n_classes, metric, seed=suite.seed)
                summary[name] = MetricSummary.of(list(summary[name].folds), ci)
    pie = exemplars(folds, np.asarray(ds.y), ds.n_classes)
    summary["pie_rate"] = MetricSummary((), pie["rate"], 0.0)
    summary["pie_count"] = MetricSummary((), float(pie["count"]), 0.0)
    for model in MODELS:
        if pie[f"{model}_accuracy"] is not None:
            name = MetricRef.of(model, "pie_accuracy").name
            summary[name] = MetricSummary((), pie[f"{model}_accuracy"], 0.0)
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
            **(
                {}
                if ds.spec.shape == (ds.n_features,) and not ds.spec.fields
                else {"input": ds.spec.describe()}
            ),
            "classes": ds.n_classes,
            "n_test": round(float(np.mean([len(f.val_idx) for f in folds]))),
            "n_train": len(ds.y) - round(float(np.mean([len(f.val_idx) for f in folds]))),
            **({"checkpoint": _checkpoint_digest(suite)} if suite.checkpoint else {}),
            **(
                {"test": {"source": test.source, "rows": len(test.y), "digest": test.digest}}
                if test is not None
                else {}
            ),
        },
        class_names=ds.class_names,
        confusion={
            "dense": np.sum([f.confusion_dense for f in folds], axis=0).tolist(),
            "pruned": np.sum([f.confusion_pruned for f in folds], axis=0).tolist(),
        },
        layer_sparsity=layers,
        pie={k: pie[k] for k in ("ids", "mcnemar_b", "mcnemar_c")},
        findings=[f for fold in folds for f in fold.findings],
        env={
            **environment(suite.threads, device=devices.name(_device(suite))),
            "latency_kernels": "native process"
            if numerics.latency_needs_native_process()
            else f"this process ({numerics.current().mode})",
        },
        pruned_states=tuple(f.pruned_state for f in folds if f.pruned_state is not None),
    )
