"""pytest wiring: options, collection of suite files, the ``prune_harness`` fixture, the terminal
summary and the exit status. Everything else lives below ``harness.session``.

Suite files are ``*.toml`` files in a directory named ``suites``, or in the directories the
``harness_suites`` ini setting lists; each ``[[case]]`` becomes one test item
(``suites/digits_mlp.toml::magnitude-90``). Every ``--harness-*`` option can also be set in
``pyproject.toml`` (``[tool.pytest.ini_options]``) or ``pytest.ini`` as ``harness_*``; the
command line wins. Heavy imports (torch, scikit-learn, MLflow) happen only when a suite is
collected or a case result is recorded, so a session that collects no suite stays light.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.results import Outcome
    from harness.runner import DenseCache
    from harness.session import Recorder, Settings
    from harness.spec import CaseSpec, SuiteSpec

OUTCOME_PROPERTY = "harness.outcome"
SUITES_DIR = "suites"


def _directory(value: str) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(f"--harness-report={value}: exists and is not a directory")
    return path


def _uri(value: str, where: str = "--harness-mlflow-uri") -> str:
    if not value.strip():
        raise pytest.UsageError(f"{where}: must not be empty")
    return value


def _numerics_mode(value: str) -> str:
    from harness.numerics import MODES

    if value not in MODES:
        raise pytest.UsageError(f"--harness-numerics={value}: must be one of {', '.join(MODES)}")
    return value


def _seconds(value: str, where: str = "--harness-time-budget") -> float:
    from harness.spec import BOUNDS

    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= BOUNDS["time_budget"]:
        raise pytest.UsageError(
            f"{where}={value}: must be seconds > 0 and <= {BOUNDS['time_budget']}"
        )
    return seconds


def _device_option(value: str, where: str = "--harness-device") -> str:
    from harness.spec import device_problem

    if (problem := device_problem(value)) is not None:
        raise pytest.UsageError(f"{where}={value}: {problem}")
    return value


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
        "--harness-device",
        metavar="DEVICE",
        type=_device_option,
        default=None,
        help="run every suite on DEVICE: cpu, cuda, cuda:N, mps or auto (overrides the suites')",
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
    for name, help_text, kind in INI_SETTINGS:
        parser.addini(name, help_text, type=kind, default=None)


# ini settings (pyproject.toml [tool.pytest.ini_options], pytest.ini): name, help, type
INI_SETTINGS: tuple[tuple[str, str, Any], ...] = (
    ("harness_suites", "directories (relative to rootdir) whose *.toml files are suites", "paths"),
    ("harness_baselines", "baseline directory (relative to rootdir)", "string"),
    ("harness_mlflow_uri", "MLflow tracking URI", "string"),
    ("harness_no_mlflow", "do not log results to MLflow", "bool"),
    ("harness_log_models", "save every fold's pruned state_dict with the artifacts", "bool"),
    ("harness_report", "write reports to this directory (relative to rootdir)", "string"),
    ("harness_time_budget", "seconds per case (the tighter of it and a suite's)", "string"),
    ("harness_device", "device for every suite: cpu, cuda, cuda:N, mps or auto", "string"),
)


def _setting(config: pytest.Config, name: str) -> Any:
    """An option's value: the command line's, else the ini file's (checked like the option),
    else None / False."""
    value = config.getoption(name)
    if value not in (None, False):
        return value
    ini = config.getini(name)
    if ini in (None, "", []):
        return value
    if name in ("harness_baselines", "harness_report"):
        return Path(str(config.rootpath)) / str(ini).strip()
    if name == "harness_time_budget":
        return _seconds(str(ini).strip(), "harness_time_budget (ini)")
    if name == "harness_device":
        return _device_option(str(ini).strip(), "harness_device (ini)")
    if name == "harness_mlflow_uri":
        return _uri(str(ini), "harness_mlflow_uri (ini)")
    return ini


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
        report.write_step_summary(self.recorder.outcomes, _summary_regen)


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
_CACHE_KEY: pytest.StashKey[DenseCache] = pytest.StashKey()


def pytest_configure(config: pytest.Config) -> None:
    from harness import tracking
    from harness.session import Settings, open_recorder

    root = Path(str(config.rootpath))
    settings = Settings.build(
        root,
        baselines=_resolved(_setting(config, "harness_baselines")),
        regen=config.getoption("harness_regen"),
        report_dir=_resolved(_setting(config, "harness_report")),
        tracked=not _setting(config, "harness_no_mlflow"),
        log_models=bool(_setting(config, "harness_log_models")),
        time_budget=_setting(config, "harness_time_budget"),
        device=_setting(config, "harness_device"),
    )
    config.stash[_SETTINGS_KEY] = settings
    if hasattr(config, "workerinput"):
        return  # xdist worker: outcomes travel to the controller with the test reports
    uri = _setting(config, "harness_mlflow_uri") or tracking.default_uri(root)
    recorder = open_recorder(
        settings,
        mlflow_uri=None if _setting(config, "harness_no_mlflow") else uri,
        session_name=f"pytest {' '.join(config.invocation_params.args)}"[:250],
        outbox=root / tracking.OUTBOX,
        regen=_summary_regen,
    )
    plugin = HarnessPlugin(recorder)
    config.stash[_PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "harness-controller")


def _resolved(path: Path | None) -> Path | None:
    """Option paths are relative to the invocation directory."""
    return Path(path).resolve() if path is not None else None


def _summary_regen(outcome: Outcome) -> str:
    """The regen command the session summaries name (the node id from the suite's path)."""
    return regen_hint(f"{Path(outcome.source).as_posix()}::{outcome.result.case}")


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(_PLUGIN_KEY, None)
    if plugin is not None:
        del config.stash[_PLUGIN_KEY]
        config.pluginmanager.unregister(plugin)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".toml" and _is_suite_file(parent.config, file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def _is_suite_file(config: pytest.Config, path: Path) -> bool:
    """In a directory named ``suites``, or under one that ``harness_suites`` lists;
    ``pyproject.toml`` never."""
    if path.name == "pyproject.toml":
        return False
    dirs = config.getini("harness_suites")
    if not dirs:
        return path.parent.name == SUITES_DIR
    resolved = path.resolve()
    return any(resolved.is_relative_to(Path(d).resolve()) for d in dirs)


class SuiteFile(pytest.File):
    """A suite file; invalid files are reported as one line (no traceback)."""

    def collect(self) -> Any:
        from harness._util import add_import_path
        from harness.resolution import resolve
        from harness.spec import SpecError, load_suite

        add_import_path(self.config.rootpath)  # user modules in the project root import
        device = self.config.stash[_SETTINGS_KEY].device
        if device is not None:  # the option's device, named as the option (not the suite file)
            from harness.devices import DeviceError
            from harness.devices import resolve as resolve_device

            try:
                resolve_device(device)
            except DeviceError as err:
                said = str(err).partition(": ")[2] or str(err)
                raise self.CollectError(f"--harness-device={device}: {said}") from None
        try:
            suite = load_suite(self.path)
            if device is not None:  # the session's device is the one to check
                suite = dataclasses.replace(suite, device=device)
            suite = resolve(suite)
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
            raise CaseFailed(_failure_lines(outcome, self.nodeid))

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
    from harness.runner import DenseCache
    from harness.session import check_case

    settings = config.stash[_SETTINGS_KEY]
    if _CACHE_KEY not in config.stash:  # one per process: this session's dense models
        config.stash[_CACHE_KEY] = DenseCache()
    return check_case(suite, case, settings, cache=config.stash[_CACHE_KEY])


def regen_hint(nodeid: str) -> str:
    """The command that rewrites one case's baseline, quoted for a POSIX shell."""
    return f"`pytest {shlex.quote(nodeid)} --harness-regen`"


def _properties(outcome: Outcome) -> list[tuple[str, Any]]:
    r = outcome.result
    props: list[tuple[str, Any]] = [("harness.verdict", outcome.verdict.status.value)]
    from harness.metricnames import PROPERTIES

    for name in PROPERTIES:
        if (value := r.value(name)) is not None:
            props.append((f"harness.{name}", f"{value:.6g}"))
    props.append((OUTCOME_PROPERTY, outcome.to_json()))
    return props


def _failure_lines(outcome: Outcome, nodeid: str) -> list[str]:
    v = outcome.verdict
    lines = [f"{v.suite}::{v.case}: {v.status.value}", *v.lines(regen_hint(nodeid))]
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
            pytest.fail("\n".join(_failure_lines(outcome, node.nodeid)), pytrace=False)
        return outcome


@pytest.fixture
def prune_harness(request: pytest.FixtureRequest) -> CaseChecker:
    """Check pruning cases from a Python test: ``prune_harness.check(spec, "case-name")``."""
    return CaseChecker(request)
