"""The gate on hand-built results and baselines (no training)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness.baseline import Baseline, environment
from harness.gate import Check, Rule, Status, Verdict, evaluate
from harness.runner import CaseResult, MetricSummary
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
    return evaluate(_result(now), base, rules, threads=1, regen_hint=HINT)


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
    assert any(HINT in n for n in verdict.notes)
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
    assert verdict.notes[0] == "no baseline for tiny/mag-50; create it with --harness-regen"
    assert verdict.lines() == list(verdict.notes)
    by_key = {c.key: c for c in verdict.checks}
    assert by_key["pruned.f1_macro"].passed is None
    assert by_key["vs_dense.f1_macro"].passed is True  # still checked without a baseline
    assert verdict.baseline_commit is None


def test_other_spec_hash_is_spec_changed() -> None:
    verdict = _evaluate(NOW, _baseline(NOW, spec_hash="old-hash"), *RULES)
    assert verdict.status is Status.SPEC_CHANGED and not verdict.ok
    assert "old-hash -> spec-hash-1" in verdict.notes[0]
    assert HINT in verdict.notes[0]
    # the stale baseline is not compared against
    assert {c.key: c.passed for c in verdict.checks}["pruned.f1_macro"] is None


def test_baseline_raised_by_005_fails_naming_the_metric() -> None:
    base = dict(NOW)
    base["pruned.f1_macro"] += 0.05
    verdict = _evaluate(NOW, _baseline(base), *RULES)
    assert verdict.status is Status.REGRESSED and not verdict.ok
    assert [c.key for c in verdict.failed] == ["pruned.f1_macro"]
    lines = verdict.lines()
    assert lines[0].startswith("pruned.f1_macro: baseline 0.9300, now 0.8800, allowed >= 0.9200")
    assert any(HINT in line for line in lines[1:])


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
    assert not any(HINT in n for n in verdict.notes)


def _other_cpu() -> dict[str, Any]:
    return {**environment(1), "cpu": "Other CPU 9000"}


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
