"""Reports: the terminal table, markdown (GitHub job summary) and JSON files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness._util import write_json_atomic
from harness.metricnames import (
    CASE_MODEL_METRICS,
    CASE_RUN_METRICS,
    KEY_METRIC,
    MetricRef,
)

if TYPE_CHECKING:
    from harness.results import Outcome

# A face's regen command for an outcome (`pytest <node> --harness-regen`): reports name it in
# the failing lines of a case whose baseline a rewrite would resolve.
Regen = Callable[["Outcome"], str]


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
    lines.extend(flag_lines(outcomes))
    lines.extend(hardware_lines(outcomes))
    return lines


def flag_lines(outcomes: Sequence[Outcome]) -> list[str]:
    """One line per flag (a failed advisory rule: it does not fail the case), in case order."""
    return [
        f"flag {o.result.suite}::{o.result.case}: {c.note}"
        for o in outcomes
        for c in o.verdict.flags
    ]


def hardware_lines(outcomes: Sequence[Outcome]) -> list[str]:
    """One line per distinct machine difference between baselines and this run."""
    from harness.gate import CROSS_HARDWARE_PREFIX

    seen: dict[str, int] = {}
    for o in outcomes:
        for note in o.verdict.notes:
            if note.startswith(CROSS_HARDWARE_PREFIX):
                seen[note] = seen.get(note, 0) + 1
    return [f"{n} case(s): {note}" for note, n in seen.items()]


def markdown(outcomes: Sequence[Outcome], regen: Regen | None = None) -> str:
    """A markdown table of cases (failures first) with their failing lines."""
    out = [
        "## prune-harness gate",
        "",
        "| " + " | ".join(Row.HEADER) + " |",
        "|" + "---|" * len(Row.HEADER),
    ]
    for o in _ordered(outcomes):
        row = list(vars(_row(o)).values())
        mark = "⚠️ " if o.verdict.ok and o.verdict.flags else "✅ " if o.verdict.ok else "❌ "
        row[1] = mark + row[1]
        out.append("| " + " | ".join(row) + " |")
    if hardware := hardware_lines(outcomes):
        out += [""] + [f"> {line}" for line in hardware]
    flagged = [o for o in outcomes if o.verdict.flags]
    if flagged:
        out += ["", "### Flags (advisory: they do not fail the build)", ""]
        for o in flagged:
            out += [f"- **{o.result.suite}::{o.result.case}**: {c.note}" for c in o.verdict.flags]
    bad = [o for o in _ordered(outcomes) if not o.verdict.ok]
    if bad:
        out += ["", "### Failures", ""]
        for o in bad:
            out.append(f"- **{o.result.suite}::{o.result.case}** ({o.verdict.status.value})")
            out += [f"  - `{line}`" for line in o.verdict.lines(regen(o) if regen else None)]
    return "\n".join(out) + "\n"


def case_markdown(outcome: Outcome) -> str:
    """One case: verdict, rule checks, and dense vs pruned for the headline metrics."""
    r, v = outcome.result, outcome.verdict
    out = [f"# {r.suite}::{r.case}: {v.status.value}", ""]
    if numerics := (r.env.get("hardware") or {}).get("numerics"):
        kernels = r.env.get("latency_kernels", "this process")
        out += [
            f"Numerics: {numerics.get('mode')} ({numerics.get('level')}) on "
            f"{r.env.get('cpu', '?')}; latency measured in {kernels}.",
            "",
        ]
    if v.notes:
        out += [f"- {note}" for note in v.notes] + [""]
    out += ["| rule | reference | now | allowed | result |", "|---|---|---|---|---|"]
    for c in v.checks:
        state = {True: "pass", False: "**FAIL**", None: f"skipped: {c.note}"}[c.passed]
        if c.flagged:
            state = "**flag** (advisory)"
        ref = "-" if c.reference is None else f"{c.reference:.4g}"
        now = "-" if c.now is None else f"{c.now:.4g}"
        out.append(f"| `{c.key}` ({c.rule}) | {ref} | {now} | {c.allowed} | {state} |")
    out += ["", "| metric | dense | pruned |", "|---|---|---|"]
    for m in CASE_MODEL_METRICS:
        dense = r.metrics.get(MetricRef.of("dense", m).name)
        pruned = r.metrics.get(MetricRef.of("pruned", m).name)
        if dense and pruned:
            out.append(
                f"| {m} | {dense.mean:.4g} ± {dense.std:.2g} | "
                f"{pruned.mean:.4g} ± {pruned.std:.2g} |"
            )
    for m in CASE_RUN_METRICS:
        if (s := r.metrics.get(m)) is not None:
            out.append(f"| {m} | | {s.mean:.4g} ± {s.std:.2g} |")
    if r.findings:
        out += ["", f"## Findings ({len(r.findings)}, minimal inputs in findings.json)", ""]
        out += [f"- fold {f['fold']}: `{f['check']}`: {f['message']}" for f in r.findings[:20]]
    return "\n".join(out) + "\n"


def write_case(folder: Path, outcome: Outcome, pruned_states: Sequence[dict] = ()) -> None:
    """A case's files: ``report.json``, ``report.md``, confusion matrices, per-class F1 and
    per-layer sparsity plots (PNG), and ``fold<i>/pruned_state_dict.pt`` for kept models."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "report.json", json.loads(outcome.to_json()))
    if outcome.result.findings:  # the minimal inputs that broke a property or split the models
        write_json_atomic(folder / "findings.json", outcome.result.findings)
    (folder / "report.md").write_text(case_markdown(outcome), encoding="utf-8")
    _plots(folder, outcome)
    if pruned_states:
        import torch

        for i, state in enumerate(pruned_states):
            (folder / f"fold{i}").mkdir(exist_ok=True)
            torch.save(state, folder / f"fold{i}" / "pruned_state_dict.pt")


def _plots(folder: Path, outcome: Outcome) -> None:
    # matplotlib's object API without pyplot: no global figure state, cheaper per figure
    import numpy as np
    from matplotlib.figure import Figure

    r = outcome.result
    names = list(r.class_names)
    rotation = 90 if len(names) > 4 else 0
    title = f"{r.suite}::{r.case}"
    for model, matrix in r.confusion.items():
        fig = Figure(figsize=(4.5, 4.2))
        ax = fig.add_axes((0.2, 0.18, 0.75, 0.7))
        ax.imshow(matrix, cmap="Blues")
        ax.set(
            title=f"{title}\n{model} (all folds)",
            xlabel="predicted",
            ylabel="true",
            xticks=range(len(names)),
            yticks=range(len(names)),
        )
        ax.set_xticklabels(names, rotation=rotation)
        ax.set_yticklabels(names)
        cells = np.asarray(matrix)
        for (i, j), value in np.ndenumerate(cells):
            if value:
                color = "white" if value > cells.max() / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
        fig.savefig(folder / f"confusion_{model}.png", dpi=72)

    x = np.arange(len(names))
    fig = Figure(figsize=(max(4.0, 0.5 * len(names) + 2), 3))
    ax = fig.add_axes((0.12, 0.2, 0.85, 0.68))
    for shift, model in ((-0.2, "dense"), (0.2, "pruned")):
        values = [r.value(f"{model}.f1.class_{k}") or 0.0 for k in range(len(names))]
        ax.bar(x + shift, values, width=0.4, label=model)
    ax.set(xticks=x, ylim=(0, 1.05), ylabel="F1")
    ax.set_title(f"{title}: F1 per class", fontsize=9)
    ax.set_xticklabels(names, rotation=rotation)
    ax.legend(loc="lower right")
    fig.savefig(folder / "f1_per_class.png", dpi=72)

    layers = list(r.layer_sparsity)
    fig = Figure(figsize=(max(4.0, 0.6 * len(layers) + 2), 3.2))
    ax = fig.add_axes((0.12, 0.3, 0.85, 0.6))
    ax.bar(range(len(layers)), [r.layer_sparsity[n] for n in layers])
    ax.set(xticks=range(len(layers)), ylim=(0, 1), ylabel="removed")
    ax.set_title(f"{title}: weights removed per layer", fontsize=9)
    ax.set_xticklabels(layers, rotation=30, ha="right")
    fig.savefig(folder / "layer_sparsity.png", dpi=72)


def write_session(directory: Path, outcomes: Sequence[Outcome], regen: Regen | None = None) -> None:
    """``summary.md`` and ``summary.json`` for the session; the job summary in GitHub Actions."""
    directory.mkdir(parents=True, exist_ok=True)
    text = markdown(outcomes, regen)
    (directory / "summary.md").write_text(text, encoding="utf-8")
    write_json_atomic(
        directory / "summary.json",
        [
            {
                "suite": o.result.suite,
                "case": o.result.case,
                "verdict": o.verdict.status.value,
                "failed": o.verdict.lines(regen(o) if regen else None) if not o.verdict.ok else [],
                **({"flags": [c.note for c in o.verdict.flags]} if o.verdict.flags else {}),
            }
            for o in outcomes
        ],
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def compare_lines(
    side_a: dict[tuple[str, str], dict[str, float]],
    side_b: dict[tuple[str, str], dict[str, float]],
    labels: tuple[str, str],
    metrics: Sequence[str] | None,
) -> list[str]:
    """A table of ``B - A`` per case and metric; ``worse`` marks a change against the metric's
    direction. ``metrics=None`` shows every metric both sides have."""
    from harness.metricnames import Direction, UnknownMetricError, parse

    rows = [("case", "metric", labels[0], labels[1], "delta", "")]
    for key in sorted(set(side_a) | set(side_b)):
        a, b = side_a.get(key, {}), side_b.get(key, {})
        names = sorted(set(a) & set(b)) if metrics is None else list(metrics)
        for name in names:
            va, vb = a.get(name), b.get(name)
            delta = "-" if va is None or vb is None else f"{vb - va:+.4g}"
            mark = ""
            if va is not None and vb is not None and vb != va:
                try:
                    higher = parse(name).direction is Direction.HIGHER
                except UnknownMetricError:
                    higher = None
                if higher is not None:
                    mark = "better" if (vb > va) == higher else "worse"
            rows.append((f"{key[0]}::{key[1]}", name, _num(va), _num(vb), delta, mark))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def write_step_summary(outcomes: Sequence[Outcome], regen: Regen | None = None) -> None:
    """Append the markdown table to ``$GITHUB_STEP_SUMMARY`` when it is set."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target and outcomes:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown(outcomes, regen))
