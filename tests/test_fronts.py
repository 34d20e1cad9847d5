"""Pareto fronts (harness.fronts) and the ``[gate.front]`` rule: hand-computed fronts,
hypothesis properties of the front, and the rule on real baseline files of other cases."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.baseline import Baseline, BaselineStore
from harness.fronts import behind, dominates, pareto_front
from harness.gate import FRONT_KEY, evaluate, front_check, front_peers
from harness.provenance import environment
from harness.results import CaseResult, MetricSummary, Remedy, Status, Verdict
from harness.spec import FrontSpec, RuleSpec, SpecError, suite_from_dict

# -- the front ---------------------------------------------------------------------------------


def test_front_of_hand_computed_points() -> None:
    points = [
        (0.90, 100.0),  # 0: on the front (cheapest)
        (0.95, 200.0),  # 1: on the front
        (0.93, 250.0),  # 2: dominated by 1
        (0.97, 400.0),  # 3: on the front (best quality)
        (0.95, 300.0),  # 4: dominated by 1 (same quality, dearer)
        (0.89, 100.0),  # 5: dominated by 0 (same cost, worse)
    ]
    assert pareto_front(points) == (0, 1, 3)


def test_front_ties_identical_points_are_all_on_it_or_none() -> None:
    assert pareto_front([(0.9, 1.0), (0.9, 1.0), (0.8, 2.0)]) == (0, 1)
    assert pareto_front([(0.9, 1.0), (0.9, 1.0), (0.95, 1.0)]) == (2,)
    assert pareto_front([]) == ()
    assert pareto_front([(0.5, 3.0)]) == (0,)


def test_front_refuses_non_finite_points() -> None:
    with pytest.raises(ValueError, match=r"point 1 = \(nan, 2.0\): coordinates must be finite"):
        pareto_front([(0.9, 1.0), (float("nan"), 2.0)])


coordinate = st.integers(-5, 5).map(float)  # small integers: ties and duplicates are frequent
points_st = st.lists(st.tuples(coordinate, coordinate), max_size=25)


@given(points_st)
def test_front_points_are_dominated_by_no_input_point(points: list[tuple[float, float]]) -> None:
    front = pareto_front(points)
    assert not any(dominates(q, points[i]) for i in front for q in points)


@given(points_st)
def test_every_point_off_the_front_is_dominated_by_a_front_point(
    points: list[tuple[float, float]],
) -> None:
    front = set(pareto_front(points))
    for i, p in enumerate(points):
        if i not in front:
            assert any(dominates(points[j], p) for j in front)
    assert bool(front) == bool(points)


@given(points_st, st.randoms(use_true_random=False))
def test_front_does_not_depend_on_the_order(points: list[tuple[float, float]], rnd: Any) -> None:
    order = list(range(len(points)))
    rnd.shuffle(order)
    shuffled = [points[i] for i in order]
    on_front = {points[i] for i in pareto_front(points)}
    assert {shuffled[i] for i in pareto_front(shuffled)} == on_front
    # ties: a point value is on the front in all its copies or in none
    counts = [points[i] for i in pareto_front(points)]
    assert all(counts.count(p) == points.count(p) for p in on_front)


@given(st.tuples(coordinate, coordinate), points_st, st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_behind_the_front_is_behind_some_point(
    point: tuple[float, float], points: list[tuple[float, float]], margin: float
) -> None:
    on_front = [points[i] for i in pareto_front(points)]
    by_front = behind(point, on_front, margin) is not None
    assert by_front == (behind(point, points, margin) is not None)
    assert by_front == any(c <= point[1] and q > point[0] + margin for q, c in points)


def test_behind_picks_the_best_beating_point_and_respects_the_margin() -> None:
    others = [(0.95, 100.0), (0.97, 150.0), (0.99, 300.0)]
    assert behind((0.90, 200.0), others, 0.01) == 1  # 0.99 is dearer; 0.97 beats 0.95
    assert behind((0.96, 200.0), others, 0.01) is None  # 0.97 > 0.96 but not by more than 0.01
    assert behind((0.96, 200.0), others, 0.0) == 1
    assert behind((0.90, 50.0), others, 0.0) is None  # nothing is as cheap


# -- [gate.front] in a suite file ----------------------------------------------------------------

SUITE: dict[str, Any] = {
    "suite": {"name": "tiny", "dataset": "sklearn:wine"},
    "gate": {"pruned.f1_macro": {"max_drop": 0.01}},
    "case": [{"name": "mag-50", "prune": {"method": "magnitude", "sparsity": 0.5}}],
}


def _suite(gate: dict[str, Any], case_gate: dict[str, Any] | None = None) -> Any:
    data = copy.deepcopy(SUITE)
    data["gate"].update(gate)
    if case_gate is not None:
        data["case"][0]["gate"] = case_gate
    return suite_from_dict(data, "suites/tiny.toml")


def test_front_table_parses_with_defaults_and_written_keys() -> None:
    text = '[front]\nquality = "pruned.accuracy"\ncost = "pruned.energy_nj"\nmargin = 0.02\n'
    suite = _suite(tomllib.loads(text))
    assert suite.front == FrontSpec("pruned.accuracy", "pruned.energy_nj", 0.02)
    assert suite.gate == (RuleSpec("pruned.f1_macro", max_drop=0.01),)  # front is not a rule
    assert _suite({"front": {}}).front == FrontSpec("pruned.f1_macro", "pruned.flops_nonzero", 0.01)


def test_a_suite_without_the_table_has_no_front_rule() -> None:
    assert _suite({}).front is None


@pytest.mark.parametrize(
    ("gate", "case_gate", "message"),
    [
        (
            {"front": {"margin": -0.1}},
            None,
            "suites/tiny.toml: gate.front.margin = -0.1: must be >= 0",
        ),
        (
            {"front": {"quality": "vs_dense.f1_macro"}},
            None,
            "suites/tiny.toml: gate.front.quality = 'vs_dense.f1_macro': must name one metric "
            "(no vs_dense., no class_*)",
        ),
        (
            {"front": {"cost": "pruned.f1_macro"}},
            None,
            "suites/tiny.toml: gate.front.cost = 'pruned.f1_macro': must differ from quality "
            "(a front needs two axes)",
        ),
        (
            {"front": {"cots": "pruned.flops"}},
            None,
            "suites/tiny.toml: gate.front.cots = 'pruned.flops': unknown key",
        ),
        ({"front": 1}, None, "suites/tiny.toml: gate.front = 1: must be a table"),
        (
            {},
            {"front": {}},
            "suites/tiny.toml: case[mag-50].gate.front = {}: only in the suite's [gate] table",
        ),
    ],
)
def test_a_bad_front_table_is_one_line(
    gate: dict[str, Any], case_gate: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(SpecError) as err:
        _suite(gate, case_gate)
    assert str(err.value) == message


def test_an_unknown_front_metric_names_the_key() -> None:
    with pytest.raises(SpecError, match=r"^suites/tiny.toml: gate.front.cost = 'pruned.flop': "):
        _suite({"front": {"cost": "pruned.flop"}})


# -- the rule on real baseline files -------------------------------------------------------------

DIGEST = "abc123"


def _values(f1: float, flops: float) -> dict[str, float]:
    return {"pruned.f1_macro": f1, "pruned.flops_nonzero": flops, "pruned.accuracy": f1}


def _summaries(values: dict[str, float]) -> dict[str, MetricSummary]:
    return {k: MetricSummary.of([v, v]) for k, v in values.items()}  # two folds, no spread


def _result(values: dict[str, float], case: str = "mag-50") -> CaseResult:
    return CaseResult.from_dict(
        {
            "suite": "tiny",
            "case": case,
            "spec_hash": "hash-" + case,
            "dataset_digest": DIGEST,
            "seconds": 0.1,
            "folds": [dict(values), dict(values)],
            "metrics": {k: s.to_dict() for k, s in _summaries(values).items()},
            "dataset": {"name": "sklearn:wine"},
            "class_names": [],
            "confusion": {},
            "layer_sparsity": {},
            "pie": {},
            "findings": [],
            "env": environment(1),
        }
    )


def _store(tmp_path: Path, peers: dict[str, dict[str, float]], **env: Any) -> BaselineStore:
    store = BaselineStore(tmp_path / "baselines")
    for case, values in peers.items():
        store.save(
            Baseline(
                "tiny",
                case,
                "hash-" + case,
                {**environment(1), **env},
                "cafe1234",
                "2024-05-01T12:00:00Z",
                _summaries(values),
                dataset_digest=DIGEST,
            )
        )
    return store


PEERS = {
    "mag-90": _values(0.95, 1000.0),
    "struct-30": _values(0.97, 3000.0),
    "obs-95": _values(0.80, 500.0),  # cheap and poor: on the front, beats nobody dearer
}
FRONT = FrontSpec("pruned.f1_macro", "pruned.flops_nonzero", 0.01)


def _front_verdict(store: BaselineStore, values: dict[str, float], front: FrontSpec) -> Verdict:
    result = _result(values)
    peers = front_peers(store, "tiny", "mag-50")
    own = next((p for p in peers if p.case == "mag-50"), None)
    assert own is None  # the case's own baseline is not a peer
    baseline = store.load("tiny", "mag-50")
    return evaluate(result, baseline, (), front=front, peers=peers)


def test_front_rule_passes_on_the_front(tmp_path: Path) -> None:
    store = _store(tmp_path, {**PEERS, "mag-50": _values(0.96, 2000.0)})
    verdict = _front_verdict(store, _values(0.96, 2000.0), FRONT)
    (check,) = verdict.checks
    assert (check.key, check.passed, check.reference, check.now) == (FRONT_KEY, True, 0.95, 0.96)
    assert check.allowed == ">= 0.9400"  # best quality at cost <= 2000 (mag-90), less the margin
    assert verdict.status is Status.PASS


def test_front_rule_fails_behind_the_front_and_names_the_case(tmp_path: Path) -> None:
    store = _store(tmp_path, {**PEERS, "mag-50": _values(0.93, 2000.0)})
    verdict = _front_verdict(store, _values(0.93, 2000.0), FRONT)
    (check,) = verdict.failed
    assert check.line() == (
        "front: baseline 0.9500, now 0.9300, allowed >= 0.9400 (front of pruned.f1_macro over "
        "pruned.flops_nonzero (other cases' baselines), margin 0.01; behind mag-90: "
        "pruned.f1_macro 0.9500 at pruned.flops_nonzero 1000 (this case: 2000))"
    )
    assert verdict.status is Status.REGRESSED
    assert verdict.remedy is None  # a new baseline of this case would not change it
    assert verdict.notes == (
        "the case is behind the front of its suite's other baselines; a new baseline of this "
        "case does not change it: improve the case or change [gate.front]",
    )


def test_front_rule_margin_edge(tmp_path: Path) -> None:
    store = _store(tmp_path, PEERS)
    at_margin = _front_verdict(store, _values(0.94, 1000.0), FRONT)  # 0.95 = 0.94 + margin
    assert at_margin.checks[0].passed is True
    beyond = _front_verdict(store, _values(0.9399, 1000.0), FRONT)
    assert beyond.checks[0].passed is False
    no_margin = _front_verdict(store, _values(0.94, 1000.0), FrontSpec(margin=0.0))
    assert no_margin.checks[0].passed is False


def test_front_rule_passes_where_no_other_case_is_as_cheap(tmp_path: Path) -> None:
    store = _store(tmp_path, PEERS)
    (check,) = _front_verdict(store, _values(0.5, 100.0), FRONT).checks
    assert (check.passed, check.reference, check.allowed) == (
        True,
        None,
        "any (no other case is as cheap)",
    )


def test_front_rule_skips_a_missing_metric(tmp_path: Path) -> None:
    store = _store(tmp_path, PEERS)
    values = {"pruned.f1_macro": 0.5}  # this case has no FLOPs count
    (check,) = _front_verdict(store, values, FRONT).checks
    assert (check.passed, check.note) == (None, "pruned.flops_nonzero was not measured")
    energy = FrontSpec(cost="pruned.energy_nj")  # no peer has it
    (check,) = _front_verdict(store, {**_values(0.5, 1.0), "pruned.energy_nj": 3.0}, energy).checks
    assert (check.passed, check.note) == (
        None,
        "no other case's baseline has pruned.f1_macro and pruned.energy_nj",
    )


def test_front_rule_uses_only_other_cases_of_the_same_data(tmp_path: Path) -> None:
    store = _store(tmp_path, {"mag-50": _values(0.99, 1.0)})  # its own baseline: not a peer
    (check,) = _front_verdict(store, _values(0.5, 2000.0), FRONT).checks
    assert check.passed is None
    other_data = _store(tmp_path / "x", PEERS)
    peers = [
        Baseline(**{**vars(p), "dataset_digest": "0ff1ce"})
        for p in front_peers(other_data, "tiny", "mag-50")
    ]
    check = front_check(FRONT, _result(_values(0.5, 2000.0)), peers)
    assert check.passed is None


def test_a_latency_cost_compares_only_with_baselines_of_this_machine(tmp_path: Path) -> None:
    latency = FrontSpec(cost="pruned.latency_ms_p50")
    peers = {"mag-90": {"pruned.f1_macro": 0.95, "pruned.latency_ms_p50": 0.01}}
    now = {"pruned.f1_macro": 0.5, "pruned.latency_ms_p50": 0.02}
    other = _store(tmp_path / "other", peers, cpu="another CPU")
    (check,) = _front_verdict(other, now, latency).checks
    assert check.passed is None and check.note.startswith("skipped: a hardware-bound axis")
    same = _store(tmp_path / "same", peers)
    assert _front_verdict(same, now, latency).checks[0].passed is False


def test_without_the_table_the_verdict_is_unchanged(tmp_path: Path) -> None:
    store = _store(tmp_path, {**PEERS, "mag-50": _values(0.5, 2000.0)})
    rules = (RuleSpec("pruned.f1_macro", max_drop=0.01),)
    result, baseline = _result(_values(0.5, 2000.0)), store.load("tiny", "mag-50")
    plain = evaluate(result, baseline, rules)
    assert evaluate(result, baseline, rules, front=None, peers=front_peers(store, "tiny", "x")) == (
        plain
    )
    assert [c.key for c in plain.checks] == ["pruned.f1_macro"] and plain.ok


def test_front_failure_with_a_baseline_regression_keeps_the_rewrite_remedy(tmp_path: Path) -> None:
    store = _store(tmp_path, {**PEERS, "mag-50": _values(0.99, 2000.0)})
    verdict = evaluate(
        _result(_values(0.90, 2000.0)),
        store.load("tiny", "mag-50"),
        (RuleSpec("pruned.f1_macro", max_drop=0.01),),
        front=FRONT,
        peers=front_peers(store, "tiny", "mag-50"),
    )
    assert [c.key for c in verdict.failed] == ["pruned.f1_macro", FRONT_KEY]
    assert verdict.remedy is Remedy.IF_INTENDED
    assert verdict.notes[-1].startswith("the case is behind the front")
