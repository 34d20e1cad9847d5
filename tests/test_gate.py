"""The gate on hand-built results and baselines (no training): single rules, verdicts, the
statistical policies on per-fold values (against the real scipy tests), ``vs_dense`` pairing and
``class_*`` wildcards."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from harness.baseline import Baseline
from harness.gate import Rule, evaluate
from harness.provenance import environment
from harness.results import CaseResult, Check, MetricSummary, Remedy, Status, Verdict
from harness.spec import RuleSpec

HINT = "--harness-regen"
HASH = "spec-hash-1"


def _result(values: dict[str, float], spec_hash: str = HASH) -> CaseResult:
    return CaseResult(
        "tiny",
        "mag-50",
        spec_hash,
        "digest",
        (dict(values),),
        {k: MetricSummary((v,), v, 0.0) for k, v in values.items()},
        0.1,
        env=environment(1),  # what run_case records: the gate never reads the machine
    )


def _baseline(
    values: dict[str, float], spec_hash: str = HASH, env: dict[str, Any] | None = None
) -> Baseline:
    return Baseline(
        "tiny",
        "mag-50",
        spec_hash,
        environment(1) if env is None else env,
        "cafe1234",
        "2024-05-01T12:00:00Z",
        {k: MetricSummary((v,), v, 0.0) for k, v in values.items()},
    )


def _check(rule: RuleSpec, now: dict[str, float], base: dict[str, float] | None) -> Check:
    return Rule.parse(rule).check(
        _result(now), None if base is None else _baseline(base), hardware_note=""
    )


def _evaluate(now: dict[str, float], base: Baseline | None, *rules: RuleSpec) -> Verdict:
    return _verdict(_result(now), base, *rules)


def _verdict(result: CaseResult, base: Baseline | None, *rules: RuleSpec) -> Verdict:
    return evaluate(result, base, rules)


HIGHER = [
    "pruned.f1_macro",
    "pruned.accuracy",
    "dense.balanced_accuracy",
    "pruned.recall.class_2",
    "param_reduction",
]
LOWER = ["pruned.params", "pruned.latency_ms_p50", "pruned.flops", "pruned.train_val_gap"]
values = st.floats(-1000, 1000, allow_nan=False)
tolerances = st.floats(0, 10, allow_nan=False)
excess = st.floats(1e-6, 10, allow_nan=False)
fraction = st.floats(0, 1)

# --------------------------------------------------------------------------------------------
# properties of single rules


@given(st.sampled_from(HIGHER), values, tolerances, fraction)
def test_higher_is_better_within_max_drop_passes(
    metric: str, base: float, max_drop: float, frac: float
) -> None:
    now = base - frac * max_drop
    check = _check(RuleSpec(metric, max_drop=max_drop), {metric: now}, {metric: base})
    assert check.passed is True, check.line()
    assert check.reference == base and check.now == now


@given(st.sampled_from(HIGHER), values, tolerances, excess)
def test_higher_is_better_drop_beyond_max_drop_fails(
    metric: str, base: float, max_drop: float, extra: float
) -> None:
    now = base - (max_drop + extra)
    check = _check(RuleSpec(metric, max_drop=max_drop), {metric: now}, {metric: base})
    assert check.passed is False


@given(st.sampled_from(LOWER), values, tolerances, fraction)
def test_lower_is_better_within_max_drop_passes(
    metric: str, base: float, max_drop: float, frac: float
) -> None:
    now = base + frac * max_drop
    check = _check(RuleSpec(metric, max_drop=max_drop), {metric: now}, {metric: base})
    assert check.passed is True, check.line()


@given(st.sampled_from(LOWER), values, tolerances, excess)
def test_lower_is_better_rise_beyond_max_drop_fails(
    metric: str, base: float, max_drop: float, extra: float
) -> None:
    now = base + (max_drop + extra)
    check = _check(RuleSpec(metric, max_drop=max_drop), {metric: now}, {metric: base})
    assert check.passed is False


@given(
    st.sampled_from(HIGHER + LOWER),
    values,
    st.floats(0, 1000),
    st.booleans(),
    st.one_of(st.none(), tolerances),
    st.one_of(st.none(), st.floats(0, 1)),
)
def test_improvements_never_fail(
    metric: str,
    base: float,
    gain: float,
    vs_dense: bool,
    max_drop: float | None,
    max_rel: float | None,
) -> None:
    assume(max_drop is not None or max_rel is not None)
    higher = metric in HIGHER
    now = base + gain if higher else base - gain
    if vs_dense:
        if not metric.startswith("pruned."):
            return
        key = "vs_dense." + metric.removeprefix("pruned.")
        dense = "dense." + metric.removeprefix("pruned.")
        check = Rule.parse(RuleSpec(key, max_drop=max_drop, max_rel_drop=max_rel)).check(
            _result({metric: now, dense: base}), None, hardware_note=""
        )
    else:
        check = _check(
            RuleSpec(metric, max_drop=max_drop, max_rel_drop=max_rel), {metric: now}, {metric: base}
        )
    assert check.passed is True, check.line()


@given(values, st.floats(0, 1), fraction)
def test_max_rel_drop_within_passes(base: float, rel: float, frac: float) -> None:
    allowed = rel * abs(base)
    for metric, now in (
        ("pruned.f1_macro", base - frac * allowed),
        ("pruned.params", base + frac * allowed),
    ):
        check = _check(RuleSpec(metric, max_rel_drop=rel), {metric: now}, {metric: base})
        assert check.passed is True, check.line()


@given(values, st.floats(0, 1), excess)
def test_max_rel_drop_beyond_fails(base: float, rel: float, extra: float) -> None:
    allowed = rel * abs(base)
    for metric, now in (
        ("pruned.f1_macro", base - allowed - extra),
        ("pruned.params", base + allowed + extra),
    ):
        check = _check(RuleSpec(metric, max_rel_drop=rel), {metric: now}, {metric: base})
        assert check.passed is False


def test_max_rel_drop_is_relative_to_the_absolute_baseline() -> None:
    # higher is better, negative baseline -10 with 10 %: anything >= -11 passes
    assert (
        _check(
            RuleSpec("pruned.f1_macro", max_rel_drop=0.1),
            {"pruned.f1_macro": -10.5},
            {"pruned.f1_macro": -10.0},
        ).passed
        is True
    )
    assert (
        _check(
            RuleSpec("pruned.f1_macro", max_rel_drop=0.1),
            {"pruned.f1_macro": -11.5},
            {"pruned.f1_macro": -10.0},
        ).passed
        is False
    )
    # lower is better, 1000 params with 5 %: up to 1050
    assert (
        _check(
            RuleSpec("pruned.params", max_rel_drop=0.05),
            {"pruned.params": 1050.0},
            {"pruned.params": 1000.0},
        ).passed
        is True
    )
    assert (
        _check(
            RuleSpec("pruned.params", max_rel_drop=0.05),
            {"pruned.params": 1051.0},
            {"pruned.params": 1000.0},
        ).passed
        is False
    )


@given(values, tolerances, st.sampled_from(["min", "max"]), st.sampled_from(HIGHER + LOWER))
def test_absolute_bounds(bound: float, offset: float, kind: str, metric: str) -> None:
    inside = bound + offset if kind == "min" else bound - offset
    outside = bound - offset - 1e-6 if kind == "min" else bound + offset + 1e-6
    rule = RuleSpec(metric, **{kind: bound})
    ok = _check(rule, {metric: inside}, None)  # absolute bounds need no baseline
    assert ok.passed is True and ok.reference is None
    bad = _check(rule, {metric: outside}, None)
    assert bad.passed is False
    op = ">=" if kind == "min" else "<="
    assert bad.allowed.startswith(op)


def test_min_and_max_together_show_the_failed_bound() -> None:
    rule = RuleSpec("pruned.sparsity", min=0.4, max=0.6)
    assert _check(rule, {"pruned.sparsity": 0.5}, None).passed is True
    low = _check(rule, {"pruned.sparsity": 0.3}, None)
    assert low.passed is False and low.allowed == ">= 0.4000"
    high = _check(rule, {"pruned.sparsity": 0.7}, None)
    assert high.passed is False and high.allowed == "<= 0.6000"
    assert _check(rule, {"pruned.sparsity": 0.5}, None).allowed == ">= 0.4000 and <= 0.6000"


@settings(deadline=None)  # builds a Baseline with the real environment() fingerprint
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 0.5))
def test_vs_dense_compares_pruned_with_dense_of_the_same_run(
    dense: float, pruned: float, max_drop: float
) -> None:
    assume(abs(pruned - (dense - max_drop)) > 1e-9)
    now = {"dense.f1_macro": dense, "pruned.f1_macro": pruned}
    # the baseline says nothing useful about this rule: it is ignored
    base = _baseline({"dense.f1_macro": 0.0, "pruned.f1_macro": 1.0})
    check = Rule.parse(RuleSpec("vs_dense.f1_macro", max_drop=max_drop)).check(
        _result(now), base, hardware_note=""
    )
    assert check.reference == dense and check.now == pruned
    assert check.metric == "pruned.f1_macro"
    assert check.passed is (pruned >= dense - max_drop)


def test_vs_dense_lower_is_better() -> None:
    rule = Rule.parse(RuleSpec("vs_dense.latency_ms_p50", max_rel_drop=0.1))
    now = {"dense.latency_ms_p50": 2.0, "pruned.latency_ms_p50": 2.1}
    assert rule.check(_result(now), None, hardware_note="").passed is True
    now["pruned.latency_ms_p50"] = 2.3
    check = rule.check(_result(now), None, hardware_note="skipped: other hardware")
    assert check.passed is False  # same run: the hardware note does not apply
    assert check.line() == (
        "vs_dense.latency_ms_p50: dense 2.0000, now 2.3000, "
        "allowed <= 2.2000 (max_rel_drop 0.1 vs dense)"
    )


def test_vs_dense_without_dense_metric_is_skipped() -> None:
    check = Rule.parse(RuleSpec("vs_dense.f1_macro", max_drop=0.1)).check(
        _result({"pruned.f1_macro": 0.5}), None, hardware_note=""
    )
    assert check.passed is None and check.note == "dense.f1_macro was not measured"


def test_metric_not_measured_is_skipped_but_missing_in_the_baseline_fails() -> None:
    rule = RuleSpec("pruned.f1_macro", max_drop=0.01)
    missing = _check(rule, {"pruned.accuracy": 0.5}, {"pruned.f1_macro": 0.5})
    assert missing.passed is None and missing.note == "pruned.f1_macro was not measured"
    not_in_base = _check(rule, {"pruned.f1_macro": 0.5}, {"pruned.accuracy": 0.5})
    assert not_in_base.passed is False  # an edited baseline cannot switch a rule off
    assert not_in_base.line() == (
        "pruned.f1_macro: now 0.5000, allowed a baseline value "
        "(max_drop 0.01 vs baseline; the baseline has no pruned.f1_macro)"
    )
    verdict = _evaluate({"pruned.f1_macro": 0.5}, _baseline({}), rule)  # "metrics": {}
    assert verdict.status is Status.REGRESSED
    assert verdict.remedy is Remedy.IF_INTENDED
    assert f"if the change is intended, rewrite the baseline with {HINT}" in verdict.lines(HINT)
    assert _check(rule, {"pruned.f1_macro": 0.5}, None).note == "no baseline"


def test_failing_line_names_metric_baseline_now_allowed_rule() -> None:
    check = _check(
        RuleSpec("pruned.f1_macro", max_drop=0.01),
        {"pruned.f1_macro": 0.8},
        {"pruned.f1_macro": 0.85},
    )
    assert check.passed is False
    assert check.line() == (
        "pruned.f1_macro: baseline 0.8500, now 0.8000, allowed >= 0.8400 "
        "(max_drop 0.01 vs baseline)"
    )
    big = _check(
        RuleSpec("pruned.params", max_drop=10), {"pruned.params": 5000.0}, {"pruned.params": 4000.0}
    )
    assert big.line() == (
        "pruned.params: baseline 4000, now 5000, allowed <= 4010 (max_drop 10 vs baseline)"
    )


def test_nan_metric_fails_with_a_readable_line() -> None:
    check = _check(
        RuleSpec("pruned.f1_macro", max_drop=0.01),
        {"pruned.f1_macro": math.nan},
        {"pruned.f1_macro": 0.85},
    )
    assert check.passed is False
    line = check.line()
    assert line.startswith("pruned.f1_macro: baseline 0.8500, now nan")


# --------------------------------------------------------------------------------------------
# verdicts


NOW = {
    "dense.f1_macro": 0.90,
    "pruned.f1_macro": 0.88,
    "pruned.accuracy": 0.89,
    "dense.latency_ms_p50": 1.0,
    "pruned.latency_ms_p50": 0.8,
    "pruned.params": 1000.0,
    "speedup": 1.25,
}
RULES = (
    RuleSpec("pruned.f1_macro", max_drop=0.01),
    RuleSpec("pruned.accuracy", max_drop=0.01),
    RuleSpec("vs_dense.f1_macro", max_drop=0.05),
)


def test_unchanged_result_passes() -> None:
    verdict = _evaluate(NOW, _baseline(NOW), *RULES)
    assert verdict.status is Status.PASS and verdict.ok
    assert verdict.failed == () and verdict.lines() == []
    assert all(c.passed is True for c in verdict.checks)
    assert verdict.baseline_commit == "cafe1234"
    assert (verdict.suite, verdict.case) == ("tiny", "mag-50")


def test_missing_baseline_is_new_and_names_the_regen_hint() -> None:
    verdict = _evaluate(NOW, None, *RULES)
    assert verdict.status is Status.NEW and not verdict.ok
    assert verdict.notes[0] == "no baseline for tiny/mag-50"  # the gate names no command
    assert verdict.lines() == list(verdict.notes)
    assert verdict.lines(HINT)[0] == "no baseline for tiny/mag-50; create it with --harness-regen"
    by_key = {c.key: c for c in verdict.checks}
    assert by_key["pruned.f1_macro"].passed is None
    assert by_key["vs_dense.f1_macro"].passed is True  # still checked without a baseline
    assert verdict.baseline_commit is None


def test_other_spec_hash_is_spec_changed() -> None:
    verdict = _evaluate(NOW, _baseline(NOW, spec_hash="old-hash"), *RULES)
    assert verdict.status is Status.SPEC_CHANGED and not verdict.ok
    assert "old-hash -> spec-hash-1" in verdict.notes[0]
    assert verdict.lines(HINT)[0] == (
        "the case spec changed since its baseline (spec hash old-hash -> spec-hash-1); "
        f"review and rewrite it with {HINT}"
    )
    # the stale baseline is not compared against
    assert {c.key: c.passed for c in verdict.checks}["pruned.f1_macro"] is None


def test_baseline_raised_by_005_fails_naming_the_metric() -> None:
    base = dict(NOW)
    base["pruned.f1_macro"] += 0.05
    verdict = _evaluate(NOW, _baseline(base), *RULES)
    assert verdict.status is Status.REGRESSED and not verdict.ok
    assert [c.key for c in verdict.failed] == ["pruned.f1_macro"]
    lines = verdict.lines(HINT)
    assert lines[0].startswith("pruned.f1_macro: baseline 0.9300, now 0.8800, allowed >= 0.9200")
    assert lines[1:] == [f"if the change is intended, rewrite the baseline with {HINT}"]


def test_lines_give_one_line_per_failed_metric() -> None:
    base = dict(NOW, **{"pruned.f1_macro": 0.95, "pruned.accuracy": 0.99})
    verdict = _evaluate(NOW, _baseline(base), *RULES, RuleSpec("pruned.params", max=500))
    assert [c.key for c in verdict.failed] == [
        "pruned.f1_macro",
        "pruned.accuracy",
        "pruned.params",
    ]
    lines = verdict.lines()
    assert lines[:3] == [c.line() for c in verdict.failed]
    for line, key in zip(
        lines, ("pruned.f1_macro", "pruned.accuracy", "pruned.params"), strict=False
    ):
        assert line.startswith(f"{key}: ") and "\n" not in line
    assert lines[2] == "pruned.params: now 1000, allowed <= 500.0000 (max 500)"
    assert len(lines) == 3 + len(verdict.notes)


def test_only_dense_or_absolute_failures_do_not_suggest_regen() -> None:
    now = dict(NOW, **{"pruned.f1_macro": 0.70})
    verdict = _evaluate(now, _baseline(now), RuleSpec("vs_dense.f1_macro", max_drop=0.05))
    assert verdict.status is Status.REGRESSED
    assert verdict.lines()[0].startswith("vs_dense.f1_macro: dense 0.9000, now 0.7000")
    assert verdict.remedy is None
    assert not any(HINT in line for line in verdict.lines(HINT))


def _other_cpu() -> dict[str, Any]:
    env = {**environment(1), "cpu": "Other CPU 9000"}
    env.pop("cpu_id", None)  # a machine whose /proc/cpuinfo names no vendor
    return env


def test_latency_vs_baseline_on_other_hardware_is_skipped_visibly() -> None:
    base = dict(NOW, **{"pruned.latency_ms_p50": 0.1})  # 8x faster there
    rule = RuleSpec("pruned.latency_ms_p50", max_rel_drop=0.1)
    verdict = _evaluate(NOW, _baseline(base, env=_other_cpu()), rule)
    assert verdict.status is Status.PASS
    (check,) = verdict.checks
    assert check.passed is None
    assert check.note.startswith(
        "skipped: baseline measured on other hardware (Other CPU 9000, 1 threads)"
    )
    assert check.note in verdict.notes
    # the same baseline measured on this machine is compared, and fails
    same = _evaluate(NOW, _baseline(base), rule)
    assert same.status is Status.REGRESSED
    assert same.lines()[0].startswith("pruned.latency_ms_p50: baseline 0.1000, now 0.8000")


def test_a_cpu_of_the_same_name_and_another_id_is_named_by_its_id() -> None:
    here = environment(1)
    there = {**here, "cpu_id": "GenuineIntel 6/143/8"}  # same model name, another generation
    base = dict(NOW, **{"pruned.latency_ms_p50": 0.1})
    rule = RuleSpec("pruned.latency_ms_p50", max_rel_drop=0.1)
    (check,) = _evaluate(NOW, _baseline(base, env=there), rule).checks
    assert check.passed is None
    assert check.note.startswith(
        f"skipped: baseline measured on other hardware ({here['cpu']} [GenuineIntel 6/143/8],"
    )


def test_timing_bounds_on_other_hardware_flag_instead_of_failing() -> None:
    # a same-run speedup bound holds on the hardware it was written for; a runner of another
    # CPU generation ("AMD EPYC" both, other family/model) can time the same kernels apart
    now = dict(NOW, **{"speedup_batch": 1.04, "pruned.f1_macro": 0.70})
    rules = (
        RuleSpec("speedup_batch", min=1.15),
        RuleSpec("vs_dense.latency_batch_ms_p50", max_rel_drop=0.0),  # no slower than dense
        RuleSpec("pruned.f1_macro", min=0.8),  # quality: hardware-independent, still fails
    )
    now["dense.latency_batch_ms_p50"], now["pruned.latency_batch_ms_p50"] = 10.0, 10.5
    other = {**environment(1), "cpu_id": "AuthenticAMD 23/49/0"}
    verdict = _evaluate(now, _baseline(now, env=other), *rules)
    assert verdict.status is Status.REGRESSED
    assert [c.key for c in verdict.failed] == ["pruned.f1_macro"]
    flags = [c for c in verdict.checks if c.flagged]
    assert [c.key for c in flags] == ["speedup_batch", "vs_dense.latency_batch_ms_p50"]
    assert all("the baseline was measured on other hardware" in c.rule for c in flags)
    assert any(n.startswith("flag: speedup_batch: now 1.0400") for n in verdict.notes)
    # on the baseline's hardware the same bounds fail the case
    same = _evaluate(now, _baseline(now), *rules)
    assert [c.key for c in same.failed] == [
        "speedup_batch",
        "vs_dense.latency_batch_ms_p50",
        "pruned.f1_macro",
    ]


def test_other_hardware_still_compares_hardware_independent_metrics() -> None:
    base = dict(NOW, **{"pruned.f1_macro": 0.95})
    verdict = _evaluate(NOW, _baseline(base, env=_other_cpu()), *RULES)
    assert verdict.status is Status.REGRESSED
    assert [c.key for c in verdict.failed] == ["pruned.f1_macro"]
    assert not any(n.startswith("skipped") for n in verdict.notes)  # nothing was skipped


def test_latency_within_tolerance_on_same_hardware_passes() -> None:
    base = dict(NOW, **{"pruned.latency_ms_p50": 0.75})
    verdict = _evaluate(NOW, _baseline(base), RuleSpec("pruned.latency_ms_p50", max_rel_drop=0.1))
    assert verdict.status is Status.PASS  # 0.8 <= 0.75 * 1.1


# --------------------------------------------------------------------------------------------
# statistical policies on per-fold values
#
# Results with per-fold values (5 folds of digits) so that the corrected t-test has folds to
# pair; the expected statistics are computed here by hand or with scipy.

DATASET = {"n_test": 360, "n_train": 1437}  # digits, 5 folds
FoldValues = Mapping[str, list[float] | float]  # per-fold values, or a case-level value (no folds)


def _summary(value: list[float] | float) -> MetricSummary:
    if isinstance(value, list):
        return MetricSummary.of(value)
    return MetricSummary((), float(value), 0.0)


def _cv_result(
    values: FoldValues,
    *,
    pie: dict[str, Any] | None = None,
    class_names: tuple[str, ...] = (),
) -> CaseResult:
    per_fold = [v for v in values.values() if isinstance(v, list)]
    k = len(per_fold[0]) if per_fold else 0
    folds = tuple(
        {name: v[i] for name, v in values.items() if isinstance(v, list)} for i in range(k)
    )
    return CaseResult(
        "tiny",
        "mag-50",
        HASH,
        "digest",
        folds,
        {name: _summary(v) for name, v in values.items()},
        0.1,
        dataset=dict(DATASET),
        class_names=class_names,
        pie=pie or {},
    )


def _cv_baseline(values: FoldValues) -> Baseline:
    return Baseline(
        "tiny",
        "mag-50",
        HASH,
        environment(1),
        "cafe1234",
        "2024-05-01T12:00:00Z",
        {name: _summary(v) for name, v in values.items()},
    )


def _cv_check(spec: RuleSpec, now: FoldValues, base: FoldValues | None, **kw: Any) -> Check:
    rule = Rule.parse(spec)
    return rule.check(
        _cv_result(now, **kw), None if base is None else _cv_baseline(base), hardware_note=""
    )


def _minus(ref: list[float], worsening: list[float]) -> list[float]:
    return [r - w for r, w in zip(ref, worsening, strict=True)]


def _plus(ref: list[float], worsening: list[float]) -> list[float]:
    return [r + w for r, w in zip(ref, worsening, strict=True)]


def _by_fold(ref: list[float], now: list[float]) -> list[float]:
    return [r - n for r, n in zip(ref, now, strict=True)]


def _corrected_t(worsening: list[float], margin: float) -> tuple[float, int]:
    """Nadeau & Bengio's corrected t by hand, and its degrees of freedom."""
    d = np.asarray(worsening)
    k = d.size
    se = math.sqrt((1 / k + DATASET["n_test"] / DATASET["n_train"]) * d.var(ddof=1))
    return (d.mean() - margin) / se, k - 1


BASE = [0.90, 0.92, 0.91, 0.93, 0.89]
CONSISTENT = [0.05, 0.06, 0.05, 0.055, 0.06]  # mean 0.055, tiny spread
NOISY = [0.10, -0.05, 0.08, -0.04, 0.06]  # mean 0.03, large spread
NOISY_SMALL = [0.02, -0.01, 0.015, -0.005, 0.0]  # mean 0.004, large spread for its size
F1 = "pruned.f1_macro"


def test_significant_passes_an_unchanged_result() -> None:
    check = _cv_check(
        RuleSpec(F1, max_drop=0.01, policy="significant"), {F1: list(BASE)}, {F1: list(BASE)}
    )
    assert check.passed is True, check.line()
    assert check.test.startswith("significant: pass, mean worsening 0 not above margin 0.01")
    assert "p=1" in check.test


def test_significant_fails_a_consistent_drop_and_names_policy_test_statistic_p() -> None:
    now = _minus(BASE, CONSISTENT)
    check = _cv_check(RuleSpec(F1, max_drop=0.01, policy="significant"), {F1: now}, {F1: BASE})
    assert check.passed is False
    t, df = _corrected_t(_by_fold(BASE, now), 0.0)  # significance of the worsening itself
    p = sps.t.sf(t, df)
    assert p < 1e-3
    line = check.line()
    assert "\n" not in line
    assert line.startswith(f"{F1}: baseline {np.mean(BASE):.4f}, now {np.mean(now):.4f}, ")
    assert "allowed >= 0.9000" in line  # the margin bound is the one shown as failed
    assert "significant at alpha 0.05" in line  # the rule
    assert "significant: FAIL" in line  # the policy's verdict
    assert "corrected t-test" in line  # the test
    assert f"t={t:.3g}" in line  # its statistic, with this run's fold sizes
    assert f"p={p:.2g}" in line  # its p-value
    assert "mean worsening 0.055 significant and above margin 0.01" in line


def test_noisy_drop_beyond_max_drop_passes_significant_but_fails_threshold() -> None:
    now = _minus(BASE, NOISY)
    assert np.mean(BASE) - np.mean(now) > 0.01
    threshold = _cv_check(RuleSpec(F1, max_drop=0.01), {F1: now}, {F1: BASE})
    assert threshold.passed is False and threshold.test == ""
    significant = _cv_check(
        RuleSpec(F1, max_drop=0.01, policy="significant"), {F1: now}, {F1: BASE}
    )
    assert significant.passed is True, significant.line()
    t, df = _corrected_t(_by_fold(BASE, now), 0.0)
    assert sps.t.sf(t, df) > 0.05
    assert "above but not significant, vs margin 0.01" in significant.test
    assert f"t={t:.3g}" in significant.test


def test_non_inferior_passes_an_unchanged_result_with_a_positive_margin() -> None:
    check = _cv_check(
        RuleSpec(F1, max_drop=0.01, policy="non_inferior"), {F1: list(BASE)}, {F1: list(BASE)}
    )
    assert check.passed is True, check.line()
    assert check.test.startswith("non_inferior: pass")


def test_non_inferior_fails_a_noisy_small_drop_that_cannot_be_shown_non_inferior() -> None:
    now = _minus(BASE, NOISY_SMALL)
    rule = RuleSpec(F1, max_drop=0.01, policy="non_inferior")
    # the mean drop is within max_drop: threshold and significant pass ...
    assert _cv_check(RuleSpec(F1, max_drop=0.01), {F1: now}, {F1: BASE}).passed is True
    sig = RuleSpec(F1, max_drop=0.01, policy="significant")
    assert _cv_check(sig, {F1: now}, {F1: BASE}).passed is True
    # ... but non-inferiority (H1: worsening < margin) is not shown
    check = _cv_check(rule, {F1: now}, {F1: BASE})
    assert check.passed is False
    t, df = _corrected_t(_by_fold(BASE, now), 0.01)
    p = sps.t.cdf(t, df)
    assert p > 0.05
    line = check.line()
    assert "non_inferior at alpha 0.05" in line
    assert "non_inferior: FAIL" in line and "not shown below margin 0.01" in line
    assert "corrected t-test" in line and f"t={t:.3g}" in line and f"p={p:.2g}" in line
    assert "allowed >= 0.9000" in line


def test_policy_alpha_is_used() -> None:
    # the noisy drop: p of about 0.35 passes at 0.05 and fails at alpha 0.5
    now = _minus(BASE, NOISY)
    loose = _cv_check(
        RuleSpec(F1, max_drop=0.01, policy="significant", alpha=0.5), {F1: now}, {F1: BASE}
    )
    assert loose.passed is False
    assert "alpha 0.5" in loose.line()


def test_vs_dense_pairs_pruned_with_dense_folds_of_the_same_run() -> None:
    # the dense folds spread widely; the pruned model is consistently 0.02 worse on each
    dense = [0.60, 0.95, 0.70, 0.90, 0.80]
    pruned = _minus(dense, [0.02, 0.021, 0.019, 0.02, 0.02])
    now = {"dense.f1_macro": dense, F1: pruned}
    # a baseline with other values is not what vs_dense compares with
    base = {"dense.f1_macro": [0.1] * 5, F1: [0.99] * 5}
    rule = Rule.parse(RuleSpec("vs_dense.f1_macro", max_drop=0.01, policy="significant"))
    check = rule.check(_cv_result(now), _cv_baseline(base), hardware_note="")
    assert check.passed is False, check.line()
    assert check.reference == pytest.approx(np.mean(dense))
    t, _ = _corrected_t(_by_fold(dense, pruned), 0.0)
    assert f"t={t:.3g}" in check.test and "mean worsening 0.02 " in check.test
    assert check.line().startswith("vs_dense.f1_macro: dense 0.7900, now 0.7700")
    assert "mcnemar" not in check.line()  # no per-sample counts in this result

    # unpaired, the 0.02 gap would drown in the spread of the folds: a plain mean comparison
    # passes a margin of 0.05 ...
    wide = Rule.parse(RuleSpec("vs_dense.f1_macro", max_drop=0.05, policy="significant"))
    assert wide.check(_cv_result(now), None, hardware_note="").passed is True
    # ... and the same gap against the baseline's folds (not paired with this run) is noise
    base_same = {F1: _plus(pruned, [0.05, -0.03, 0.04, -0.02, 0.06])}
    vs_base = _cv_check(RuleSpec(F1, max_drop=0.01, policy="significant"), now, base_same)
    assert vs_base.passed is True


def test_vs_dense_line_carries_mcnemar_when_the_result_has_counts() -> None:
    dense = list(BASE)
    pruned = _minus(dense, CONSISTENT)
    now = {"dense.f1_macro": dense, F1: pruned}
    pie = {"ids": [3, 17, 40], "mcnemar_b": 30, "mcnemar_c": 4}
    spec = RuleSpec("vs_dense.f1_macro", max_drop=0.01, policy="significant")
    rule = Rule.parse(spec)
    check = rule.check(_cv_result(now, pie=pie), None, hardware_note="")
    assert check.passed is False
    chi2 = (abs(30 - 4) - 1) ** 2 / 34
    p = sps.chi2.sf(chi2, 1)
    line = check.line()
    assert f"mcnemar chi2={chi2:.3g}, p={p:.2g}" in line
    assert line.index("corrected t-test") < line.index("mcnemar")
    # few discordant samples: the exact binomial variant
    small = rule.check(
        _cv_result(now, pie={"ids": [], "mcnemar_b": 5, "mcnemar_c": 1}), None, hardware_note=""
    )
    p_exact = sps.binomtest(5, 6, 0.5).pvalue
    assert f"mcnemar exact b=5, p={p_exact:.2g}" in small.line()
    # a rule against the baseline says nothing about dense vs pruned: no McNemar
    vs_base = _cv_check(RuleSpec(F1, max_drop=0.01, policy="significant"), now, now, pie=pie)
    assert vs_base.passed is True and "mcnemar" not in vs_base.line()
    # threshold rules run no test at all
    plain = Rule.parse(RuleSpec("vs_dense.f1_macro", max_drop=0.01)).check(
        _cv_result(now, pie=pie), None, hardware_note=""
    )
    assert plain.test == "" and "mcnemar" not in plain.line()


@pytest.mark.parametrize("policy", ["significant", "non_inferior"])
def test_metric_without_folds_falls_back_to_the_mean_and_says_so(policy: str) -> None:
    rule = RuleSpec("pie_rate", max_drop=0.05, policy=policy)
    worse = _cv_check(rule, {"pie_rate": 0.20}, {"pie_rate": 0.10})
    assert worse.passed is False  # lower is better: 0.20 > 0.10 + 0.05
    assert worse.test == f"{policy} needs paired per-fold values; judged by the mean"
    assert worse.line().endswith(f"; {policy} needs paired per-fold values; judged by the mean)")
    assert "allowed <= 0.1500" in worse.line()
    within = _cv_check(rule, {"pie_rate": 0.14}, {"pie_rate": 0.10})
    assert within.passed is True and "judged by the mean" in within.test
    # fold counts that do not pair up (another number of repeats) fall back as well
    other = _cv_check(RuleSpec(F1, max_drop=0.01, policy=policy), {F1: BASE * 2}, {F1: BASE})
    assert other.passed is True and "judged by the mean" in other.test


def test_lower_is_better_metrics_are_mirrored() -> None:
    rate = "disagreement_rate"
    base = [0.02, 0.03, 0.02, 0.03, 0.025]
    sig = RuleSpec(rate, max_drop=0.01, policy="significant")
    rise = _cv_check(sig, {rate: _plus(base, CONSISTENT)}, {rate: base})
    assert rise.passed is False
    assert "allowed <= 0.0350" in rise.line()
    assert "mean worsening 0.055 significant and above margin 0.01" in rise.test
    # the same change downwards is an improvement under every policy
    for policy in ("threshold", "significant", "non_inferior"):
        spec = RuleSpec(rate, max_drop=0.01, policy=policy)
        fall = _cv_check(spec, {rate: _minus(base, CONSISTENT)}, {rate: base})
        assert fall.passed is True, fall.line()
    fall = _cv_check(sig, {rate: _minus(base, CONSISTENT)}, {rate: base})
    assert "mean worsening -0.055" in fall.test
    # and against the dense model of the same run
    gap = "train_val_gap"
    dense = [0.01, 0.02, 0.015, 0.01, 0.02]
    now = {f"dense.{gap}": dense, f"pruned.{gap}": _plus(dense, CONSISTENT)}
    rule = Rule.parse(RuleSpec(f"vs_dense.{gap}", max_drop=0.01, policy="significant"))
    check = rule.check(_cv_result(now), None, hardware_note="")
    assert check.passed is False and "allowed <= " in check.line()
    now[f"pruned.{gap}"] = _minus(dense, CONSISTENT)
    assert rule.check(_cv_result(now), None, hardware_note="").passed is True


def test_policy_does_not_swallow_an_absolute_bound_equal_to_the_margin_bound() -> None:
    base = [0.9] * 5  # mean 0.9; max_drop 0.1 -> bound 0.9 - 0.1 == 0.8 == min
    now = _minus(base, [0.3, -0.1, 0.25, -0.05, 0.2])  # mean 0.78 < min 0.8, noisy
    threshold = _cv_check(RuleSpec(F1, max_drop=0.1, min=0.79), {F1: now}, {F1: base})
    assert threshold.passed is False  # below min (and beyond max_drop)
    # significant: the drop is noise, but the absolute bound min = 0.8 still fails
    other_min = RuleSpec(F1, max_drop=0.1, min=0.79, policy="significant")
    assert _cv_check(other_min, {F1: now}, {F1: base}).passed is False
    same_min = RuleSpec(F1, max_drop=0.1, min=0.8, policy="significant")
    assert _cv_check(same_min, {F1: now}, {F1: base}).passed is False


# --------------------------------------------------------------------------------------------
# class_* wildcards


def test_class_wildcard_yields_one_check_per_class_and_only_the_dropped_class_fails() -> None:
    names = ("setosa", "versicolor", "virginica")
    keys = [f"pruned.recall.class_{k}" for k in range(3)]
    base = {k: [0.9, 0.92, 0.88] for k in keys}
    now = dict(base)
    now["pruned.recall.class_1"] = [0.70, 0.72, 0.69]
    verdict = _verdict(
        _cv_result(now, class_names=names),
        _cv_baseline(base),
        RuleSpec("pruned.recall.class_*", max_drop=0.05),
    )
    assert [c.key for c in verdict.checks] == keys
    assert [c.passed for c in verdict.checks] == [True, False, True]
    assert verdict.status is Status.REGRESSED
    assert [c.key for c in verdict.failed] == ["pruned.recall.class_1"]
    assert verdict.lines()[0].startswith("pruned.recall.class_1: baseline 0.9000, now 0.7033")


def test_class_wildcard_with_a_policy_and_vs_dense() -> None:
    rules = Rule.expand(RuleSpec("vs_dense.recall.class_*", max_drop=0.05, policy="significant"), 3)
    assert [r.key for r in rules] == [f"vs_dense.recall.class_{k}" for k in range(3)]
    assert all(r.vs_dense and r.policy == "significant" for r in rules)
    now: dict[str, list[float]] = {}
    for k in range(3):
        now[f"dense.recall.class_{k}"] = list(BASE)
        now[f"pruned.recall.class_{k}"] = list(BASE)
    now["pruned.recall.class_2"] = _minus(BASE, [0.2, 0.21, 0.2, 0.19, 0.2])
    result = _cv_result(now, class_names=("a", "b", "c"))
    checks = [r.check(result, None, hardware_note="") for r in rules]
    assert [c.passed for c in checks] == [True, True, False]
    assert "significant: FAIL" in checks[2].line()
    # without the number of classes the key stays as written (and names no measured metric)
    (literal,) = Rule.expand(RuleSpec("pruned.recall.class_*", max_drop=0.05), None)
    assert literal.key == "pruned.recall.class_*"
