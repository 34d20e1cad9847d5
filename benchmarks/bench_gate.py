"""Wall time of the reference gate, with and without MLflow logging, in one run.

    python benchmarks/bench_gate.py [--repeats N] [pytest args...]

Runs ``pytest suites -n 2 --dist loadfile`` (as ``nox -s gate`` does) alternately with
``--harness-no-mlflow`` and with logging to a fresh SQLite store, and prints the median wall time
of each and their ratio. Timings on shared machines are noisy: compare the ratio, not seconds
across machines.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"gate failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    opts, extra = parser.parse_known_args()
    base = ["suites", "-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider", "-q", *extra]
    plain, logged = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(opts.repeats):
            plain.append(_run([*base, "--harness-no-mlflow"]))
            uri = f"sqlite:///{Path(tmp) / f'bench{i}.db'}"
            logged.append(_run([*base, "--harness-mlflow-uri", uri]))
    a, b = statistics.median(plain), statistics.median(logged)
    print(f"gate without MLflow: {a:.1f} s (median of {opts.repeats})")
    print(f"gate with MLflow:    {b:.1f} s (median of {opts.repeats})")
    print(
        f"each run without / with: {[round(x, 1) for x in plain]} / {[round(x, 1) for x in logged]}"
    )
    print(f"MLflow overhead ratio: {b / a:.3f}")


if __name__ == "__main__":
    main()
