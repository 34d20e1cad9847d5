"""Every technique x sparsity on the reference models: the results table and plot in docs/.

    python benchmarks/results.py [--docs DIR] [--folds K] [--only NAME ...] [--bench NAME ...]

Two benches, each on its reference suite's dataset, model and dense training with 5-fold
cross-validation, edge sets and checks off (they do not change the quality figures):

- ``digits``: the digits MLP (suites/digits_mlp.toml), every registered technique at three
  sparsities, the same fine-tuning for every technique that fine-tunes (10 epochs, lr 3e-3,
  cosine), plus uniform magnitude served as sparse CSR (``deploy = "csr"``).
- ``mnist1d``: the MNIST-1D CNN (suites/mnist1d_cnn.toml), every structured technique at three
  fractions of channels, fine-tuned as in that suite.

Writes DIR/results.json (every row, the raw figures; ``--plot-only`` re-renders the table and plot
from it), DIR/results.md (technique x sparsity -> macro-F1 mean +- std over folds, parameters
removed, non-zero parameters, FLOPs, latency, speedup at batch 1 and 256, estimated energy) and
DIR/results.png (macro-F1 against the fraction of parameters removed, one panel per bench).
Speedups are same-run ratios; latencies are of the machine that ran this.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.results import CaseResult
from harness.runner import DenseCache, run_case
from harness.spec import suite_from_dict


@dataclass(frozen=True)
class Technique:
    label: str
    method: str
    structured: bool = False
    prune: dict[str, Any] = field(default_factory=dict)
    case: dict[str, Any] = field(default_factory=dict)
    finetune: bool = True


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    suite_file: Path
    finetune: dict[str, Any]
    unstructured: tuple[float, ...]  # fractions of weights
    structured: tuple[float, ...]  # fractions of neurons / channels
    techniques: tuple[Technique, ...]
    # the student's sparsity is a fraction of parameters: matched to the structured rows
    student: dict[float, float] = field(default_factory=dict)


STRUCTURED_TECHNIQUES = (
    Technique("structured (L2)", "structured", structured=True),
    Technique("structured-taylor", "structured-taylor", structured=True),
    Technique("lrp", "lrp", structured=True),
    Technique("energy-aware", "energy-aware", structured=True),
    Technique("group lasso", "group-lasso", structured=True),
)

BENCHES = (
    Bench(
        "digits",
        "Digits MLP (64-256-128-10)",
        Path("suites/digits_mlp.toml"),
        {"epochs": 10, "lr": 3e-3, "scheduler": "cosine"},
        (0.8, 0.9, 0.95),
        (0.3, 0.5, 0.6),  # about 50 / 75 / 84 % of the parameters
        (
            Technique("magnitude (global)", "magnitude"),
            Technique("magnitude (uniform per layer)", "magnitude", prune={"scope": "layer"}),
            Technique(
                "magnitude (uniform), sparse CSR",
                "magnitude",
                prune={"scope": "layer"},
                case={"deploy": "csr"},
            ),
            Technique(
                "magnitude, iterative x3", "magnitude", prune={"schedule": "iterative", "steps": 3}
            ),
            Technique("magnitude, AGP x3", "magnitude", prune={"schedule": "agp", "steps": 3}),
            Technique("magnitude + distillation", "magnitude", case={"distill": {}}),
            Technique(
                "magnitude (global, max_layer 0.98)",
                "magnitude",
                prune={"args": {"max_layer": 0.98}},
            ),
            Technique("taylor", "taylor"),
            Technique("taylor (max_layer 0.98)", "taylor", prune={"args": {"max_layer": 0.98}}),
            Technique("snip (at init)", "snip", finetune=False),
            Technique("obd", "obd"),
            Technique("obd (max_layer 0.98)", "obd", prune={"args": {"max_layer": 0.98}}),
            Technique("obs (layer-wise)", "obs"),
            Technique("l1 regularization", "l1"),
            Technique("l2 regularization", "l2"),
            Technique("auto (params budget)", "auto"),
            Technique("auto (energy budget)", "auto", prune={"args": {"budget": "energy"}}),
            *STRUCTURED_TECHNIQUES,
            Technique("student (distilled)", "student", structured=True, finetune=False),
        ),
        student={0.3: 0.5, 0.5: 0.75, 0.6: 0.84},
    ),
    Bench(
        "mnist1d",
        "MNIST-1D CNN (3 x 32 channels)",
        Path("suites/mnist1d_cnn.toml"),
        {"epochs": 20, "lr": 5e-3, "batch_size": 100, "scheduler": "onecycle"},
        (),
        (0.3, 0.5, 0.7),
        STRUCTURED_TECHNIQUES,
    ),
)


def _suite(bench: Bench, folds: int, cases: list[dict[str, Any]]) -> Any:
    data = tomllib.loads(bench.suite_file.read_text())
    for key in ("edge", "gate"):
        data.pop(key, None)
    data["cv"] = {"folds": folds}
    data["checks"] = {"properties": False, "differential": False}
    data["latency"] = {"batch": 256, "warmup": 5, "repeats": 30}
    data["case"] = cases
    return suite_from_dict(data, str(bench.suite_file))


def _case(bench: Bench, t: Technique, sparsity: float) -> dict[str, Any]:
    prune = {"method": t.method, "sparsity": sparsity, **t.prune}
    if t.method == "student":
        prune["sparsity"] = bench.student[sparsity]
    case: dict[str, Any] = {"name": f"{t.method}-{sparsity}", "prune": prune, **t.case}
    if t.finetune:
        case["finetune"] = bench.finetune
    return case


def _row(t: Technique, sparsity: float, r: CaseResult) -> dict[str, Any]:
    m = r.metrics
    return {
        "technique": t.label,
        "structured": t.structured,
        "sparsity": sparsity,
        "f1": m["pruned.f1_macro"].mean,
        "f1_std": m["pruned.f1_macro"].std,
        "dense_f1": m["dense.f1_macro"].mean,
        "removed": m["param_reduction"].mean,
        "params": m["pruned.nonzero_params"].mean,
        "flops": m["pruned.flops_nonzero"].mean,
        "latency_ms": m["pruned.latency_ms_p50"].mean,
        "speedup": m["speedup"].mean,
        "speedup_batch": m["speedup_batch"].mean,
        "energy_nj": m["pruned.energy_nj"].mean,
        "dense_energy_nj": m["dense.energy_nj"].mean,
        "seconds": r.seconds,
    }


def _markdown(sections: list[tuple[Bench, list[dict[str, Any]]]], folds: int) -> str:
    lines = [
        "# Results: every technique on the reference models",
        "",
        f"Generated by `nox -s results` ({folds}-fold cross-validation, the same folds and dense "
        "models for every technique of a bench). Sparsity: fraction of weights (unstructured), "
        "of neurons / channels (structured) or, for the student, of parameters. Speedup: dense "
        "over pruned latency p50 measured in the same run, at batch 1 and 256. Energy: the "
        "analytic estimate of one inference (`harness.energy`, 45 nm table).",
    ]
    for bench, rows in sections:
        if not rows:
            continue
        r0 = rows[0]
        lines += [
            "",
            f"## {bench.title}",
            "",
            f"Dense: macro-F1 {r0['dense_f1']:.4f}, est. energy {r0['dense_energy_nj']:,.0f} nJ.",
            "",
            "| technique | sparsity | macro-F1 (mean ± std) | params removed | non-zero params "
            "| FLOPs (non-zero) | latency p50 (ms) | speedup b1 | speedup b256 "
            "| est. energy (nJ) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['technique']} | {r['sparsity']:.2f} | {r['f1']:.4f} ± {r['f1_std']:.4f} "
                f"| {r['removed']:.1%} | {r['params']:,.0f} | {r['flops']:,.0f} "
                f"| {r['latency_ms']:.4f} | {r['speedup']:.2f} | {r['speedup_batch']:.2f} "
                f"| {r['energy_nj']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


MARKERS = "osD^v<>ph*"


def _plot(sections: list[tuple[Bench, list[dict[str, Any]]]], path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    # every bench in full, and the top of the digits range again: most techniques sit there
    panels = [(b, rows, None) for b, rows in sections if rows]
    if panels and panels[0][0].name == "digits":
        dense = panels[0][1][0]["dense_f1"]
        panels.insert(1, (panels[0][0], panels[0][1], (dense - 0.04, dense + 0.012)))
    fig = Figure(figsize=(10, 5.5 * len(panels)))
    palette = colormaps["tab20"]
    for k, (bench, rows, ylim) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        labels = list(dict.fromkeys(r["technique"] for r in rows))
        for i, label in enumerate(labels):
            mine = [r for r in rows if r["technique"] == label]
            pts = sorted((r["removed"], r["f1"], r["f1_std"]) for r in mine)
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(
                xs,
                ys,
                yerr=es,
                marker=MARKERS[(i + i // 20) % len(MARKERS)],  # unique with the colour
                ls="--" if mine[0]["structured"] else "-",
                capsize=2,
                label=label,
                color=palette(i % 20),
            )
        ax.axhline(rows[0]["dense_f1"], color="k", lw=0.8, ls=":", label="dense")
        ax.set_xlabel("fraction of parameters removed (dashed: structured)")
        ax.set_ylabel("macro-F1 (mean ± std over folds)")
        title = f"{bench.title}: quality against compression"
        if ylim is not None:
            ax.set_ylim(*ylim)
            title += " (top of the range)"
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=2, loc="lower left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="methods to run (default: all)")
    parser.add_argument(
        "--bench", nargs="*", choices=[b.name for b in BENCHES], help="benches (default: all)"
    )
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="re-render results.md and results.png from DIR/results.json without running",
    )
    args = parser.parse_args()
    raw = args.docs / "results.json"
    if args.plot_only:
        stored = json.loads(raw.read_text(encoding="utf-8"))
        by_name = {b.name: b for b in BENCHES}
        sections = [(by_name[name], rows) for name, rows in stored["benches"].items()]
        _write(sections, stored["folds"], args.docs)
        return
    sections: list[tuple[Bench, list[dict[str, Any]]]] = []
    start = time.perf_counter()
    cache = DenseCache()  # one dense model per benchmark and fold, for every technique
    for bench in BENCHES:
        if args.bench and bench.name not in args.bench:
            continue
        rows: list[dict[str, Any]] = []
        sections.append((bench, rows))
        for t in bench.techniques:
            if args.only and t.method not in args.only:
                continue
            grid = bench.structured if t.structured else bench.unstructured
            suite = _suite(bench, args.folds, [_case(bench, t, s) for s in grid])
            for s, case in zip(grid, suite.cases, strict=True):
                rows.append(_row(t, s, run_case(suite, case, cache=cache)))
                r = rows[-1]
                print(
                    f"{bench.name:8s} {t.label:34s} {s:.2f} f1={r['f1']:.4f}±{r['f1_std']:.4f} "
                    f"removed={r['removed']:.3f} speedup={r['speedup']:.2f}/"
                    f"{r['speedup_batch']:.2f} ({r['seconds']:.1f}s)",
                    flush=True,
                )
    args.docs.mkdir(parents=True, exist_ok=True)
    data = {"folds": args.folds, "benches": {b.name: rows for b, rows in sections}}
    raw.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    _write(sections, args.folds, args.docs)
    print(f"wrote {args.docs}/results.md, .png, .json in {time.perf_counter() - start:.0f} s")


def _write(sections: list[tuple[Bench, list[dict[str, Any]]]], folds: int, docs: Path) -> None:
    (docs / "results.md").write_text(_markdown(sections, folds), encoding="utf-8")
    _plot(sections, docs / "results.png")


if __name__ == "__main__":
    main()
