"""Result types and their one JSON codec: what a case measured (:class:`CaseResult`), what the
gate decided (:class:`Verdict`), and both together with where things were written
(:class:`Outcome`). Every type round-trips through ``to_dict`` / ``from_dict``; this module
imports nothing of the ML stack, so the gate, the reports and the CLI's ``baselines`` /
``compare`` work without torch.
"""

from __future__ import annotations

import json
import statistics
import uuid
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any


def summarize(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = float(statistics.fmean(values))
    std = float(statistics.stdev(values)) if len(values) > 1 else 0.0
    return mean, std


@dataclass(frozen=True)
class MetricSummary:
    """One metric over the folds (``folds`` empty for case-level metrics)."""

    folds: tuple[float, ...]
    mean: float
    std: float
    # percentile bootstrap 95 % CI of the mean over the test split's samples (test metrics)
    ci: tuple[float, float] | None = None

    @classmethod
    def of(cls, values: list[float], ci: tuple[float, float] | None = None) -> MetricSummary:
        mean, std = summarize(values)
        return cls(tuple(values), mean, std, ci)

    def to_dict(self) -> dict[str, Any]:
        """The baseline / report form: ``{"folds": [...], "mean": x, "std": x}`` (and
        ``"ci": [low, high]`` where there is one)."""
        out: dict[str, Any] = {"folds": list(self.folds), "mean": self.mean, "std": self.std}
        if self.ci is not None:
            out["ci"] = list(self.ci)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricSummary:
        ci = data.get("ci")
        return cls(
            tuple(float(v) for v in data["folds"]),
            float(data["mean"]),
            float(data["std"]),
            (float(ci[0]), float(ci[1])) if isinstance(ci, list | tuple) and len(ci) == 2 else None,
        )


@dataclass(frozen=True)
class CaseResult:
    """Everything measured for one case: per-fold metric maps and their summaries, and the
    environment it ran in (``env``, recorded by the runner: the gate never reads the machine)."""

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
    pie: dict[str, Any] = field(default_factory=dict)  # exemplar ids, McNemar's b and c
    findings: list[dict[str, Any]] = field(default_factory=list)  # minimal failing inputs
    env: dict[str, Any] = field(default_factory=dict)  # where it ran (harness.provenance)
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
            "pie": self.pie,
            "findings": self.findings,
            "env": self.env,
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
            pie=data["pie"],
            findings=data["findings"],
            env=data.get("env", {}),
        )


class Status(Enum):
    PASS = "pass"
    REGRESSED = "regressed"
    NEW = "new"  # no baseline yet
    SPEC_CHANGED = "spec-changed"
    DATA_CHANGED = "data-changed"  # same spec, other data (the dataset's digest differs)

    @property
    def ok(self) -> bool:
        return self is Status.PASS


def fmt(value: float | None) -> str:
    """A metric value as the gate prints it."""
    import math

    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) >= 1000:
        return f"{int(value)}"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


@dataclass(frozen=True)
class Check:
    """One rule applied: ``passed`` is None when the rule was skipped (``note`` says why). A
    ``severity = "warn"`` check that did not pass is a flag: ``note`` says it in words, and it
    does not fail the verdict."""

    key: str
    metric: str
    reference: float | None  # baseline value, dense value, or None for absolute bounds
    now: float | None
    allowed: str
    rule: str
    passed: bool | None
    note: str = ""
    test: str = ""  # the statistical test behind a policy's decision, one line
    severity: str = "fail"  # "warn": advisory (harness.spec.RuleSpec.severity)

    @property
    def fails(self) -> bool:
        """Whether this check fails its case (a failed ``warn`` check only flags it)."""
        return self.passed is False and self.severity != "warn"

    @property
    def flagged(self) -> bool:
        return self.passed is False and self.severity == "warn"

    def line(self) -> str:
        ref = "" if self.reference is None else f"{self._against()} {fmt(self.reference)}, "
        test = f"; {self.test}" if self.test else ""
        return f"{self.key}: {ref}now {fmt(self.now)}, allowed {self.allowed} ({self.rule}{test})"

    def _against(self) -> str:
        return "dense" if self.key.startswith("vs_dense.") else "baseline"

    def to_dict(self) -> dict[str, Any]:
        """Every field; ``severity`` only when it is not the default, so that verdicts without
        flags read as they did before the field existed (and older JSON loads as "fail")."""
        data = asdict(self)
        if self.severity == "fail":
            del data["severity"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        return cls(**data)


class Remedy(Enum):
    """What rewriting the baseline would mean for a verdict; a face turns it into words with
    its own command (``pytest <node> --harness-regen``, ``prune-harness run ... --regen``)."""

    CREATE = "create"  # no baseline yet
    SPEC_CHANGED = "spec-changed"  # review the spec change, then rewrite
    DATA_CHANGED = "data-changed"  # review the data change, then rewrite
    IF_INTENDED = "if-intended"  # a regression against the baseline
    IF_INTENDED_CROSS = "if-intended-cross"  # ... measured on other hardware, beyond its noise

    def words(self, command: str) -> str:
        """The remedy naming ``command``."""
        return {
            Remedy.CREATE: f"create it with {command}",
            Remedy.SPEC_CHANGED: f"review and rewrite it with {command}",
            Remedy.DATA_CHANGED: (
                f"if the new data is intended, review and rewrite the baseline with {command}"
            ),
            Remedy.IF_INTENDED: f"if the change is intended, rewrite the baseline with {command}",
            Remedy.IF_INTENDED_CROSS: (
                f"if it is intended, rewrite the baseline with {command} (portable numerics "
                "keep it valid on every AVX2 machine)"
            ),
        }[self]


@dataclass(frozen=True)
class Verdict:
    """The gate's decision for one case, rendered by the plugin, the CLI and the reports."""

    suite: str
    case: str
    status: Status
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    baseline_commit: str | None = None
    remedy: Remedy | None = None  # what a rewritten baseline would resolve (faces name how)

    @property
    def ok(self) -> bool:
        return self.status.ok

    @property
    def failed(self) -> tuple[Check, ...]:
        """The checks that fail the case (flags excluded)."""
        return tuple(c for c in self.checks if c.fails)

    @property
    def flags(self) -> tuple[Check, ...]:
        """The advisory checks that did not pass: shown at once, never failing the case."""
        return tuple(c for c in self.checks if c.flagged)

    def lines(self, regen_command: str | None = None) -> list[str]:
        """What a failing case prints: one line per regressed metric, then the notes; given the
        face's command, the remedy joins the verdict's first note (``no baseline for s/c; create
        it with ...``), or, for a regression, comes first as its own line."""
        notes = list(self.notes)
        if regen_command is not None and self.remedy is not None and not self.ok:
            words = self.remedy.words(regen_command)
            if self.remedy is Remedy.IF_INTENDED or not notes:
                notes.insert(0, words)
            else:
                notes[0] = f"{notes[0]}; {words}"
        return [c.line() for c in self.failed] + notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "case": self.case,
            "status": self.status.value,
            "checks": [c.to_dict() for c in self.checks],
            "notes": list(self.notes),
            "baseline_commit": self.baseline_commit,
            "remedy": self.remedy.value if self.remedy else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        remedy = data.get("remedy")
        return cls(
            data["suite"],
            data["case"],
            Status(data["status"]),
            tuple(Check.from_dict(c) for c in data["checks"]),
            tuple(data["notes"]),
            data["baseline_commit"],
            Remedy(remedy) if remedy else None,
        )


@dataclass(frozen=True)
class Outcome:
    """A checked case: what was measured, the verdict, and where things were written."""

    result: CaseResult
    verdict: Verdict
    params: dict[str, str]
    source: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # MLflow de-duplication key
    baseline_means: dict[str, float] = field(default_factory=dict)  # of a usable baseline
    baseline_path: str | None = None  # written by --harness-regen
    obtained_path: str | None = None  # written next to a baseline the case did not meet
    artifacts: str | None = None  # folder with this case's report files and plots
    warnings: tuple[str, ...] = ()  # what could not be written (the verdict stands)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["result"] = self.result.to_dict()
        data["verdict"] = self.verdict.to_dict()
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        data = dict(data)
        result = CaseResult.from_dict(data.pop("result"))
        verdict = Verdict.from_dict(data.pop("verdict"))
        data["warnings"] = tuple(data.get("warnings", ()))
        return cls(result=result, verdict=verdict, **data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        return cls.from_dict(json.loads(text))
