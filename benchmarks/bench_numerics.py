"""What portable numerics cost: training time and latency, native / pinned, as ratios in one run.

    python benchmarks/bench_numerics.py [--rounds N] [--out FILE]

Two child processes, one per numerics mode (``harness.numerics.Child``), take turns on the same
workloads, ``--rounds`` times each (median): one fold of the reference models' dense training
(the digits MLP 256-128, 10 epochs; the MNIST-1D CNN 32-32-32, 3 epochs), a wide MLP (1024-1024)
where matrix products dominate, and the latency of each trained model at batch 1 and 256. A
ratio above 1 means the pinned kernels are slower. Latency in the gate is measured natively
(``harness.runner.measure_speed``), so its ratio is what a pinned process would have measured.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from harness import numerics

WORKLOADS: dict[str, dict[str, Any]] = {
    "digits MLP 256-128": {
        "dataset": "sklearn:digits",
        "model": "harness.models:mlp",
        "model_args": {"hidden": [256, 128]},
        "train": {"epochs": 10, "lr": 2e-3},
    },
    "MNIST-1D CNN 32-32-32": {
        "dataset": "mnist1d",
        "model": "harness.models:cnn1d",
        "model_args": {"channels": [32, 32, 32]},
        "train": {"epochs": 3, "lr": 1e-2, "batch_size": 100, "scheduler": "onecycle"},
    },
    "wide MLP 1024-1024": {
        "dataset": "sklearn:digits",
        "model": "harness.models:mlp",
        "model_args": {"hidden": [1024, 1024]},
        "train": {"epochs": 2, "lr": 1e-3},
    },
}


def workload(name: str) -> dict[str, float]:
    """In a child: train one fold's dense model, then time it (seconds, milliseconds)."""
    import torch

    from harness import metrics
    from harness.data import load_dataset, make_folds
    from harness.models import build
    from harness.spec import TrainSpec
    from harness.training import fit

    w = WORKLOADS[name]
    torch.set_num_threads(1)
    ds = load_dataset(w["dataset"], {}, Path.cwd())
    fold = next(iter(make_folds(ds, 5, seed=0)))
    torch.manual_seed(0)
    model = build(w["model"], ds.n_features, ds.n_classes, w["model_args"])
    start = time.perf_counter()
    fit(model, fold.X_train, fold.y_train, TrainSpec(**w["train"]), seed=0)
    seconds = time.perf_counter() - start
    (lat,) = metrics.measure_latency([model], fold.X_val, batch=256, warmup=10, repeats=50)
    return {"train_s": seconds, "latency_ms": lat.p50, "latency_batch_ms": lat.batch_p50}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    opts = parser.parse_args()
    import bench_numerics  # this file as a module the children can import

    children = {mode: numerics.Child(mode) for mode in ("native", "portable")}
    times: dict[tuple[str, str, str], list[float]] = {}
    try:
        for _ in range(opts.rounds):
            for name in WORKLOADS:
                for mode, child in children.items():  # interleaved: drift hits both alike
                    for k, v in child.call(bench_numerics.workload, name).items():
                        times.setdefault((name, mode, k), []).append(v)
        levels = {m: c.call(numerics.current).describe() for m, c in children.items()}
    finally:
        for child in children.values():
            child.close()
    lines = [
        f"{platform.machine()}, CPU level {numerics.host_level()}, 1 thread, median of "
        f"{opts.rounds} interleaved rounds; native: {levels['native']}, pinned: "
        f"{levels['portable']}. Ratio = pinned / native (above 1: the pins are slower).",
        "",
        "| workload | training (native) | training ratio | latency batch 1 ratio "
        "| latency batch 256 ratio |",
        "|---|---|---|---|---|",
    ]
    for name in WORKLOADS:

        def med(mode: str, key: str, name: str = name) -> float:
            return statistics.median(times[(name, mode, key)])

        ratios = [med("portable", k) / med("native", k) for k in WORKLOADS_KEYS]
        lines.append(
            f"| {name} | {med('native', 'train_s'):.2f} s | {ratios[0]:.2f} | "
            f"{ratios[1]:.2f} | {ratios[2]:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out is not None:
        opts.out.write_text(text, encoding="utf-8")


WORKLOADS_KEYS = ("train_s", "latency_ms", "latency_batch_ms")


if __name__ == "__main__":
    main()
