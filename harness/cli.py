"""The ``prune-harness`` command: ``run``, ``methods``, ``baselines``.

Exit status: 0 all cases passed, 1 a case failed the gate, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness._util import HarnessError, redact

if TYPE_CHECKING:
    from harness.executors import Executor
    from harness.results import Outcome
    from harness.runner import DenseCache
    from harness.session import Recorder, Settings
    from harness.spec import CaseSpec, SuiteSpec


class UsageError(Exception):
    """Bad input on the command line; printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run suites through the gate (like pytest suites/)")
    run.add_argument("suites", nargs="+", type=Path, help="suite files (*.toml)")
    run.add_argument("--case", action="append", default=[], help="only this case (repeatable)")
    run.add_argument("--regen", action="store_true", help="rewrite the baselines of the cases run")
    run.add_argument("--baselines", type=Path, default=Path("baselines"), help="baseline directory")
    run.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI")
    run.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    run.add_argument("--report", type=Path, default=None, help="write JSON/markdown reports here")
    run.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail a case that runs longer (with a suite's own time_budget, the tighter wins)",
    )
    run.add_argument(
        "--log-models", action="store_true", help="keep every fold's pruned state_dict"
    )
    run.add_argument(
        "--device",
        default=None,
        help="run every suite on this device: cpu, cuda, cuda:N, mps or auto (overrides theirs)",
    )
    run.add_argument(
        "--executor",
        default=None,
        help="where the folds run: serial (default), process or ray (overrides the suites')",
    )
    run.add_argument("--workers", type=int, default=None, help="processes of the process executor")
    run.add_argument(
        "--cache",
        type=Path,
        default=Path(".harness") / "cache",
        help="disk cache of dense models (default: .harness/cache)",
    )
    run.add_argument("--no-cache", action="store_true", help="no disk cache")
    run.add_argument(
        "--cache-results", action="store_true", help="also reuse whole fold results from it"
    )
    run.add_argument(
        "--ray-address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else local)"
    )
    run.add_argument(
        "--numerics",
        choices=("portable", "native"),
        default=None,
        help="portable (default on x86-64: results reproduce across CPUs) or native kernels",
    )

    sub.add_parser("methods", help="list the pruning techniques")

    bl = sub.add_parser("baselines", help="list baselines and whether they match their suites")
    bl.add_argument(
        "suites", nargs="*", type=Path, default=None, help="suite files (default: suites/*.toml)"
    )
    bl.add_argument("--baselines", type=Path, default=Path("baselines"), help="baseline directory")

    sync = sub.add_parser("mlflow-sync", help="replay results kept in the outbox into MLflow")
    sync.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI")
    sync.add_argument("--outbox", type=Path, default=None, help="default: .harness/outbox")

    cmp = sub.add_parser(
        "compare",
        help="metric deltas between two MLflow runs, or a branch's latest run and the baselines",
    )
    cmp.add_argument("runs", nargs="*", help="two run ids (session or case runs): A B")
    cmp.add_argument(
        "--branch", help="compare the latest session run of this branch with baselines"
    )
    cmp.add_argument("--baselines", type=Path, default=Path("baselines"), help="baseline directory")
    cmp.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI")
    cmp.add_argument(
        "--metric",
        action="append",
        default=[],
        help="metric to show (repeatable; default: key ones)",
    )
    cmp.add_argument("--all", action="store_true", help="show every metric both sides have")

    merge = sub.add_parser(
        "merge-reports",
        help="merge the report directories of CI shards (--harness-shard) into one report",
    )
    merge.add_argument(
        "dirs", nargs="+", type=Path, help="the shards' --harness-report directories"
    )
    merge.add_argument("--out", type=Path, required=True, help="the merged report directory")
    merge.add_argument(
        "--mlflow-uri", default=None, help="also log the merged cases as one MLflow session"
    )
    return parser


def _load(
    paths: Sequence[Path], *, resolved: bool = True, device: str | None = None
) -> list[SuiteSpec]:
    """Suite files, structurally valid and (``resolved``) checked against their data, model and
    methods (:mod:`harness.resolution`)."""
    from harness._util import add_import_path
    from harness.spec import SpecError, load_suite

    add_import_path(Path.cwd())  # user modules in the working directory import
    try:
        suites = [load_suite(p) for p in paths]
        if device is not None:
            suites = [dataclasses.replace(s, device=device) for s in suites]
        for suite in suites:
            add_import_path(suite.base_dir)
        if resolved:
            from harness.resolution import resolve

            suites = [resolve(s) for s in suites]
        return suites
    except SpecError as err:
        raise UsageError(str(err)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from harness import numerics

    state = numerics.configure(args.numerics)  # before torch is imported
    from harness import report, tracking
    from harness.session import Executors, Settings, open_recorder
    from harness.spec import BOUNDS, device_problem, executor_problem

    if args.time_budget is not None and not 0 < args.time_budget <= BOUNDS["time_budget"]:
        raise UsageError(
            f"--time-budget {args.time_budget:g}: must be seconds > 0 and <= "
            f"{BOUNDS['time_budget']}"
        )
    if args.device is not None and (problem := device_problem(args.device)) is not None:
        raise UsageError(f"--device {args.device}: {problem}")
    if args.device is not None:  # named as the option, not as a key of the suite files
        from harness.devices import DeviceError
        from harness.devices import resolve as resolve_device

        try:
            resolve_device(args.device)
        except DeviceError as err:
            said = str(err).partition(": ")[2] or str(err)
            raise UsageError(f"--device {args.device}: {said}") from None
    if args.executor is not None and (problem := executor_problem(args.executor)) is not None:
        raise UsageError(f"--executor {args.executor}: {problem}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    suites = _load(args.suites, device=args.device)
    selected = [(s, c) for s in suites for c in s.cases if not args.case or c.name in args.case]
    missing = set(args.case) - {c.name for _, c in selected}
    if missing:
        raise UsageError(f"--case {sorted(missing)[0]!r}: no such case in the given suites")
    settings = Settings.build(
        Path.cwd(),
        baselines=args.baselines,
        regen=args.regen,
        report_dir=args.report,
        tracked=not args.no_mlflow,
        log_models=args.log_models,
        time_budget=args.time_budget,
        device=args.device,
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        cache_dir=None if args.no_cache else args.cache,
        cache_results=args.cache_results,
    )
    recorder = open_recorder(
        settings,
        mlflow_uri=None if args.no_mlflow else args.mlflow_uri or tracking.default_uri(),
        session_name="prune-harness run",
        outbox=tracking.OUTBOX,
        regen=_regen,
    )
    cache, executors = settings.dense_cache(), Executors(settings)
    print(f"numerics: {state.describe()}", flush=True)
    if state.note:
        print(f"note: {state.note}", flush=True)
    try:
        for suite, case in selected:
            _check_one(suite, case, settings, cache, executors.for_suite(suite), recorder)
    finally:
        executors.close()
    recorder.finish()
    report.write_step_summary(recorder.outcomes, _regen)
    print()
    print("\n".join(report.terminal_lines(recorder.outcomes)))
    for line in recorder.messages:
        print(line)
    return 0 if all(o.verdict.ok for o in recorder.outcomes) else 1


def _check_one(
    suite: SuiteSpec,
    case: CaseSpec,
    settings: Settings,
    cache: DenseCache,
    executor: Executor,
    recorder: Recorder,
) -> None:
    """Check one case, print its verdict and record it; a harness error is exit status 2."""
    from harness.session import check_case

    try:
        outcome = check_case(suite, case, settings, cache=cache, executor=executor)
    except HarnessError as err:
        raise UsageError(f"{suite.name}::{case.name}: {err}") from None
    except MemoryError:
        raise UsageError(
            f"{suite.name}::{case.name}: out of memory (MemoryError); lower the sizes in "
            "the suite (dataset_args, latency.batch, model_args)"
        ) from None
    status = outcome.verdict.status.value
    print(f"{suite.name}::{case.name} {status.upper()}", flush=True)
    for line in outcome.verdict.lines(_regen(outcome)) if not outcome.verdict.ok else []:
        print(f"  {line}")
    recorder.add(outcome)


def _regen(outcome: Outcome) -> str:
    """The command that rewrites one case's baseline, quoted for a POSIX shell."""
    case = outcome.result.case
    return f"`prune-harness run {shlex.quote(outcome.source)} --case {shlex.quote(case)} --regen`"


def cmd_methods(args: argparse.Namespace) -> int:
    from harness.pruning import get, names
    from harness.pruning.registry import CASE_OPTIONS

    rows = [(n, get(n).summary, get(n).reference) for n in names()]
    width = max(len(n) for n, _, _ in rows)
    for name, summary, reference in rows:
        print(f"{name.ljust(width)}  {summary}")
        print(f"{' ' * width}  ({reference})")
        if known := get(name).known_args():
            print(f"{' ' * width}  args: {', '.join(known)}")
    print()
    print("Case options (combine with any method):")
    width = max(len(key) for key, _, _ in CASE_OPTIONS)
    for key, summary, reference in CASE_OPTIONS:
        print(f"  {key.ljust(width)}  {summary}")
        print(f"  {' ' * width}  ({reference})")
    return 0


def _digest(suite: SuiteSpec) -> str:
    from harness.data import load_dataset

    return load_dataset(suite.dataset, suite.dataset_args, suite.base_dir).digest


def cmd_baselines(args: argparse.Namespace) -> int:
    from harness.baseline import BaselineError, BaselineStore

    paths = args.suites or sorted(Path("suites").glob("*.toml"))
    store = BaselineStore(args.baselines)
    seen = set()
    for suite in _load(paths, resolved=False):
        for case in suite.cases:
            path = store.path(suite.name, case.name)
            seen.add(path.resolve())
            try:
                baseline = store.load(suite.name, case.name)
            except BaselineError as err:
                raise UsageError(str(err)) from None
            if baseline is None:
                state = "missing"
            elif baseline.spec_hash != suite.spec_hash(case):
                state = "spec-changed"
            elif baseline.dataset_digest and baseline.dataset_digest != _digest(suite):
                state = f"data-changed (digest {baseline.dataset_digest} -> {_digest(suite)})"
            else:
                state = f"ok (commit {baseline.commit[:10]}, {baseline.created})"
            print(f"{suite.name}::{case.name}  {state}")
    for path in store.list():
        if path.resolve() not in seen:
            print(f"{path}  orphan (no such case in the suites given)")
    return 0


def cmd_mlflow_sync(args: argparse.Namespace) -> int:
    from harness import tracking

    uri = args.mlflow_uri or tracking.default_uri()
    outbox = args.outbox or tracking.OUTBOX
    try:
        done = tracking.sync_outbox(uri, outbox)
    except Exception as err:  # the store itself is unreachable
        raise UsageError(f"MLflow at {redact(uri)}: {tracking.describe_failure(err)}") from None
    for line in done.failed:
        print(f"failed: {line}", file=sys.stderr)
    print(
        f"synced {done.synced}, skipped {done.skipped} (already in MLflow), "
        f"failed {len(done.failed)}; outbox {outbox}"
    )
    return 1 if done.failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness import report, tracking
    from harness.baseline import BaselineStore
    from harness.metricnames import HEADLINE

    if not ((args.branch and not args.runs) or (not args.branch and len(args.runs) == 2)):
        raise UsageError("compare: give two run ids (A B) or --branch NAME")
    uri = args.mlflow_uri or tracking.default_uri()
    try:
        client, experiment_id = tracking.connect(uri)
        if args.branch:
            run_b = tracking.latest_session(client, experiment_id, args.branch)
            if run_b is None:
                raise UsageError(
                    f"--branch {args.branch!r}: no session run of that branch in {redact(uri)}"
                )
            side_b = tracking.case_metrics(client, run_b)
            store = BaselineStore(args.baselines)
            side_a = {}
            for suite, case in side_b:
                if (baseline := store.load(suite, case)) is not None:
                    side_a[(suite, case)] = {k: v.mean for k, v in baseline.metrics.items()}
            labels = ("baseline", f"{args.branch}@{run_b[:8]}")
        else:
            side_a = tracking.case_metrics(client, args.runs[0])
            side_b = tracking.case_metrics(client, args.runs[1])
            labels = (args.runs[0][:8], args.runs[1][:8])
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"MLflow at {redact(uri)}: {tracking.describe_failure(err)}") from None
    metrics = None if args.all else (args.metric or list(HEADLINE))
    print("\n".join(report.compare_lines(side_a, side_b, labels, metrics)))
    return 0


def cmd_merge_reports(args: argparse.Namespace) -> int:
    """One report (case folders, summary.md / summary.json, job summary, optionally one MLflow
    session) from the report directories of a sharded run."""
    import shutil

    from harness import report, tracking
    from harness.session import Settings, open_recorder
    from harness.shard import ShardError, merge_reports

    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    if any(Path(d).resolve() == out for d in args.dirs):
        raise UsageError(f"--out {args.out}: is one of the directories to merge")
    try:
        merged = merge_reports(args.dirs)
    except ShardError as err:
        raise UsageError(f"merge-reports: {err}") from None
    settings = Settings.build(Path.cwd(), report_dir=out, tracked=args.mlflow_uri is not None)
    recorder = open_recorder(
        settings,
        mlflow_uri=args.mlflow_uri,
        session_name=f"prune-harness merge-reports ({len(merged.shards)} shards)",
        outbox=tracking.OUTBOX,
        regen=_pytest_regen,
    )
    for folder, outcome in zip(merged.folders, merged.outcomes, strict=True):
        target = out / folder.name
        try:
            shutil.copytree(folder, target, dirs_exist_ok=True)
        except (OSError, shutil.Error) as err:
            raise UsageError(f"--out {args.out}: {target} cannot be written ({err})") from None
        recorder.add(dataclasses.replace(outcome, artifacts=str(target)))
    recorder.finish()
    report.write_step_summary(recorder.outcomes, _pytest_regen)
    print("\n".join(report.terminal_lines(recorder.outcomes)))
    for line in merged.unreported:
        print(line)
    for line in recorder.messages:
        print(line)
    print(f"merged {len(merged.outcomes)} case(s) of {len(merged.shards)} report dir(s) into {out}")
    passed = all(o.verdict.ok for o in recorder.outcomes) and not merged.unreported
    return 0 if passed else 1


def _pytest_regen(outcome: Outcome) -> str:
    """The regen command a pytest session's summary names (the shards ran pytest)."""
    node = f"{Path(outcome.source).as_posix()}::{outcome.result.case}"
    return f"`pytest {shlex.quote(node)} --harness-regen`"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {
        "run": cmd_run,
        "methods": cmd_methods,
        "baselines": cmd_baselines,
        "mlflow-sync": cmd_mlflow_sync,
        "compare": cmd_compare,
        "merge-reports": cmd_merge_reports,
    }
    try:
        return commands[args.command](args)
    except UsageError as err:
        print(f"prune-harness: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
