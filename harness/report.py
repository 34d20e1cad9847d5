"""Reports: the terminal table, markdown (GitHub job summary) and JSON files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.baseline import write_json_atomic

if TYPE_CHECKING:
    from harness.session import Outcome

KEY_METRIC = "pruned.f1_macro"


@dataclass(frozen=True)
class Row:
    case: str
    verdict: str
    f1: str
    delta_baseline: str
    delta_dense: str
    sparsity: str
    params: str
    speedup: str
    seconds: str

    HEADER = (
        "case",
        "verdict",
        "pruned F1",
        "Δ baseline",
        "Δ dense",
        "sparsity",
        "params",
        "speedup",
        "time",
    )


def _row(o: Outcome) -> Row:
    r = o.result
    f1 = r.value(KEY_METRIC)
    dense = r.value("dense.f1_macro")
    base = next(
        (c.reference for c in o.verdict.checks if c.key == KEY_METRIC and c.reference is not None),
        None,
    )

    def delta(ref: float | None) -> str:
        return "-" if ref is None or f1 is None else f"{f1 - ref:+.4f}"

    def num(name: str, fmt: str) -> str:
        v = r.value(name)
        return "-" if v is None else format(v, fmt)

    return Row(
        f"{r.suite}::{r.case}",
        o.verdict.status.value,
        num(KEY_METRIC, ".4f"),
        delta(base),
        delta(dense),
        num("pruned.sparsity", ".2f"),
        f"{num('pruned.nonzero_params', ',.0f')}/{num('dense.params', ',.0f')}",
        num("speedup_batch", ".2f") + "x",
        f"{r.seconds:.1f}s",
    )


def _ordered(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Failures first, then in the order they ran."""
    return sorted(outcomes, key=lambda o: o.verdict.ok)


def terminal_lines(outcomes: Sequence[Outcome]) -> list[str]:
    """A fixed-width table: one row per case, failures first, then failing lines."""
    rows = [Row.HEADER] + [tuple(vars(_row(o)).values()) for o in _ordered(outcomes)]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(Row.HEADER))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_bad = sum(not o.verdict.ok for o in outcomes)
    lines.append(
        f"{len(outcomes)} case(s): {len(outcomes) - n_bad} passed, {n_bad} failed "
        "(speedup: batch latency dense/pruned, same run)"
    )
    return lines


def markdown(outcomes: Sequence[Outcome]) -> str:
    """A markdown table of cases (failures first) with their failing lines."""
    out = [
        "## prune-harness gate",
        "",
        "| " + " | ".join(Row.HEADER) + " |",
        "|" + "---|" * len(Row.HEADER),
    ]
    for o in _ordered(outcomes):
        row = list(vars(_row(o)).values())
        row[1] = ("✅ " if o.verdict.ok else "❌ ") + row[1]
        out.append("| " + " | ".join(row) + " |")
    bad = [o for o in _ordered(outcomes) if not o.verdict.ok]
    if bad:
        out += ["", "### Failures", ""]
        for o in bad:
            out.append(f"- **{o.result.suite}::{o.result.case}** ({o.verdict.status.value})")
            out += [f"  - `{line}`" for line in o.verdict.lines()]
    return "\n".join(out) + "\n"


def case_file(directory: Path, outcome: Outcome) -> Path:
    return directory / f"{outcome.result.suite}__{outcome.result.case}.json"


def write_case(directory: Path, outcome: Outcome) -> Path:
    path = case_file(directory, outcome)
    write_json_atomic(path, json.loads(outcome.to_json()))
    return path


def write_session(directory: Path, outcomes: Sequence[Outcome]) -> None:
    """``summary.md`` and ``summary.json`` for the session; the job summary in GitHub Actions."""
    directory.mkdir(parents=True, exist_ok=True)
    text = markdown(outcomes)
    (directory / "summary.md").write_text(text, encoding="utf-8")
    write_json_atomic(
        directory / "summary.json",
        [
            {
                "suite": o.result.suite,
                "case": o.result.case,
                "verdict": o.verdict.status.value,
                "failed": o.verdict.lines() if not o.verdict.ok else [],
            }
            for o in outcomes
        ],
    )


def write_step_summary(outcomes: Sequence[Outcome]) -> None:
    """Append the markdown table to ``$GITHUB_STEP_SUMMARY`` when it is set."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target and outcomes:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown(outcomes))
