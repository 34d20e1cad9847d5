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
    from harness.base import Base, BaseRun
    from harness.results import Outcome
    from harness.runner import DenseCache
    from harness.session import Executors, Recorder, Settings
    from harness.shard import Shard, ShardPlan
    from harness.spec import CaseSpec, SuiteSpec

OUTCOME_PROPERTY = "harness.outcome"
SUITES_DIR = "suites"


def _directory(option: str) -> Any:
    """The type of a directory option: a path that is a directory or does not exist yet."""

    def check(value: str) -> Path:
        path = Path(value)
        if path.exists() and not path.is_dir():
            raise pytest.UsageError(f"{option}={value}: exists and is not a directory")
        return path

    return check


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


def _executor_option(value: str, where: str = "--harness-executor") -> str:
    from harness.spec import executor_problem

    if (problem := executor_problem(value)) is not None:
        raise pytest.UsageError(f"{where}={value}: {problem}")
    return value


def _workers(value: str, where: str = "--harness-workers") -> int:
    try:
        workers = int(value)
    except ValueError:
        workers = 0
    if workers < 1:
        raise pytest.UsageError(f"{where}={value}: must be a whole number >= 1")
    return workers


def _shard_option(value: str, where: str = "--harness-shard") -> Shard:
    from harness.shard import Shard, ShardError

    try:
        return Shard.parse(value, where)
    except ShardError as err:
        raise pytest.UsageError(str(err)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "prune-harness: pruning quality gate")
    group.addoption(
        "--harness-executor",
        metavar="NAME",
        type=_executor_option,
        default=None,
        help="where the folds of every case run: serial (default), process (a pool of local "
        "processes) or ray (a Ray cluster); overrides the suites' executor",
    )
    group.addoption(
        "--harness-cache",
        metavar="DIR",
        type=_directory("--harness-cache"),
        default=None,
        help="disk cache of trained dense models, shared by processes and sessions "
        "(default: <rootdir>/.harness/cache)",
    )
    group.addoption(
        "--harness-no-cache",
        action="store_true",
        default=False,
        help="no disk cache: every session trains its dense models",
    )
    group.addoption(
        "--harness-cache-results",
        action="store_true",
        default=False,
        help="also reuse whole fold results from the cache when nothing they depend on changed "
        "(spec, data, code, hardware); latency is then the cached measurement",
    )
    group.addoption(
        "--harness-workers",
        metavar="N",
        type=_workers,
        default=None,
        help="processes of the process executor (default: the cores, shared among xdist workers)",
    )
    group.addoption(
        "--harness-ray-address",
        metavar="ADDRESS",
        type=lambda v: _uri(v, "--harness-ray-address"),
        default=None,
        help="the Ray cluster of the ray executor (default: $RAY_ADDRESS, else a local one)",
    )
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
        type=_directory("--harness-baselines"),
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
        type=_directory("--harness-report"),
        default=None,
        help="write per-case JSON and a markdown/JSON session summary to DIR",
    )
    group.addoption(
        "--harness-shard",
        metavar="K/N",
        type=_shard_option,
        default=None,
        help="run only shard K of N: cases split by their stored durations "
        "(baselines/durations.json); other tests run in shard 1",
    )
    group.addoption(
        "--harness-base",
        metavar="REF",
        type=_base_ref,
        default=None,
        help="gate against the git revision REF (a branch, origin/main, a sha) measured on this "
        "machine in the same job (a worktree; results cached per commit and machine), "
        "instead of baselines/; see docs/base.md",
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
    ("harness_shard", "run only shard K/N of the cases (split by stored durations)", "string"),
    ("harness_executor", "where the folds run: serial, process or ray", "string"),
    ("harness_cache", "disk cache directory (relative to rootdir)", "string"),
    ("harness_no_cache", "no disk cache", "bool"),
    ("harness_cache_results", "reuse whole fold results from the disk cache", "bool"),
    ("harness_workers", "processes of the process executor", "string"),
    ("harness_ray_address", "the Ray cluster of the ray executor", "string"),
    ("harness_base", "gate against this git revision, measured on this machine", "string"),
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
    if name in ("harness_baselines", "harness_report", "harness_cache"):
        return Path(str(config.rootpath)) / str(ini).strip()
    if name == "harness_time_budget":
        return _seconds(str(ini).strip(), "harness_time_budget (ini)")
    if name == "harness_device":
        return _device_option(str(ini).strip(), "harness_device (ini)")
    if name == "harness_mlflow_uri":
        return _uri(str(ini), "harness_mlflow_uri (ini)")
    if name == "harness_shard":
        return _shard_option(str(ini).strip(), "harness_shard (ini)")
    if name == "harness_executor":
        return _executor_option(str(ini).strip(), "harness_executor (ini)")
    if name == "harness_workers":
        return _workers(str(ini).strip(), "harness_workers (ini)")
    if name == "harness_ray_address":
        return _uri(str(ini).strip(), "harness_ray_address (ini)")
    if name == "harness_base":
        return _base_ref(str(ini).strip(), "harness_base (ini)")
    return ini


class HarnessPlugin:
    """Controller-side state: records outcomes as reports arrive (also from xdist workers),
    logs them to MLflow, and writes the summary."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.measured: dict[str, float] = {}  # --harness-regen: seconds per case node id

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        keep = []
        for name, value in report.user_properties:
            if name == OUTCOME_PROPERTY:
                if report.when == "call":  # the teardown report carries the same properties
                    from harness.session import Outcome

                    outcome = Outcome.from_json(str(value))
                    self.recorder.add(outcome)
                    if self.recorder.settings.regen and _is_case_node(report.nodeid):
                        self.measured[report.nodeid] = outcome.result.seconds
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
        if self.measured:  # --harness-regen: the shards' costs (harness.shard)
            line = _store_durations(self.recorder.settings.baselines, self.measured)
            self.recorder.messages.append(line)


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
_EXECUTORS_KEY: pytest.StashKey[Executors] = pytest.StashKey()


def pytest_configure(config: pytest.Config) -> None:
    from harness import tracking
    from harness.session import CACHE_DIR, Settings, open_recorder

    root = Path(str(config.rootpath))
    settings = Settings.build(
        root,
        baselines=_base_baselines(config) or _resolved(_setting(config, "harness_baselines")),
        regen=config.getoption("harness_regen"),
        report_dir=_resolved(_setting(config, "harness_report")),
        tracked=not _setting(config, "harness_no_mlflow"),
        log_models=bool(_setting(config, "harness_log_models")),
        time_budget=_setting(config, "harness_time_budget"),
        device=_setting(config, "harness_device"),
        executor=_setting(config, "harness_executor"),
        workers=_setting(config, "harness_workers"),
        ray_address=_setting(config, "harness_ray_address"),
        cache_dir=None
        if _setting(config, "harness_no_cache")
        else _resolved(_setting(config, "harness_cache")) or CACHE_DIR,
        cache_results=bool(_setting(config, "harness_cache_results")),
    )
    config.stash[_SETTINGS_KEY] = settings
    if (shard := _setting(config, "harness_shard")) is not None:
        from harness.shard import DURATIONS_FILE

        durations = _committed_baselines(config, settings) / DURATIONS_FILE
        selector = ShardSelector(shard, durations, settings.report_dir)
        config.stash[_SHARD_KEY] = selector
        config.pluginmanager.register(selector, "harness-shard")
    if hasattr(config, "workerinput"):
        from harness.shard import DURATIONS_FILE

        durations = _committed_baselines(config, settings) / DURATIONS_FILE
        config.pluginmanager.register(LongestFirst(durations), "harness-longest-first")
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
    if (gate := config.stash.get(_BASE_KEY, None)) is not None:
        config.pluginmanager.register(gate, "harness-base")


def _resolved(path: Path | None) -> Path | None:
    """Option paths are relative to the invocation directory."""
    return Path(path).resolve() if path is not None else None


def _summary_regen(outcome: Outcome) -> str:
    """The regen command the session summaries name (the node id from the suite's path)."""
    return regen_hint(f"{Path(outcome.source).as_posix()}::{outcome.result.case}")


def pytest_unconfigure(config: pytest.Config) -> None:
    gate = config.stash.get(_BASE_KEY, None)
    if gate is not None:
        del config.stash[_BASE_KEY]
        if config.pluginmanager.is_registered(gate):
            config.pluginmanager.unregister(gate)
    selector = config.stash.get(_SHARD_KEY, None)
    if selector is not None:
        del config.stash[_SHARD_KEY]
        config.pluginmanager.unregister(selector)
    executors = config.stash.get(_EXECUTORS_KEY, None)
    if executors is not None:  # this process's worker pools (controller or xdist worker)
        del config.stash[_EXECUTORS_KEY]
        executors.close()
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
    from harness.session import Executors, check_case

    settings = config.stash[_SETTINGS_KEY]
    if _CACHE_KEY not in config.stash:  # one per process: this session's dense models
        config.stash[_CACHE_KEY] = settings.dense_cache()
    if _EXECUTORS_KEY not in config.stash:  # one per process: its worker pools
        config.stash[_EXECUTORS_KEY] = Executors(settings)
    executor = config.stash[_EXECUTORS_KEY].for_suite(suite)
    return check_case(suite, case, settings, cache=config.stash[_CACHE_KEY], executor=executor)


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


# --- xdist: the longest cases first ----------------------------------------------------------


class LongestFirst:
    """Under xdist, every worker collects the cases longest first by their stored durations
    (``baselines/durations.json``; a case without one costs the median), the other tests after
    them in their order. ``--dist load`` hands out tests in collection order, so the long cases
    start first and the short ones fill the gaps at the end (longest processing time first,
    Graham 1969) instead of a long case starting last while the other worker idles. Every worker
    sorts the same way (same file, same ids), as xdist requires; a serial run keeps file order.
    An unreadable durations file changes nothing here (``--harness-shard`` reports it)."""

    def __init__(self, durations: Path) -> None:
        self.durations = durations

    @pytest.hookimpl(trylast=True)  # after selection (-k, shards)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[Any]) -> None:
        from harness.shard import ShardError, cost_of, load_durations

        try:
            stored = load_durations(self.durations)
        except ShardError:
            return
        cases = [item for item in items if isinstance(item, CaseItem)]
        cost = cost_of([item.nodeid for item in cases], stored)
        cases.sort(key=lambda item: (-cost[item.nodeid], item.nodeid))
        items[:] = [*cases, *(item for item in items if not isinstance(item, CaseItem))]


# --- CI shards (--harness-shard K/N; the assignment is harness.shard's) -------------------------

_SHARD_OUTPUT = "harness_shard"  # key of an xdist worker's plan in its workeroutput


class ShardSelector:
    """``--harness-shard K/N``: keeps the cases of shard K (every process computes the same
    split from the collected node ids and the durations file), other tests only in shard 1; says
    what the shard runs, records it in the report directory, and lets an empty shard pass."""

    def __init__(self, shard: Shard, durations: Path, report_dir: Path | None) -> None:
        self.shard, self.durations, self.report_dir = shard, durations, report_dir
        self.plan: ShardPlan | None = None
        self.shown = False
        self.notes: list[str] = []

    def _durations(self) -> dict[str, float]:
        from harness.shard import ShardError, load_durations

        try:
            return load_durations(self.durations)
        except ShardError as err:
            raise pytest.UsageError(f"--harness-shard={self.shard}: {err}") from None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Check the durations file before any xdist worker starts."""
        self._durations()

    @pytest.hookimpl(trylast=True)  # after -k, -m and other plugins have selected
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[Any]) -> None:
        from harness.shard import ShardPlan, assign

        cases = [item.nodeid for item in items if isinstance(item, CaseItem)]
        assignment = assign(cases, self.shard.count, self._durations())
        keep: list[Any] = []
        drop: list[Any] = []
        for item in items:
            if isinstance(item, CaseItem):
                mine = assignment.shard_of[item.nodeid] == self.shard.index
            else:
                mine = self.shard.index == 1  # other tests: once, in the first shard
            (keep if mine else drop).append(item)
        self.plan = ShardPlan.of(self.shard, assignment, deselected=len(drop))
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
        if hasattr(config, "workerinput"):
            config.workeroutput[_SHARD_OUTPUT] = self.plan.to_dict()  # type: ignore[attr-defined]

    def pytest_report_collectionfinish(self, config: pytest.Config) -> str | None:
        if self.plan is None:
            return None
        self.shown = True
        return self.plan.line()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        from harness.shard import ShardPlan

        data = getattr(node, "workeroutput", {}).get(_SHARD_OUTPUT)
        if self.plan is None and data is not None:  # xdist: the controller collects nothing
            self.plan = ShardPlan.from_dict(data, "xdist worker")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.plan is None or hasattr(session.config, "workerinput"):
            return
        if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and self.plan.deselected:
            session.exitstatus = pytest.ExitCode.OK  # an empty shard: the others run it all
        if self.report_dir is not None:
            from harness._util import write_json_atomic
            from harness.shard import SHARD_PLAN_FILE

            path = self.report_dir / SHARD_PLAN_FILE  # what merge-reports checks
            try:
                write_json_atomic(path, self.plan.to_dict())
            except OSError as err:
                self.notes.append(f"prune-harness: {path} not written ({err.strerror or err})")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.plan is not None and not self.shown:
            terminalreporter.write_line(self.plan.line())
        for note in self.notes:
            terminalreporter.write_line(note)


_SHARD_KEY = pytest.StashKey[ShardSelector]()


def _is_case_node(nodeid: str) -> bool:
    """A suite case's node id (``suites/digits_mlp.toml::magnitude-90``), not a Python test's
    that used the ``prune_harness`` fixture."""
    path, sep, name = nodeid.partition("::")
    return bool(sep) and path.endswith(".toml") and "::" not in name


def _store_durations(baselines: Path, measured: dict[str, float]) -> str:
    """Merge the measured seconds into ``baselines/durations.json``; the line to print."""
    from harness.shard import DURATIONS_FILE, ShardError, merge_durations

    path = baselines / DURATIONS_FILE
    try:
        merge_durations(path, measured)
    except ShardError as err:
        return f"prune-harness: case durations not updated: {err} (fix or delete the file)"
    except OSError as err:
        return f"prune-harness: case durations not updated: {path}: {err.strerror or err}"
    return f"prune-harness: durations of {len(measured)} case(s) written to {path}"


# --- same-machine base (--harness-base REF; the measuring is harness.base's) --------------------

_BASE_INPUT = "harness_base_baselines"  # an xdist worker's workerinput: the base's baselines


def _base_ref(value: str, where: str = "--harness-base") -> str:
    if not value.strip():
        raise pytest.UsageError(f"{where}: must name a git revision (a branch, a sha, HEAD~1)")
    return value.strip()


class BaseGate:
    """``--harness-base REF``: once the cases are collected and before any runs (xdist's workers
    wait), measures the selected cases at the base commit on this machine (:mod:`harness.base`)
    into the baseline directory every process of the session compares with; says so after
    collection and in the summary."""

    def __init__(self, base: Base, info: dict[str, Any]) -> None:
        self.base, self.info = base, info
        self.run: BaseRun | None = None
        self.line: str | None = None  # not yet printed

    def _measure(self, config: pytest.Config, node_ids: list[str]) -> None:
        from harness.base import BaseError, measure

        if self.run is not None or config.option.collectonly:
            return
        reporter = config.pluginmanager.get_plugin("terminalreporter")

        def say(count: int) -> None:
            if reporter is not None:
                reporter.ensure_newline()
                reporter.write_line(
                    f"prune-harness: measuring {count} case(s) at base {self.base.sha12} "
                    f"({self.base.ref}) on this machine in {self.base.tree} ..."
                )

        cases = [n for n in node_ids if _is_case_node(n) and not n.startswith("..")]
        try:
            self.run = measure(
                self.base,
                cases,
                options=_base_options(config),
                info=self.info,
                where="--harness-base",
                on_run=say,
            )
        except BaseError as err:
            raise pytest.UsageError(str(err)) from None
        self.line = f"prune-harness: {self.run.line()}"

    @pytest.hookimpl(tryfirst=True)  # before the terminal reporter's "collected N items"
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._measure(session.config, [i.nodeid for i in session.items if isinstance(i, CaseItem)])

    def pytest_report_collectionfinish(self, config: pytest.Config) -> str | None:
        line, self.line = self.line, None
        return line

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_BASE_INPUT] = str(self.base.baselines)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # xdist: the controller collects nothing; the first worker's ids are everyone's
        self._measure(node.config, list(ids))
        reporter = node.config.pluginmanager.get_plugin("terminalreporter")
        if self.line is not None and reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(self.line)
            self.line = None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.run is None:
            return
        base = self.base
        terminalreporter.write_line(
            f"prune-harness: verdicts compare with base {base.sha12} ({base.ref}) measured on "
            f"this machine ({base.baselines}), not the committed baselines: 'baseline' in them is "
            "the base commit's result"
        )
        if self.run.missing:
            terminalreporter.write_line(
                f"prune-harness: {len(self.run.missing)} case(s) have no result at base "
                f"{base.sha12} (new since, or failed there: {base.cache / 'run.log'}): they "
                "report as new"
            )


_BASE_KEY = pytest.StashKey[BaseGate]()


def _base_baselines(config: pytest.Config) -> Path | None:
    """``--harness-base``: the base's baseline directory (from the controller on an xdist
    worker), resolving the revision and the machine on the controller; None without it."""
    import os

    from harness.base import ENV_CHILD, BaseError, machine, machine_digest, resolve

    if hasattr(config, "workerinput"):
        given = config.workerinput.get(_BASE_INPUT)
        return Path(given) if given else None
    if os.environ.get(ENV_CHILD):
        return None  # the base run itself
    ref = config.getoption("harness_base")
    if ref is not None and config.getoption("harness_regen"):
        raise pytest.UsageError(
            f"--harness-base={ref} and --harness-regen: regen rewrites baselines/ and gates "
            "nothing against a base; run them separately"
        )
    if ref is None and not config.getoption("harness_regen"):
        ref = _setting(config, "harness_base")  # the ini's; --harness-regen ignores it
    if ref is None:
        return None
    root = Path(str(config.rootpath))
    try:
        base = resolve(root, ref, hardware="", where="--harness-base")  # before torch
        info = machine(_setting(config, "harness_device"))
    except BaseError as err:
        raise pytest.UsageError(str(err)) from None
    base = dataclasses.replace(base, hardware=machine_digest(info))
    config.stash[_BASE_KEY] = BaseGate(base, info)
    return base.baselines


def _committed_baselines(config: pytest.Config, settings: Settings) -> Path:
    """The committed baseline directory (``baselines/`` or the option's), also under
    ``--harness-base``: the shards' durations are there."""
    if _BASE_KEY not in config.stash and not (
        hasattr(config, "workerinput") and config.workerinput.get(_BASE_INPUT)
    ):
        return settings.baselines
    given = _resolved(_setting(config, "harness_baselines"))
    return (Path(str(config.rootpath)) / (given or "baselines")).resolve()


def _base_options(config: pytest.Config) -> list[tuple[str, ...]]:
    """The session's settings the base run takes over (those its revision knows; harness.base
    checks): numerics mode, device, executor, workers, Ray address, the dense disk cache (keyed
    by content, so base and head share what is the same), xdist's processes."""
    from harness import numerics

    settings = config.stash[_SETTINGS_KEY]
    options: list[tuple[str, ...]] = [("--harness-numerics", numerics.current().requested)]
    for option, value in (
        ("--harness-device", settings.device),
        ("--harness-executor", settings.executor),
        ("--harness-workers", str(settings.workers) if settings.workers else None),
        ("--harness-ray-address", settings.ray_address),
        ("--harness-cache", str(settings.cache_dir) if settings.cache_dir else None),
    ):
        if value is not None:
            options.append((option, value))
    if settings.cache_dir is None:
        options.append(("--harness-no-cache",))
    if workers := getattr(config.option, "numprocesses", None):
        options.append(("-n", str(workers)))
    return options
