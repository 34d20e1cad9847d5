"""Calibrate the gate across hardware: false alarms and detection when the baseline was recorded
under other numeric code paths (what a second CPU gives).

    python benchmarks/calibrate_hw.py [--seeds N] [--cnn-seeds M] [--docs DIR]

One machine stands in for several CPUs by capping the code paths a CPU would pick:

* ``avx2``: this machine's own paths (nothing capped); the baseline is recorded here;
* ``aten-default``: ATen's vectorized kernels without AVX2 (``ATEN_CPU_CAPABILITY=default``);
* ``onednn-sse41``: oneDNN capped at SSE4.1 (``ONEDNN_MAX_CPU_ISA=SSE41``);
* ``mkl-compatible``: MKL's compatible branch (``MKL_CBWR=COMPATIBLE``);
* ``old-cpu``: all three at once.

Each path is a separate process (the variables are read when torch starts). **Without portable
numerics** (native mode) the capped variables take effect; **with portable numerics** the
harness pins over them, as it pins over a CPU's own choice. Two cases stand in for the
reference suites: a digits MLP (64 units, magnitude 70 %, fine-tuned) and a 1-D CNN on MNIST-1D
(structured 30 % of the channels, fine-tuned), 5 folds each, seeds 1..N.

* Pure hardware noise: the same case and seed on another path; any failure is a false alarm.
* Injected regressions on another path (the MLP without fine-tuning at 75 % / 80 % and with a
  learning rate far too high; the CNN without fine-tuning at 30 % / 50 %): a failure is a
  detection; only reruns whose true drop of macro-F1 is at least 2 points count.

The rule under test is ``pruned.f1_macro = { max_drop = 0.01 }`` against the ``avx2`` baseline
of the same seed, judged by each policy. The last lines are
``numerics=<mode> policy=<name> cross_hw_false_alarm_rate=<x> cross_hw_detection_rate=<y>``,
the gate's cross-hardware policy (``harness.gate.CROSS_HARDWARE_POLICY``) last.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import calibrate

from harness import numerics
from harness.baseline import Baseline
from harness.gate import CROSS_HARDWARE_ALPHA, CROSS_HARDWARE_POLICY, Rule
from harness.results import CaseResult
from harness.spec import POLICIES, RuleSpec

PATHS: dict[str, dict[str, str]] = {
    "avx2": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "old-cpu": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "DNNL_MAX_CPU_ISA": "SSE41",
        "MKL_CBWR": "COMPATIBLE",
    },
}
PORTABLE_PATHS = ("avx2", "old-cpu")
# the seed-noise calibration's case (benchmarks/calibrate.py), without the per-fold checks
MLP: dict[str, Any] = {
    **calibrate.SUITE,
    "suite": {**calibrate.SUITE["suite"], "name": "hw-mlp"},
    "checks": {"properties": False, "differential": False},
}
CNN: dict[str, Any] = {
    "suite": {
        "name": "hw-cnn",
        "dataset": "mnist1d",
        "model": "harness.models:cnn1d",
        "model_args": {"channels": [16, 16]},
    },
    "cv": {"folds": 5, "seed": 0},
    "train": {"epochs": 6, "lr": 1e-2, "batch_size": 100, "scheduler": "onecycle"},
    "checks": {"properties": False, "differential": False},
    "latency": {"batch": 16, "warmup": 0, "repeats": 1},
    "case": [
        {
            "name": "noise",
            "prune": {"method": "structured", "sparsity": 0.3},
            "finetune": {"epochs": 3, "lr": 5e-3, "batch_size": 100},
        },
        {"name": "structured-30-no-finetune", "prune": {"method": "structured", "sparsity": 0.3}},
        {"name": "structured-50-no-finetune", "prune": {"method": "structured", "sparsity": 0.5}},
    ],
}
METRIC = "pruned.f1_macro"
MARGIN = 0.01
CLASS_RULE = "pruned.recall.class_*"  # also reported: any class of the case failing 0.02


def run_all(jobs: list[tuple[dict[str, Any], str, int]]) -> list[dict[str, Any]]:
    """In a child process: run every (suite, case, seed); results as dicts."""
    from harness.runner import DenseCache, run_case
    from harness.spec import suite_from_dict

    cache = DenseCache()  # shared by the cases of a suite and seed

    out, suites = [], {}
    for data, case, seed in jobs:
        name = data["suite"]["name"]
        suite = suites[name] = suites.get(name) or suite_from_dict(data)
        seeded = dataclasses.replace(suite, seed=seed)
        out.append(run_case(seeded, suite.case(case), cache=cache).to_dict())
    return out


def _jobs(seeds: int, cnn_seeds: int) -> list[tuple[dict[str, Any], str, int]]:
    return [
        (suite, case["name"], seed)
        for suite, n in ((MLP, seeds), (CNN, cnn_seeds))
        for case in suite["case"]
        for seed in range(1, n + 1)
    ]


def _base_env(mode: str, path: str) -> dict[str, str]:
    """This process's environment with ``path`` standing in for the CPU's own choice: in
    portable mode marked as the harness's, so the pins replace it as they would on that CPU."""
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINS}
    env.pop(numerics.ENV_PINNED, None)
    env.update(PATHS[path])
    if mode == "portable" and PATHS[path]:
        env[numerics.ENV_PINNED] = ",".join(PATHS[path])
    return env


def _run_path(mode: str, path: str, jobs: list[Any]) -> list[CaseResult]:
    import calibrate_hw  # this file as a module the child can import (not __main__)

    child = numerics.Child(mode, base=_base_env(mode, path))
    try:
        return [CaseResult.from_dict(d) for d in child.call(calibrate_hw.run_all, jobs)]
    finally:
        child.close()


def _parallel(tasks: list[tuple[str, str]], jobs: list[Any]) -> dict[tuple[str, str], Any]:
    """Run the paths two at a time (one process per core)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        futures = {t: pool.submit(_run_path, *t, jobs) for t in tasks}
        return {t: f.result() for t, f in futures.items()}


def _fails(
    result: CaseResult,
    baseline: Baseline,
    policy: str,
    metric: str = METRIC,
    margin: float = MARGIN,
) -> bool:
    spec = RuleSpec(metric, max_drop=margin, policy=policy, alpha=CROSS_HARDWARE_ALPHA)
    same = dataclasses.replace(baseline, spec_hash=result.spec_hash)  # other case, same folds
    return any(
        rule.check(result, same, hardware_note="").passed is False
        for rule in Rule.expand(spec, len(result.class_names))
    )


def _pairs(
    results: dict[tuple[str, str], list[CaseResult]], mode: str
) -> Iterator[tuple[CaseResult, Baseline, bool]]:
    """(rerun on another path, baseline of the same suite and seed, is it injected)."""
    baselines = {
        (r.suite, _seed(r)): Baseline.from_result(r, threads=1)
        for r in results[(mode, "avx2")]
        if r.case == "noise"
    }
    for (m, path), runs in results.items():
        if m != mode or path == "avx2":
            continue
        for r in runs:
            yield r, baselines[(r.suite, _seed(r))], r.case != "noise"


def _seed(result: CaseResult) -> int:
    return int(result.env.get("seed", -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", "--reruns", type=int, default=10, help="seeds of the MLP case (--reruns too)"
    )
    parser.add_argument("--cnn-seeds", type=int, default=4, help="seeds of the CNN case")
    parser.add_argument("--docs", type=Path, default=None)
    opts = parser.parse_args()
    start = time.perf_counter()
    jobs = _jobs(opts.seeds, opts.cnn_seeds)
    tasks = [("native", p) for p in PATHS] + [("portable", p) for p in PORTABLE_PATHS]
    raw = _parallel(tasks, jobs)
    results: dict[tuple[str, str], list[CaseResult]] = {}
    for task, runs in raw.items():
        for (data, case, seed), r in zip(jobs, runs, strict=True):
            assert r.case == case and r.suite == data["suite"]["name"]
            r.env["seed"] = seed
        results[task] = runs
    lines, table = [], []
    order = sorted({*POLICIES, CROSS_HARDWARE_POLICY}, key=lambda p: p == CROSS_HARDWARE_POLICY)
    for mode in ("native", "portable"):
        pairs = list(_pairs(results, mode))
        noise = [(r, b) for r, b, injected in pairs if not injected]
        drops = [(b.value(METRIC) or 0.0) - (r.value(METRIC) or 0.0) for r, b, _ in pairs]
        real = [(r, b) for (r, b, inj), d in zip(pairs, drops, strict=True) if inj and d >= 0.02]
        noise_drops = [d for (_, _, inj), d in zip(pairs, drops, strict=True) if not inj]
        identical = sum(r.metrics[METRIC].folds == b.metrics[METRIC].folds for r, b in noise)
        lines.append(
            f"numerics={mode}: {len(noise)} hardware-noise reruns ({identical} bit-identical in "
            f"{METRIC}; drop {min(noise_drops):+.4f} .. {max(noise_drops):+.4f}), "
            f"{len(real)} injected regressions with a drop >= 0.02"
        )
        for policy in order:
            fa = sum(_fails(r, b, policy) for r, b in noise) / len(noise)
            det = sum(_fails(r, b, policy) for r, b in real) / len(real) if real else 0.0
            per_class = sum(_fails(r, b, policy, CLASS_RULE, 0.02) for r, b in noise) / len(noise)
            table.append((mode, policy, fa, det, per_class))
    print(f"{len(tasks)} processes, {len(jobs)} runs each, {time.perf_counter() - start:.0f} s")
    print("\n".join(lines))
    if opts.docs is not None:
        _write_docs(opts.docs, table, lines)
    for mode, policy, fa, det, per_class in table:
        print(
            f"numerics={mode} policy={policy} cross_hw_false_alarm_rate={fa:.3f} "
            f"cross_hw_detection_rate={det:.3f} per_class_false_alarm_rate={per_class:.3f}"
        )


def _write_docs(
    folder: Path, table: list[tuple[str, str, float, float, float]], lines: list[str]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        "| numerics | policy | false-alarm rate | detection rate (drops >= 2 points) "
        "| per-class false alarms (`recall.class_*`, 0.02) |",
        "|---|---|---|---|---|",
        *[
            f"| {m} | `{p}`{' (cross-hardware default)' if p == CROSS_HARDWARE_POLICY else ''} "
            f"| {fa:.3f} | {det:.3f} | {pc:.3f} |"
            for m, p, fa, det, pc in table
        ],
    ]
    (folder / "calibration-hw-table.md").write_text(
        "\n".join(f"- {line}" for line in lines) + "\n\n" + "\n".join(rows) + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
