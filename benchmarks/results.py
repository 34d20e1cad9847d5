"""Every technique x sparsity on the reference models: the results table and plot in docs/.

    python benchmarks/results.py [--docs DIR] [--folds K] [--only NAME ...] [--bench NAME ...]

``--bench`` alone reruns those benches and keeps the others' rows from DIR/results.json (each
bench's rows, and its same-run speedups, come from one run).

Four benches, each on its reference suite's dataset, model and dense training with 5-fold
cross-validation, edge sets and checks off (they do not change the quality figures):

- ``digits``: the digits MLP (suites/digits_mlp.toml), every registered technique at three
  sparsities, the same fine-tuning for every technique that fine-tunes (10 epochs, lr 3e-3,
  cosine), plus uniform magnitude served as sparse CSR (``deploy = "csr"``).
- ``oneshot``: the digits MLP again, magnitude, OBS, Wanda and SparseGPT one-shot (no
  fine-tuning) at 50 % unstructured and at 2:4, then 2:4 fine-tuned (5 epochs), and magnitude
  50 % deployed in ONNX Runtime and as int8, the comparison of the LLM pruning papers.
- ``tokens``: the same comparison on the token transformer (suites/tokens_transformer.toml,
  its linear layers; the classifier head stays dense), without the deployment rows.
- ``mnist1d``: the MNIST-1D CNN (suites/mnist1d_cnn.toml), every structured technique at three
  fractions of channels, fine-tuned as in that suite.

Writes DIR/results.json (every row, the raw figures; ``--plot-only`` re-renders the table and plot
from it), DIR/results.md (technique x sparsity -> macro-F1 mean +- std over folds, parameters
removed, non-zero parameters, FLOPs, latency, speedup at batch 1 and 256, estimated energy, and
which Pareto fronts the row is on: macro-F1 up against measured latency down, and against
estimated energy down, per bench, harness.fronts) and DIR/results.png (macro-F1 against the
fraction of parameters removed, one panel per bench, then macro-F1 against estimated energy with
its front). Speedups are same-run ratios; latencies are of the machine that ran this.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.fronts import pareto_front
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


def _oneshot(ignore: tuple[str, ...] = (), deploy: bool = True) -> tuple[Technique, ...]:
    """Magnitude, OBS, Wanda and SparseGPT as the LLM pruning papers compare them: one shot, no
    fine-tuning, at 50 % unstructured and at 2:4; then 2:4 fine-tuned, and the deployment
    runtimes (ONNX Runtime, int8) of magnitude 50 %."""
    args = {"args": {"ignore": list(ignore)}} if ignore else {}
    nm = {"pattern": "2:4", **args}
    rows = [
        Technique("magnitude (global)", "magnitude", prune=args, finetune=False),
        Technique(
            "magnitude (per layer)", "magnitude", prune={"scope": "layer", **args}, finetune=False
        ),
        Technique("obs (layer-wise)", "obs", prune=args, finetune=False),
        Technique("wanda", "wanda", prune=args, finetune=False),
        Technique("sparsegpt", "sparsegpt", prune=args, finetune=False),
        Technique("magnitude 2:4", "magnitude", prune=nm, finetune=False),
        Technique("wanda 2:4", "wanda", prune=nm, finetune=False),
        Technique("sparsegpt 2:4", "sparsegpt", prune=nm, finetune=False),
        Technique("magnitude 2:4 + fine-tune", "magnitude", prune=nm),
        Technique("wanda 2:4 + fine-tune", "wanda", prune=nm),
        Technique("sparsegpt 2:4 + fine-tune", "sparsegpt", prune=nm),
    ]
    if deploy:
        rows += [
            Technique(
                "magnitude, ONNX Runtime",
                "magnitude",
                prune=args,
                case={"deploy": "onnx"},
                finetune=False,
            ),
            Technique(
                "magnitude, int8", "magnitude", prune=args, case={"deploy": "int8"}, finetune=False
            ),
        ]
    return tuple(rows)


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
        "oneshot",
        "Digits MLP, one-shot at 50 % and 2:4 (fine-tuned only where marked)",
        Path("suites/digits_mlp.toml"),
        {"epochs": 5, "lr": 1e-3, "scheduler": "cosine"},
        (0.5,),
        (),
        _oneshot(),
    ),
    Bench(
        "tokens",
        "Token transformer (2 blocks, d 32), one-shot at 50 % and 2:4, head dense",
        Path("suites/tokens_transformer.toml"),
        {"epochs": 4, "lr": 2e-3},
        (0.5,),
        (),
        _oneshot(ignore=("head",), deploy=False),
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
        "latency_batch_ms": m["pruned.latency_batch_ms_p50"].mean,
        "speedup": m["speedup"].mean,
        "speedup_batch": m["speedup_batch"].mean,
        "energy_nj": m["pruned.energy_nj"].mean,
        "dense_energy_nj": m["dense.energy_nj"].mean,
        "seconds": r.seconds,
    }


def _latency_key(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The latency a bench's front is drawn on: at batch 256 where every row has it (compute
    dominates there, as it does for FLOPs), else at batch 1 (rows of an older results.json)."""
    if rows and all("latency_batch_ms" in r for r in rows):
        return "latency_batch_ms", "latency p50 at batch 256"
    return "latency_ms", "latency p50 at batch 1"


def fronts(rows: list[dict[str, Any]]) -> dict[str, set[int]]:
    """Per front (``latency``, ``energy``), the indices of the rows on it: the rows whose
    (macro-F1, cost) no other row beats on both (harness.fronts.pareto_front)."""
    latency, _ = _latency_key(rows)
    return {
        name: set(pareto_front([(r["f1"], r[key]) for r in rows]))
        for name, key in (("latency", latency), ("energy", "energy_nj"))
    }


def _markdown(sections: list[tuple[Bench, list[dict[str, Any]]]], folds: int) -> str:
    lines = [
        "# Results: every technique on the reference models",
        "",
        f"Generated by `nox -s results` ({folds}-fold cross-validation, the same folds and dense "
        "models for every technique of a bench). Sparsity: fraction of weights (unstructured), "
        "of neurons / channels (structured) or, for the student, of parameters. Speedup: dense "
        "over pruned latency p50 measured in the same run, at batch 1 and 256. Energy: the "
        "analytic estimate of one inference (`harness.energy`, 45 nm table). Front: the row is "
        "on the bench's Pareto front of macro-F1 (mean, higher is better) against measured "
        "latency, or against estimated energy (lower is better): no other row of the bench has "
        "both a macro-F1 at least as high and a cost at most as low, one of them strictly "
        "(`harness.fronts`). The latency front is of the machine that ran this.",
    ]
    for bench, rows in sections:
        if not rows:
            continue
        r0 = rows[0]
        on = fronts(rows)
        _, latency = _latency_key(rows)
        lines += [
            "",
            f"## {bench.title}",
            "",
            f"Dense: macro-F1 {r0['dense_f1']:.4f}, est. energy {r0['dense_energy_nj']:,.0f} nJ. "
            f"On the fronts: {len(on['latency'])} row(s) against {latency}, "
            f"{len(on['energy'])} against estimated energy.",
            "",
            "| technique | sparsity | macro-F1 (mean ± std) | params removed | non-zero params "
            "| FLOPs (non-zero) | latency p50 (ms) | speedup b1 | speedup b256 "
            "| est. energy (nJ) | front |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for i, r in enumerate(rows):
            front = ", ".join(name for name in ("latency", "energy") if i in on[name])
            lines.append(
                f"| {r['technique']} | {r['sparsity']:.2f} | {r['f1']:.4f} ± {r['f1_std']:.4f} "
                f"| {r['removed']:.1%} | {r['params']:,.0f} | {r['flops']:,.0f} "
                f"| {r['latency_ms']:.4f} | {r['speedup']:.2f} | {r['speedup_batch']:.2f} "
                f"| {r['energy_nj']:,.0f} | {front} |"
            )
        lines += _comparison(rows)
    return "\n".join(lines) + "\n"


def _comparison(rows: list[dict[str, Any]]) -> list[str]:
    """What a one-shot bench says, computed from its rows: each one-shot method's macro-F1
    against magnitude's at 50 % and at 2:4, and what fine-tuning and the runtimes change."""
    f1 = {r["technique"]: r for r in rows}
    if "wanda" not in f1 or "magnitude (global)" not in f1:
        return []

    def vs(label: str, ref: str) -> str:
        d = f1[label]["f1"] - f1[ref]["f1"]
        return f"{label} {f1[label]['f1']:.4f} ({d:+.4f})"

    said = ["", "What these rows say (computed from them):", ""]
    at50 = [
        t for t in ("magnitude (per layer)", "obs (layer-wise)", "wanda", "sparsegpt") if t in f1
    ]
    said.append(
        f"- 50 % unstructured, one shot, against magnitude (global) "
        f"{f1['magnitude (global)']['f1']:.4f}: "
        + "; ".join(vs(t, "magnitude (global)") for t in at50)
        + "."
    )
    if "magnitude 2:4" in f1:
        at24 = [t for t in ("wanda 2:4", "sparsegpt 2:4") if t in f1]
        said.append(
            f"- 2:4, one shot, against magnitude 2:4 {f1['magnitude 2:4']['f1']:.4f}: "
            + "; ".join(vs(t, "magnitude 2:4") for t in at24)
            + f"; 2:4 against 50 % unstructured costs magnitude "
            f"{f1['magnitude 2:4']['f1'] - f1['magnitude (global)']['f1']:+.4f}."
        )
        tuned = [
            t
            for t in (
                "magnitude 2:4 + fine-tune",
                "wanda 2:4 + fine-tune",
                "sparsegpt 2:4 + fine-tune",
            )
            if t in f1
        ]
        if tuned:
            said.append(
                "- 2:4 fine-tuned, against the same method one shot: "
                + "; ".join(vs(t, t.removesuffix(" + fine-tune")) for t in tuned)
                + f" (dense {rows[0]['dense_f1']:.4f})."
            )
    runtimes = [t for t in ("magnitude, ONNX Runtime", "magnitude, int8") if t in f1]
    if runtimes:
        said.append(
            "- Deployed (magnitude 50 %, speedup = the dense model in the same runtime over the "
            "pruned one, batch 256): "
            + "; ".join(
                f"{t.removeprefix('magnitude, ')} macro-F1 {f1[t]['f1']:.4f}, speedup "
                f"{f1[t]['speedup_batch']:.2f}x"
                for t in runtimes
            )
            + f"; torch dense kernels {f1['magnitude (global)']['speedup_batch']:.2f}x."
        )
    return said


MARKERS = "osD^v<>ph*"


def _plot(sections: list[tuple[Bench, list[dict[str, Any]]]], path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    # every bench in full, and the top of the digits range again: most techniques sit there
    panels = [(b, rows, None) for b, rows in sections if rows]
    if panels and panels[0][0].name == "digits":
        dense = panels[0][1][0]["dense_f1"]
        panels.insert(1, (panels[0][0], panels[0][1], (dense - 0.04, dense + 0.012)))
    energy = [(b, rows) for b, rows in sections if rows]
    n = len(panels) + len(energy)
    fig = Figure(figsize=(10, 5.5 * n))
    palette = colormaps["tab20"]
    for k, (bench, rows) in enumerate(energy):
        _energy_panel(fig.add_subplot(n, 1, len(panels) + k + 1), bench, rows)
    for k, (bench, rows, ylim) in enumerate(panels):
        ax = fig.add_subplot(n, 1, k + 1)
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


def _energy_panel(ax: Any, bench: Bench, rows: list[dict[str, Any]]) -> None:
    """Macro-F1 against estimated energy, every row in grey, the front as a labelled step."""
    on = sorted(fronts(rows)["energy"], key=lambda i: rows[i]["energy_nj"])
    ax.scatter([r["energy_nj"] for r in rows], [r["f1"] for r in rows], s=12, color="0.7")
    xs, ys = [rows[i]["energy_nj"] for i in on], [rows[i]["f1"] for i in on]
    ax.step(xs, ys, where="post", color="C3", marker="o", label="Pareto front")
    for i in on:
        r = rows[i]
        ax.annotate(
            f"{r['technique']} {r['sparsity']:.2f}",
            (r["energy_nj"], r["f1"]),
            fontsize=6,
            xytext=(3, -8),
            textcoords="offset points",
        )
    ax.axhline(rows[0]["dense_f1"], color="k", lw=0.8, ls=":", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("estimated energy of one inference (nJ, log scale)")
    ax.set_ylabel("macro-F1 (mean over folds)")
    ax.set_title(f"{bench.title}: the front of macro-F1 against estimated energy")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


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
    kept: dict[str, list[dict[str, Any]]] = {}
    if args.bench and not args.only and raw.exists():  # the other benches as stored
        stored = json.loads(raw.read_text(encoding="utf-8"))
        if stored["folds"] == args.folds:
            kept = {n: rows for n, rows in stored["benches"].items() if n not in args.bench}
    start = time.perf_counter()
    cache = DenseCache()  # one dense model per benchmark and fold, for every technique
    for bench in BENCHES:
        if args.bench and bench.name not in args.bench:
            if bench.name in kept:
                sections.append((bench, kept[bench.name]))
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
