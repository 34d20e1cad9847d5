"""End-to-end runs of the plugin with pytester: the baseline lifecycle, xdist, MLflow, the fixture,
the CLI. These train real (tiny) models on real data."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from harness.metricnames import parse as parse_metric

NO_MLFLOW = "--harness-no-mlflow"


def _baseline(p: pytest.Pytester, case: str) -> Path:
    return p.path / "baselines" / "tiny" / f"{case}.json"


def _deterministic_metrics(path: Path) -> dict[str, dict]:
    metrics = json.loads(path.read_text())["metrics"]
    return {k: v for k, v in metrics.items() if not parse_metric(k).hardware_bound}


def test_lifecycle_create_pass_regress_fail_regen_pass(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    # 1. no baseline: the case fails and says how to create it
    res = p.runpytest("suites", NO_MLFLOW)
    res.assert_outcomes(failed=2)
    res.stdout.fnmatch_lines(["*no baseline for tiny/mag-50; create it with*--harness-regen*"])
    res.stdout.no_fnmatch_line("*Traceback*")

    # 2. regen writes baselines and passes
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen")
    res.assert_outcomes(passed=2)
    first = _deterministic_metrics(_baseline(p, "mag-50"))
    assert first["dense.f1_macro"]["mean"] > 0.5
    assert len(first["pruned.f1_macro"]["folds"]) == 2

    # 3. an unchanged run passes, with the summary table
    res = p.runpytest("suites", NO_MLFLOW)
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(["*prune-harness*", "case*verdict*", "tiny::mag-50*pass*"])

    # 4. a baseline value raised by 0.05 makes the case fail and name the metric
    path = _baseline(p, "mag-50")
    data = json.loads(path.read_text())
    raised = data["metrics"]["pruned.f1_macro"]  # folds and mean, consistently
    raised["folds"] = [v + 0.05 for v in raised["folds"]]
    raised["mean"] += 0.05
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    res = p.runpytest("suites", NO_MLFLOW)
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(
        [
            "tiny::mag-50: regressed",
            "pruned.f1_macro: baseline *, now *, allowed >= * (max_drop 0.01 vs baseline)",
            "*rewrite the baseline with*--harness-regen*",
        ]
    )
    res.stdout.no_fnmatch_line("pruned.accuracy:*")  # only the regressed metric is named
    assert (path.parents[1] / ".obtained" / "tiny" / "mag-50.json").exists()

    # 5. regen restores it, with identical metric values (determinism)
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=2)
    assert _deterministic_metrics(path) == first
    p.runpytest("suites", NO_MLFLOW).assert_outcomes(passed=2)

    # 6. a deleted baseline fails and names --harness-regen
    path.unlink()
    res = p.runpytest("suites", NO_MLFLOW, "-k", "mag-50")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*pytest suites/tiny.toml::mag-50 --harness-regen*"])


def test_spec_change_is_detected(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    p.runpytest("suites", NO_MLFLOW, "--harness-regen", "-k", "mag-50").assert_outcomes(passed=1)
    suite = p.path / "suites" / "tiny.toml"
    suite.write_text(suite.read_text().replace("sparsity = 0.5", "sparsity = 0.6"))
    res = p.runpytest("suites", NO_MLFLOW, "-k", "mag-50")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["tiny::mag-50: spec-changed", "*the case spec changed*"])


def test_gate_rule_change_keeps_baseline_valid(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    p.runpytest("suites", NO_MLFLOW, "--harness-regen", "-k", "mag-50").assert_outcomes(passed=1)
    suite = p.path / "suites" / "tiny.toml"
    suite.write_text(
        suite.read_text().replace(
            'max_drop = 0.01 }\n"pruned.accuracy"', 'max_drop = 0.02 }\n"pruned.accuracy"'
        )
    )
    p.runpytest("suites", NO_MLFLOW, "-k", "mag-50").assert_outcomes(passed=1)


def test_vs_dense_rule_fails_without_baseline_hint(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    suite = p.path / "suites" / "tiny.toml"
    # pruning 95% with no fine-tuning loses far more than 0.001 F1 against the dense model
    suite.write_text(
        suite.read_text().replace(
            'prune = { method = "magnitude", sparsity = 0.5 }\n'
            "finetune = { epochs = 1, lr = 1e-3 }",
            'prune = { method = "magnitude", sparsity = 0.95 }\n'
            'gate = { "vs_dense.f1_macro" = { max_drop = 0.001 } }',
        )
    )
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen", "-k", "mag-50")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        ["vs_dense.f1_macro: dense *, now *, allowed >= *", "*a new baseline does not change them*"]
    )


def test_xdist_run_writes_every_baseline(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    res = p.runpytest_subprocess(
        "suites", NO_MLFLOW, "--harness-regen", "-n", "2", "--harness-report", "report"
    )
    res.assert_outcomes(passed=2)
    for case in ("mag-50", "struct-30"):
        json.loads(_baseline(p, case).read_text())  # complete, valid JSON
    assert not list((p.path / "baselines").rglob("*.tmp"))
    res.stdout.fnmatch_lines(["*2 case(s): 2 passed, 0 failed*"])
    summary = json.loads((p.path / "report" / "summary.json").read_text())
    assert sorted(s["case"] for s in summary) == ["mag-50", "struct-30"]
    assert (p.path / "report" / "tiny__mag-50" / "report.json").exists()
    assert (p.path / "report" / "tiny__mag-50" / "confusion_pruned.png").exists()
    # and the gate under xdist agrees with the serial run
    res = p.runpytest_subprocess("suites", NO_MLFLOW, "-n", "2")
    res.assert_outcomes(passed=2)


@pytest.mark.parametrize("workers", [0, 2], ids=["serial", "xdist"])
def test_mlflow_sqlite_store_has_nested_runs(tiny_project: pytest.Pytester, workers: int) -> None:
    from mlflow.tracking import MlflowClient

    p = tiny_project
    uri = f"sqlite:///{p.path / 'store.db'}"
    args = ("suites", "--harness-regen", "--harness-mlflow-uri", uri)
    # under xdist, results are held while both workers are busy, then logged
    res = p.runpytest_subprocess(*args, "-n", str(workers)) if workers else p.runpytest(*args)
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(["*results logged to MLflow at sqlite:*"])
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("prune-harness")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    kinds = {}
    for run in runs:
        kinds.setdefault(run.data.tags["harness.kind"], []).append(run)
    assert len(kinds["session"]) == 1 and len(kinds["case"]) == 2 and len(kinds["fold"]) == 4
    session_id = kinds["session"][0].info.run_id
    for case in kinds["case"]:
        assert case.data.tags["mlflow.parentRunId"] == session_id
        assert case.data.tags["harness.verdict"] == "pass"
        assert case.data.tags["harness.suite"] == "tiny"
        assert 0 < case.data.metrics["pruned.f1_macro"] <= 1
        assert case.data.params["prune.method"] in ("magnitude", "structured")
        folds = [f for f in kinds["fold"] if f.data.tags["mlflow.parentRunId"] == case.info.run_id]
        assert len(folds) == 2
        assert all("pruned.f1_macro" in f.data.metrics for f in folds)


@pytest.fixture
def fast_failing_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable tracking server fails at once instead of after minutes of retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


@pytest.mark.usefixtures("fast_failing_mlflow")
def test_unreachable_mlflow_keeps_results_in_outbox(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    res = p.runpytest("suites", "--harness-regen", "--harness-mlflow-uri", "http://127.0.0.1:9")
    res.assert_outcomes(passed=2)  # the verdict does not depend on tracking
    res.stdout.fnmatch_lines(["*MLflow at http://127.0.0.1:9 failed*results are kept in*outbox*"])
    files = sorted((p.path / ".harness" / "outbox").glob("*.json"))
    records = [json.loads(f.read_text()) for f in files]
    assert {r["outcome"]["result"]["case"] for r in records if "outcome" in r} == {
        "mag-50",
        "struct-30",
    }
    assert [r["passed"] for r in records if "outcome" not in r] == [True]  # the session's end
    assert len(files) == 3


@pytest.mark.usefixtures("fast_failing_mlflow")
def test_credentials_in_the_tracking_uri_are_never_printed_or_stored(
    tiny_project: pytest.Pytester,
) -> None:
    p = tiny_project
    uri = "http://alice:s3cr3t-pw@127.0.0.1:9"
    res = p.runpytest("suites", "--harness-regen", "-k", "struct-30", "--harness-mlflow-uri", uri)
    res.assert_outcomes(passed=1)
    out = res.stdout.str() + res.stderr.str()
    assert "s3cr3t-pw" not in out
    assert "MLflow at http://alice:***@127.0.0.1:9 failed" in out
    files = list((p.path / ".harness" / "outbox").glob("*.json"))
    assert files and not any("s3cr3t-pw" in f.read_text() for f in files)
    session = json.loads(files[0].read_text())["session"]
    assert "http://alice:***@127.0.0.1:9" in session["name"]


def test_redact_keeps_the_user_and_hides_the_password() -> None:
    from harness._util import redact

    assert (
        redact("at https://u:p@h:5000/x and sqlite:///a.db")
        == "at https://u:***@h:5000/x and sqlite:///a.db"
    )
    assert redact("http://host:5000") == "http://host:5000"


def test_default_store_is_sqlite_in_rootdir(
    tiny_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    p = tiny_project
    p.makeini("[pytest]\n")
    p.runpytest("suites", "--harness-regen", "-k", "struct-30").assert_outcomes(passed=1)
    with sqlite3.connect(p.path / "mlflow.db") as db:
        (count,) = db.execute("select count(*) from runs").fetchone()
    assert count == 1 + 1 + 2  # session, case, two folds


def test_fixture_checks_a_case_from_python(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    p.makepyfile(
        test_pruning_case="""
        from harness.spec import load_suite

        def test_magnitude(prune_harness):
            outcome = prune_harness.check("suites/tiny.toml", "mag-50")
            assert outcome.result.value("pruned.sparsity") > 0.49
    """
    )
    res = p.runpytest("test_pruning_case.py", NO_MLFLOW)
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*no baseline for tiny/mag-50*"])
    p.runpytest("test_pruning_case.py", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=1)
    res = p.runpytest("test_pruning_case.py", NO_MLFLOW, "-rA")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["tiny::mag-50*pass*"])


def test_junitxml_carries_verdict_not_the_whole_outcome(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    p.runpytest(
        "suites", NO_MLFLOW, "--harness-regen", "-k", "struct-30", "--junitxml", "junit.xml"
    ).assert_outcomes(passed=1)
    xml = (p.path / "junit.xml").read_text()
    assert 'name="harness.verdict" value="pass"' in xml
    assert 'name="harness.pruned.f1_macro"' in xml
    assert "harness.outcome" not in xml


def test_cli_run_regen_and_gate(
    tiny_project: pytest.Pytester,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.cli import main

    p = tiny_project
    monkeypatch.chdir(p.path)
    suite = "suites/tiny.toml"
    assert main(["run", suite, "--no-mlflow", "--case", "struct-30"]) == 1
    out = capsys.readouterr().out
    assert "prune-harness run suites/tiny.toml --case struct-30 --regen" in out
    assert main(["run", suite, "--no-mlflow", "--case", "struct-30", "--regen"]) == 0
    assert main(["run", suite, "--no-mlflow", "--case", "struct-30"]) == 0
    capsys.readouterr()
    assert main(["baselines"]) == 0
    out = capsys.readouterr().out
    assert "tiny::struct-30  ok" in out and "tiny::mag-50  missing" in out
    assert main(["run", suite, "--no-mlflow", "--case", "nope"]) == 2
    assert "--case 'nope'" in capsys.readouterr().err


def test_importing_the_plugin_is_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys, harness.plugin; "
        "heavy = [m for m in ('torch', 'mlflow', 'sklearn') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "nodeid", ["suites/tiny.toml::mag-50", "suites/$(touch pwned).toml::a", "suites/it's.toml::a"]
)
def test_the_regen_hint_is_one_shell_word_whatever_the_path(nodeid: str) -> None:
    import shlex

    from harness.plugin import regen_hint

    hint = regen_hint(nodeid)
    assert hint.startswith("`") and hint.endswith("`")
    assert shlex.split(hint.strip("`")) == ["pytest", nodeid, "--harness-regen"]
