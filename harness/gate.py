"""The gate: a case's result vs its baseline and vs the dense model of the same run -> Verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from harness.baseline import Baseline, same_hardware
from harness.metricnames import Direction, MetricRef, parse, rule_target
from harness.numerics import reproducible
from harness.results import CaseResult, Check, Remedy, Status, Verdict, fmt
from harness.spec import RuleSpec

__all__ = ["Check", "Rule", "Status", "Verdict", "evaluate"]

EPS = 1e-12
# How rules against a baseline from other hardware are judged (quality metrics are then not
# bit-identical): calibrated by `nox -s calibrate` (docs/calibration.md, "Across hardware").
CROSS_HARDWARE_POLICY = "noise_floor"  # harness.stats.noise_floor
CROSS_HARDWARE_ALPHA = 0.05
CROSS_HARDWARE_PREFIX = "hardware differs from the baseline's"
MISSING_IN_BASELINE = "missing in the baseline"  # Check.note of a gated metric the baseline lacks


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
        ref, vs_dense = rule_target(spec.metric)
        if not ref.wildcard or n_classes is None:
            return [cls.parse(spec)]
        keys = [ref.with_class(k) for k in range(n_classes)]
        return [
            cls.parse(replace(spec, metric=k.vs_dense_key if vs_dense else k.name)) for k in keys
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
                dense = self.ref.with_model("dense").name
                reference = result.value(dense)
                if reference is None:
                    return self._skip(None, now, f"{dense} was not measured")
                ref_folds = result.metrics[dense].folds
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
        allowed = " and ".join(f"{op} {fmt(b)}" for op, b in _tightest(shown))
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
        name = self.ref.with_model("dense").name
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
        ref = parse(name)
        if ref.model != "dense" or ref.hardware_bound:
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


def evaluate(
    result: CaseResult,
    baseline: Baseline | None,
    rules: tuple[RuleSpec, ...],
) -> Verdict:
    """Apply ``rules`` to ``result``: a pure function of its arguments (the machine the result
    was measured on is ``result.env``; a result without one counts as from unknown hardware).

    Without a baseline the verdict is ``new`` and ``spec-changed`` when the baseline was made from
    another spec; both fail, and ``Verdict.remedy`` says what rewriting the baseline would do (a
    face names its command). Rules against the dense model and absolute bounds are still checked
    and reported.
    """
    env = result.env
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
    remedy: Remedy | None = None
    if baseline is None:
        status, remedy = Status.NEW, Remedy.CREATE
        notes.append(f"no baseline for {result.suite}/{result.case}")
    elif baseline.spec_hash != result.spec_hash:
        status, remedy = Status.SPEC_CHANGED, Remedy.SPEC_CHANGED
        notes.append(
            f"the case spec changed since its baseline (spec hash {baseline.spec_hash} -> "
            f"{result.spec_hash})"
        )
    elif data_changed:
        status, remedy = Status.DATA_CHANGED, Remedy.DATA_CHANGED
        name = result.dataset.get("name", "the dataset")
        notes.append(
            f"the data changed since its baseline ({name}: digest {baseline.dataset_digest} -> "
            f"{result.dataset_digest}); rules against the baseline are not applied"
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
                remedy = Remedy.IF_INTENDED_CROSS
                notes.append(
                    "the baseline comes from other hardware, but these drops are larger than "
                    "hardware noise explains (cross-hardware policy): look for the change that "
                    "caused them"
                )
            else:
                remedy = Remedy.IF_INTENDED
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
        remedy,
    )
