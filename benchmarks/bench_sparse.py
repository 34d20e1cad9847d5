"""Latency of dense ``nn.Linear`` against :class:`harness.deploy.SparseLinear` (torch sparse CSR).

    python benchmarks/bench_sparse.py [--repeats N] [--threads 1,2] [--out table.md]

For every layer shape x sparsity x batch, a random ``nn.Linear`` (seeded) is magnitude-pruned to
the sparsity per layer and converted with ``to_sparse_csr(..., min_sparsity=0)``. Then the digits
MLP (``harness.models.mlp(64, 10, hidden=[256, 128])``, trained briefly on ``sklearn:digits``) is
magnitude-pruned globally (``harness.pruning`` ``magnitude``) and deployed with the default
``min_sparsity = 0.9``: only its layers at 90 % zeros or more become CSR.

Timing: dense and sparse alternate within every repeat (their order flips each repeat), after a
warm-up, under ``torch.inference_mode`` with a fixed ``torch.set_num_threads``. One sample is the
mean of a block of calls sized to take about 0.2 ms dense (small layers take a few us, below the
timer's resolution for one call); the p50 is the median of the samples. ``speedup = dense_p50 /
sparse_p50``, both from the same run: compare ratios, not microseconds across machines.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.deploy import SparseLinear, csr_layers, to_sparse_csr
from harness.models import mlp
from harness.pruning import PruneContext, create
from harness.spec import PruneSpec, TrainSpec

SHAPES = ((64, 256), (256, 128), (1024, 1024), (4096, 4096))
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
BATCHES = (1, 256)
MLP_SPARSITIES = (0.9, 0.95)
BLOCK_S = 2e-4  # one timing sample: about this long for the dense model
Log = Callable[[str], None]


@dataclass(frozen=True)
class Row:
    threads: int
    model: str  # "64->256 @ 0.9" or "digits MLP @ 0.95"
    batch: int
    dense_us: float
    sparse_us: float
    note: str = ""

    @property
    def speedup(self) -> float:
        return self.dense_us / self.sparse_us


def _call(model: nn.Module, x: torch.Tensor, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        model(x)
    return (time.perf_counter_ns() - start) / n / 1e3


def p50_pair(
    dense: nn.Module, sparse: nn.Module, x: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median per-call microseconds of ``dense`` and ``sparse`` on ``x``, interleaved."""
    with torch.inference_mode():
        for m in (dense, sparse):
            m.eval()
            _call(m, x, 3)  # warm-up (and the CSR view cache)
        once = _call(dense, x, 1)
        block = max(1, min(1000, round(BLOCK_S * 1e6 / max(once, 1e-3))))
        times: dict[int, list[float]] = {0: [], 1: []}
        pair = (dense, sparse)
        for r in range(repeats):
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                times[i].append(_call(pair[i], x, block))
    return statistics.median(times[0]), statistics.median(times[1])


def _pruned_linear(d_in: int, d_out: int, sparsity: float, gen: torch.Generator) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    bound = 1 / d_in**0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)
        w = layer.weight.view(-1)
        w[torch.argsort(w.abs(), stable=True)[: round(sparsity * w.numel())]] = 0
    return layer


def bench_layers(threads: int, repeats: int, log: Log) -> list[Row]:
    """Every shape x sparsity x batch: a pruned random layer, dense vs CSR."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for d_in, d_out in SHAPES:
        for s in SPARSITIES:
            dense = _pruned_linear(d_in, d_out, s, gen)
            sparse = to_sparse_csr(dense, min_sparsity=0.0)
            assert isinstance(sparse, SparseLinear)
            for batch in BATCHES:
                x = torch.randn(batch, d_in, generator=gen)
                with torch.inference_mode():
                    torch.testing.assert_close(sparse(x), dense(x), atol=1e-4, rtol=1e-4)
                reps = repeats if d_in * d_out * batch < 2**28 else max(5, repeats // 3)
                d, sp = p50_pair(dense, sparse, x, reps)
                rows.append(Row(threads, f"{d_in}->{d_out} @ {s}", batch, d, sp))
                log(f"  {rows[-1].model:>22}  batch {batch:>3}: speedup {rows[-1].speedup:.2f}")
    return rows


def _digits_mlp() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    from harness.data.registry import load_dataset
    from harness.training import fit

    ds = load_dataset("sklearn:digits")
    X, y = np.asarray(ds.X, dtype=np.float32), np.asarray(ds.y)
    model = mlp(X.shape[1], 10, hidden=[256, 128])
    fit(model, X, y, TrainSpec(epochs=10, lr=2e-3), seed=0)
    return model.eval(), X, y


def bench_mlp(
    trained: nn.Module, X: np.ndarray, y: np.ndarray, threads: int, repeats: int, log: Log
) -> list[Row]:
    """The trained digits MLP pruned globally to each of ``MLP_SPARSITIES``, dense vs CSR."""
    rows = []
    for s in MLP_SPARSITIES:
        pruner = create(PruneSpec("magnitude", s, scope="global"))
        model = copy.deepcopy(trained)
        ctx = PruneContext(torch.as_tensor(X[:64]), X, y, seed=0)
        dense = pruner.finalize(pruner.step(model, s, ctx)).eval()
        sparse = to_sparse_csr(dense)
        layers = ", ".join(
            f"{name} {1 - int(torch.count_nonzero(m.weight)) / m.weight.numel():.3f}"
            + (" CSR" if name in csr_layers(sparse) else "")
            for name, m in dense.named_modules()
            if isinstance(m, nn.Linear)
        )
        for batch in BATCHES:
            x = torch.as_tensor(X[np.arange(batch) % len(X)])
            with torch.inference_mode():
                torch.testing.assert_close(sparse(x), dense(x), atol=1e-4, rtol=1e-4)
            d, sp = p50_pair(dense, sparse, x, repeats)
            rows.append(Row(threads, f"digits MLP @ {s}", batch, d, sp, f"layers: {layers}"))
            log(f"  {rows[-1].model:>22}  batch {batch:>3}: speedup {rows[-1].speedup:.2f}")
    return rows


def table(rows: list[Row]) -> str:
    """Markdown: one row per model, one speedup column per (threads, batch)."""
    keys = sorted({(r.threads, r.batch) for r in rows})
    models = list(dict.fromkeys(r.model for r in rows))
    by = {(r.model, r.threads, r.batch): r for r in rows}
    head = "| layer / model | " + " | ".join(f"{t} thr, batch {b}" for t, b in keys) + " |"
    lines = [head, "|---|" + "---:|" * len(keys)]
    for name in models:
        cells = [f"{by[(name, t, b)].speedup:.2f}" if (name, t, b) in by else "" for t, b in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = list(dict.fromkeys(r.note for r in rows if r.note))
    detail = ["", "| threads | layer / model | batch | dense p50 (us) | CSR p50 (us) | speedup |"]
    detail.append("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        detail.append(
            f"| {r.threads} | {r.model} | {r.batch} | {r.dense_us:.1f} | {r.sparse_us:.1f} "
            f"| {r.speedup:.2f} |"
        )
    return "\n".join([*lines, "", *(f"- {n}" for n in notes), *detail]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timing samples per model")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    opts = parser.parse_args()
    threads = [int(t) for t in opts.threads.split(",")]

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    start = time.perf_counter()
    rows: list[Row] = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    trained, X, y = _digits_mlp()  # once, so every thread count times the same pruned model
    try:
        for t in threads:
            torch.set_num_threads(t)
            log(f"torch threads = {t}")
            rows += bench_layers(t, opts.repeats, log)
            rows += bench_mlp(trained, X, y, t, opts.repeats, log)
    finally:
        torch.set_num_threads(before)
    text = table(rows)
    text += (
        f"\nspeedup = dense p50 / CSR p50 (torch {torch.__version__}, "
        f"{time.perf_counter() - start:.0f} s)\n"
    )
    print(text)
    if opts.out is not None:
        head = (
            "# Sparse CSR deployment: measured speedups\n\n"
            "Generated by `nox -s bench-sparse` (`benchmarks/bench_sparse.py`): dense `nn.Linear` "
            "against `harness.deploy.SparseLinear` (torch sparse CSR) on the same pruned weights, "
            "timed interleaved in one run. Speedups above 1 mean CSR is faster. Ratios of one "
            "machine; rerun on yours.\n\n"
        )
        opts.out.write_text(head + text)


if __name__ == "__main__":
    main()
