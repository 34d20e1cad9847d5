"""Suite and case specification: frozen dataclasses, TOML loading and structural validation.

A suite file is TOML with a ``[suite]`` table, optional ``[cv]``, ``[train]``, ``[latency]``,
``[checks]``, ``[edge]`` and ``[gate]`` tables, and one ``[[case]]`` table per pruning case. A spec
is data: every field declares its type and check (:mod:`harness.schema`), validated however the
dataclass is built (a TOML file, Python, ``dataclasses.replace``), and nothing here imports the
ML stack. Whether a spec fits the real dataset, model and method arguments is checked separately
by :func:`harness.resolution.resolve`. Every user error is one :class:`SpecError` line naming the
file, the key and the value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from harness._util import name_problem
from harness.edgesets import parse_edge
from harness.metricnames import UnknownMetricError, rule_target
from harness.schema import (
    MISSING,
    Marker,
    SpecError,
    Table,
    checked,
    located,
    option,
    validate,
)

__all__ = [
    "BOUNDS",
    "DEFAULT_FLAGS",
    "DEFAULT_RULES",
    "MISSING",
    "CaseSpec",
    "ChecksSpec",
    "DistillSpec",
    "FrontSpec",
    "LatencySpec",
    "Marker",
    "PruneSpec",
    "RuleSpec",
    "SpecError",
    "SuiteSpec",
    "TrainSpec",
    "load_suite",
    "suite_from_dict",
]

Optimizer = Literal["adam", "adamw", "sgd"]
Scheduler = Literal["constant", "cosine", "step", "onecycle", "plateau"]
Schedule = Literal["oneshot", "iterative", "agp"]
Scope = Literal["global", "layer"]
Policy = Literal["threshold", "significant", "non_inferior"]
Severity = Literal["fail", "warn"]  # a failing "warn" rule flags the verdict, never fails it
Deploy = Literal["csr", "onnx", "int8", "2:4"]
Numerics = Literal["portable", "native"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
SCOPES: tuple[str, ...] = get_args(Scope)
POLICIES: tuple[str, ...] = get_args(Policy)
SEVERITIES: tuple[str, ...] = get_args(Severity)
DEPLOY: tuple[str, ...] = get_args(Deploy)
RULE_KEYS = ("max_drop", "max_rel_drop", "min", "max")

# Upper bounds on every count and size a suite sets (README, "Guarantees"): far above any real
# use, low enough that a typo (10**9 epochs) is refused at once instead of running until CI's
# timeout or running out of memory.
BOUNDS: dict[str, int] = {
    "seed": 2**32 - 1,  # numpy's and scikit-learn's seed range
    "threads": 1024,
    "cv.folds": 1000,
    "cv.repeats": 100,
    "train.epochs": 100_000,
    "train.batch_size": 1_000_000,
    "train.step_size": 100_000,
    "prune.steps": 1000,
    "latency.batch": 65_536,
    "latency.warmup": 100_000,
    "latency.repeats": 100_000,
    "checks.examples": 100_000,
    "time_budget": 7 * 24 * 3600,  # seconds
}


def _count(key: str, low: int = 1) -> Callable[[int], str | None]:
    """An integer in ``[low, BOUNDS[key]]``."""
    high = BOUNDS[key]

    def check(value: int) -> str | None:
        if value < low:
            return "must be > 0" if low == 1 else f"must be >= {low}"
        return None if value <= high else f"must be <= {high} (the harness's bound)"

    return check


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _unit(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _probability(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def _sparsity(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _budget(value: float) -> str | None:
    """A time budget in seconds: > 0 and at most ``BOUNDS["time_budget"]``."""
    if value <= 0:
        return "must be > 0 (seconds)"
    high = BOUNDS["time_budget"]
    return None if value <= high else f"must be <= {high} seconds (the harness's bound)"


def _name(value: str) -> str | None:
    return name_problem(value)


def _reference(value: str) -> str | None:
    """A ``"module:callable"`` reference (whether it imports is for resolution)."""
    module, sep, attr = value.partition(":")
    return None if sep and module and attr else 'must look like "module:callable"'


DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d{1,3}|mps|auto)$")


def device_problem(value: str) -> str | None:
    """The problem with a device name (``harness.devices`` resolves it), or None."""
    if DEVICE_RE.match(value):
        return None
    return 'must be "cpu", "cuda", "cuda:N", "mps" or "auto"'


def _device(value: str) -> str | None:
    return device_problem(value)


EXECUTORS = ("serial", "process", "ray")  # harness.executors implements them


def executor_problem(value: str) -> str | None:
    """The problem with an executor name, or None."""
    return None if value in EXECUTORS else 'must be "serial", "process" or "ray"'


def _executor(value: str) -> str | None:
    return executor_problem(value)


def _test_split(value: str | float) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else "must be a dataset reference or a fraction in (0, 1)"
    return None if 0 < value < 1 else "a held-out fraction must be in (0, 1)"


def _dataset_ref(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _pattern(value: str) -> str | None:
    """``"N:M"``: keep ``N`` of every ``M`` consecutive input weights (``0 < N < M <= 64``)."""
    parsed = nm_pattern(value)
    return None if parsed is not None else 'must be "N:M" with integers 0 < N < M <= 64 ("2:4")'


def nm_pattern(value: str | None) -> tuple[int, int] | None:
    """``(N, M)`` of an ``"N:M"`` pattern string; None for None or anything malformed."""
    if value is None:
        return None
    found = re.fullmatch(r"\s*(\d{1,3})\s*:\s*(\d{1,3})\s*", value, re.ASCII)
    if found is None:
        return None
    n, m = int(found[1]), int(found[2])
    return (n, m) if 0 < n < m <= 64 else None


def _prune_table(prune: PruneSpec) -> dict[str, Any]:
    """``prune`` as a plain table for hashing: keys added later only when set, so the hashes of
    cases written before them (and their baselines) stay what they were."""
    table = asdict(prune)
    if table["pattern"] is None:
        del table["pattern"]
    return table


def _finite_tree(value: Mapping[str, Any]) -> str | None:
    found = _non_finite(dict(value), "")
    return None if found is None else f"{found[0].lstrip('.')} = {found[1]!r}: must be finite"


def _non_finite(value: Any, key: str) -> tuple[str, Any] | None:
    """The first non-finite number inside ``value`` (nested tables and arrays), as (key, value)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if found := _non_finite(v, f"{key}.{k}" if isinstance(k, str) else f"{key}[{k}]"):
                return found
    return None


def _edge_texts(value: tuple[str, ...]) -> str | None:
    names: dict[str, str] = {}
    for text in value:
        try:
            edge = parse_edge(text)
        except ValueError as err:
            return str(err)
        if edge.name in names:
            return f"{text!r}: same metric name {edge.name!r} as {names[edge.name]!r}"
        names[edge.name] = text
    return None


def _rule_key(value: str) -> str | None:
    try:
        rule_target(value)
    except UnknownMetricError as err:
        return f"unknown metric ({err})"
    return None


def _plain_metric(value: str) -> str | None:
    """A metric a result has one value of: no ``vs_dense.`` comparison, no ``class_*``."""
    if (problem := _rule_key(value)) is not None:
        return problem
    ref, vs_dense = rule_target(value)
    if vs_dense or ref.wildcard:
        return "must name one metric (no vs_dense., no class_*)"
    return None


def _conditions(value: Mapping[str, Any]) -> str | None:
    for name, bound in value.items():
        if (problem := _plain_metric(name)) is not None:
            return f"{name!r}: {problem}"
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            return f"{name!r}: the lower bound must be a number"
        if not math.isfinite(bound):
            return f"{name!r}: the lower bound must be finite"
    return None


@dataclass(frozen=True)
class TrainSpec:
    """How to train (dense) or fine-tune (after each pruning round)."""

    epochs: int = option(20, check=_count("train.epochs", 0))  # 0: use the model as it is
    lr: float = option(1e-3, check=_positive)
    optimizer: Optimizer = "adam"
    scheduler: Scheduler = "cosine"
    batch_size: int = option(64, check=_count("train.batch_size"))
    weight_decay: float = option(0.0, check=_non_negative)
    momentum: float = option(0.9, check=_non_negative)
    step_size: int = option(10, check=_count("train.step_size"))
    gamma: float = option(0.1, check=_positive)

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> Iterator[tuple[str, Any, str]]:
        if self.scheduler == "plateau" and not 0 < self.gamma < 1:
            yield "gamma", self.gamma, 'must be > 0 and < 1 with scheduler = "plateau"'
        if self.weight_decay * self.lr >= 1:
            yield (
                "weight_decay",
                self.weight_decay,
                f"times lr ({self.lr:g}) must be < 1 (it diverges)",
            )


@dataclass(frozen=True)
class PruneSpec:
    """Which pruning technique, how much, and on what schedule. ``args`` are the method's own
    (checked against its ``Args`` by :func:`harness.resolution.resolve`)."""

    method: str = field(metadata=checked(_dataset_ref))
    sparsity: float = field(metadata=checked(_sparsity))
    scope: Scope = "global"
    schedule: Schedule = "oneshot"
    steps: int = option(1, check=_count("prune.steps"))
    args: Mapping[str, Any] = option(default_factory=dict, check=_finite_tree)
    # "N:M" semi-structured sparsity: N of every M consecutive input weights kept (None: any)
    pattern: str | None = option(None, check=_pattern)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of :attr:`pattern`, or None (unstructured / structured as the method is)."""
        return nm_pattern(self.pattern)

    def problems(self) -> Iterator[tuple[str, Any, str]]:
        if self.schedule == "oneshot" and self.steps != 1:
            yield "steps", self.steps, 'must be 1 with schedule = "oneshot"'
        nm = self.nm
        if nm is not None and not math.isclose(self.sparsity, 1 - nm[0] / nm[1]):
            yield (
                "sparsity",
                self.sparsity,
                f"must be 1 - N/M = {1 - nm[0] / nm[1]:g} with pattern = {self.pattern!r}",
            )


@dataclass(frozen=True)
class RuleSpec:
    """One gate rule as written: ``"pruned.f1_macro" = { max_drop = 0.01 }``."""

    metric: str = field(metadata=checked(_rule_key))
    max_drop: float | None = option(None, check=_non_negative)
    max_rel_drop: float | None = option(None, check=_non_negative)
    min: float | None = None
    max: float | None = None
    policy: Policy = "threshold"  # how max_drop is judged over the folds (harness.stats)
    alpha: float = option(0.05, check=_probability)
    # "warn": a failing check flags the verdict (a note in the terminal and job summary) and
    # never fails the build; "fail" (default): it fails the case
    severity: Severity = "fail"
    # applies only where every named metric of the result is >= its bound (else skipped with a
    # note): ``when_min = { flops_reduction = 0.2 }``; None: always
    when_min: Mapping[str, float] | None = option(None, check=_conditions)

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> Iterator[tuple[str, Any, str]]:
        if self.policy != "threshold" and self.max_drop is None:
            yield "policy", self.policy, "needs max_drop (the margin it tests against)"
        if all(getattr(self, k) is None for k in RULE_KEYS):
            yield "", {}, f"a rule needs one of {', '.join(RULE_KEYS)}"
        if self.min is not None and self.max is not None and self.min > self.max:
            yield "min", self.min, f"must be <= max ({self.max})"


@dataclass(frozen=True)
class FrontSpec:
    """``[gate.front]``: a case fails when another case's stored baseline beats it on the
    suite's (quality, cost) trade-off by more than ``margin``: that baseline's ``cost`` is <=
    this case's and its ``quality`` > this case's + ``margin`` (harness.gate.front_check).
    Directions come from the metric names. The default cost counts operations, so the rule
    means the same on every machine; a hardware-bound cost (a latency) is compared only with
    baselines of the same machine (``--harness-base``)."""

    quality: str = option("pruned.f1_macro", check=_plain_metric)
    cost: str = option("pruned.flops_nonzero", check=_plain_metric)
    margin: float = option(0.01, check=_non_negative)

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> Iterator[tuple[str, Any, str]]:
        if self.quality == self.cost:
            yield "cost", self.cost, "must differ from quality (a front needs two axes)"


@dataclass(frozen=True)
class DistillSpec:
    """Knowledge distillation (Hinton et al. 2015) from the dense model while fine-tuning."""

    temperature: float = option(4.0, check=_positive)
    alpha: float = option(0.7, check=_unit)  # weight of the soft-target term; 1 - alpha: labels

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class CaseSpec:
    """One pruning case of a suite."""

    name: str = field(metadata=checked(_name))
    prune: PruneSpec
    finetune: TrainSpec | None = None
    gate: tuple[RuleSpec, ...] = ()
    edge: tuple[str, ...] | None = option(None, check=_edge_texts)  # None: the suite's sets
    distill: DistillSpec | None = None  # fine-tune against the dense model's soft targets
    # how the pruned model ships: "csr" (torch sparse CSR linear layers), "onnx" (ONNX Runtime),
    # "int8" (dynamic int8 linear layers), "2:4" (torch semi-structured sparse kernels, CUDA)
    deploy: Deploy | None = None
    model: str | None = option(None, check=_reference)  # None: the suite's model
    model_args: Mapping[str, Any] | None = None  # None: the suite's model_args

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> Iterator[tuple[str, Any, str]]:
        if self.distill is not None and self.finetune is None:
            yield "distill", asdict(self.distill), "needs a finetune table to train in"


@dataclass(frozen=True)
class ChecksSpec:
    """Per-case checks of the pruned model (harness.checks): hypothesis-driven properties and
    the dense-vs-pruned differential search near validation samples."""

    properties: bool = True
    differential: bool = True
    radius: float = option(0.5, check=_positive)  # L-inf radius, in standardized units
    examples: int = option(40, check=_count("checks.examples"))  # hypothesis examples per search

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class LatencySpec:
    """Latency measurement: warm-up and timed repeats at batch 1 and at ``batch``."""

    batch: int = option(256, check=_count("latency.batch"))
    warmup: int = option(10, check=_count("latency.warmup", 0))
    repeats: int = option(50, check=_count("latency.repeats"))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class SuiteSpec:
    """A suite: one dataset and model, k-fold settings, dense training, gate defaults, cases."""

    name: str = field(metadata=checked(_name))
    dataset: str = field(metadata=checked(_dataset_ref))
    model: str = field(metadata=checked(_reference))
    cases: tuple[CaseSpec, ...]
    model_args: Mapping[str, Any] = field(default_factory=dict)
    dataset_args: Mapping[str, Any] = field(default_factory=dict)
    seed: int = option(0, check=_count("seed", 0))
    threads: int = option(1, check=_count("threads"))
    folds: int = option(5, check=_count("cv.folds", 2))
    repeats: int = option(1, check=_count("cv.repeats"))  # every sample validated `repeats` times
    # None: `seed` (a different value keeps the models, changes the folds)
    fold_seed: int | None = option(None, check=_count("seed", 0))
    standardize: bool = True  # features scaled per training fold; false: as the data has them
    # a fixed test split every fold's models are also measured on: a dataset reference
    # ("npz:heldout.npz", any dataset name) or a fraction of the dataset held out (stratified,
    # by `test_seed`, default the folds' seed); the k folds split what remains
    test: str | float | None = option(None, check=_test_split)
    test_seed: int | None = option(None, check=_count("seed", 0))
    checkpoint: str | None = option(None, check=_dataset_ref)  # [dense]: a state_dict file
    train: TrainSpec = field(default_factory=TrainSpec)
    latency: LatencySpec = field(default_factory=LatencySpec)
    checks: ChecksSpec = field(default_factory=ChecksSpec)
    gate: tuple[RuleSpec, ...] = ()
    # [gate.front]: opt-in rule against the front of the suite's other baselines (None: off)
    front: FrontSpec | None = None
    edge: tuple[str, ...] = option((), check=_edge_texts)  # edge-case sets for every case
    source: str = "<python>"
    numerics: Numerics | None = None  # None: the session's (harness.numerics)
    time_budget: float | None = option(None, check=_budget)  # seconds per case (not hashed)
    # where models train and run (not hashed: the hardware fingerprint records the device)
    device: str = option("cpu", check=_device)
    # where the folds run: serial, process or ray (not hashed: the results are the same);
    # None: the session's (--harness-executor), else serial
    executor: str | None = option(None, check=_executor)

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> Iterator[tuple[str, Any, str]]:
        if not self.cases:
            yield "cases", MISSING, "a suite needs at least one [[case]]"
        seen: set[str] = set()
        for case in self.cases:
            if case.name in seen:
                yield f"case[{case.name}].name", case.name, "duplicate case name"
            seen.add(case.name)

    @property
    def cv_seed(self) -> int:
        return self.seed if self.fold_seed is None else self.fold_seed

    @property
    def split_seed(self) -> int:
        """Seed of a held-out fraction (``test_seed``, default the folds' seed)."""
        return self.cv_seed if self.test_seed is None else self.test_seed

    def edge_sets(self, case: CaseSpec) -> tuple[str, ...]:
        return self.edge if case.edge is None else case.edge

    def for_case(self, case: CaseSpec) -> SuiteSpec:
        """The suite as ``case`` runs it: its own ``model`` / ``model_args`` where it sets them
        (a dense model of its own), the suite's otherwise (the same object when it sets none)."""
        if case.model is None and case.model_args is None:
            return self
        return replace(
            self,
            model=case.model if case.model is not None else self.model,
            model_args=case.model_args if case.model_args is not None else self.model_args,
        )

    def case(self, name: str) -> CaseSpec:
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(f"{self.source}: no case named {name!r} (cases: {self.case_names()})")

    def case_names(self) -> str:
        return ", ".join(c.name for c in self.cases)

    @property
    def base_dir(self) -> Path:
        """Directory that relative data paths in this suite are resolved against."""
        return Path(self.source).parent if not self.source.startswith("<") else Path.cwd()

    def dense_key(self) -> str:
        """Hash of everything that determines the dense models (data, model, folds, training)."""
        return _digest(
            {
                "dataset": self.dataset,
                "dataset_args": dict(self.dataset_args),
                "model": self.model,
                "model_args": dict(self.model_args),
                "seed": self.seed,
                "threads": self.threads,
                "folds": self.folds,
                "train": asdict(self.train),
                # added later: part of the hash only when set, so older baselines stay valid
                **({"repeats": self.repeats} if self.repeats != 1 else {}),
                **({"fold_seed": self.cv_seed} if self.cv_seed != self.seed else {}),
                **({"standardize": False} if not self.standardize else {}),
                **({"checkpoint": self.checkpoint} if self.checkpoint is not None else {}),
                **({"test": self.test, "test_seed": self.split_seed} if self.test else {}),
            }
        )

    def spec_hash(self, case: CaseSpec) -> str:
        """Hash of the normalized spec that determines a case's metrics (gate rules excluded)."""
        return _digest(
            {
                "dense": self.for_case(case).dense_key(),
                "latency": asdict(self.latency),
                "prune": _plain(_prune_table(case.prune)),
                "finetune": asdict(case.finetune) if case.finetune else None,
                **({"edge": list(self.edge_sets(case))} if self.edge_sets(case) else {}),
                **({"checks": asdict(self.checks)} if self.checks != ChecksSpec() else {}),
                **({"distill": asdict(case.distill)} if case.distill else {}),
                **({"deploy": case.deploy} if case.deploy else {}),
            }
        )

    def rules(self, case: CaseSpec) -> tuple[RuleSpec, ...]:
        """Suite rules (``DEFAULT_RULES`` if the suite has no ``[gate]``) overridden per metric by
        the case's own rules."""
        merged = {r.metric: r for r in self.gate or DEFAULT_RULES}
        merged.update({r.metric: r for r in case.gate})
        return tuple(merged.values())

    def all_rules(self, case: CaseSpec) -> tuple[RuleSpec, ...]:
        """What the gate applies to ``case``: :meth:`rules`, then every rule of
        :data:`DEFAULT_FLAGS` on a metric none of them names (a suite or case rule on the same
        metric replaces the flag, e.g. to make it fail)."""
        rules = self.rules(case)
        named = {r.metric for r in rules}
        return rules + tuple(f for f in DEFAULT_FLAGS if f.metric not in named)


DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RuleSpec("pruned.f1_macro", max_drop=0.01),
    RuleSpec("pruned.accuracy", max_drop=0.01),
    RuleSpec("vs_dense.f1_macro", max_drop=0.05),
    # a pruned model that returns NaN / inf for extreme inputs, or breaks batch invariance or
    # determinism, fails by default (skipped with a note where the checks are off)
    RuleSpec("property_failures", max=0.0),
)
# Advisory rules every suite gets, whatever its [gate] says (unless it writes a rule on the same
# metric): they flag a verdict and never fail it. The FLOPs fell by a fifth or more, but less
# than half of that reduction shows up as batch speed on a log scale (speedup_vs_flops < 0.5,
# speedup < sqrt(FLOPs factor)): the kernels that ran do not exploit this sparsity (dense
# kernels on zeroed weights, the usual case on CPU; such a case reads 0 +- noise). A same-run
# ratio: judged on any machine, with or without a baseline.
DEFAULT_FLAGS: tuple[RuleSpec, ...] = (
    RuleSpec("speedup_vs_flops", min=0.5, severity="warn", when_min={"flops_reduction": 0.2}),
)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _digest(obj: Any) -> str:
    text = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loading (structural: types, ranges, enums, unknown keys)


FRONT = "front"  # [gate.front]: not a metric name


def _rules(table: Table, *, suite: bool = False) -> tuple[RuleSpec, ...]:
    rules = []
    for metric in list(table.data):
        if metric == FRONT and suite:
            continue
        if metric == FRONT:
            raise table.fail(metric, table.data[metric], "only in the suite's [gate] table")
        if (problem := _rule_key(metric)) is not None:
            raise table.fail(metric, table.data[metric], problem)
        rules.append(table.sub(metric).build(RuleSpec, metric=metric))
    table.done()
    return tuple(rules)


def _gate(table: Table) -> tuple[tuple[RuleSpec, ...], FrontSpec | None]:
    """The suite's ``[gate]``: its rules and its ``[gate.front]`` table (None when absent)."""
    front = table.sub(FRONT).build(FrontSpec) if FRONT in table.data else None
    return _rules(table, suite=True), front


def _edge(table: Table, key: str) -> tuple[str, ...]:
    texts = table.take(key, tuple[str, ...], ())
    for i, text in enumerate(texts):
        if (problem := _edge_texts(texts[: i + 1])) is not None:
            raise table.fail(key, text, problem)
    return tuple(texts)


def _prune(table: Table) -> PruneSpec:
    schedule = table.take_field(PruneSpec, "schedule")
    steps = table.take_field(PruneSpec, "steps", default=1 if schedule == "oneshot" else 3)
    args = table.take("args", dict, {})
    if (found := _non_finite(args, "args")) is not None:
        raise table.fail(found[0], found[1], "must be finite")
    return table.build(PruneSpec, schedule=schedule, steps=steps, args=args)


def _case(raw: Any, index: int, source: str, train: TrainSpec) -> CaseSpec:
    label = raw.get("name", index) if isinstance(raw, dict) else index
    table = Table(raw, source, f"case[{label}]")
    name = table.take_field(CaseSpec, "name")
    given: dict[str, Any] = {"name": name, "prune": _prune(table.sub("prune"))}
    if "finetune" in table.data:
        given["finetune"] = table.sub("finetune").build(TrainSpec, defaults=train)
    given["gate"] = _rules(table.sub("gate"))
    given["edge"] = _edge(table, "edge") if "edge" in table.data else None
    if "distill" in table.data:
        given["distill"] = table.sub("distill").build(DistillSpec)
    return table.build(CaseSpec, **given)


def suite_from_dict(data: Mapping[str, Any], source: str = "<python>") -> SuiteSpec:
    """Validate a suite given as a dict (the parsed TOML) and build its :class:`SuiteSpec`.

    Structural only: nothing is imported, loaded or built (see :func:`harness.resolution.resolve`).

    Raises
    ------
    SpecError
        On the first invalid key, naming the source, the key and the value.
    """
    top = Table(data, source, "")
    suite = top.sub("suite")
    default_name = Path(source).stem if not source.startswith("<") else "suite"
    name = suite.take_field(SuiteSpec, "name", default=default_name)
    if (problem := _name(name)) is not None:  # the file's stem, when no name is written
        raise suite.fail("name", name, problem)
    given: dict[str, Any] = {
        "name": name,
        "dataset": suite.take_field(SuiteSpec, "dataset"),
        "dataset_args": suite.take_field(SuiteSpec, "dataset_args"),
        "model": suite.take_field(SuiteSpec, "model", default="harness.models:mlp"),
        "model_args": suite.take_field(SuiteSpec, "model_args"),
        "seed": suite.take_field(SuiteSpec, "seed"),
        "threads": suite.take_field(SuiteSpec, "threads"),
        "numerics": suite.take_field(SuiteSpec, "numerics"),
        "time_budget": suite.take_field(SuiteSpec, "time_budget"),
        "device": suite.take_field(SuiteSpec, "device"),
        "executor": suite.take_field(SuiteSpec, "executor"),
    }
    suite.done()
    cv = top.sub("cv")
    given["folds"] = cv.take_field(SuiteSpec, "folds")
    given["repeats"] = cv.take_field(SuiteSpec, "repeats")
    given["fold_seed"] = cv.take_field(SuiteSpec, "fold_seed", "seed")
    given["standardize"] = cv.take_field(SuiteSpec, "standardize")
    given["test"] = cv.take_field(SuiteSpec, "test")
    given["test_seed"] = cv.take_field(SuiteSpec, "test_seed")
    cv.done()
    dense = top.sub("dense")
    given["checkpoint"] = dense.take_field(SuiteSpec, "checkpoint")
    dense.done()
    given["train"] = top.sub("train").build(TrainSpec)
    given["latency"] = top.sub("latency").build(LatencySpec)
    given["checks"] = top.sub("checks").build(ChecksSpec)
    given["gate"], given["front"] = _gate(top.sub("gate"))
    edge = top.sub("edge")
    given["edge"] = _edge(edge, "sets")
    edge.done()
    top.seen.add("case")
    raw_cases = data.get("case", [])
    if not isinstance(raw_cases, list) or not raw_cases:
        shown_value = raw_cases if raw_cases else MISSING
        raise SpecError(source, "case", shown_value, "a suite needs at least one [[case]]")
    # a duplicate name is SuiteSpec.problems()'s to say, as for a suite built in Python
    cases = [_case(raw, i, source, given["train"]) for i, raw in enumerate(raw_cases)]
    top.done()
    with located(source, ""):
        return SuiteSpec(cases=tuple(cases), source=source, **given)


def load_suite(path: str | Path) -> SuiteSpec:
    """Read and validate a suite file.

    Raises
    ------
    SpecError
        If the file cannot be read, is not valid TOML, or any key is invalid.
    """
    path = Path(path)
    source = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(source, "<file>", str(path), f"cannot read: {err}") from err
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as err:  # ValueError: digits
        problem = str(err) or "nested too deeply"
        raise SpecError(source, "<toml>", Marker("<invalid>"), f"invalid TOML: {problem}") from None
    return suite_from_dict(data, source)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
