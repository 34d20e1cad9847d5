"""What the gate costs and how it scales, as ratios timed side by side in one run.

    python benchmarks/bench_gate.py [--quick] [--repeats N] [--gate-repeats N] [--mlflow]
                                    [--out docs/scale.md] [pytest args for the gate runs...]
    nox -s bench -- --out docs/scale.md

Timings on a shared machine are noisy, so every figure is a ratio of two runs made in the same
repetition (their order alternating between repetitions), and the median of those per-repetition
ratios; compare ratios, never seconds across runs or machines.

1. Overhead: ``run_case`` of ``digits-mlp::magnitude-90`` in this process (a fresh in-memory
   ``DenseCache``, serial executor) against a hand-written loop doing the same work with plain
   torch and scikit-learn (the suite's StratifiedKFold folds and seed, scaler, model, training
   and fine-tuning hyperparameters, ``torch.nn.utils.prune`` magnitude pruning). The harness runs
   with its checks and edge sets off (the ratio the issue bars at 1.10x) and as the suite is
   written; the seconds inside its training, metrics, latency, edge-set and check functions are
   recorded (patched for the run), so the cost of each is stated. Import cost: ``python -c
   "import harness.runner"`` against ``python -c "import torch, sklearn"``.
2. Disk cache: a small gate (four cases of digits-mlp and breast-cancer-mlp, ``pytest <cases>
   --harness-cache DIR`` in subprocesses) cold (empty DIR, ``--harness-cache-results``), warm
   (same DIR, ``--harness-cache-results``: whole fold results reused) and warm with the dense
   models only (no ``--harness-cache-results``); wall and CPU seconds.
3. ``-n 2 --dist load`` against serial (``-p no:xdist``) on the same gate, each cold.
4. The process executor (2 workers, pool start-up included and also shown alone) against the
   serial executor for the case as written (5 folds), cold caches each, in the first two
   repetitions (each starts new workers).
5. Ray (a local instance of 2 CPUs the executor starts, one per repetition) against serial, the
   same way, if Ray works.
6. Cost against size: the case at 2, 4, 8 folds, and the suite's first 1, 2, 4 cases with one
   shared ``DenseCache`` (a session's); seconds per fold / per case and their spread.

``--mlflow`` adds the measurement this script used to make: the gate cold with MLflow logging to a
fresh SQLite store against the same without. Nothing is written into the checkout: the gate runs
get temporary cache, report and baseline directories (a copy of baselines/, so a failing case's
``.obtained`` results land in the copy), ``--harness-no-mlflow`` (``--mlflow``: a temporary store,
run from a temporary directory so MLflow's ``mlruns`` lands there).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import functools
import importlib
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the package first: it pins this process's numerics before torch is imported (the harness and
# the hand-written loop then compute with the same kernels); torch is imported where it is used
from harness.executors import Executor, create
from harness.provenance import cpu_name
from harness.runner import DenseCache, run_case
from harness.spec import CaseSpec, SuiteSpec, load_suite

ROOT = Path(__file__).resolve().parent.parent
SUITE = Path("suites") / "digits_mlp.toml"
CASE = "magnitude-90"
# the small gate: two suites (two dense trainings), four cases (the two files whole, 25 cases,
# take ~8 min cold on 2 cores: too long to run four times here)
GATE = (
    "suites/digits_mlp.toml::magnitude-90",
    "suites/digits_mlp.toml::structured-50",
    "suites/breast_cancer_mlp.toml::magnitude-80",
    "suites/breast_cancer_mlp.toml::structured-50",
)
QUICK_GATE = ("suites/breast_cancer_mlp.toml::magnitude-80",)  # a smoke test of the code paths
LOADERS = {
    "sklearn:digits": "load_digits",
    "sklearn:breast_cancer": "load_breast_cancer",
    "sklearn:wine": "load_wine",
}
OVERHEAD_BAR, WARM_BAR, XDIST_BAR = 1.10, 0.40, 0.56
LINEAR = 1.15  # per-unit costs within this factor of each other count as linear
# harness functions whose time is recorded during an in-process run: (label, module, name)
SPANS = (
    ("train", "harness.runner", "_fit"),
    ("metrics", "harness.runner", "_evaluate"),
    ("latency", "harness.runner", "measure_speed"),
    ("edge sets", "harness.runner", "_edge_metrics"),
    ("properties", "harness.checks", "property_checks"),
    ("differential", "harness.checks", "differential_check"),
)
MISSING_SPANS: set[str] = set()  # SPANS the harness no longer has (their time counts as other)
Log = Callable[[str], None]
READING = (
    "- *measuring loop*: the hand-written loop that also measures, by hand, what the harness "
    "reports for both models of every fold (accuracy, precision, recall, F1 per class and "
    "macro, train-set accuracy, parameter counts, FLOPs, serialized and compressed size, "
    "latency at batch 1 and at the suite's batch with its warm-up and repeats): the same work. "
    "The *macro-F1 only* loop trains, prunes and scores F1 and nothing else; its ratio shows "
    "what the measurements cost, wherever they are written.",
    "- *harness extra over the measuring loop* splits the harness's extra time, in % of that "
    "loop's: training (the harness's `fit` against the loop's own), metrics (`_evaluate`: "
    "scikit-learn metrics, model statistics and FLOPs, train-set predictions, against the "
    "loop's own), latency (`measure_speed` against the loop's timing: both models at batch 1 "
    "and at the suite's batch, in a native-numerics child process where the CPU needs one) "
    "and the rest.",
    "- *cost of ...* rows: seconds inside that function in the suite-as-written run, in % of "
    "the loop's time.",
    "- CPU rows: user + system seconds of the pytest process tree; they show the work done "
    "whatever else runs on the machine, the wall-time rows what it gave.",
    "- executors: *start-up* is a 2-fold, 1-epoch case through the new workers (each imports "
    "the harness and starts its own native latency process); *start-up excluded* is the case "
    "on those warm workers with cold caches.",
)


@dataclass(frozen=True)
class Plan:
    """How much to run: repetitions, the case's folds, the size sweep and the gate's cases."""

    repeats: int
    executor_repeats: int  # of the process and Ray runs (each starts its workers)
    gate_repeats: int
    imports: int
    folds: int | None  # None: the suite's
    fold_counts: tuple[int, ...]
    case_counts: tuple[int, ...]
    gate: tuple[str, ...]
    mlflow: bool
    pytest_args: tuple[str, ...]
    quick: bool


@dataclass
class Runs:
    """Seconds of named runs, one entry per repetition; ratios are medians of per-repetition
    ratios (both runs of a ratio made in the same repetition)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratios(self, a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(self.seconds[a], self.seconds[b], strict=True)]

    def ratio(self, a: str, b: str) -> float:
        return statistics.median(self.ratios(a, b))

    def spread(self, a: str, b: str) -> str:
        """The per-repetition ratios, when there are several."""
        values = self.ratios(a, b)
        return (
            f"; per repetition {', '.join(f'{v:.2f}' for v in values)}" if len(values) > 1 else ""
        )

    def has(self, name: str) -> bool:
        return bool(self.seconds.get(name))


@dataclass(frozen=True)
class Figure:
    """One row of the table: a ratio (None: not measured), what it compares, its bar."""

    name: str
    ratio: float | None
    detail: str
    bar: float | None = None  # the issue's bar: the ratio must be <= this
    unit: str = "x"

    @property
    def verdict(self) -> str:
        if self.bar is None or self.ratio is None:
            return ""
        return f"<= {self.bar:.2f}: {'met' if self.ratio <= self.bar else 'MISSED'}"

    @property
    def value(self) -> str:
        if self.ratio is None:
            return "-"
        digits = 2 if self.unit == "x" else 1
        return f"{self.ratio:.{digits}f}{self.unit}"


@dataclass
class Report:
    """The figures by section, and notes on what is doubtful."""

    sections: dict[str, list[Figure]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, figure: Figure) -> None:
        self.sections.setdefault(section, []).append(figure)

    def lines(self) -> list[str]:
        rows = [f for figures in self.sections.values() for f in figures]
        width = max(len(f.name) for f in rows) if rows else 10
        out: list[str] = []
        for section, figures in self.sections.items():
            out += ["", section]
            for f in figures:
                bar = f"  [{f.verdict}]" if f.verdict else ""
                out.append(f"  {f.name:<{width}}  {f.value:>7}{bar}  {f.detail}")
        if self.notes:
            out += ["", "notes"] + [f"  - {n}" for n in self.notes]
        return out

    def markdown(self, machine: str, command: str, started: str, plan: Plan) -> str:
        doc = __doc__ or ""
        method = doc[doc.index("1. Overhead") : doc.index("``--mlflow``")].rstrip()
        quick = " (`--quick`: a smoke run with less work, not for comparison)" if plan.quick else ""
        out = [
            "# Scale of the gate: measured ratios",
            "",
            "Generated by `nox -s bench -- --out docs/scale.md` (`benchmarks/bench_gate.py`). "
            "Every figure is a ratio of two runs timed in the same repetition (order "
            "alternating), the median over repetitions: the machine is shared, so compare "
            "ratios, not seconds. Rerun on yours.",
            "",
            f"- command: `{command}`",
            f"- machine: {machine}",
            f"- date: {started}",
            f"- repetitions: {plan.repeats} (in process), {plan.gate_repeats} (gate){quick}",
            "",
            "## What is measured",
            "",
            method,
            "",
            "## Figures",
            "",
            "| figure | ratio | issue's bar | runs and detail |",
            "|---|---:|---|---|",
        ]
        for section, figures in self.sections.items():
            out.append(f"| **{section}** | | | |")
            for f in figures:
                detail = f.detail.replace("|", "/")
                out.append(f"| {f.name} | {f.value} | {f.verdict} | {detail} |")
        out += ["", "## Reading the figures", "", *READING]
        if self.notes:
            out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        out += [
            "",
            "## Reproduce",
            "",
            "```",
            "nox -s bench -- --out docs/scale.md      # the full run (~13 min on 2 idle cores)",
            "nox -s bench -- --quick                  # a smoke run (~5 min)",
            "```",
            "",
        ]
        return "\n".join(out)


# --------------------------------------------------------------------------------------------
# in-process runs: the hand-written loop and the harness


@dataclass(frozen=True)
class CaseRun:
    """One run of the case: wall seconds, seconds per recorded span, per-fold macro-F1."""

    seconds: float
    spans: dict[str, float]
    dense_f1: tuple[float, ...]
    pruned_f1: tuple[float, ...]


def _loop_problem(suite: SuiteSpec, case: CaseSpec) -> str | None:
    """Why the hand-written loop does not do what the harness does for this case, or None."""
    train, finetune, prune = suite.train, case.finetune, case.prune
    checks = {
        "dataset": (suite.dataset in LOADERS, suite.dataset),
        "model": (suite.model == "harness.models:mlp", suite.model),
        "train": (train.optimizer == "adam" and train.scheduler == "cosine", train),
        "finetune": (
            finetune is not None
            and finetune.optimizer == "adam"
            and finetune.scheduler == "cosine"
            and finetune.weight_decay == 0,
            finetune,
        ),
        "prune": (prune.method == "magnitude" and prune.schedule == "oneshot", prune),
        "case": (
            case.distill is None and case.deploy is None and case.model is None,
            case.name,
        ),
        "suite": (
            suite.repeats == 1
            and suite.test is None
            and suite.standardize
            and suite.checkpoint is None
            and train.weight_decay == 0
            and suite.device == "cpu",
            suite.name,
        ),
    }
    bad = [f"{key} = {value}" for key, (ok, value) in checks.items() if not ok]
    return f"the hand-written loop does not cover {'; '.join(bad)}" if bad else None


def hand_loop(suite: SuiteSpec, case: CaseSpec, *, measure: bool = False) -> CaseRun:
    """The case by hand: StratifiedKFold with the suite's seed, StandardScaler per training
    fold, the harness's MLP seeded as the harness seeds it, Adam with a per-batch cosine
    schedule, ``torch.nn.utils.prune`` L1 (magnitude) pruning at the case's scope and sparsity,
    the case's fine-tuning, ``prune.remove``, macro-F1 of both models on the validation fold.

    With ``measure``, the loop also measures what the harness reports for each model of each
    fold, by hand: accuracy, precision, recall and F1 per class and macro-averaged
    (``precision_recall_fscore_support``), train-set accuracy, parameter and non-zero counts,
    FLOPs at batch 1 (``FlopCounterMode``), the serialized and compressed size, and latency at
    batch 1 and at the suite's batch (its warm-up and repeats, both models timed in turn, in
    this process). Not the harness's analytic energy model, which has no library equivalent."""
    import io
    import zlib

    import numpy as np
    import sklearn.datasets
    import torch
    from sklearn.metrics import f1_score, precision_recall_fscore_support
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from torch import nn
    from torch.nn.utils import prune
    from torch.utils.flop_counter import FlopCounterMode

    from harness.models import mlp

    assert case.finetune is not None  # _loop_problem checked it
    train_s = measure_s = latency_s = 0.0
    measured: list[dict[str, float]] = []  # kept, as the harness keeps its metrics

    def stats(
        model: nn.Module, X: torch.Tensor, y: np.ndarray, X_tr: torch.Tensor, y_tr: np.ndarray
    ) -> None:
        nonlocal measure_s
        start = time.perf_counter()
        with torch.inference_mode():
            pred = model(X).argmax(1).numpy()
            train_pred = model(X_tr).argmax(1).numpy()
        out: dict[str, float] = {"accuracy": float((pred == y).mean())}
        for average in (None, "macro"):
            p, r, f, _ = precision_recall_fscore_support(
                y, pred, average=average, labels=np.arange(n_classes), zero_division=0
            )
            tag = "class" if average is None else "macro"
            for name, v in (("precision", p), ("recall", r), ("f1", f)):
                out.update({f"{name}_{tag}_{i}": float(x) for i, x in enumerate(np.atleast_1d(v))})
        out["train_accuracy"] = float((train_pred == y_tr).mean())
        out["params"] = float(sum(q.numel() for q in model.parameters()))
        out["nonzero"] = float(sum(int(torch.count_nonzero(q)) for q in model.parameters()))
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(X[:1])
        out["flops"] = float(counter.get_total_flops())
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        out["size"], out["gzip"] = len(buf.getvalue()), len(zlib.compress(buf.getvalue(), 6))
        measured.append(out)
        measure_s += time.perf_counter() - start

    def latency(models: list[nn.Module], X: torch.Tensor) -> None:
        nonlocal latency_s
        start = time.perf_counter()
        spec = suite.latency
        one, big = X[:1], X[torch.arange(spec.batch) % len(X)]
        times: list[list[float]] = [[] for _ in range(2 * len(models))]
        with torch.inference_mode():
            for k, inp in enumerate((one, big)):
                for _ in range(spec.warmup):
                    for m in models:
                        m(inp)
                for _ in range(spec.repeats):
                    for i, m in enumerate(models):
                        t0 = time.perf_counter_ns()
                        m(inp)
                        times[2 * i + k].append((time.perf_counter_ns() - t0) / 1e6)
        measured.append({f"p50_{i}": float(np.percentile(t, 50)) for i, t in enumerate(times)})
        latency_s += time.perf_counter() - start

    def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, spec: Any, seed: int) -> None:
        nonlocal train_s
        start = time.perf_counter()
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        steps = -(-len(y) // spec.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs * steps)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(spec.epochs):
            order = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), spec.batch_size):
                idx = order[i : i + spec.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(X[idx]), y[idx])
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        train_s += time.perf_counter() - start

    def f1(model: nn.Module, X: torch.Tensor, y: np.ndarray) -> float:
        with torch.inference_mode():
            return float(f1_score(y, model(X).argmax(1).numpy(), average="macro"))

    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(suite.threads)  # as the harness runs a fold
    torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.perf_counter()
    try:
        data = getattr(sklearn.datasets, LOADERS[suite.dataset])()
        X = data.data.astype(np.float32)
        y = np.unique(data.target, return_inverse=True)[1].astype(np.int64)
        n_classes = int(y.max()) + 1
        dense_f1, pruned_f1 = [], []
        folds = StratifiedKFold(suite.folds, shuffle=True, random_state=suite.cv_seed)
        for i, (tr, va) in enumerate(folds.split(np.zeros((len(y), 1)), y)):
            scaler = StandardScaler().fit(X[tr])
            X_tr = torch.from_numpy(scaler.transform(X[tr]).astype(np.float32))
            X_va = torch.from_numpy(scaler.transform(X[va]).astype(np.float32))
            y_tr = torch.from_numpy(y[tr])
            seed = suite.seed * 1000 + i
            torch.manual_seed(seed)
            model = mlp(X.shape[1], n_classes, **suite.model_args)
            train(model, X_tr, y_tr, suite.train, seed)
            dense_f1.append(f1(model, X_va, y[va]))
            if measure:
                dense = copy.deepcopy(model)
                stats(dense, X_va, y[va], X_tr, y[tr])
            params = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
            if case.prune.scope == "global":
                prune.global_unstructured(
                    params, pruning_method=prune.L1Unstructured, amount=case.prune.sparsity
                )
            else:
                for m, name in params:
                    prune.l1_unstructured(m, name, amount=case.prune.sparsity)
            train(model, X_tr, y_tr, case.finetune, seed + 100)
            for m, name in params:
                prune.remove(m, name)
            pruned_f1.append(f1(model, X_va, y[va]))
            if measure:
                stats(model, X_va, y[va], X_tr, y[tr])
                latency([dense, model], X_va)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
    seconds = time.perf_counter() - start
    spans = {"train": train_s} | ({"metrics": measure_s, "latency": latency_s} if measure else {})
    return CaseRun(seconds, spans, tuple(dense_f1), tuple(pruned_f1))


def _timed(fn: Callable[..., Any], label: str, seen: dict[str, float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seen[label] = seen.get(label, 0.0) + time.perf_counter() - start

    return wrapper


@contextlib.contextmanager
def _spans() -> Iterator[dict[str, float]]:
    """Seconds spent in the :data:`SPANS` functions (in this process) while the block runs;
    they are patched for the block and restored after it. A name the harness no longer has is
    left out, and listed in :data:`MISSING_SPANS` (the report says so)."""
    seen: dict[str, float] = {}
    undo = []
    for label, module_name, name in SPANS:
        module = importlib.import_module(module_name)
        original = getattr(module, name, None)
        if original is None:
            MISSING_SPANS.add(f"{module_name}.{name}")
            continue
        setattr(module, name, _timed(original, label, seen))
        undo.append((module, name, original))
    try:
        yield seen
    finally:
        for module, name, original in undo:
            setattr(module, name, original)


def harness_run(suite: SuiteSpec, case: CaseSpec, executor: Executor | None = None) -> CaseRun:
    """``run_case`` with a fresh in-memory DenseCache (no disk cache: the dense models are
    trained, as the loop trains them)."""
    with _spans() as seen:
        start = time.perf_counter()
        result = run_case(suite, case, cache=DenseCache(), executor=executor)
        seconds = time.perf_counter() - start
    return CaseRun(
        seconds,
        dict(seen),
        tuple(f["dense.f1_macro"] for f in result.folds),
        tuple(f["pruned.f1_macro"] for f in result.folds),
    )


def checks_off(suite: SuiteSpec, case: CaseSpec) -> tuple[SuiteSpec, CaseSpec]:
    """The suite without its property and differential checks and the case without edge sets."""
    checks = dataclasses.replace(suite.checks, properties=False, differential=False)
    return dataclasses.replace(suite, checks=checks, edge=()), dataclasses.replace(case, edge=())


def _tiny(suite: SuiteSpec, case: CaseSpec) -> tuple[SuiteSpec, CaseSpec]:
    """The suite and case at 2 folds and 1 epoch: a warm-up that imports what the runs use."""
    one = dataclasses.replace(suite.train, epochs=1)
    finetune = dataclasses.replace(case.finetune, epochs=1) if case.finetune else None
    return (
        dataclasses.replace(suite, folds=2, train=one),
        dataclasses.replace(case, finetune=finetune),
    )


def _startup(executor: Executor, suite: SuiteSpec, case: CaseSpec) -> float:
    """Seconds to bring the executor's workers up: the case at 2 folds and 1 epoch through it,
    one fold per worker (each imports the harness and starts its native latency process). Its
    dense models are not the case's, so the case still finds the workers' caches cold."""
    start = time.perf_counter()
    run_case(*_tiny(suite, case), cache=DenseCache(), executor=executor)
    return time.perf_counter() - start


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _close(f1: tuple[float, ...], other: tuple[float, ...]) -> str:
    worst = max(abs(a - b) for a, b in zip(f1, other, strict=True))
    return "identical per fold" if worst == 0 else f"per fold within {worst:.1e}"


def measure_cases(plan: Plan, report: Report, log: Log) -> None:
    """Sections 1, 4, 5: the loop, the harness (checks off, as written), the process and Ray
    executors, interleaved per repetition."""
    suite = load_suite(ROOT / SUITE)
    case = suite.case(CASE)
    if plan.folds is not None:
        suite = dataclasses.replace(suite, folds=plan.folds)
    if (problem := _loop_problem(suite, case)) is not None:
        sys.exit(f"{SUITE}::{CASE}: {problem}")
    off_suite, off_case = checks_off(suite, case)

    start = time.perf_counter()
    hand_loop(*_tiny(suite, case), measure=True)
    harness_run(*_tiny(suite, case))
    log(f"warm-up (imports, the native latency process): {time.perf_counter() - start:.1f} s")

    runs = Runs()
    spans: dict[str, list[dict[str, float]]] = {}
    f1: dict[str, CaseRun] = {}
    startups: dict[str, list[float]] = {"process": [], "ray": []}
    ray_skip: str | None = None

    def looped(name: str, measure: bool) -> Callable[[], None]:
        def run() -> None:
            r = hand_loop(suite, case, measure=measure)
            runs.add(name, r.seconds)
            spans.setdefault(name, []).append(r.spans)
            f1[name] = r

        return run

    def harness(name: str, s: SuiteSpec, c: CaseSpec) -> Callable[[], None]:
        def run() -> None:
            r = harness_run(s, c)
            runs.add(name, r.seconds)
            spans.setdefault(name, []).append(r.spans)
            f1[name] = r

        return run

    def pooled(name: str) -> Callable[[], None]:
        def run() -> None:
            nonlocal ray_skip
            if name == "ray" and ray_skip is not None:
                return
            try:
                executor = create("process", workers=2) if name == "process" else create(name)
                try:
                    up = _startup(executor, suite, case)
                    r = harness_run(suite, case, executor)
                finally:
                    executor.close()
            except Exception as err:
                if name != "ray":
                    raise
                ray_skip = _first_line(err)
                log(f"ray: skipped ({ray_skip})")
                return
            startups[name].append(up)
            runs.add(name, up + r.seconds)
            runs.add(f"{name} run", r.seconds)
            f1[name] = r

        return run

    steps = [  # (what, the run's name, the run)
        ("loop, macro-F1 only", "loop", looped("loop", False)),
        (
            "loop, measuring what the harness reports",
            "measuring loop",
            looped("measuring loop", True),
        ),
        ("harness, checks and edge sets off", "off", harness("off", off_suite, off_case)),
        ("harness, as written", "written", harness("written", suite, case)),
        ("process executor", "process", pooled("process")),
        ("ray executor", "ray", pooled("ray")),
    ]
    for rep in range(plan.repeats):
        for label, name, step in steps if rep % 2 == 0 else steps[::-1]:
            if name in ("process", "ray") and rep >= plan.executor_repeats:
                continue
            step()
            if len(runs.seconds.get(name, ())) == rep + 1:
                log(f"  repetition {rep + 1}: {label}: {runs.seconds[name][-1]:.1f} s")
    if ray_skip is not None:  # a repetition that ran it before it failed does not count
        runs.seconds.pop("ray", None)
        runs.seconds.pop("ray run", None)

    section = "1. harness / hand-written loop (digits-mlp::magnitude-90, in process)"
    n = f"median of {plan.repeats}"
    loop_s, full_s = runs.median("loop"), runs.median("measuring loop")
    report.add(
        section,
        Figure(
            "harness / measuring loop, checks + edge sets off",
            runs.ratio("off", "measuring loop"),
            f"{runs.median('off'):.1f} s / {full_s:.1f} s "
            f"({n}{runs.spread('off', 'measuring loop')}); the loop measures what the harness "
            "reports (quality per class, model statistics, FLOPs, size, latency)",
            bar=OVERHEAD_BAR,
        ),
    )
    report.add(
        section,
        Figure(
            "harness / loop (macro-F1 only), checks + edge sets off",
            runs.ratio("off", "loop"),
            f"{runs.median('off'):.1f} s / {loop_s:.1f} s ({n}{runs.spread('off', 'loop')}); "
            "the measurements themselves are the difference",
        ),
    )
    report.add(
        section,
        Figure(
            "harness / measuring loop, as written (checks + edge sets on)",
            runs.ratio("written", "measuring loop"),
            f"{runs.median('written'):.1f} s / {full_s:.1f} s "
            f"({n}{runs.spread('written', 'measuring loop')})",
        ),
    )
    loop_f1, off_f1 = f1["loop"], f1["off"]
    report.add(
        section,
        Figure(
            "macro-F1 mean, pruned: harness / loop",
            statistics.fmean(off_f1.pruned_f1) / statistics.fmean(loop_f1.pruned_f1),
            f"{statistics.fmean(off_f1.pruned_f1):.6f} / {statistics.fmean(loop_f1.pruned_f1):.6f}"
            f" ({_close(off_f1.pruned_f1, loop_f1.pruned_f1)}); dense "
            f"{statistics.fmean(off_f1.dense_f1):.6f} / {statistics.fmean(loop_f1.dense_f1):.6f}"
            f" ({_close(off_f1.dense_f1, loop_f1.dense_f1)})",
        ),
    )
    _attribution(report, section, runs, spans)

    section = "4-5. executors / serial executor (the case as written, cold caches)"
    for name, label in (("process", "process (2 workers)"), ("ray", "ray (local, 2 CPUs)")):
        if not runs.has(name):
            report.add(section, Figure(f"{label} / serial", None, f"skipped ({ray_skip})"))
            continue
        same = "same" if f1[name].pruned_f1 == f1["written"].pruned_f1 else "DIFFERENT"
        m = f"median of {plan.executor_repeats}"
        serial = runs.seconds["written"][: plan.executor_repeats]
        runs.seconds[f"{name} serial"] = serial  # the serial runs of the same repetitions
        report.add(
            section,
            Figure(
                f"{label} / serial, start-up included",
                runs.ratio(name, f"{name} serial"),
                f"{runs.median(name):.1f} s / {statistics.median(serial):.1f} s "
                f"({m}{runs.spread(name, f'{name} serial')}); {same} per-fold F1 as serial",
            ),
        )
        report.add(
            section,
            Figure(
                f"{label} / serial, start-up excluded",
                runs.ratio(f"{name} run", f"{name} serial"),
                f"start-up alone (a 2-fold 1-epoch case through the new workers): median "
                f"{statistics.median(startups[name]):.1f} s"
                f"{runs.spread(f'{name} run', f'{name} serial')}",
            ),
        )


def _attribution(
    report: Report, section: str, runs: Runs, spans: dict[str, list[dict[str, float]]]
) -> None:
    """Where the harness's time goes beyond the loop's, in % of the loop's time (medians)."""

    def pct(values: Sequence[float]) -> float:
        return 100 * statistics.median(values)

    loop = "measuring loop"
    loops = runs.seconds[loop]
    parts = []
    for label in ("train", "metrics", "latency"):
        values = [
            (h.get(label, 0.0) - lp.get(label, 0.0)) / t
            for h, lp, t in zip(spans["off"], spans[loop], loops, strict=True)
        ]
        parts.append(f"{'training' if label == 'train' else label} {pct(values):+.1f} %")
    rest = [  # besides the spans, less the loop's own time outside them
        (off - sum(h.values()) - (lp_s - sum(lp.values()))) / lp_s
        for off, h, lp, lp_s in zip(
            runs.seconds["off"], spans["off"], spans[loop], loops, strict=True
        )
    ]
    parts.append(f"other {pct(rest):+.1f} %")
    report.add(
        section,
        Figure(
            "harness extra over the measuring loop (checks + edge sets off)",
            runs.ratio("off", loop) * 100 - 100,
            "of the loop's time: " + ", ".join(parts),
            unit=" %",
        ),
    )
    for label in ("edge sets", "properties", "differential"):
        seconds = [h.get(label, 0.0) for h in spans["written"]]
        values = [x / t for x, t in zip(seconds, loops, strict=True)]
        report.add(
            section,
            Figure(
                f"cost of {label} (suite as written)",
                pct(values),
                f"of the loop's time; median {statistics.median(seconds):.1f} s",
                unit=" %",
            ),
        )


def measure_imports(plan: Plan, report: Report, log: Log) -> None:
    """``python -c "import harness.runner"`` against ``python -c "import torch, sklearn"``."""
    runs = Runs()
    codes = {"harness": "import harness.runner", "torch": "import torch, sklearn"}
    for rep in range(plan.imports):
        for name in ("harness", "torch") if rep % 2 == 0 else ("torch", "harness"):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", codes[name]], cwd=ROOT, check=True)
            runs.add(name, time.perf_counter() - start)
    log(f"imports: {runs.seconds}")
    report.add(
        "1. harness / hand-written loop (digits-mlp::magnitude-90, in process)",
        Figure(
            "import harness.runner / import torch, sklearn",
            runs.ratio("harness", "torch"),
            f"{runs.median('harness'):.2f} s / {runs.median('torch'):.2f} s "
            f"(subprocesses, median of {plan.imports})",
        ),
    )


def measure_size(plan: Plan, report: Report, log: Log) -> None:
    """Section 6: seconds per fold at several fold counts, per case at several case counts."""
    suite = load_suite(ROOT / SUITE)
    case = suite.case(CASE)
    section = "6. cost vs size (suite as written, serial, in process)"
    per_fold = {}
    for k in plan.fold_counts:
        r = harness_run(dataclasses.replace(suite, folds=k), case)
        per_fold[k] = r.seconds / k
        log(f"  {k} folds: {r.seconds:.1f} s")
    if plan.folds is not None:
        suite = dataclasses.replace(suite, folds=plan.folds)
    per_case = {}
    for n in plan.case_counts:
        cache = DenseCache()
        start = time.perf_counter()
        for c in suite.cases[:n]:
            run_case(suite, c, cache=cache)
        per_case[n] = (time.perf_counter() - start) / n
        log(f"  {n} cases: {per_case[n] * n:.1f} s")
    cases = suite.cases[: max(plan.case_counts)]
    first = min(per_case)
    added = ", ".join(
        f"{(per_case[n] * n - per_case[first] * first) / (n - first):.1f} s ({n} cases)"
        for n in per_case
        if n > first
    )
    rows = (
        (
            "fold",
            per_fold,
            "folds",
            "each fold trains on (k-1)/k of the data and validates on 1/k",
        ),
        (
            "case",
            per_case,
            "cases",
            f"the suite's first cases ({', '.join(c.name for c in cases)}: fine-tuning "
            f"{', '.join(str(_epochs(c)) for c in cases)} epochs) with one DenseCache, so the "
            f"first case of each count also trains the dense models; per case after the first: "
            f"{added}",
        ),
    )
    for what, costs, unit, note in rows:
        spread = max(costs.values()) / min(costs.values())
        linear = "linear" if spread <= LINEAR else "not linear"
        shown = ", ".join(f"{k} {unit}: {v:.1f} s" for k, v in costs.items())
        report.add(
            section,
            Figure(
                f"seconds per {what}: largest / smallest",
                spread,
                f"{shown} ({linear} within {LINEAR:.2f}x); {note}",
            ),
        )


def _epochs(case: CaseSpec) -> int:
    """Fine-tuning epochs of a case over all its pruning rounds."""
    rounds = case.prune.steps if case.prune.schedule != "oneshot" else 1
    return (case.finetune.epochs if case.finetune is not None else 0) * rounds


# --------------------------------------------------------------------------------------------
# the gate in subprocesses


def _pytest(args: Sequence[str], cwd: Path = ROOT) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the process tree it waited for) of a pytest run;
    a failing run ends the benchmark with its output's tail."""
    cmd = [sys.executable, "-m", "pytest", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        sys.exit(f"gate run failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def _entries(cache: Path) -> int:
    """Entry files of a disk cache (``<kind>/<2 hex>/<digest>.safetensors``)."""
    return sum(1 for _ in cache.glob("*/??/*.safetensors"))


def measure_gate(plan: Plan, report: Report, log: Log, tmp: Path) -> None:
    """Sections 2, 3 (and ``--mlflow``): the small gate cold, warm, warm dense-only, under
    xdist; one block per repetition, xdist before or after the serial chain in turn."""
    baselines = tmp / "baselines"
    shutil.copytree(ROOT / "baselines", baselines)
    runs = Runs()

    def gate(name: str, rep: int, cache: str, *extra: str, mlflow: bool = False) -> None:
        where = tmp / f"r{rep}"
        report_dir = where / f"report-{name.replace(' ', '-')}"
        if mlflow:  # from a temporary directory: MLflow's default artifact root is ./mlruns
            nodes = [str(ROOT / n) for n in plan.gate]
            tracking = ["--harness-mlflow-uri", f"sqlite:///{where / 'mlflow.db'}"]
        else:
            nodes, tracking = list(plan.gate), ["--harness-no-mlflow"]
        args = [
            *nodes,
            "-p",
            "no:cacheprovider",
            "-q",
            *tracking,
            "--harness-baselines",
            str(baselines),
            "--harness-report",
            str(report_dir),
            "--harness-cache",
            str(where / cache),
            *extra,
            *plan.pytest_args,
        ]
        where.mkdir(exist_ok=True)
        entries = _entries(where / cache)
        seconds, cpu = _pytest(args, cwd=where if mlflow else ROOT)
        runs.add(name, seconds)
        runs.add(f"{name} cpu", cpu)
        new = _entries(where / cache) - entries
        if name.startswith("warm") and new:  # a warm run that trained or measured again
            report.notes.append(
                f"the {name} gate run of repetition {rep + 1} wrote {new} new cache entries: "
                "something its keys hold changed since the cold run (the harness's code is "
                "edited meanwhile?), so it was partly cold"
            )
        log(f"  repetition {rep + 1}: {name}: {seconds:.1f} s, CPU {cpu:.1f} s (load {_load()})")

    serial = ("-p", "no:xdist")
    results = "--harness-cache-results"
    for rep in range(plan.gate_repeats):

        def chain(rep: int = rep) -> None:
            gate("cold", rep, "cache-serial", *serial, results)
            gate("warm", rep, "cache-serial", *serial, results)
            gate("warm dense", rep, "cache-serial", *serial)

        def xdist(rep: int = rep) -> None:
            gate("xdist cold", rep, "cache-xdist", "-n", "2", "--dist", "load", results)

        def logged(rep: int = rep) -> None:
            gate("mlflow cold", rep, "cache-mlflow", *serial, results, mlflow=True)

        blocks = [chain, xdist, *([logged] if plan.mlflow else [])]
        for block in blocks if rep % 2 == 0 else blocks[::-1]:
            block()

    n = f"median of {plan.gate_repeats}"
    cases = " ".join(plan.gate)
    section = f"2. disk cache, warm / cold (pytest {cases})"
    cold = runs.median("cold")
    report.add(
        section,
        Figure(
            "warm (--harness-cache-results) / cold",
            runs.ratio("warm", "cold"),
            f"{runs.median('warm'):.1f} s / {cold:.1f} s ({n}); CPU "
            f"{runs.median('warm cpu'):.1f} s / {runs.median('cold cpu'):.1f} s",
            bar=WARM_BAR,
        ),
    )
    report.add(
        section,
        Figure(
            "warm, dense models only / cold",
            runs.ratio("warm dense", "cold"),
            f"{runs.median('warm dense'):.1f} s / {cold:.1f} s ({n}); CPU "
            f"{runs.median('warm dense cpu'):.1f} s / {runs.median('cold cpu'):.1f} s",
        ),
    )
    section = "3. xdist -n 2 --dist load / serial (same gate, each cold)"
    report.add(
        section,
        Figure(
            "-n 2 / serial",
            runs.ratio("xdist cold", "cold"),
            f"{runs.median('xdist cold'):.1f} s / {cold:.1f} s ({n}); speed-up "
            f"{1 / runs.ratio('xdist cold', 'cold'):.2f}x on {os.cpu_count()} cores",
            bar=XDIST_BAR,
        ),
    )
    report.add(
        section,
        Figure(
            "-n 2 / serial, CPU time (the work done, whatever else runs)",
            runs.ratio("xdist cold cpu", "cold cpu"),
            f"{runs.median('xdist cold cpu'):.1f} s / {runs.median('cold cpu'):.1f} s of CPU; "
            f"serial used {runs.median('cold cpu') / cold:.2f} of a core on average, -n 2 "
            f"{runs.median('xdist cold cpu') / runs.median('xdist cold'):.2f} cores",
        ),
    )
    if plan.mlflow:
        report.add(
            section,
            Figure(
                "with MLflow (fresh SQLite store) / without, cold serial",
                runs.ratio("mlflow cold", "cold"),
                f"{runs.median('mlflow cold'):.1f} s / {cold:.1f} s ({n})",
            ),
        )


# --------------------------------------------------------------------------------------------


def _machine() -> str:
    import torch

    from harness import numerics

    cores = _cores()
    return (
        f"{cpu_name()}, {cores} cores usable ({os.cpu_count()} online), "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, numerics {numerics.current().describe()}"
    )


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _plan(opts: argparse.Namespace, extra: list[str]) -> Plan:
    if opts.quick:
        return Plan(
            repeats=opts.repeats or 1,
            executor_repeats=min(2, opts.repeats or 1),
            gate_repeats=opts.gate_repeats or 1,
            imports=1,
            folds=2,
            fold_counts=(2, 3),
            case_counts=(1, 2),
            gate=tuple(opts.gate) if opts.gate else QUICK_GATE,
            mlflow=opts.mlflow,
            pytest_args=tuple(extra),
            quick=True,
        )
    return Plan(
        repeats=opts.repeats or 3,
        executor_repeats=min(2, opts.repeats or 3),
        gate_repeats=opts.gate_repeats or 1,
        imports=3,
        folds=None,
        fold_counts=(2, 4, 8),
        case_counts=(1, 2, 4),
        gate=tuple(opts.gate) if opts.gate else GATE,
        mlflow=opts.mlflow,
        pytest_args=tuple(extra),
        quick=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 repetition, 2 folds, a one-suite gate (figures not for comparison)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="in-process repetitions (3)")
    parser.add_argument("--gate-repeats", type=int, default=None, help="gate repetitions (1)")
    parser.add_argument(
        "--mlflow", action="store_true", help="also time the gate with MLflow logging"
    )
    parser.add_argument(
        "--gate",
        nargs="+",
        default=None,
        metavar="NODE",
        help="the gate of sections 2-3 (default: four cases; `--gate suites`: the whole "
        "reference gate, about 20 minutes on 2 cores)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as markdown")
    opts, extra = parser.parse_known_args()
    for name in ("repeats", "gate_repeats"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} = {value}: must be >= 1")
    plan = _plan(opts, extra)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "benchmarks/bench_gate.py", *sys.argv[1:]])
    t0 = time.perf_counter()

    loads: list[float] = []  # the 1-minute load average at every step

    def log(text: str) -> None:
        with contextlib.suppress(OSError, AttributeError):
            loads.append(os.getloadavg()[0])
        print(f"[{time.perf_counter() - t0:6.0f} s] {text}", file=sys.stderr, flush=True)

    report = Report()
    log(f"plan: {plan}")
    measure_cases(plan, report, log)
    measure_imports(plan, report, log)
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        measure_gate(plan, report, log, Path(tmp))
    measure_size(plan, report, log)
    elapsed = time.perf_counter() - t0
    cores = _cores()
    if loads:
        report.notes.append(
            f"1-minute load average at each step: {min(loads):.1f} to {max(loads):.1f} on "
            f"{cores} cores (this run's own processes count about 1, 2 under -n 2 and the "
            f"executors); the whole run took {elapsed / 60:.1f} min"
        )
    if MISSING_SPANS:
        report.notes.append(
            f"not recorded (no longer in the harness; their time counts as other): "
            f"{', '.join(sorted(MISSING_SPANS))}: update SPANS in benchmarks/bench_gate.py"
        )
    if loads and max(loads) > cores + 1:
        report.notes.append(
            "at times other processes competed for the CPU: that caps what -n 2 and the "
            "executors' two workers can gain, and widens the per-repetition spread (the CPU-time "
            "ratios show the work, the wall-time ratios what this machine gave)"
        )
    machine = _machine()
    print(f"{command}\n{machine}\n{started}", end="")
    print("\n".join(report.lines()))
    if opts.out is not None:
        opts.out.write_text(report.markdown(machine, command, started, plan), encoding="utf-8")
        print(f"\nwritten to {opts.out}")


if __name__ == "__main__":
    main()
