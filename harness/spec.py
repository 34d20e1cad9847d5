"""Suite and case specification: frozen dataclasses, TOML loading and validation.

A suite file is TOML with a ``[suite]`` table, optional ``[cv]``, ``[train]``, ``[latency]`` and
``[gate]`` tables, and one ``[[case]]`` table per pruning case. Every user error is reported as one
:class:`SpecError` line naming the file, the key and the value.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness._util import HarnessError, name_problem, one_line, shown
from harness.numerics import MODES as NUMERICS_MODES

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "cosine", "step", "onecycle", "plateau")
SCHEDULES = ("oneshot", "iterative", "agp")
SCOPES = ("global", "layer")
RULE_KEYS = ("max_drop", "max_rel_drop", "min", "max")
POLICIES = ("threshold", "significant", "non_inferior")


class SpecError(HarnessError):
    """A suite file (or a spec built in Python) is invalid; ``str()`` is one line for the user."""

    def __init__(self, source: str, key: str, value: Any, problem: str) -> None:
        self.source, self.key, self.value, self.problem = source, key, value, problem
        text = str(value) if isinstance(value, Marker) else shown(value)
        text = f"{source}: {one_line(key)} = {text}: {one_line(problem)}"
        super().__init__(text)


class Marker(str):
    """A placeholder shown as is in messages (``<missing>``), unlike user values (repr'd)."""


MISSING = Marker("<missing>")


@dataclass(frozen=True)
class TrainSpec:
    """How to train (dense) or fine-tune (after each pruning round)."""

    epochs: int = 20
    lr: float = 1e-3
    optimizer: str = "adam"
    scheduler: str = "cosine"
    batch_size: int = 64
    weight_decay: float = 0.0
    momentum: float = 0.9
    step_size: int = 10
    gamma: float = 0.1


@dataclass(frozen=True)
class PruneSpec:
    """Which pruning technique, how much, and on what schedule."""

    method: str
    sparsity: float
    scope: str = "global"
    schedule: str = "oneshot"
    steps: int = 1
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleSpec:
    """One gate rule as written: ``"pruned.f1_macro" = { max_drop = 0.01 }``."""

    metric: str
    max_drop: float | None = None
    max_rel_drop: float | None = None
    min: float | None = None
    max: float | None = None
    policy: str = "threshold"  # how max_drop is judged over the folds (harness.stats)
    alpha: float = 0.05


@dataclass(frozen=True)
class DistillSpec:
    """Knowledge distillation (Hinton et al. 2015) from the dense model while fine-tuning."""

    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft-target term; 1 - alpha goes to the hard labels


DEPLOY = ("csr",)


@dataclass(frozen=True)
class CaseSpec:
    """One pruning case of a suite."""

    name: str
    prune: PruneSpec
    finetune: TrainSpec | None = None
    gate: tuple[RuleSpec, ...] = ()
    edge: tuple[str, ...] | None = None  # None: the suite's edge sets
    distill: DistillSpec | None = None  # fine-tune against the dense model's soft targets
    deploy: str | None = None  # "csr": sparse linear layers as torch sparse CSR (harness.deploy)


@dataclass(frozen=True)
class ChecksSpec:
    """Per-case checks of the pruned model (harness.checks): hypothesis-driven properties and
    the dense-vs-pruned differential search near validation samples."""

    properties: bool = True
    differential: bool = True
    radius: float = 0.5  # L-inf radius of the perturbations, in standardized units
    examples: int = 40  # hypothesis examples per search


@dataclass(frozen=True)
class LatencySpec:
    """Latency measurement: warm-up and timed repeats at batch 1 and at ``batch``."""

    batch: int = 256
    warmup: int = 10
    repeats: int = 50


@dataclass(frozen=True)
class SuiteSpec:
    """A suite: one dataset and model, k-fold settings, dense training, gate defaults, cases."""

    name: str
    dataset: str
    model: str
    cases: tuple[CaseSpec, ...]
    model_args: Mapping[str, Any] = field(default_factory=dict)
    dataset_args: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int = 1
    folds: int = 5
    repeats: int = 1  # repeated stratified k-fold: every sample is validated `repeats` times
    fold_seed: int | None = None  # None: `seed` (a different value keeps folds, changes models)
    train: TrainSpec = field(default_factory=TrainSpec)
    latency: LatencySpec = field(default_factory=LatencySpec)
    checks: ChecksSpec = field(default_factory=ChecksSpec)
    gate: tuple[RuleSpec, ...] = ()
    edge: tuple[str, ...] = ()  # edge-case sets (harness.data.edge) for every case
    source: str = "<python>"
    numerics: str | None = None  # "portable" | "native"; None: the session's (harness.numerics)
    time_budget: float | None = None  # seconds per case (not part of the spec hash)

    @property
    def cv_seed(self) -> int:
        return self.seed if self.fold_seed is None else self.fold_seed

    def edge_sets(self, case: CaseSpec) -> tuple[str, ...]:
        return self.edge if case.edge is None else case.edge

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
            }
        )

    def spec_hash(self, case: CaseSpec) -> str:
        """Hash of the normalized spec that determines a case's metrics (gate rules excluded)."""
        return _digest(
            {
                "dense": self.dense_key(),
                "latency": asdict(self.latency),
                "prune": _plain(asdict(case.prune)),
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


DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RuleSpec("pruned.f1_macro", max_drop=0.01),
    RuleSpec("pruned.accuracy", max_drop=0.01),
    RuleSpec("vs_dense.f1_macro", max_drop=0.05),
    # a pruned model that returns NaN / inf for extreme inputs, or breaks batch invariance or
    # determinism, fails by default (skipped with a note where the checks are off)
    RuleSpec("property_failures", max=0.0),
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
# Loading and validation


class _Table:
    """A TOML table being validated: typed ``take`` calls, then ``done`` rejects unknown keys."""

    def __init__(self, data: Any, source: str, path: str) -> None:
        if not isinstance(data, dict):
            raise SpecError(source, path, data, "must be a table")
        self.data, self.source, self.path = dict(data), source, path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, value: Any, problem: str) -> SpecError:
        return SpecError(self.source, self.key(name), value, problem)

    def take(
        self,
        name: str,
        kind: type | tuple[type, ...],
        default: Any = ...,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is ...:
                raise SpecError(self.source, self.key(name), MISSING, "required key")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise self.fail(name, value, f"must be {names}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(name, value, "must be finite")
        if check is not None and (problem := check(value)) is not None:
            raise self.fail(name, value, problem)
        return value

    def sub(self, name: str) -> _Table:
        self.seen.add(name)
        return _Table(self.data.get(name, {}), self.source, self.key(name))

    def done(self) -> None:
        for name in self.data:
            if name not in self.seen:
                raise self.fail(name, self.data[name], "unknown key")


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a table",
    list: "an array",
}


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


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


def _budget(value: float) -> str | None:
    """A time budget in seconds: > 0 and at most ``BOUNDS["time_budget"]``."""
    if value <= 0:
        return "must be > 0 (seconds)"
    high = BOUNDS["time_budget"]
    return None if value <= high else f"must be <= {high} seconds (the harness's bound)"


def _fraction_below_one(value: float) -> str | None:
    return None if 0 < value < 1 else "must be > 0 and < 1"


def _non_finite(value: Any, key: str) -> tuple[str, Any] | None:
    """The first non-finite number inside ``value`` (nested tables and arrays), as (key, value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if found := _non_finite(v, f"{key}.{k}" if isinstance(k, str) else f"{key}[{k}]"):
                return found
    return None


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _one_of(options: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}"

    return check


def _train(table: _Table, defaults: TrainSpec) -> TrainSpec:
    spec = TrainSpec(
        epochs=table.take("epochs", int, defaults.epochs, _count("train.epochs")),
        lr=table.take("lr", float, defaults.lr, _positive),
        optimizer=table.take("optimizer", str, defaults.optimizer, _one_of(OPTIMIZERS)),
        scheduler=table.take("scheduler", str, defaults.scheduler, _one_of(SCHEDULERS)),
        batch_size=table.take("batch_size", int, defaults.batch_size, _count("train.batch_size")),
        weight_decay=table.take("weight_decay", float, defaults.weight_decay, _non_negative),
        momentum=table.take("momentum", float, defaults.momentum, _non_negative),
        step_size=table.take("step_size", int, defaults.step_size, _count("train.step_size")),
        gamma=table.take("gamma", float, defaults.gamma, _positive),
    )
    if spec.scheduler == "plateau" and (problem := _fraction_below_one(spec.gamma)):
        raise table.fail("gamma", spec.gamma, f'{problem} with scheduler = "plateau"')
    if spec.weight_decay * spec.lr >= 1:
        raise table.fail(
            "weight_decay", spec.weight_decay, f"times lr ({spec.lr:g}) must be < 1 (it diverges)"
        )
    table.done()
    return spec


def _distill(table: _Table) -> DistillSpec:
    spec = DistillSpec(
        temperature=table.take("temperature", float, DistillSpec.temperature, _positive),
        alpha=table.take("alpha", float, DistillSpec.alpha, _unit),
    )
    table.done()
    return spec


def _unit(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _sparsity(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _prune(table: _Table) -> PruneSpec:
    from harness.pruning import registry

    method = table.take("method", str)
    if method not in registry.names():
        raise table.fail("method", method, f"unknown method (known: {', '.join(registry.names())})")
    schedule = table.take("schedule", str, "oneshot", _one_of(SCHEDULES))
    steps = table.take("steps", int, 1 if schedule == "oneshot" else 3, _count("prune.steps"))
    if schedule == "oneshot" and steps != 1:
        raise table.fail("steps", steps, 'must be 1 with schedule = "oneshot"')
    spec = PruneSpec(
        method=method,
        sparsity=table.take("sparsity", float, check=_sparsity),
        scope=table.take("scope", str, "global", _one_of(SCOPES)),
        schedule=schedule,
        steps=steps,
        args=table.take("args", dict, {}),
    )
    if (found := _non_finite(dict(spec.args), "args")) is not None:
        raise table.fail(found[0], found[1], "must be finite")
    table.done()
    if (problem := registry.get(method).check(spec)) is not None:
        raise table.fail("args", dict(spec.args), problem)
    return spec


_METRIC_NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


def _class_index(base: str) -> int | None:
    match = re.search(r"\.class_(\d+)$", base)
    return int(match.group(1)) if match else None


def _rules(table: _Table, n_classes: int) -> tuple[RuleSpec, ...]:
    from harness.metrics import UnknownMetricError, rule_target

    rules = []
    for metric in list(table.data):
        try:
            rule_target(metric)
        except UnknownMetricError as err:
            raise table.fail(metric, table.data[metric], f"unknown metric ({err})") from err
        body = table.sub(metric)
        values = {k: body.take(k, float, None) for k in RULE_KEYS}
        policy = body.take("policy", str, "threshold", _one_of(POLICIES))
        alpha = body.take("alpha", float, 0.05, _probability)
        body.done()
        if policy != "threshold" and values["max_drop"] is None:
            raise body.fail("policy", policy, "needs max_drop (the margin it tests against)")
        if all(v is None for v in values.values()):
            raise table.fail(
                metric, table.data[metric], f"a rule needs one of {', '.join(RULE_KEYS)}"
            )
        for k in ("max_drop", "max_rel_drop"):
            if values[k] is not None and values[k] < 0:
                raise body.fail(k, values[k], "must be >= 0")
        low, high = values["min"], values["max"]
        if low is not None and high is not None and low > high:
            raise body.fail("min", low, f"must be <= max ({high})")
        ref, _ = rule_target(metric)
        if (index := _class_index(ref.base)) is not None and index >= n_classes:
            raise table.fail(metric, table.data[metric], f"the dataset has {n_classes} classes")
        rules.append(RuleSpec(metric, **values, policy=policy, alpha=alpha))
    table.done()
    return tuple(rules)


def _probability(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def suite_from_dict(data: Mapping[str, Any], source: str = "<python>") -> SuiteSpec:
    """Validate a suite given as a dict (the parsed TOML) and build its :class:`SuiteSpec`.

    Raises
    ------
    SpecError
        On the first invalid key, naming the source, the key and the value.
    """
    from harness.data import registry as data_registry
    from harness.models import ModelError, resolve

    top = _Table(data, source, "")
    suite = top.sub("suite")
    name = suite.take("name", str, Path(source).stem if not source.startswith("<") else "suite")
    if (problem := name_problem(name)) is not None:
        raise suite.fail("name", name, problem)
    dataset = suite.take("dataset", str)
    dataset_args = suite.take("dataset_args", dict, {})
    base = Path(source).parent if not source.startswith("<") else Path.cwd()
    if (problem := data_registry.check(dataset, dataset_args, base)) is not None:
        raise suite.fail("dataset", dataset, problem)
    model = suite.take("model", str, "harness.models:mlp")
    try:
        resolve(model)
    except ModelError as err:
        raise suite.fail("model", model, str(err)) from err
    model_args = suite.take("model_args", dict, {})
    built = _check_model(suite, model, model_args, dataset, dataset_args, base)
    seed = suite.take("seed", int, 0, _count("seed", 0))
    threads = suite.take("threads", int, 1, _count("threads"))
    numerics = suite.take("numerics", str, None, _one_of(NUMERICS_MODES))
    time_budget = suite.take("time_budget", float, None, _budget)
    suite.done()

    cv = top.sub("cv")
    folds = cv.take("folds", int, 5, _count("cv.folds", 2))
    smallest = data_registry.smallest_class(dataset, dataset_args, base)
    if folds > smallest:
        raise cv.fail(
            "folds", folds, f"more folds than the smallest class has samples ({smallest})"
        )
    repeats = cv.take("repeats", int, 1, _count("cv.repeats"))
    fold_seed = cv.take("seed", int, None, _count("seed", 0))
    cv.done()

    train = _train(top.sub("train"), TrainSpec())
    lat = top.sub("latency")
    latency = LatencySpec(
        batch=lat.take("batch", int, 256, _count("latency.batch")),
        warmup=lat.take("warmup", int, 10, _count("latency.warmup", 0)),
        repeats=lat.take("repeats", int, 50, _count("latency.repeats")),
    )
    lat.done()
    ds = data_registry.load_dataset(dataset, dataset_args, base)
    n_classes = ds.n_classes
    gate = _rules(top.sub("gate"), n_classes)
    chk = top.sub("checks")
    checks = ChecksSpec(
        properties=chk.take("properties", bool, True),
        differential=chk.take("differential", bool, True),
        radius=chk.take("radius", float, 0.5, _positive),
        examples=chk.take("examples", int, 40, _count("checks.examples")),
    )
    chk.done()
    edge_table = top.sub("edge")
    edge = _edge_sets(edge_table, "sets", ds, base)
    edge_table.done()

    top.seen.add("case")
    raw_cases = data.get("case", [])
    if not isinstance(raw_cases, list) or not raw_cases:
        raise SpecError(
            source,
            "case",
            raw_cases if raw_cases else MISSING,
            "a suite needs at least one [[case]]",
        )
    cases: list[CaseSpec] = []
    for i, raw in enumerate(raw_cases):
        label = raw.get("name", i) if isinstance(raw, dict) else i
        table = _Table(raw, source, f"case[{label}]")
        case_name = table.take("name", str)
        if (problem := name_problem(case_name)) is not None:
            raise table.fail("name", case_name, problem)
        if any(c.name == case_name for c in cases):
            raise table.fail("name", case_name, "duplicate case name")
        prune = _prune(table.sub("prune"))
        _check_ignore(table, prune, built)
        finetune = _train(table.sub("finetune"), train) if "finetune" in table.data else None
        case_gate = _rules(table.sub("gate"), n_classes)
        case_edge = _edge_sets(table, "edge", ds, base) if "edge" in table.data else None
        distill = _distill(table.sub("distill")) if "distill" in table.data else None
        if distill is not None and finetune is None:
            raise table.fail("distill", table.data["distill"], "needs a finetune table to train in")
        deploy = table.take("deploy", str, None, _one_of(DEPLOY))
        table.done()
        cases.append(CaseSpec(case_name, prune, finetune, case_gate, case_edge, distill, deploy))
    top.done()
    return SuiteSpec(
        name=name,
        dataset=dataset,
        model=model,
        cases=tuple(cases),
        model_args=model_args,
        dataset_args=dataset_args,
        seed=seed,
        threads=threads,
        folds=folds,
        repeats=repeats,
        fold_seed=fold_seed,
        train=train,
        latency=latency,
        checks=checks,
        gate=gate,
        edge=edge,
        source=source,
        numerics=numerics,
        time_budget=time_budget,
    )


def _check_ignore(table: _Table, prune: PruneSpec, model: Any) -> None:
    """Every name in ``prune.args.ignore`` is a prunable layer of the model (a typo would
    otherwise prune the layer it meant to keep)."""
    from harness.pruning.base import prunable_modules

    names = prune.args.get("ignore")
    if not isinstance(names, list):
        return
    known = [n for n, _ in prunable_modules(model)]
    for name in names:
        if name not in known:
            raise SpecError(
                table.source,
                f"{table.path}.prune.args.ignore",
                name,
                f"no such prunable layer (the model has: {', '.join(known)})",
            )


def _edge_sets(table: _Table, key: str, dataset: Any, base: Path) -> tuple[str, ...]:
    """Edge-case set declarations (``"gaussian_noise:0.1"``, ``"npz:edge/hard.npz"``, ...)."""
    from harness.data.edge import check_edge, parse_edge

    texts = table.take(key, list, [])
    names: dict[str, str] = {}
    for text in texts:
        if not isinstance(text, str):
            raise table.fail(key, texts, "must be a list of strings")
        try:
            edge = parse_edge(text)
        except ValueError as err:
            raise table.fail(key, text, str(err)) from err
        problem = check_edge(edge, dataset, base)  # user files are loaded and checked too
        if problem is not None:
            raise table.fail(key, text, problem)
        if edge.name in names:
            raise table.fail(key, text, f"same metric name {edge.name!r} as {names[edge.name]!r}")
        names[edge.name] = text
    return tuple(texts)


def _check_model(
    table: _Table,
    model: str,
    model_args: dict[str, Any],
    dataset: str,
    dataset_args: dict[str, Any],
    base: Path,
) -> Any:
    from harness.data import load_dataset
    from harness.models import ModelError, build

    ds = load_dataset(dataset, dataset_args, base)
    try:
        built = build(model, ds.n_features, ds.n_classes, model_args)
    except ModelError as err:
        raise table.fail("model_args", model_args, str(err)) from err
    except MemoryError:
        raise table.fail("model_args", model_args, "out of memory building the model") from None
    return built


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


def import_callable(ref: str) -> Callable[..., Any]:
    """Import ``"module:callable"``; raises ``ImportError``/``AttributeError``/``ValueError``."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError('must look like "module:callable"')
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{ref} is not callable")
    return obj
