"""The gate: a case's result vs its baseline and vs the dense model of the same run -> Verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from harness.baseline import Baseline, same_hardware
from harness.metrics import Direction, MetricRef, parse_metric, rule_target
from harness.numerics import reproducible
from harness.runner import CaseResult
from harness.spec import RuleSpec

EPS = 1e-12
# How rules against a baseline from other hardware are judged (quality metrics are then not
# bit-identical): calibrated by `nox -s calibrate` (docs/calibration.md, "Across hardware").
CROSS_HARDWARE_POLICY = "noise_floor"  # harness.stats.noise_floor
CROSS_HARDWARE_ALPHA = 0.05
CROSS_HARDWARE_PREFIX = "hardware differs from the baseline's"
MISSING_IN_BASELINE = "missing in the baseline"  # Check.note of a gated metric the baseline lacks


class Status(Enum):
    PASS = "pass"
    REGRESSED = "regressed"
    NEW = "new"  # no baseline yet
    SPEC_CHANGED = "spec-changed"
    DATA_CHANGED = "data-changed"  # same spec, other data (the dataset's digest differs)

    @property
    def ok(self) -> bool:
        return self is Status.PASS


@dataclass(frozen=True)
class Check:
    """One rule applied: ``passed`` is None when the rule was skipped (``note`` says why)."""

    key: str
    metric: str
    reference: float | None  # baseline value, dense value, or None for absolute bounds
    now: float | None
    allowed: str
    rule: str
    passed: bool | None
    note: str = ""
    test: str = ""  # the statistical test behind a policy's decision, one line

    def line(self) -> str:
        ref = "" if self.reference is None else f"{self._against()} {_fmt(self.reference)}, "
        test = f"; {self.test}" if self.test else ""
        return f"{self.key}: {ref}now {_fmt(self.now)}, allowed {self.allowed} ({self.rule}{test})"

    def _against(self) -> str:
        return "dense" if self.key.startswith("vs_dense.") else "baseline"


@dataclass(frozen=True)
class Rule:
    """A parsed gate rule; :meth:`check` applies it."""

    key: str
    ref: MetricRef
    vs_dense: bool
    max_drop: float | None = None
    max_rel_drop: float | None = None
    min: float | None = None
    max: float | None = None
    policy: str = "threshold"
    alpha: float = 0.05
    cross_hardware: bool = False  # judged by CROSS_HARDWARE_POLICY (baseline from other hardware)

    @classmethod
    def parse(cls, spec: RuleSpec) -> Rule:
        ref, vs_dense = rule_target(spec.metric)
        return cls(
            spec.metric,
            ref,
            vs_dense,
            spec.max_drop,
            spec.max_rel_drop,
            spec.min,
            spec.max,
            spec.policy,
            spec.alpha,
        )

    @classmethod
    def expand(cls, spec: RuleSpec, n_classes: int | None) -> list[Rule]:
        """The rule, or one rule per class for a ``class_*`` wildcard key."""
        if "class_*" not in spec.metric or n_classes is None:
            return [cls.parse(spec)]
        return [
            cls.parse(replace(spec, metric=spec.metric.replace("class_*", f"class_{k}")))
            for k in range(n_classes)
        ]

    def describe(self) -> str:
        parts = [
            f"{k} {v:g}"
            for k, v in (
                ("max_drop", self.max_drop),
                ("max_rel_drop", self.max_rel_drop),
                ("min", self.min),
                ("max", self.max),
            )
            if v is not None
        ]
        against = " vs dense" if self.vs_dense else " vs baseline" if self._relative else ""
        policy = f", {self.policy} at alpha {self.alpha:g}" if self.policy != "threshold" else ""
        if self.cross_hardware:
            policy = f", cross-hardware: {self.policy} at alpha {self.alpha:g}"
        return ", ".join(parts) + against + policy

    def across_hardware(self) -> Rule:
        """This rule as judged against a baseline from other hardware: a ``threshold`` rule
        against the baseline takes :data:`CROSS_HARDWARE_POLICY`; rules against the dense model
        of the same run, absolute bounds and explicit policies stay as they are."""
        if self.vs_dense or self.max_drop is None or self.policy != "threshold":
            return self
        return replace(
            self,
            policy=CROSS_HARDWARE_POLICY,
            alpha=CROSS_HARDWARE_ALPHA,
            cross_hardware=True,
        )

    @property
    def _relative(self) -> bool:
        return self.max_drop is not None or self.max_rel_drop is not None

    def check(self, result: CaseResult, baseline: Baseline | None, *, hardware_note: str) -> Check:
        name = self.ref.name
        now = result.value(name)
        if now is None:
            return self._skip(None, None, f"{name} was not measured")
        reference: float | None = None
        ref_folds: tuple[float, ...] = ()
        bounds: list[tuple[str, float]] = []  # (comparison, bound) in the metric's "good" sense
        if self._relative:
            if self.vs_dense:
                reference = result.value(f"dense.{self.ref.base}")
                if reference is None:
                    return self._skip(None, now, f"dense.{self.ref.base} was not measured")
                ref_folds = result.metrics[f"dense.{self.ref.base}"].folds
            else:
                if baseline is None:
                    return self._skip(None, now, "no baseline")
                if self.ref.hardware_bound and hardware_note:
                    return self._skip(baseline.value(name), now, hardware_note)
                reference = baseline.value(name)
                if reference is None:  # an edited baseline, or one older than the rule
                    return Check(
                        self.key,
                        name,
                        None,
                        now,
                        "a baseline value",
                        self.describe(),
                        False,
                        MISSING_IN_BASELINE,
                        f"the baseline has no {name}",
                    )
                ref_folds = baseline.metrics[name].folds
            higher = self.ref.direction is Direction.HIGHER
            sign = 1 if higher else -1
            if self.max_drop is not None:
                bounds.append((">=" if higher else "<=", reference - sign * self.max_drop))
            if self.max_rel_drop is not None:
                bounds.append(
                    (
                        ">=" if higher else "<=",
                        reference - sign * self.max_rel_drop * abs(reference),
                    )
                )
        if self.min is not None:
            bounds.append((">=", self.min))
        if self.max is not None:
            bounds.append(("<=", self.max))
        failed = [i for i, (op, b) in enumerate(bounds) if not _holds(now, op, b)]
        test = ""
        if self.policy != "threshold" and self.max_drop is not None and reference is not None:
            decided, test = self._decide(result, ref_folds, baseline)
            if decided is not None:  # the policy replaces the plain max_drop comparison (bound 0)
                failed = [i for i in failed if i != 0] + ([0] if decided else [])
        failed_bounds = [bounds[i] for i in sorted(failed)]
        shown = failed_bounds or bounds
        allowed = " and ".join(f"{op} {_fmt(b)}" for op, b in _tightest(shown))
        return Check(
            self.key, name, reference, now, allowed, self.describe(), not failed, test=test
        )

    def _decide(
        self, result: CaseResult, ref_folds: tuple[float, ...], baseline: Baseline | None = None
    ) -> tuple[bool | None, str]:
        """Apply the statistical policy to the paired per-fold values (harness.stats)."""
        from harness import stats

        now_folds = result.metrics[self.ref.name].folds
        if len(now_folds) < 2 or len(now_folds) != len(ref_folds):
            return None, f"{self.policy} needs paired per-fold values; judged by the mean"
        sign = 1.0 if self.ref.direction is Direction.HIGHER else -1.0
        worsening = [sign * (r - n) for r, n in zip(ref_folds, now_folds, strict=True)]
        # fold sizes for the variance correction (a validation fold vs its training part)
        n_test = int(result.dataset.get("n_test", 1))
        n_train = int(result.dataset.get("n_train", n_test * max(1, len(now_folds) - 1)))
        if self.policy == CROSS_HARDWARE_POLICY:
            control = self._control(result, baseline, len(now_folds))
            if control is None:
                return None, (
                    f"{self.policy}: the dense model has no {self.ref.base} to measure hardware "
                    "noise on; judged by the threshold"
                )
            decided = stats.noise_floor(
                worsening,
                control,
                margin=float(self.max_drop or 0.0),
                alpha=self.alpha,
                n_train=n_train,
                n_test=n_test,
            )
            return decided.failed, decided.reason
        decision = stats.decide(
            self.policy,
            worsening,
            margin=float(self.max_drop or 0.0),
            alpha=self.alpha,
            n_train=n_train,
            n_test=n_test,
        )
        test = decision.reason
        if self.vs_dense and result.pie:
            test += (
                "; " + stats.mcnemar(result.pie["mcnemar_b"], result.pie["mcnemar_c"]).describe()
            )
        return decision.failed, test

    def _control(self, result: CaseResult, baseline: Baseline | None, k: int) -> list[float] | None:
        """Per fold, this run's dense model minus the baseline's, for this rule's metric."""
        name = f"dense.{self.ref.base}"
        if baseline is None or self.ref.model != "pruned" or name not in result.metrics:
            return None
        now, then = result.metrics[name].folds, baseline.metrics.get(name)
        if then is None or len(then.folds) != k or len(now) != k:
            return None
        return [n - t for n, t in zip(now, then.folds, strict=True)]

    def _skip(self, reference: float | None, now: float | None, note: str) -> Check:
        return Check(self.key, self.ref.name, reference, now, "-", self.describe(), None, note)


def _cpu(env: dict[str, Any]) -> Any:
    return (env.get("hardware") or {}).get("cpu", env.get("cpu"))


def _dense_moved(result: CaseResult, baseline: Baseline) -> bool:
    """Whether any per-fold quality metric of the dense model differs from the baseline's."""
    for name, summary in result.metrics.items():
        if not name.startswith("dense.") or parse_metric(name).hardware_bound:
            continue
        then = baseline.metrics.get(name)
        if then is not None and then.folds != summary.folds:
            return True
    return False


def _holds(now: float, op: str, bound: float) -> bool:
    if math.isnan(now):
        return False
    return now >= bound - EPS if op == ">=" else now <= bound + EPS


def _tightest(bounds: list[tuple[str, float]]) -> list[tuple[str, float]]:
    lows = [b for op, b in bounds if op == ">="]
    highs = [b for op, b in bounds if op == "<="]
    return ([(">=", max(lows))] if lows else []) + ([("<=", min(highs))] if highs else [])


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) >= 1000:
        return f"{int(value)}"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


@dataclass(frozen=True)
class Verdict:
    """The gate's decision for one case, rendered by the plugin, the CLI and the reports."""

    suite: str
    case: str
    status: Status
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    baseline_commit: str | None = None

    @property
    def ok(self) -> bool:
        return self.status.ok

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.passed is False)

    def lines(self) -> list[str]:
        """What a failing case prints: one line per regressed metric, then the notes."""
        return [c.line() for c in self.failed] + list(self.notes)


def evaluate(
    result: CaseResult,
    baseline: Baseline | None,
    rules: tuple[RuleSpec, ...],
    *,
    threads: int,
    regen_hint: str,
) -> Verdict:
    """Apply ``rules`` to ``result``.

    Without a baseline the verdict is ``new`` and ``spec-changed`` when the baseline was made from
    another spec; both fail and say how to fix it (``regen_hint``). Rules against the dense model
    and absolute bounds are still checked and reported.
    """
    env = result.env
    if not env:  # a result made without its environment: this process's
        from harness.provenance import environment

        env = environment(threads)
    hardware_note = ""
    if baseline is not None and not same_hardware(baseline.env, env):
        hardware_note = (
            f"skipped: baseline measured on other hardware ({baseline.env.get('cpu')},"
            f" {baseline.env.get('threads')} threads); compare same-run speedup"
        )
    data_changed = (
        baseline is not None
        and bool(baseline.dataset_digest)
        and baseline.dataset_digest != result.dataset_digest
    )
    usable = (
        baseline
        if baseline is not None and baseline.spec_hash == result.spec_hash and not data_changed
        else None
    )
    cross = reproducible(usable.env, env) if usable is not None else ""
    # Another CPU in portable numerics on both sides: bit-identical results are expected, and the
    # cross-hardware policy equals the threshold when they are (the dense model did not move).
    # It still judges, so that a code path the pins missed cannot raise a false alarm.
    other_cpu = usable is not None and _cpu(usable.env) != _cpu(env)
    if usable is not None and not cross and other_cpu and _dense_moved(result, usable):
        cross = (
            f"portable numerics on {_cpu(usable.env)} and {_cpu(env)}, yet the dense model's "
            "metrics differ: a code path the pins do not cover"
        )
    n_classes = len(result.class_names) or None
    checks = tuple(
        (rule.across_hardware() if cross or other_cpu else rule).check(
            result, usable, hardware_note=hardware_note
        )
        for spec in rules
        for rule in Rule.expand(spec, n_classes)
    )
    failed = any(c.passed is False for c in checks)
    notes: list[str] = []
    if baseline is None:
        status = Status.NEW
        notes.append(f"no baseline for {result.suite}/{result.case}; create it with {regen_hint}")
    elif baseline.spec_hash != result.spec_hash:
        status = Status.SPEC_CHANGED
        notes.append(
            f"the case spec changed since its baseline (spec hash {baseline.spec_hash} -> "
            f"{result.spec_hash}); review and rewrite it with {regen_hint}"
        )
    elif data_changed:
        status = Status.DATA_CHANGED
        name = result.dataset.get("name", "the dataset")
        notes.append(
            f"the data changed since its baseline ({name}: digest {baseline.dataset_digest} -> "
            f"{result.dataset_digest}); rules against the baseline are not applied; if the new "
            f"data is intended, review and rewrite the baseline with {regen_hint}"
        )
    elif failed:
        status = Status.REGRESSED
        if any(
            c.passed is False
            and (c.reference is not None or c.note == MISSING_IN_BASELINE)
            and not c.key.startswith("vs_dense.")
            for c in checks
        ):
            if cross:
                notes.append(
                    "the baseline comes from other hardware, but these drops are larger than "
                    "hardware noise explains (cross-hardware policy): look for the change that "
                    "caused them; if it is intended, rewrite the baseline with "
                    f"{regen_hint} (portable numerics keep it valid on every AVX2 machine)"
                )
            else:
                notes.append(f"if the change is intended, rewrite the baseline with {regen_hint}")
        else:
            notes.append(
                "rules against the dense model or absolute bounds failed; a new baseline "
                "does not change them: improve the case or change the rule in the suite"
            )
    else:
        status = Status.PASS
    if cross:
        notes.append(
            f"{CROSS_HARDWARE_PREFIX} ({cross}): quality metrics are not expected to be "
            f"bit-identical; rules against the baseline judged by the {CROSS_HARDWARE_POLICY} "
            f"policy at alpha {CROSS_HARDWARE_ALPHA:g} instead of their exact threshold"
        )
    skipped = sorted({c.note for c in checks if c.passed is None and c.note.startswith("skipped")})
    notes.extend(skipped)
    return Verdict(
        result.suite,
        result.case,
        status,
        checks,
        tuple(notes),
        baseline.commit if baseline else None,
    )
