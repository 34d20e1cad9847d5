"""The gate: a case's result vs its baseline and vs the dense model of the same run -> Verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from harness.baseline import Baseline, BaselineStore, same_hardware
from harness.fronts import behind, pareto_front
from harness.metricnames import Direction, MetricRef, parse, rule_target, speedup_vs_flops
from harness.numerics import reproducible
from harness.results import CaseResult, Check, Remedy, Status, Verdict, fmt
from harness.spec import FrontSpec, RuleSpec

__all__ = [
    "Check",
    "Rule",
    "Status",
    "Verdict",
    "evaluate",
    "front_check",
    "front_peers",
    "speedup_vs_flops",
]

EPS = 1e-12
# How rules against a baseline from other hardware are judged (quality metrics are then not
# bit-identical): calibrated by `nox -s calibrate` (docs/calibration.md, "Across hardware").
CROSS_HARDWARE_POLICY = "noise_floor"  # harness.stats.noise_floor
CROSS_HARDWARE_ALPHA = 0.05
CROSS_HARDWARE_PREFIX = "hardware differs from the baseline's"
MISSING_IN_BASELINE = "missing in the baseline"  # Check.note of a gated metric the baseline lacks
FRONT_KEY = "front"  # Check.key of the [gate.front] rule


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
    severity: str = "fail"  # "warn": a failing check flags the verdict only
    when_min: Mapping[str, float] | None = None  # applies where each metric is >= its bound
    hardware_flag: bool = False  # a flag only: hardware-bound, baseline from other hardware

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
            severity=spec.severity,
            when_min=spec.when_min,
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
        when = "".join(f", when {k} >= {v:g}" for k, v in (self.when_min or {}).items())
        warn = ", warn only" if self.severity == "warn" else ""
        if self.hardware_flag:
            warn = ", warn only: the baseline was measured on other hardware"
        return ", ".join(parts) + against + policy + when + warn

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

    def on_other_hardware(self) -> Rule:
        """This rule when the baseline was measured on other hardware (:func:`same_hardware`):
        a failing rule on a hardware-bound metric (latency, speedup, measured energy) that does
        not compare with the baseline (an absolute bound, or against the dense model of the same
        run) is a flag, not a failure. What such a rule asserts holds on the hardware it was
        written for; on another CPU the same kernels can time differently (a pruned ResNet at
        1.50x on one machine, 1.04x on a runner of another generation), and a gate that fails
        on a machine change is a false alarm. Rules against the baseline skip there instead
        (compare with ``--harness-base`` on one machine)."""
        baseline_relative = self._relative and not self.vs_dense
        if not self.ref.hardware_bound or baseline_relative or self.severity == "warn":
            return self
        return replace(self, severity="warn", hardware_flag=True)

    @property
    def _relative(self) -> bool:
        return self.max_drop is not None or self.max_rel_drop is not None

    def check(self, result: CaseResult, baseline: Baseline | None, *, hardware_note: str) -> Check:
        name = self.ref.name
        now = result.value(name)
        if now is None:
            return self._skip(None, None, f"{name} was not measured")
        for metric, low in (self.when_min or {}).items():
            value = result.value(metric)
            if value is None or not _holds(value, ">=", low):
                was = "not measured" if value is None else fmt(value)
                return self._skip(None, now, f"applies when {metric} >= {low:g} ({was})")
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
            self.key,
            name,
            reference,
            now,
            allowed,
            self.describe(),
            not failed,
            test=test,
            severity=self.severity,
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
        return Check(
            self.key,
            self.ref.name,
            reference,
            now,
            "-",
            self.describe(),
            None,
            note,
            severity=self.severity,
        )


def flag_note(check: Check, result: CaseResult) -> str:
    """A failed advisory check in words, for the verdict's notes (terminal, job summary)."""
    if check.metric == "speedup_vs_flops":
        fell = result.value("flops_reduction")
        speedup = result.value("speedup_batch")
        flops = "-" if fell is None else f"{-fell:+.0%}".replace("%", " %")
        latency = "-" if speedup is None else f"{speedup:.2f}x"
        return (
            f"speedup not real: FLOPs {flops}, batch latency {latency} (speedup_vs_flops "
            f"{fmt(check.now)}, allowed {check.allowed}); the kernels that ran do not turn this "
            "sparsity into speed"
        )
    return f"flag: {check.line()}"


def front_peers(store: BaselineStore, suite: str, case: str) -> tuple[Baseline, ...]:
    """The stored baselines of ``suite``'s other cases (``<root>/<suite>/*.json``, validated by
    :meth:`BaselineStore.load`): what :func:`front_check` compares with.

    Raises
    ------
    harness.baseline.BaselineError
        If one of them is unreadable or malformed.
    """
    folder = store.path(suite, case).parent
    names = sorted(p.stem for p in folder.glob("*.json") if p.stem != case)
    loaded = (store.load(suite, name) for name in names)
    return tuple(b for b in loaded if b is not None)


def front_check(spec: FrontSpec, result: CaseResult, peers: Sequence[Baseline]) -> Check:
    """``[gate.front]``: ``result`` against the Pareto front of the other cases' baselines.

    Each peer baseline of the same suite and data (another case; its ``dataset_digest`` the
    result's, or unrecorded) that has both metrics is a point (mean quality, mean cost), both
    oriented by their directions. The check fails when a point has cost <= the result's and
    quality > the result's + ``margin`` (harness.fronts.behind, the gate's float tolerance):
    the case is more than the margin behind the front. It passes when no peer is as cheap.
    A hardware-bound axis (a latency) compares only with peers measured on the same hardware
    (``--harness-base`` gives those). Skipped, with a note, when this case lacks a metric or no
    peer has both.
    """
    q_ref, c_ref = parse(spec.quality), parse(spec.cost)
    rule = (
        f"front of {spec.quality} over {spec.cost} (other cases' baselines), margin {spec.margin:g}"
    )
    q_now, c_now = result.value(spec.quality), result.value(spec.cost)

    def skip(note: str) -> Check:
        return Check(FRONT_KEY, spec.quality, None, q_now, "-", rule, None, note)

    if q_now is None or c_now is None:
        return skip(f"{spec.quality if q_now is None else spec.cost} was not measured")
    if not (math.isfinite(q_now) and math.isfinite(c_now)):
        return Check(
            FRONT_KEY,
            spec.quality,
            None,
            q_now,
            "finite",
            rule,
            False,
            f"{spec.quality} = {q_now}, {spec.cost} = {c_now}: not a point of a front",
        )
    peers = [
        p
        for p in peers
        if p.suite == result.suite
        and p.case != result.case
        and p.dataset_digest in ("", result.dataset_digest)
    ]
    if q_ref.hardware_bound or c_ref.hardware_bound:
        peers = [p for p in peers if same_hardware(p.env, result.env)]
        if not peers:
            return skip(
                "skipped: a hardware-bound axis compares only with baselines of this machine "
                "(--harness-base)"
            )
    sq = 1.0 if q_ref.direction is Direction.HIGHER else -1.0
    sc = 1.0 if c_ref.direction is Direction.LOWER else -1.0
    named = [
        (p.case, sq * q, sc * c)
        for p in peers
        if (q := p.value(spec.quality)) is not None
        and (c := p.value(spec.cost)) is not None
        and math.isfinite(q)
        and math.isfinite(c)
    ]
    if not named:
        return skip(f"no other case's baseline has {spec.quality} and {spec.cost}")
    points = [(q, c) for _, q, c in named]
    front = [named[i] for i in pareto_front(points)]
    me = (sq * q_now, sc * c_now)
    cheaper = [q for _, q, c in front if c <= me[1]]
    if not cheaper:
        return Check(
            FRONT_KEY, spec.quality, None, q_now, "any (no other case is as cheap)", rule, True
        )
    best = max(cheaper)
    allowed = f"{'>=' if sq > 0 else '<='} {fmt(sq * (best - spec.margin))}"
    hit = behind(me, [(q, c) for _, q, c in front], spec.margin, eps=EPS)
    test = ""
    if hit is not None:
        case, q, c = front[hit]
        test = (
            f"behind {case}: {spec.quality} {fmt(sq * q)} at {spec.cost} {fmt(sc * c)}"
            f" (this case: {fmt(c_now)})"
        )
    return Check(FRONT_KEY, spec.quality, sq * best, q_now, allowed, rule, hit is None, test=test)


def _cpu(env: dict[str, Any], *, numerics: bool = True) -> str:
    """A result's CPU in words, with its id where recorded (a bare ``AMD EPYC`` names several
    generations): the fingerprint's name (the CPU its numerics ran on), or with ``numerics``
    False the top-level name :func:`same_hardware` compares (the CPU latencies were timed on)."""
    name = (env.get("hardware") or {}).get("cpu", env.get("cpu")) if numerics else env.get("cpu")
    ident = env.get("cpu_id")
    return f"{name} [{ident}]" if ident else f"{name}"


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
    *,
    front: FrontSpec | None = None,
    peers: Sequence[Baseline] = (),
) -> Verdict:
    """Apply ``rules`` to ``result``: a pure function of its arguments (the machine the result
    was measured on is ``result.env``; a result without one counts as from unknown hardware).
    With ``front`` (the suite's ``[gate.front]``), one more check against the front of
    ``peers``, the suite's other baselines (:func:`front_check`, :func:`front_peers`).

    A failed ``severity = "warn"`` rule does not fail the verdict: it is a flag, and its note
    (:func:`flag_note`) joins the verdict's notes.

    Without a baseline the verdict is ``new`` and ``spec-changed`` when the baseline was made from
    another spec; both fail, and ``Verdict.remedy`` says what rewriting the baseline would do (a
    face names its command). Rules against the dense model and absolute bounds are still checked
    and reported.
    """
    env = result.env
    hardware_note = ""
    if baseline is not None and not same_hardware(baseline.env, env):
        hardware_note = (
            f"skipped: baseline measured on other hardware ({_cpu(baseline.env, numerics=False)},"
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
    judged = (
        rule.across_hardware() if cross or other_cpu else rule
        for spec in rules
        for rule in Rule.expand(spec, n_classes)
    )
    checks = tuple(
        (rule.on_other_hardware() if hardware_note else rule).check(
            result, usable, hardware_note=hardware_note
        )
        for rule in judged
    )
    if front is not None:
        checks += (front_check(front, result, peers),)
    failed = any(c.fails for c in checks)
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
            c.fails
            and (c.reference is not None or c.note == MISSING_IN_BASELINE)
            and not c.key.startswith("vs_dense.")
            and c.key != FRONT_KEY
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
        elif any(c.fails and c.key != FRONT_KEY for c in checks):
            notes.append(
                "rules against the dense model or absolute bounds failed; a new baseline "
                "does not change them: improve the case or change the rule in the suite"
            )
        if any(c.fails and c.key == FRONT_KEY for c in checks):
            notes.append(
                "the case is behind the front of its suite's other baselines; a new baseline "
                "of this case does not change it: improve the case or change [gate.front]"
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
    accelerated = result.metrics.get("deploy_accelerated_layers")
    if accelerated is not None and accelerated.mean == 0:  # deploy = "2:4" without a kernel
        notes.append(
            "deploy: no layer ran in the runtime's own kernels on this device (for 2:4: no "
            "kernel accelerates the pattern here): the deployed model ran as the torch model"
        )
    flagged = tuple(replace(c, note=flag_note(c, result)) if c.flagged else c for c in checks)
    notes.extend(c.note for c in flagged if c.flagged)
    checks = flagged
    return Verdict(
        result.suite,
        result.case,
        status,
        checks,
        tuple(notes),
        baseline.commit if baseline else None,
        remedy,
    )
