"""Derive gate tolerances from the noise floor: rerun every case with other seeds (same folds)
and measure how far each gated metric moves when nothing is wrong.

    python benchmarks/tolerances.py [SUITE...] [--seeds N] [--baselines DIR] [--out FILE]

A rerun with another seed (other initialization, data order, fine-tuning; the same folds) is the
largest change a benign cause makes: another CPU's rounding, a torch upgrade or a refactor that
reorders floating-point operations perturbs training at most like a new seed does. For each
case, the baseline in ``baselines/`` is seed 0 and seeds 1..N are rerun here. For every rule with
``max_drop`` (``class_*`` expanded to every class):

* against the baseline: ``s`` = standard deviation of the case's mean over the N + 1 seeds; the
  rule needs ``max_drop >= 3 s`` to stay quiet when nothing changed;
* against the dense model (``vs_dense.``): the pruned model's worsening ``g`` over the seeds; the
  rule needs ``max_drop >= mean(g) + 3 s(g)``.

For ``class_*`` rules the standard deviations are pooled over the classes (root mean square) and
the largest class's mean is used. Each need is rounded up to 0.005. The table lists, per suite
and rule key, the tolerance written in the suite, the derived one and the cases that need most.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import numerics
from harness.baseline import BaselineStore
from harness.metricnames import Direction, rule_target
from harness.results import CaseResult
from harness.spec import SuiteSpec, load_suite

STEP = 0.005
K = 3.0


def run_seed(source: str, seed: int) -> list[dict[str, Any]]:
    """In a child process: every case of the suite at ``seed``, with the suite's folds."""
    from harness.runner import DenseCache, run_case

    cache = DenseCache()
    suite = load_suite(source)
    suite = dataclasses.replace(suite, seed=seed, fold_seed=suite.cv_seed)
    return [run_case(suite, case, cache=cache).to_dict() for case in suite.cases]


def _rerun(source: str, seeds: list[int]) -> dict[int, list[CaseResult]]:
    import tolerances  # this file as a module the child can import

    def one_child(chunk: list[int]) -> dict[int, list[CaseResult]]:
        child = numerics.Child(numerics.current().requested)
        try:
            return {
                s: [CaseResult.from_dict(d) for d in child.call(tolerances.run_seed, source, s)]
                for s in chunk
            }
        finally:
            child.close()

    workers = max(1, min(2, os.cpu_count() or 1, len(seeds)))
    chunks = [seeds[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        out: dict[int, list[CaseResult]] = {}
        for part in pool.map(one_child, chunks):
            out.update(part)
    return out


def _up(x: float) -> float:
    return math.ceil(round(x / STEP, 6)) * STEP


def derive(suite: SuiteSpec, runs: dict[int, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Per rule key: the written and the derived tolerance. ``runs[case][metric]`` -> one mean
    per seed (seed 0 first)."""
    rows = []
    keys: dict[str, Any] = {}
    for case in suite.cases:
        for rule in suite.rules(case):
            if rule.max_drop is not None:
                keys.setdefault(rule.metric, {})[case.name] = rule.max_drop
    for key, written in keys.items():
        ref, vs_dense = rule_target(key)
        sign = 1.0 if ref.direction is Direction.HIGHER else -1.0
        need_by_case = {}
        for case_name in written:
            per_seed = runs[case_name]
            names = sorted(
                n for n in per_seed if _matches(n, ref.name if "class_*" not in key else key)
            )
            if vs_dense and "class_*" in key:
                names = sorted(n for n in per_seed if _matches(n, "pruned." + key[9:]))
            if not names:
                continue
            means, sds = [], []
            for name in names:
                if vs_dense:
                    dense = per_seed["dense." + name.split(".", 1)[1]]
                    gaps = [sign * (d - p) for d, p in zip(dense, per_seed[name], strict=True)]
                    means.append(statistics.fmean(gaps))
                    sds.append(statistics.stdev(gaps))
                else:
                    means.append(0.0)
                    sds.append(statistics.stdev(per_seed[name]))
            pooled = math.sqrt(statistics.fmean(s * s for s in sds))
            need_by_case[case_name] = max(means) + K * pooled
        if not need_by_case:
            continue
        worst = max(need_by_case, key=lambda c: need_by_case[c])
        rows.append(
            {
                "suite": suite.name,
                "rule": key,
                "written": sorted(set(written.values())),
                "derived": _up(max(need_by_case.values())),
                "need": need_by_case,
                "worst": worst,
                "below": sorted(c for c, n in need_by_case.items() if written[c] < _up(n)),
            }
        )
    return rows


def _matches(name: str, pattern: str) -> bool:
    if "class_*" not in pattern:
        return name == pattern
    head, tail = pattern.split("class_*", 1)
    return name.startswith(head + "class_") and name.endswith(tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", type=Path)
    parser.add_argument("--seeds", type=int, default=3, help="reruns per case (seeds 1..N)")
    parser.add_argument("--baselines", type=Path, default=Path("baselines"))
    parser.add_argument("--out", type=Path, default=None, help="write the table (markdown)")
    opts = parser.parse_args()
    start = time.perf_counter()
    store = BaselineStore(opts.baselines)
    rows: list[dict[str, Any]] = []
    for path in opts.suites or sorted(Path("suites").glob("*.toml")):
        suite = load_suite(path)
        reruns = _rerun(str(path), list(range(1, opts.seeds + 1)))
        runs: dict[str, dict[str, list[float]]] = defaultdict(dict)
        for case in suite.cases:
            baseline = store.load(suite.name, case.name)
            if baseline is None:
                raise SystemExit(f"{path}: case {case.name} has no baseline (seed 0)")
            results = [reruns[s][i] for s in sorted(reruns) for i in [_index(suite, case.name)]]
            for name, summary in baseline.metrics.items():
                runs[case.name][name] = [summary.mean] + [
                    r.metrics[name].mean for r in results if name in r.metrics
                ]
        rows += derive(suite, runs)
        print(f"{path}: {len(suite.cases)} cases x {opts.seeds} seeds", flush=True)
    lines = [
        f"{opts.seeds} reruns per case (seeds 1..{opts.seeds}, the suite's folds) beside the "
        f"baseline's seed 0; need = {K:g} sd (vs baseline) or mean + {K:g} sd of the worsening "
        f"(vs dense), rounded up to {STEP:g}.",
        "",
        "| suite | rule | written | derived | case that needs most | cases the written value "
        "does not cover |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        written = " / ".join(f"{w:g}" for w in r["written"])
        below = ", ".join(f"{c} ({_up(r['need'][c]):.3f})" for c in r["below"]) or "-"
        lines.append(
            f"| {r['suite']} | `{r['rule']}` | {written} | {r['derived']:.3f} | "
            f"{r['worst']} ({r['need'][r['worst']]:.4f}) | {below} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    print(f"{time.perf_counter() - start:.0f} s")
    if opts.out is not None:
        opts.out.write_text(text, encoding="utf-8")


def _index(suite: SuiteSpec, name: str) -> int:
    return [c.name for c in suite.cases].index(name)


if __name__ == "__main__":
    main()
