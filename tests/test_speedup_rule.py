"""``speedup_vs_flops`` and the advisory rule that flags a FLOPs saving the latency does not
show: the metric's known answers, the flag in the verdict, the terminal and the job summary,
``severity`` parsing, the codecs, and the wiring of ``check_case`` (a hand-built result, no
training)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import report
from harness.baseline import Baseline, BaselineStore
from harness.gate import evaluate, speedup_vs_flops
from harness.metricnames import Direction, parse
from harness.provenance import environment
from harness.results import CaseResult, Check, MetricSummary, Outcome, Status, Verdict
from harness.spec import DEFAULT_FLAGS, RuleSpec, SpecError, suite_from_dict

# -- the metric ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("speedup", "pruned", "dense", "expected"),
    [
        (1.0, 10.0, 100.0, 0.0),  # FLOPs fell 10x, latency did not move
        (10.0, 10.0, 100.0, 1.0),  # latency fell as much as the FLOPs
        (2.0, 25.0, 100.0, 0.5),  # 4x fewer FLOPs, 2x faster: half of it, on a log scale
        (0.5, 50.0, 100.0, -1.0),  # 2x fewer FLOPs, 2x slower
        (1.0, 50.0, 100.0, 0.0),  # 50 %, no speedup: 0, not on the flag's bound
        (1.02, 100.0, 100.0, 1.0),  # no FLOPs reduction: neutral
        (1.0, 0.0, 100.0, 0.0),  # nothing left to compute
        (1.3, 0.0, 0.0, 1.0),  # nothing counted: neutral
    ],
)
def test_speedup_vs_flops_known_answers(
    speedup: float, pruned: float, dense: float, expected: float
) -> None:
    assert speedup_vs_flops(speedup, pruned, dense) == pytest.approx(expected)


@given(st.floats(0.01, 100), st.floats(1, 1e9), st.floats(1, 1e9))
def test_speedup_is_the_flops_factor_to_the_power_speedup_vs_flops(
    speedup: float, pruned: float, dense: float
) -> None:
    value = speedup_vs_flops(speedup, pruned, dense)
    assert math.isfinite(value)
    if dense / pruned > 1 + 1e-6:
        assert (dense / pruned) ** value == pytest.approx(speedup, rel=1e-6)
    else:
        assert value == 1.0


def test_speedup_vs_flops_is_a_hardware_bound_run_metric() -> None:
    ref = parse("speedup_vs_flops")
    assert (ref.model, ref.direction, ref.hardware_bound) == ("", Direction.HIGHER, True)


# -- the flag --------------------------------------------------------------------------------------

DIGITS = {"pruned.f1_macro": 0.97, "pruned.accuracy": 0.97}


def _result(values: dict[str, float], env: dict[str, Any] | None = None) -> CaseResult:
    return CaseResult(
        "tiny",
        "mag-90",
        "spec-hash-1",
        "digest",
        (dict(values),),
        {k: MetricSummary((v,), v, 0.0) for k, v in values.items()},
        0.1,
        env=environment(1) if env is None else env,
    )


def _baseline(values: dict[str, float], env: dict[str, Any] | None = None) -> Baseline:
    return Baseline(
        "tiny",
        "mag-90",
        "spec-hash-1",
        environment(1) if env is None else env,
        "cafe1234",
        "2024-05-01T12:00:00Z",
        {k: MetricSummary((v,), v, 0.0) for k, v in values.items()},
    )


def _speed(fell: float, speedup: float) -> dict[str, float]:
    return {
        **DIGITS,
        "flops_reduction": fell,
        "speedup_batch": speedup,
        "speedup_vs_flops": speedup_vs_flops(speedup, 1 - fell, 1.0),
    }


RULES = (RuleSpec("pruned.f1_macro", max_drop=0.01), *DEFAULT_FLAGS)
NOTE = (
    "speedup not real: FLOPs -90 %, batch latency 1.02x (speedup_vs_flops 0.0086, allowed "
    ">= 0.5000); the kernels that ran do not turn this sparsity into speed"
)


def test_the_default_flag_notes_a_flops_saving_without_speed_and_passes() -> None:
    values = _speed(0.9, 1.02)
    verdict = evaluate(_result(values), _baseline(values), RULES)
    assert verdict.status is Status.PASS and verdict.ok
    (flag,) = verdict.flags
    assert (flag.key, flag.passed, flag.severity, flag.note) == (
        "speedup_vs_flops",
        False,
        "warn",
        NOTE,
    )
    assert verdict.failed == ()
    assert verdict.notes == (NOTE,)


@pytest.mark.parametrize(
    "baseline_env",
    [None, {"cpu": "another CPU", "threads": 8}],
    ids=["no-baseline", "other-hardware"],
)
def test_the_flag_needs_no_baseline_of_this_machine(baseline_env: dict[str, Any] | None) -> None:
    values = _speed(0.9, 1.02)
    baseline = None if baseline_env is None else _baseline(values, env=baseline_env)
    verdict = evaluate(_result(values), baseline, RULES)
    assert [c.note for c in verdict.flags] == [NOTE]
    assert NOTE in verdict.notes


def test_no_flag_where_the_speed_follows_or_the_flops_barely_fell() -> None:
    followed = evaluate(_result(_speed(0.75, 2.54)), None, RULES)  # 4x fewer FLOPs, 2.54x: 0.67
    (check,) = [c for c in followed.checks if c.key == "speedup_vs_flops"]
    assert (check.passed, followed.flags) == (True, ())
    barely = evaluate(_result(_speed(0.1, 0.5)), None, RULES)  # 10 % fewer FLOPs, 2x slower
    (check,) = [c for c in barely.checks if c.key == "speedup_vs_flops"]
    assert (check.passed, check.note) == (None, "applies when flops_reduction >= 0.2 (0.1000)")
    assert not any(n.startswith("speedup not real") for n in barely.notes)
    unmeasured = evaluate(_result(DIGITS), None, RULES)  # a result from before the metric
    assert unmeasured.flags == ()


def test_a_flag_does_not_hide_a_real_failure() -> None:
    values = _speed(0.9, 1.02)
    verdict = evaluate(_result({**values, "pruned.f1_macro": 0.9}), _baseline(values), RULES)
    assert verdict.status is Status.REGRESSED
    assert [c.key for c in verdict.failed] == ["pruned.f1_macro"]
    lines = verdict.lines("pytest x --harness-regen")
    assert lines[0].startswith("pruned.f1_macro: baseline 0.9700, now 0.9000")
    assert NOTE in lines


# -- written in a suite ----------------------------------------------------------------------------

SUITE: dict[str, Any] = {
    "suite": {"name": "tiny", "dataset": "sklearn:wine"},
    "gate": {"pruned.f1_macro": {"max_drop": 0.01}},
    "case": [{"name": "mag-90", "prune": {"method": "magnitude", "sparsity": 0.9}}],
}


def _suite(gate: dict[str, Any] | None = None, case_gate: dict[str, Any] | None = None) -> Any:
    data = copy.deepcopy(SUITE)
    if gate is None:
        del data["gate"]
    else:
        data["gate"].update(gate)
    if case_gate is not None:
        data["case"][0]["gate"] = case_gate
    return suite_from_dict(data, "suites/tiny.toml")


def test_every_suite_gets_the_flag_unless_it_writes_a_rule_on_the_metric() -> None:
    for suite in (_suite(), _suite({})):
        case = suite.cases[0]
        assert suite.all_rules(case) == suite.rules(case) + DEFAULT_FLAGS
    strict = _suite({"speedup_vs_flops": {"min": 0.5}})
    rules = strict.all_rules(strict.cases[0])
    assert [r for r in rules if r.metric == "speedup_vs_flops"] == [
        RuleSpec("speedup_vs_flops", min=0.5)
    ]
    per_case = _suite(case_gate={"speedup_vs_flops": {"min": 0.3, "severity": "warn"}})
    (rule,) = [r for r in per_case.all_rules(per_case.cases[0]) if r.metric == "speedup_vs_flops"]
    assert (rule.min, rule.severity, rule.when_min) == (0.3, "warn", None)


def test_a_rule_on_the_metric_makes_it_fail() -> None:
    strict = _suite({"speedup_vs_flops": {"min": 0.5}})
    values = _speed(0.9, 1.02)
    verdict = evaluate(_result(values), _baseline(values), strict.all_rules(strict.cases[0]))
    assert verdict.status is Status.REGRESSED
    (check,) = verdict.failed
    assert check.line() == "speedup_vs_flops: now 0.0086, allowed >= 0.5000 (min 0.5)"
    assert verdict.flags == ()


def test_severity_and_when_min_parse_from_toml() -> None:
    written = {"min": 0.5, "severity": "warn", "when_min": {"flops_reduction": 0.3}}
    suite = _suite({"speedup_vs_flops": written})
    assert suite.gate[-1] == RuleSpec(
        "speedup_vs_flops", min=0.5, severity="warn", when_min={"flops_reduction": 0.3}
    )


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"min": 0.5, "severity": "info"},
            "suites/tiny.toml: gate.speedup_vs_flops.severity = 'info': must be one of fail, warn",
        ),
        (
            {"min": 0.5, "when_min": {"flops_reduction": "a lot"}},
            "suites/tiny.toml: gate.speedup_vs_flops.when_min = {'flops_reduction': 'a lot'}: "
            "'flops_reduction': the lower bound must be a number",
        ),
        (
            {"min": 0.5, "when_min": {"vs_dense.f1_macro": 0.1}},
            "suites/tiny.toml: gate.speedup_vs_flops.when_min = {'vs_dense.f1_macro': 0.1}: "
            "'vs_dense.f1_macro': must name one metric (no vs_dense., no class_*)",
        ),
        (
            {"min": 0.5, "when_min": 0.2},
            "suites/tiny.toml: gate.speedup_vs_flops.when_min = 0.2: must be a table",
        ),
    ],
)
def test_a_bad_severity_or_condition_is_one_line(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        _suite({"speedup_vs_flops": rule})
    assert str(err.value) == message


# -- codecs and faces ------------------------------------------------------------------------------


def test_checks_round_trip_and_older_json_loads_as_fail() -> None:
    values = _speed(0.9, 1.02)
    verdict = evaluate(_result(values), _baseline(values), RULES)
    assert Verdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict
    plain, flag = verdict.checks
    assert "severity" not in plain.to_dict()  # as verdicts were written before the field
    assert flag.to_dict()["severity"] == "warn"
    older = {k: v for k, v in flag.to_dict().items() if k != "severity"}
    assert Check.from_dict(older).severity == "fail"


def _outcome(values: dict[str, float]) -> Outcome:
    result = _result(values)
    return Outcome(result, evaluate(result, _baseline(values), RULES), {}, "suites/tiny.toml")


def test_the_flag_shows_in_the_terminal_the_job_summary_and_the_case_report() -> None:
    flagged, clean = _outcome(_speed(0.9, 1.02)), _outcome(_speed(0.5, 1.9))
    lines = report.terminal_lines([flagged, clean])
    assert f"flag tiny::mag-90: {NOTE}" in lines
    assert sum(line.startswith("flag ") for line in lines) == 1
    assert "2 case(s): 2 passed, 0 failed (speedup: batch latency dense/pruned, same run)" in lines
    text = report.markdown([flagged, clean])
    assert "| tiny::mag-90 | ⚠️ pass |" in text
    assert "| tiny::mag-90 | ✅ pass |" in text
    assert f"### Flags (advisory: they do not fail the build)\n\n- **tiny::mag-90**: {NOTE}" in text
    assert "### Failures" not in text
    case = report.case_markdown(flagged)
    assert f"- {NOTE}" in case and "**flag** (advisory)" in case


def test_check_case_gates_with_the_flag_and_the_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's wiring: ``all_rules`` (the flag), ``[gate.front]`` against the other
    cases' baseline files; the runner is replaced by a hand-built result."""
    import harness.runner
    from harness.session import Settings, check_case

    data = copy.deepcopy(SUITE)
    data["gate"]["front"] = {"margin": 0.01}
    suite = suite_from_dict(data, "suites/tiny.toml")
    case = suite.cases[0]
    values = {**_speed(0.9, 1.02), "pruned.flops_nonzero": 2000.0}
    result = CaseResult(
        "tiny",
        case.name,
        suite.spec_hash(case),
        "digest",
        (dict(values),),
        {k: MetricSummary((v,), v, 0.0) for k, v in values.items()},
        0.1,
        env=environment(1),
    )
    monkeypatch.setattr(harness.runner, "run_case", lambda *a, **k: result)
    store = BaselineStore(tmp_path / "baselines")
    peer = {"pruned.f1_macro": 0.99, "pruned.flops_nonzero": 1000.0}
    store.save(
        Baseline(
            "tiny",
            "obs-95",
            "other",
            environment(1),
            "cafe1234",
            "2024-05-01T12:00:00Z",
            {k: MetricSummary((v,), v, 0.0) for k, v in peer.items()},
        )
    )
    outcome = check_case(suite, case, Settings(baselines=tmp_path / "baselines", regen=True))
    verdict = outcome.verdict
    assert [c.key for c in verdict.failed] == ["front"]
    assert "behind obs-95" in verdict.failed[0].test
    assert [c.note for c in verdict.flags] == [NOTE]
    assert verdict.status is Status.REGRESSED


@pytest.mark.parametrize(("layers", "noted"), [(0.0, True), (2.0, False), (None, False)])
def test_a_deployment_that_ran_dense_is_said_in_the_verdict(
    layers: float | None, noted: bool
) -> None:
    values = {**DIGITS, **({} if layers is None else {"deploy_accelerated_layers": layers})}
    verdict = evaluate(_result(values), _baseline(values), RULES)
    assert verdict.status is Status.PASS
    said = [n for n in verdict.notes if n.startswith("deploy: no layer ran")]
    assert bool(said) is noted, verdict.notes
