"""pytest wiring: options, collection of suite files, the ``prune_harness`` fixture, the terminal
summary and the exit status. Everything else lives below ``harness.session``.

Suite files are ``*.toml`` files in a directory named ``suites``; each ``[[case]]`` becomes one
test item (``suites/digits_mlp.toml::magnitude-90``). Heavy imports (torch, MLflow) happen only
when a suite is collected or a case result is recorded, so importing this plugin stays cheap.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.session import Outcome, Recorder, Settings
    from harness.spec import CaseSpec, SuiteSpec

OUTCOME_PROPERTY = "harness.outcome"
SUITES_DIR = "suites"


def _directory(value: str) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(f"--harness-report={value}: exists and is not a directory")
    return path


def _uri(value: str) -> str:
    if not value.strip():
        raise pytest.UsageError("--harness-mlflow-uri: must not be empty")
    return value


def _numerics_mode(value: str) -> str:
    from harness.numerics import MODES

    if value not in MODES:
        raise pytest.UsageError(f"--harness-numerics={value}: must be one of {', '.join(MODES)}")
    return value


def _seconds(value: str) -> float:
    from harness.spec import BOUNDS

    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= BOUNDS["time_budget"]:
        raise pytest.UsageError(
            f"--harness-time-budget={value}: must be seconds > 0 and <= {BOUNDS['time_budget']}"
        )
    return seconds


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "prune-harness: pruning quality gate")
    group.addoption(
        "--harness-time-budget",
        metavar="SECONDS",
        type=_seconds,
        default=None,
        help="fail a case that runs longer (with a suite's own time_budget, the tighter wins)",
    )
    group.addoption(
        "--harness-numerics",
        metavar="MODE",
        type=_numerics_mode,
        default=None,
        help="portable (default on x86-64: CPU code paths pinned to AVX2, results reproduce "
        "across CPUs) or native (the machine's widest kernels)",
    )
    parser.addini("harness_numerics", "prune-harness numerics mode: portable or native", default="")
    group.addoption(
        "--harness-regen",
        action="store_true",
        default=False,
        help="rewrite the baselines of the cases run (review the diff before committing)",
    )
    group.addoption(
        "--harness-baselines",
        metavar="DIR",
        type=_directory,
        default=None,
        help="baseline directory (default: <rootdir>/baselines)",
    )
    group.addoption(
        "--harness-mlflow-uri",
        metavar="URI",
        type=_uri,
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    group.addoption(
        "--harness-no-mlflow",
        action="store_true",
        default=False,
        help="do not log results to MLflow",
    )
    group.addoption(
        "--harness-log-models",
        action="store_true",
        default=False,
        help="save every fold's pruned state_dict with the case's artifacts (and in MLflow)",
    )
    group.addoption(
        "--harness-report",
        metavar="DIR",
        type=_directory,
        default=None,
        help="write per-case JSON and a markdown/JSON session summary to DIR",
    )


class HarnessPlugin:
    """Controller-side state: records outcomes as reports arrive (also from xdist workers),
    logs them to MLflow, and writes the summary."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        keep = []
        for name, value in report.user_properties:
            if name == OUTCOME_PROPERTY:
                if report.when == "call":  # the teardown report carries the same properties
                    from harness.session import Outcome

                    self.recorder.add(Outcome.from_json(str(value)))
            else:
                keep.append((name, value))
        report.user_properties = keep  # the full outcome is not a junitxml property

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if any(isinstance(item, CaseItem) for item in session.items):
            self.recorder.tracker.warm_up()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # while every worker is busy, results wait; the first idle worker frees a core for them
        self.recorder.held = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.recorder.release()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from harness import report

        if not self.recorder.outcomes:
            return
        terminalreporter.section("prune-harness")
        for line in report.terminal_lines(self.recorder.outcomes):
            terminalreporter.write_line(line)
        for line in self.recorder.messages:
            terminalreporter.write_line(line)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from harness import report

        self.recorder.finish()
        report.write_step_summary(self.recorder.outcomes)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Set the numerics mode before conftest files (which may import torch) are loaded."""
    from harness import numerics

    mode = early_config.known_args_namespace.harness_numerics
    if mode is None and (ini := early_config.getini("harness_numerics")):
        try:
            mode = numerics.check_mode(str(ini).strip(), "harness_numerics (ini)")
        except numerics.NumericsError as err:
            raise pytest.UsageError(str(err)) from None
    numerics.configure(mode)


def pytest_report_header(config: pytest.Config) -> str:
    from harness import numerics

    state = numerics.current()
    return f"prune-harness: numerics {state.describe()}" + (
        f" ({state.note})" if state.note else ""
    )


_PLUGIN_KEY = pytest.StashKey[HarnessPlugin]()
_SETTINGS_KEY: pytest.StashKey[Settings] = pytest.StashKey()


def pytest_configure(config: pytest.Config) -> None:
    from harness.session import Recorder, Settings

    root = Path(str(config.rootpath))
    settings = Settings.build(
        root,
        baselines=_resolved(config.getoption("harness_baselines")),
        regen=config.getoption("harness_regen"),
        report_dir=_resolved(config.getoption("harness_report")),
        tracked=not config.getoption("harness_no_mlflow"),
        log_models=config.getoption("harness_log_models"),
        time_budget=config.getoption("harness_time_budget"),
    )
    config.stash[_SETTINGS_KEY] = settings
    if hasattr(config, "workerinput"):
        return  # xdist worker: outcomes travel to the controller with the test reports
    recorder = Recorder(settings, tracker=_tracker(config, root))
    plugin = HarnessPlugin(recorder)
    config.stash[_PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "harness-controller")


def _resolved(path: Path | None) -> Path | None:
    """Option paths are relative to the invocation directory."""
    return Path(path).resolve() if path is not None else None


def _tracker(config: pytest.Config, root: Path) -> Any:
    from harness import tracking

    if config.getoption("harness_no_mlflow"):
        return tracking.Tracker()
    uri = config.getoption("harness_mlflow_uri") or tracking.default_uri(root)
    return tracking.MlflowTracker(
        uri,
        session_name=f"pytest {' '.join(config.invocation_params.args)}"[:250],
        outbox=root / tracking.OUTBOX,
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(_PLUGIN_KEY, None)
    if plugin is not None:
        del config.stash[_PLUGIN_KEY]
        config.pluginmanager.unregister(plugin)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".toml" and file_path.parent.name == SUITES_DIR:
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    """A suite file; invalid files are reported as one line (no traceback)."""

    def collect(self) -> Any:
        from harness.spec import SpecError, load_suite

        try:
            suite = load_suite(self.path)
        except SpecError as err:
            raise self.CollectError(str(err)) from None
        for case in suite.cases:
            yield CaseItem.from_parent(self, name=case.name, suite=suite, case=case)


class CaseFailed(Exception):
    """A case did not pass the gate; carries the lines to print."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class CaseItem(pytest.Item):
    """One pruning case of a suite."""

    def __init__(self, *, suite: SuiteSpec, case: CaseSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite, self.case = suite, case

    def runtest(self) -> None:
        outcome = _check(self.config, self.suite, self.case, self.nodeid)
        self.user_properties.extend(_properties(outcome))
        if not outcome.verdict.ok:
            raise CaseFailed(_failure_lines(outcome))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from harness._util import HarnessError

        if isinstance(excinfo.value, CaseFailed):
            return str(excinfo.value)
        if isinstance(excinfo.value, HarnessError):
            return f"{self.suite.name}::{self.case.name}: {excinfo.value}"
        if isinstance(excinfo.value, MemoryError):
            return (
                f"{self.suite.name}::{self.case.name}: out of memory (MemoryError); lower the "
                "sizes in the suite (dataset_args, latency.batch, model_args)"
            )
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.suite.name}::{self.case.name}"


def _check(config: pytest.Config, suite: SuiteSpec, case: CaseSpec, nodeid: str) -> Outcome:
    from harness.session import check_case

    settings = config.stash[_SETTINGS_KEY]
    return check_case(suite, case, settings, regen_hint=regen_hint(nodeid))


def regen_hint(nodeid: str) -> str:
    """The command that rewrites one case's baseline, quoted for a POSIX shell."""
    return f"`pytest {shlex.quote(nodeid)} --harness-regen`"


def _properties(outcome: Outcome) -> list[tuple[str, Any]]:
    r = outcome.result
    props: list[tuple[str, Any]] = [("harness.verdict", outcome.verdict.status.value)]
    for name in ("pruned.f1_macro", "dense.f1_macro", "pruned.sparsity", "speedup_batch"):
        if (value := r.value(name)) is not None:
            props.append((f"harness.{name}", f"{value:.6g}"))
    props.append((OUTCOME_PROPERTY, outcome.to_json()))
    return props


def _failure_lines(outcome: Outcome) -> list[str]:
    v = outcome.verdict
    lines = [f"{v.suite}::{v.case}: {v.status.value}", *v.lines()]
    if outcome.obtained_path:
        lines.append(f"new results written to {outcome.obtained_path}")
    return lines


class CaseChecker:
    """What the ``prune_harness`` fixture gives a Python test: check a case of a spec."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request

    def check(self, suite: SuiteSpec | str | Path, case: str) -> Outcome:
        """Run ``case`` of ``suite`` (a spec or a suite file path) through the gate; fails the
        test on a regression and returns the outcome otherwise."""
        from harness.spec import load_suite

        spec = suite if not isinstance(suite, str | Path) else load_suite(suite)
        node = self.request.node
        outcome = _check(node.config, spec, spec.case(case), node.nodeid)
        node.user_properties.extend(_properties(outcome))
        if not outcome.verdict.ok:
            pytest.fail("\n".join(_failure_lines(outcome)), pytrace=False)
        return outcome


@pytest.fixture
def prune_harness(request: pytest.FixtureRequest) -> CaseChecker:
    """Check pruning cases from a Python test: ``prune_harness.check(spec, "case-name")``."""
    return CaseChecker(request)
