"""Calibrate the gate's policies: false alarms on pure noise, detection of injected regressions.

    python benchmarks/calibrate.py [--reruns N] [--docs DIR]

A reference case (digits MLP, global magnitude pruning with fine-tuning, 5 folds) is run once
with seed 0 as the baseline. Then:

* pure-noise reruns: the same case with seeds 1..N (same folds, other initialization, data
  order and fine-tuning) -- any failure is a false alarm;
* injected regressions, each with seeds 1..N: more sparsity (75 %, 80 %) without fine-tuning,
  and a fine-tuning learning rate far too high -- a failure is a detection; only reruns whose
  true drop of macro-F1 is at least 2 points count towards the detection rate.

Every policy judges the rule ``pruned.f1_macro = { max_drop = 0.01 }`` against the baseline. The
last lines are ``policy=<name> false_alarm_rate=<x> detection_rate=<y>``, the default policy
(``threshold``) last. With ``--docs DIR`` a markdown table and a plot go to DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from harness.baseline import Baseline
from harness.gate import evaluate
from harness.results import CaseResult
from harness.runner import DenseCache, run_case
from harness.spec import POLICIES, RuleSpec, SuiteSpec, suite_from_dict

SUITE = {
    "suite": {
        "name": "calibration",
        "dataset": "sklearn:digits",
        "model_args": {"hidden": [64]},
        "seed": 0,
    },
    "cv": {"folds": 5, "seed": 0},
    "train": {"epochs": 10, "lr": 3e-3},
    "latency": {"batch": 16, "warmup": 0, "repeats": 1},
    "case": [
        {
            "name": "noise",
            "prune": {"method": "magnitude", "sparsity": 0.7},
            "finetune": {"epochs": 3, "lr": 1e-3},
        },
        # moderate: about 2-3 and 5-6 points of macro-F1 below the baseline
        {"name": "sparsity-75-no-finetune", "prune": {"method": "magnitude", "sparsity": 0.75}},
        {"name": "sparsity-80-no-finetune", "prune": {"method": "magnitude", "sparsity": 0.8}},
        {
            "name": "finetune-lr-too-high",
            "prune": {"method": "magnitude", "sparsity": 0.7},
            "finetune": {"epochs": 3, "lr": 0.3, "optimizer": "sgd"},
        },
    ],
}
METRIC = "pruned.f1_macro"
MARGIN = 0.01
DEFAULT_POLICY = "threshold"


_CACHE = DenseCache()  # dense models shared by every case of the same suite and seed


def _run(suite: SuiteSpec, case: str, seed: int) -> CaseResult:
    return run_case(dataclasses.replace(suite, seed=seed), suite.case(case), cache=_CACHE)


def _fails(result: CaseResult, baseline: Baseline, policy: str) -> bool:
    rule = RuleSpec(METRIC, max_drop=MARGIN, policy=policy)
    # the reruns differ from the baseline on purpose: compare as if the spec were the same
    same = dataclasses.replace(baseline, spec_hash=result.spec_hash)
    verdict = evaluate(result, same, (rule,))
    return not verdict.ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=30)
    parser.add_argument("--docs", type=Path, default=None)
    opts = parser.parse_args()
    start = time.perf_counter()
    suite = suite_from_dict(SUITE)
    base_result = _run(suite, "noise", 0)
    baseline = Baseline.from_result(base_result, threads=1)
    base_f1 = base_result.metrics[METRIC].mean
    noise = [_run(suite, "noise", s) for s in range(1, opts.reruns + 1)]
    injected = [
        _run(suite, case, s)
        for case in ("sparsity-75-no-finetune", "sparsity-80-no-finetune", "finetune-lr-too-high")
        for s in range(1, opts.reruns + 1)
    ]
    drops = [base_f1 - r.metrics[METRIC].mean for r in injected]
    real = [r for r, d in zip(injected, drops, strict=True) if d >= 0.02]
    rows = []
    for policy in sorted(POLICIES, key=lambda p: p == DEFAULT_POLICY):
        false_alarms = sum(_fails(r, baseline, policy) for r in noise) / len(noise)
        detected = sum(_fails(r, baseline, policy) for r in real) / len(real) if real else 0.0
        rows.append((policy, false_alarms, detected))
    noise_drops = [base_f1 - r.metrics[METRIC].mean for r in noise]
    print(
        f"baseline {METRIC} = {base_f1:.4f}; {len(noise)} noise reruns (drop "
        f"{min(noise_drops):+.4f} .. {max(noise_drops):+.4f}); {len(injected)} injected "
        f"regressions, {len(real)} with a drop >= 0.02 (max {max(drops):.3f}); "
        f"{time.perf_counter() - start:.0f} s"
    )
    if opts.docs is not None:
        _write_docs(opts.docs, rows, noise_drops, drops, len(noise), len(real))
    for policy, fa, det in rows:
        print(f"policy={policy} false_alarm_rate={fa:.3f} detection_rate={det:.3f}")


def _write_docs(
    folder: Path,
    rows: list[tuple[str, float, float]],
    noise_drops: list[float],
    drops: list[float],
    n_noise: int,
    n_real: int,
) -> None:
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_axes((0.1, 0.17, 0.85, 0.7))
    ax.hist([noise_drops, drops], bins=30, label=["pure-noise reruns", "injected regressions"])
    ax.axvline(MARGIN, color="black", linestyle="--", label=f"max_drop {MARGIN}")
    ax.set(xlabel=f"drop of {METRIC} vs the baseline (mean over 5 folds)", ylabel="reruns")
    ax.set_title("Gate calibration (digits MLP, magnitude 70 %)", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(folder / "calibration.png", dpi=90)
    lines = [
        "| policy | false-alarm rate | detection rate (drops >= 2 points) |",
        "|---|---|---|",
        *[f"| `{p}` | {fa:.3f} | {det:.3f} |" for p, fa, det in rows],
    ]
    (folder / "calibration-table.md").write_text(
        f"{n_noise} pure-noise reruns, {n_real} injected regressions with a drop of at least "
        f"2 points of macro-F1.\n\n" + "\n".join(lines) + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
