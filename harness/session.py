"""The orchestration both faces share: check a case (run -> baseline -> gate -> report) and
record a session's outcomes (tracking, summaries). ``plugin.py`` and ``cli.py`` only wire this up.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.baseline import Baseline, BaselineError, BaselineStore
from harness.gate import evaluate, front_peers
from harness.results import Outcome
from harness.spec import CaseSpec, SuiteSpec
from harness.tracking import ARTIFACTS, Tracker

if TYPE_CHECKING:
    from harness.executors import Executor
    from harness.runner import DenseCache

__all__ = [
    "Executors",
    "Outcome",
    "Recorder",
    "Settings",
    "check_case",
    "flat_params",
    "open_recorder",
]


CACHE_DIR = Path(".harness") / "cache"  # harness.cache.DEFAULT_DIR (the core imports no torch)


@dataclass(frozen=True)
class Settings:
    """Session-wide settings shared by the plugin and the CLI.

    ``artifacts_dir``: where each case writes its report files and plots (one folder per case);
    None skips them. ``log_models``: also save every fold's pruned ``state_dict`` there.
    """

    baselines: Path
    regen: bool = False
    report_dir: Path | None = None
    artifacts_dir: Path | None = None
    log_models: bool = False
    time_budget: float | None = None  # seconds per case; the tighter of it and the suite's
    device: str | None = None  # overrides every suite's device ("cpu", "cuda", "auto", ...)
    executor: str | None = None  # overrides every suite's executor ("serial", "process", "ray")
    workers: int | None = None  # size of the process executor's pool (default: the free cores)
    ray_address: str | None = None  # the Ray cluster to join (default: $RAY_ADDRESS, else local)
    cache_dir: Path | None = None  # the disk cache of dense models (harness.cache); None: off
    cache_results: bool = False  # also reuse whole fold results from it (opt-in)

    @classmethod
    def build(
        cls,
        root: Path,
        *,
        baselines: Path | None = None,
        regen: bool = False,
        report_dir: Path | None = None,
        tracked: bool = True,
        log_models: bool = False,
        time_budget: float | None = None,
        device: str | None = None,
        executor: str | None = None,
        workers: int | None = None,
        ray_address: str | None = None,
        cache_dir: Path | None = CACHE_DIR,
        cache_results: bool = False,
    ) -> Settings:
        """Settings with paths resolved against ``root``. Case files go to the report directory,
        else (for MLflow to pick up) to ``.harness/artifacts`` when tracking is on. The disk
        cache is ``.harness/cache`` unless ``cache_dir`` says otherwise (None: no disk cache)."""
        report = (root / report_dir).resolve() if report_dir else None
        artifacts = report or ((root / ARTIFACTS).resolve() if tracked else None)
        return cls(
            baselines=(root / (baselines or "baselines")).resolve(),
            regen=regen,
            report_dir=report,
            artifacts_dir=artifacts,
            log_models=log_models,
            time_budget=time_budget,
            device=device,
            executor=executor,
            workers=workers,
            ray_address=ray_address,
            cache_dir=(root / cache_dir).resolve() if cache_dir is not None else None,
            cache_results=cache_results and cache_dir is not None,
        )

    def dense_cache(self) -> DenseCache:
        """A session's dense cache: in memory, on the disk cache when there is one."""
        from harness.cache import DiskCache
        from harness.runner import DenseCache

        disk = DiskCache(self.cache_dir) if self.cache_dir is not None else None
        return DenseCache(disk=disk, results=self.cache_results)


class Executors:
    """A session's executors (:mod:`harness.executors`), created by name when a suite first
    needs one and closed with :meth:`close`: the session's choice (``Settings.executor``), else
    the suite's ``executor``, else serial."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: dict[str, Executor] = {}

    def for_suite(self, suite: SuiteSpec) -> Executor:
        from harness.executors import create

        name = self.settings.executor or suite.executor or "serial"
        if name not in self._made:
            chosen = self.settings.executor is not None
            where = "--harness-executor" if chosen else f"{suite.source}: suite.executor"
            self._made[name] = create(
                name,
                workers=self.settings.workers,
                address=self.settings.ray_address,
                where=where,
            )
        return self._made[name]

    def close(self) -> None:
        while self._made:
            _, executor = self._made.popitem()
            executor.close()


def flat_params(suite: SuiteSpec, case: CaseSpec) -> dict[str, str]:
    """The case spec flattened to dotted keys (MLflow params, reports)."""
    out: dict[str, str] = {}
    suite = suite.for_case(case)  # the model the case runs

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)

    walk(
        "",
        {
            "suite": suite.name,
            "case": case.name,
            "dataset": suite.dataset,
            "dataset_args": dict(suite.dataset_args),
            "model": suite.model,
            "model_args": dict(suite.model_args),
            "seed": suite.seed,
            "threads": suite.threads,
            "cv.folds": suite.folds,
            "cv.repeats": suite.repeats,
            "cv.seed": suite.cv_seed,
            "train": asdict(suite.train),
            "edge": list(suite.edge_sets(case)),
            "checks": asdict(suite.checks),
            "prune": {**asdict(case.prune), "args": dict(case.prune.args)},
            "finetune": asdict(case.finetune) if case.finetune else "none",
            "spec_hash": suite.spec_hash(case),
        },
    )
    return out


def check_case(
    suite: SuiteSpec,
    case: CaseSpec,
    settings: Settings,
    *,
    cache: DenseCache | None = None,
    executor: Executor | None = None,
) -> Outcome:
    """Run a case, compare it with its baseline (or rewrite it with ``settings.regen``), gate it,
    and write its report files when ``settings.artifacts_dir`` is set. Dense models come from
    ``cache`` (the session's :class:`harness.runner.DenseCache`); ``executor`` runs the folds
    (the session's :class:`Executors` picks it; None: serial). The verdict names no command:
    each face renders ``Verdict.remedy`` with its own (``Verdict.lines(command)``).

    Raises
    ------
    harness.baseline.BaselineError
        If the stored baseline is unreadable.
    """
    store = BaselineStore(settings.baselines)
    try:
        baseline = store.load(suite.name, case.name)
        if baseline is not None and baseline.spec_hash == suite.spec_hash(case):
            _check_fold_counts(baseline, suite.folds * suite.repeats, store)
    except BaselineError:
        if not settings.regen:
            raise
        store.path(suite.name, case.name)  # a name that breaks the rule still fails
        baseline = None  # unreadable or malformed: --harness-regen replaces it
    from harness.runner import run_case

    result = run_case(
        suite,
        case,
        cache=cache,
        keep_models=settings.log_models,
        time_budget=settings.time_budget,
        device=settings.device,
        executor=executor,
    )
    written = obtained = None
    warnings: list[str] = []
    if suite.checkpoint is not None:
        held_out = (
            f"gate on the test.* metrics of the fixed test split (cv.test = {suite.test!r})"
            if suite.test is not None
            else "set [cv] test to data held out from its training"
        )
        warnings.append(
            f"{suite.name}: the dense model is the checkpoint {suite.checkpoint}; if it was "
            f"trained on this dataset, the k-fold validation folds are data it has seen: {held_out}"
        )
    fresh = Baseline.from_result(result, threads=suite.threads)
    if settings.regen:
        written = str(store.save(fresh))
        baseline = fresh
    peers = front_peers(store, suite.name, case.name) if suite.front is not None else ()
    verdict = evaluate(result, baseline, suite.all_rules(case), front=suite.front, peers=peers)
    if not verdict.ok and baseline is not None and not settings.regen:
        try:
            obtained = str(store.save_obtained(fresh))
        except BaselineError as err:  # the verdict stands; only the copy for review is missing
            warnings.append(f"{suite.name}::{case.name}: new results not written ({err})")
    usable = (
        baseline
        if baseline is not None
        and baseline.spec_hash == result.spec_hash
        and baseline.dataset_digest in ("", result.dataset_digest)
        else None
    )
    outcome = Outcome(
        result,
        verdict,
        flat_params(suite, case),
        suite.source,
        baseline_means={k: v.mean for k, v in usable.metrics.items()} if usable else {},
        baseline_path=written,
        obtained_path=obtained,
        warnings=tuple(warnings),
    )
    if settings.artifacts_dir is not None:
        from harness import report

        folder = settings.artifacts_dir / f"{suite.name}__{case.name}"
        try:
            report.write_case(folder, outcome, result.pruned_states)
        except OSError as err:  # report files are extras: the verdict does not depend on them
            note = f"{suite.name}::{case.name}: report files not written to {folder} ({err})"
            return replace(outcome, warnings=(*outcome.warnings, note))
        outcome = replace(outcome, artifacts=str(folder))
    return outcome


def _check_fold_counts(baseline: Baseline, expected: int, store: BaselineStore) -> None:
    """A baseline of this very spec has one value per fold the suite runs in every per-fold
    metric (case-level metrics have none): an edited file that disagrees is refused."""
    for name, summary in baseline.metrics.items():
        if summary.folds and len(summary.folds) != expected:
            raise BaselineError(
                f"{store.path(baseline.suite, baseline.case)}: metrics.{name}.folds has "
                f"{len(summary.folds)} values; the suite runs {expected} folds"
            )


def open_recorder(
    settings: Settings,
    *,
    mlflow_uri: str | None,
    session_name: str,
    outbox: Path,
    regen: Callable[[Outcome], str] | None = None,
) -> Recorder:
    """A session's recorder with its tracker: MLflow at ``mlflow_uri`` (results the store does
    not take go to ``outbox``), or none with ``mlflow_uri`` None. ``regen`` is the face's regen
    command for an outcome, named in the session summaries."""
    from harness import tracking

    tracker = (
        tracking.Tracker()
        if mlflow_uri is None
        else tracking.MlflowTracker(mlflow_uri, session_name=session_name, outbox=outbox)
    )
    return Recorder(settings, tracker, regen=regen)


@dataclass
class Recorder:
    """Collects a session's outcomes in one process (the pytest controller, or the CLI) and logs
    each to the tracker as it arrives, or, while ``held``, once :meth:`release` is called (the
    plugin holds while every xdist worker is busy, so tracking does not steal their CPU)."""

    settings: Settings
    tracker: Tracker = field(default_factory=Tracker)
    outcomes: list[Outcome] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    held: bool = False
    regen: Callable[[Outcome], str] | None = None  # the face's regen command, for summaries
    _logged: int = 0

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.messages.extend(w for w in outcome.warnings if w not in self.messages)
        if not self.held:
            self.release()

    def release(self) -> None:
        """Log what is waiting and stop holding."""
        self.held = False
        for outcome in self.outcomes[self._logged :]:
            self.tracker.log_case(outcome)
        self._logged = len(self.outcomes)

    def finish(self) -> None:
        self.release()
        self.tracker.close(all(o.verdict.ok for o in self.outcomes))
        self.messages.extend(self.tracker.messages)
        if self.settings.report_dir is not None and self.outcomes:
            from harness import report

            report.write_session(self.settings.report_dir, self.outcomes, self.regen)
