"""The ``prune-harness`` command: ``run``, ``methods``, ``baselines``.

Exit status: 0 all cases passed, 1 a case failed the gate, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.spec import SuiteSpec


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

    sub.add_parser("methods", help="list the pruning techniques")

    bl = sub.add_parser("baselines", help="list baselines and whether they match their suites")
    bl.add_argument(
        "suites", nargs="*", type=Path, default=None, help="suite files (default: suites/*.toml)"
    )
    bl.add_argument("--baselines", type=Path, default=Path("baselines"), help="baseline directory")
    return parser


def _load(paths: Sequence[Path]) -> list[SuiteSpec]:
    from harness.spec import SpecError, load_suite

    try:
        return [load_suite(p) for p in paths]
    except SpecError as err:
        raise UsageError(str(err)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from harness import report, tracking
    from harness.baseline import BaselineError
    from harness.models import ModelError
    from harness.session import Recorder, Settings, check_case

    suites = _load(args.suites)
    selected = [(s, c) for s in suites for c in s.cases if not args.case or c.name in args.case]
    missing = set(args.case) - {c.name for _, c in selected}
    if missing:
        raise UsageError(f"--case {sorted(missing)[0]!r}: no such case in the given suites")
    settings = Settings(
        args.baselines.resolve(), args.regen, args.report.resolve() if args.report else None
    )
    tracker = (
        tracking.Tracker()
        if args.no_mlflow
        else tracking.MlflowTracker(
            args.mlflow_uri or tracking.default_uri(), session_name="prune-harness run"
        )
    )
    recorder = Recorder(settings, tracker)
    for suite, case in selected:
        hint = f"`prune-harness run {suite.source} --case {case.name} --regen`"
        try:
            outcome = check_case(suite, case, settings, regen_hint=hint)
        except (BaselineError, ModelError) as err:
            raise UsageError(str(err)) from None
        status = outcome.verdict.status.value
        print(f"{suite.name}::{case.name} {status.upper()}", flush=True)
        for line in outcome.verdict.lines() if not outcome.verdict.ok else []:
            print(f"  {line}")
        recorder.add(outcome)
    recorder.finish()
    report.write_step_summary(recorder.outcomes)
    print()
    print("\n".join(report.terminal_lines(recorder.outcomes)))
    for line in recorder.messages:
        print(line)
    return 0 if all(o.verdict.ok for o in recorder.outcomes) else 1


def cmd_methods(args: argparse.Namespace) -> int:
    from harness.pruning import get, names

    rows = [(n, get(n).summary, get(n).reference) for n in names()]
    width = max(len(n) for n, _, _ in rows)
    for name, summary, reference in rows:
        print(f"{name.ljust(width)}  {summary}")
        print(f"{' ' * width}  ({reference})")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from harness.baseline import BaselineError, BaselineStore

    paths = args.suites or sorted(Path("suites").glob("*.toml"))
    store = BaselineStore(args.baselines)
    seen = set()
    for suite in _load(paths):
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
            else:
                state = f"ok (commit {baseline.commit[:10]}, {baseline.created})"
            print(f"{suite.name}::{case.name}  {state}")
    for path in store.list():
        if path.resolve() not in seen:
            print(f"{path}  orphan (no such case in the suites given)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"run": cmd_run, "methods": cmd_methods, "baselines": cmd_baselines}
    try:
        return commands[args.command](args)
    except UsageError as err:
        print(f"prune-harness: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
