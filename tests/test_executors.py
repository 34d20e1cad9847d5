"""Executors: the process pool runs a real case's folds in child processes with the same results
as the serial executor; a child that dies is replaced and its job retried, then reported in one
line; a job's own error propagates as itself; the pool sizes itself to the cores xdist leaves."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from harness.executors import (
    EXECUTORS,
    ExecutorError,
    ProcessExecutor,
    Resources,
    SerialExecutor,
    WorkerLost,
    create,
    usable_cores,
)
from harness.metricnames import parse as parse_metric
from harness.results import CaseResult
from harness.runner import DenseCache, run_case
from harness.spec import SuiteSpec, suite_from_dict

TINY = """\
[suite]
name = "executors"
dataset = "sklearn:digits"
model = "harness.models:mlp"
model_args = { hidden = [16] }
seed = 3

[cv]
folds = 3

[train]
epochs = 2
lr = 1e-2

[latency]
batch = 8
warmup = 0
repeats = 1

[edge]
sets = ["gaussian_noise:0", "hardest"]

[[case]]
name = "mag-60"
prune = { method = "magnitude", sparsity = 0.6 }
finetune = { epochs = 1, lr = 1e-3 }
"""


def quality(result: CaseResult) -> list[dict[str, float]]:
    """Every per-fold metric that does not depend on the hardware's speed."""
    return [
        {k: v for k, v in fold.items() if not parse_metric(k).hardware_bound}
        for fold in result.folds
    ]


# --- job functions (module level: a child process imports them by name)


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"job {x} fails")
    return x


def die_once(args: tuple[str, int]) -> tuple[int, int]:
    """Kill the worker process the first time a job runs (a marker file remembers)."""
    marker, x = args
    path = Path(f"{marker}.{x}")
    if x == 1 and not path.exists():
        path.write_text("died")
        os._exit(9)
    return x, os.getpid()


def always_die(x: int) -> int:
    os._exit(9)


@pytest.fixture(scope="module")
def suite() -> SuiteSpec:
    return suite_from_dict(tomllib.loads(TINY), "<executors>")


@pytest.fixture(scope="module")
def pool() -> ProcessExecutor:
    executor = ProcessExecutor(workers=2)
    yield executor
    executor.close()


def test_process_pool_reproduces_the_serial_case(suite: SuiteSpec, pool: ProcessExecutor) -> None:
    serial = run_case(suite, suite.cases[0], cache=DenseCache(), keep_models=True)
    pooled = run_case(suite, suite.cases[0], executor=pool, keep_models=True)
    assert quality(pooled) == quality(serial)  # bit for bit, fold by fold
    assert pooled.pie == serial.pie and pooled.confusion == serial.confusion
    assert pooled.layer_sparsity == serial.layer_sparsity
    assert len(pooled.pruned_states) == 3
    for a, b in zip(pooled.pruned_states, serial.pruned_states, strict=True):
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    # the children keep their datasets and dense models: a second case starts warm
    again = run_case(suite, suite.cases[0], executor=pool)
    assert quality(again) == quality(serial)


def test_results_come_back_in_job_order(pool: ProcessExecutor) -> None:
    assert pool.map(square, list(range(7))) == [x * x for x in range(7)]
    assert SerialExecutor().map(square, [2, 3]) == [4, 9]
    assert pool.map(square, []) == []


def test_a_job_error_propagates_as_itself_and_the_pool_survives(pool: ProcessExecutor) -> None:
    with pytest.raises(ValueError, match="job 3 fails"):
        pool.map(fail_on_three, list(range(6)))
    assert pool.map(square, [4]) == [16]  # the child that raised is still usable


def test_a_dead_worker_is_replaced_and_its_job_retried(tmp_path: Path) -> None:
    executor = ProcessExecutor(workers=2)
    try:
        marker = str(tmp_path / "m")
        out = executor.map(die_once, [(marker, x) for x in range(4)])
        assert [x for x, _ in out] == [0, 1, 2, 3]
        assert executor.restarts == 1
    finally:
        executor.close()


def test_a_job_that_keeps_killing_its_worker_is_one_line() -> None:
    executor = ProcessExecutor(workers=1, retries=1)
    try:
        with pytest.raises(WorkerLost) as info:
            executor.map(always_die, [0], label=lambda i: f"fold {i}")
    finally:
        executor.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("fold 0: its worker process died 2 times")


def test_pool_size_follows_cores_and_xdist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    alone = usable_cores()
    assert alone >= 1
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(alone * 2))
    assert usable_cores() == 1  # never below one, never more than the share of the cores
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    assert ProcessExecutor()._size(1) == alone
    assert ProcessExecutor()._size(max(1, alone)) == 1
    assert ProcessExecutor(workers=3)._size(8) == 3


def test_bad_executor_names_and_sizes_are_one_line() -> None:
    with pytest.raises(ExecutorError, match=r"^--harness-executor = 'threads': must be one of "):
        create("threads", where="--harness-executor")
    with pytest.raises(ExecutorError, match=r"^workers = 0: must be >= 1$"):
        ProcessExecutor(workers=0)
    assert EXECUTORS == ("serial", "process", "ray")
    assert create("serial").name == "serial"
    assert Resources().cpus == 1


# --- the faces: pytest option and CLI flag


def _report_folds(report_dir: Path) -> list[dict[str, float]]:
    import json

    (case_file,) = report_dir.glob("*/report.json")
    result = json.loads(case_file.read_text())["result"]
    return [
        {k: v for k, v in fold.items() if not parse_metric(k).hardware_bound}
        for fold in result["folds"]
    ]


def test_pytest_option_runs_folds_in_processes_with_the_serial_results(
    pytester: pytest.Pytester,
) -> None:
    pytester.mkdir("suites")
    (pytester.path / "suites" / "tiny.toml").write_text(TINY)
    common = ["-p", "no:cacheprovider", "--harness-no-mlflow"]
    regen = pytester.runpytest_subprocess(*common, "--harness-regen", "--harness-report", "serial")
    assert regen.ret == 0, regen.stdout.str()
    pooled = pytester.runpytest_subprocess(
        *common, "--harness-executor", "process", "--harness-workers", "2", "--harness-report", "p"
    )
    assert pooled.ret == 0, pooled.stdout.str()  # passes against the serial run's baseline
    assert _report_folds(pytester.path / "p") == _report_folds(pytester.path / "serial")


def test_bad_executor_settings_are_one_line(pytester: pytest.Pytester) -> None:
    pytester.mkdir("suites")
    (pytester.path / "suites" / "tiny.toml").write_text(TINY)
    bad = pytester.runpytest_subprocess("--harness-executor", "threads", "--collect-only")
    assert bad.ret == 4  # pytest's usage error
    bad.stderr.fnmatch_lines(
        ['ERROR: --harness-executor=threads: must be "serial", "process" or "ray"']
    )
    workers = pytester.runpytest_subprocess("--harness-workers", "0", "--collect-only")
    workers.stderr.fnmatch_lines(["ERROR: --harness-workers=0: must be a whole number >= 1"])
    (pytester.path / "suites" / "tiny.toml").write_text(
        TINY.replace("seed = 3\n", 'seed = 3\nexecutor = "gpu"\n')
    )
    suite_key = pytester.runpytest_subprocess("--collect-only", "-q")
    suite_key.stdout.fnmatch_lines(['*tiny.toml: suite.executor = *gpu*: must be "serial"*'])


def test_cli_executor_flag(tmp_path: Path) -> None:
    import subprocess
    import sys

    suite_file = tmp_path / "tiny.toml"
    suite_file.write_text(TINY)
    run = [sys.executable, "-m", "harness.cli", "run", str(suite_file), "--no-mlflow"]
    bad = subprocess.run([*run, "--executor", "threads"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        'prune-harness: --executor threads: must be "serial", "process" or "ray"'
    ]
    ok = subprocess.run(
        [
            *run,
            "--executor",
            "process",
            "--workers",
            "2",
            "--regen",
            "--baselines",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert "executors::mag-60 PASS" in ok.stdout


def test_a_method_whose_optional_dependency_is_missing_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    suite_file = tmp_path / "lrp.toml"
    suite_file.write_text(
        TINY.replace('method = "magnitude", sparsity = 0.6', 'method = "lrp", sparsity = 0.6')
    )
    code = (
        "import sys; sys.modules['captum'] = None; "  # as if captum were not installed
        "from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "run", str(suite_file), "--no-mlflow", "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "prune-harness: lrp.toml: case[mag-60].prune.method = 'lrp': needs captum, which is "
        "not installed (pip install 'prune-harness[lrp]')"
    ]
