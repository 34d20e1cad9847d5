"""Shared fixtures: a tiny, fast suite (digits, 2 folds, a few epochs) for end-to-end runs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: timings on shared CI runners are noise (a deadline would fail a
# correct test on a busy machine, never find a bug)
settings.register_profile("harness", deadline=None)
settings.load_profile("harness")

TINY_SUITE = """\
[suite]
name = "tiny"
dataset = "sklearn:digits"
model = "harness.models:mlp"
model_args = { hidden = [32] }
seed = 0

[cv]
folds = 2

[train]
epochs = 3
lr = 1e-2

[latency]
batch = 16
warmup = 1
repeats = 3

[gate]
"pruned.f1_macro" = { max_drop = 0.01 }
"pruned.accuracy" = { max_drop = 0.01 }

[[case]]
name = "mag-50"
prune = { method = "magnitude", sparsity = 0.5 }
finetune = { epochs = 1, lr = 1e-3 }

[[case]]
name = "struct-30"
prune = { method = "structured", sparsity = 0.3 }
"""


# Where each worker that starts the Ray tests' cluster records its directory and sessions (set
# by the controller, inherited by the xdist workers): a worker that dies mid-test is reported with
# its cluster's log lines, not "worker crashed" alone, and its orphaned cluster is stopped
RAY_LOGS = "HARNESS_TEST_RAY_LOGS"
RAY_LOG_FILES = (
    "node-*.log",  # what each `ray start` printed
    "session_latest/logs/ray_process_exit.log",  # which of a node's processes ended, and how
    "session_latest/logs/python-core-driver-*.log",  # the driver's Ray core: why it died
    "session_latest/logs/raylet.out",
    "session_latest/logs/gcs_server.out",
)
RAY_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [WEF] ")  # a warning, an error, a fatal
RAY_START_INFO = re.compile(r"\t(INFO|SUCC) ")


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or RAY_LOGS in os.environ:
        return  # an xdist worker, or a pytester run inside this session: the controller's
    where = tempfile.mkdtemp(prefix="harness-ray-logs-")
    os.environ[RAY_LOGS] = where

    def cleanup() -> None:
        shutil.rmtree(where, ignore_errors=True)
        os.environ.pop(RAY_LOGS, None)

    config.add_cleanup(cleanup)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: object) -> None:
    """An xdist worker died during ``crashitem``: add what the logs of the Ray cluster it ran
    say (a driver's Ray core ends its process when its raylet or GCS is lost, and says why only
    there), then stop that cluster (its nodes outlive the worker that started them)."""
    where = os.environ.get(RAY_LOGS)
    if not where:
        return
    for record in sorted(Path(where).glob("*.cluster")):
        temp_dir, *sessions = record.read_text().split("\n")
        for pattern in RAY_LOG_FILES:
            for log in sorted(Path(temp_dir).glob(pattern), key=lambda f: f.stat().st_mtime):
                lines = log.read_text(errors="replace").splitlines()
                if log.name.startswith("node-"):
                    lines = [line for line in lines if not RAY_START_INFO.search(line)]
                elif log.name != "ray_process_exit.log":  # Ray's own log lines
                    lines = [line for line in lines if RAY_LOG_LINE.match(line)]
                if lines:
                    text = "\n".join(line[:500] for line in lines[-30:])
                    report.sections.append((f"{record.stem}'s Ray cluster: {log.name}", text))
        kill_sessions({int(sid) for sid in sessions if sid})
        shutil.rmtree(temp_dir, ignore_errors=True)
        record.unlink()


def kill_sessions(sids: set[int]) -> None:
    """SIGKILL every process of these sessions (a ``ray start`` started in its own session, and
    what it started: raylet, agents, workers, which Ray puts in process groups of their own).
    Linux: the processes are found through /proc (the Ray tests run there only)."""
    for _ in range(5):
        pids = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.getsid(int(entry)) in sids and _state(int(entry)) not in "ZX":
                        pids.append(int(entry))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _state(pid: int) -> str:
    """A process's state letter (Z: a zombie, which no signal ends); X when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.fixture(scope="session", name="kill_sessions")
def kill_sessions_fixture() -> Callable[[set[int]], None]:
    """:func:`kill_sessions`, for the tests that start process sessions of their own."""
    return kill_sessions


# What an inner run must not see of the real CI: its job summary, its run tags, its MLflow store.
CI_ENVIRONMENT = ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "MLFLOW_TRACKING_URI")


@pytest.fixture(scope="session")
def warm_imports(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run the tiny suite once (with MLflow) in this process, before the first in-process run.

    pytester's in-process runs drop the modules they import when they end; torch and MLflow
    register global state on import and cannot be imported twice, so everything a run imports
    lazily is imported here first. Session-scoped, so it is set up before any function-scoped
    ``pytester`` takes its snapshot of ``sys.modules``; requested only through ``pytester``
    (below), so a session of unit tests trains nothing and imports neither torch nor MLflow here.
    """
    import tomllib

    from harness import tracking
    from harness.session import Recorder, Settings, check_case
    from harness.spec import suite_from_dict

    tmp = tmp_path_factory.mktemp("warm-up")
    suite = suite_from_dict(tomllib.loads(TINY_SUITE))
    with pytest.MonkeyPatch.context() as mp:
        for name in CI_ENVIRONMENT:
            mp.delenv(name, raising=False)
        settings = Settings(baselines=tmp / "baselines", regen=True)
        tracker = tracking.MlflowTracker(
            f"sqlite:///{tmp}/warm.db", session_name="warm-up", outbox=tmp / "outbox"
        )
        recorder = Recorder(settings, tracker)
        for case in suite.cases:
            recorder.add(check_case(suite, case, settings))
        recorder.finish()


@pytest.fixture(autouse=True)
def _own_sys_path() -> Iterator[None]:
    """Each test keeps the import path it started with: resolving a suite or running the CLI
    in this process puts the suite's directory and the project root on ``sys.path`` (as it
    should, once per real session), which must not leak into later tests' inner runs."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(autouse=True)
def _no_ci_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs must not write to the real CI's job summary or tag runs with it."""
    for name in CI_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pytester(warm_imports: None, pytester: pytest.Pytester) -> pytest.Pytester:
    """pytest's ``pytester``, with :func:`warm_imports` done first.

    Every in-process run (``runpytest``, ``inline_run``) needs it, and overriding the fixture
    here covers every test module that uses one; a test that only runs
    ``runpytest_subprocess`` pays the one warm-up of the session too.
    """
    return pytester


@pytest.fixture
def tiny_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory with ``suites/tiny.toml`` (2 cases) and no baselines yet."""
    pytester.mkdir("suites")
    (pytester.path / "suites" / "tiny.toml").write_text(TINY_SUITE, encoding="utf-8")
    return pytester
