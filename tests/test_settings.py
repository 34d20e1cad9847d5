"""Plugin settings from the ini file (pyproject.toml / pytest.ini), suites collected from the
configured directories, and the MLflow experiment from ``$MLFLOW_EXPERIMENT_NAME``; each a real
pytest run in a subprocess."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

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
    name = "mag"
    prune = { method = "magnitude", sparsity = 0.5 }
    """
)


def _project(pytester: pytest.Pytester, ini: str) -> None:
    pytester.makefile(".toml", pyproject=f"[tool.pytest.ini_options]\n{ini}")
    for folder in ("gates", "elsewhere/suites"):
        (pytester.path / folder).mkdir(parents=True)
    (pytester.path / "gates" / "mini.toml").write_text(SUITE)
    (pytester.path / "elsewhere" / "suites" / "other.toml").write_text(
        SUITE.replace('name = "mini"', 'name = "other"')
    )


def test_ini_settings_configure_suites_baselines_and_tracking(pytester: pytest.Pytester) -> None:
    _project(
        pytester,
        'harness_suites = ["gates"]\nharness_baselines = "gates/baselines"\n'
        "harness_no_mlflow = true\n",
    )
    collected = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:randomly")
    out = collected.stdout.str()
    assert "gates/mini.toml::mag" in out
    assert "other.toml" not in out  # a suites/ directory the setting does not list
    regen = pytester.runpytest_subprocess("--harness-regen", "-p", "no:randomly")
    regen.assert_outcomes(passed=1)
    assert (pytester.path / "gates" / "baselines" / "mini" / "mag.json").is_file()
    assert not (pytester.path / "mlflow.db").exists()
    assert not (pytester.path / "baselines").exists()


def test_the_command_line_wins_over_the_ini_file(pytester: pytest.Pytester) -> None:
    _project(pytester, 'harness_suites = ["gates"]\nharness_baselines = "gates/baselines"\n')
    run = pytester.runpytest_subprocess(
        "--harness-regen", "--harness-baselines", "cli-baselines", "--harness-no-mlflow"
    )
    run.assert_outcomes(passed=1)
    assert (pytester.path / "cli-baselines" / "mini" / "mag.json").is_file()
    assert not (pytester.path / "gates" / "baselines").exists()


def test_without_the_setting_suites_are_the_toml_files_of_directories_named_suites(
    pytester: pytest.Pytester,
) -> None:
    _project(pytester, "")
    out = pytester.runpytest_subprocess("--collect-only", "-q").stdout.str()
    assert "elsewhere/suites/other.toml::mag" in out
    assert "gates/mini.toml" not in out and "pyproject.toml" not in out


def test_a_bad_ini_value_is_one_usage_line(pytester: pytest.Pytester) -> None:
    _project(pytester, 'harness_time_budget = "soon"\n')
    run = pytester.runpytest_subprocess("--collect-only", "-q")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    err = run.stderr.str()
    assert "harness_time_budget (ini)=soon: must be seconds > 0" in err
    assert "Traceback" not in err


def test_runs_go_to_the_experiment_mlflow_experiment_name_names(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(pytester, 'harness_suites = ["gates"]\n')
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-gate")
    uri = f"sqlite:///{pytester.path / 'store.db'}"
    run = pytester.runpytest_subprocess("--harness-regen", "--harness-mlflow-uri", uri)
    run.assert_outcomes(passed=1)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("prune-harness") is None
    exp = client.get_experiment_by_name("team-gate")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert "mini::mag" in names and len(runs) == 1 + 1 + 2  # session, case, two folds


def test_ini_paths_are_relative_to_the_rootdir(pytester: pytest.Pytester) -> None:
    _project(pytester, 'harness_suites = ["gates"]\nharness_report = "out/report"\n')
    sub = pytester.path / "gates"
    run = pytester.runpytest_subprocess("--harness-regen", "--harness-no-mlflow", str(sub))
    run.assert_outcomes(passed=1)
    assert (Path(pytester.path) / "out" / "report" / "summary.md").is_file()
