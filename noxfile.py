"""Sessions: ``gate`` (the reference suites against baselines/), ``tests``, ``lint``."""

from __future__ import annotations

import nox

nox.options.sessions = ["gate", "tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")


def _install(session: nox.Session, extras: str = "") -> None:
    # torch first and pinned (constraints.txt): the CPU build, never a multi-GB CUDA one.
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, "-e", f".[{extras}]" if extras else ".")


@nox.session
def gate(session: nox.Session) -> None:
    """Run the reference suites through the gate (MLflow: SQLite store mlflow.db by default)."""
    _install(session, "test")
    session.run(
        "pytest",
        "suites",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-p",
        "no:cacheprovider",
        "--harness-report",
        "harness-report",
        *session.posargs,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """Run the harness's own tests (unit, property-based, pytester end-to-end, xdist)."""
    _install(session, "test")
    session.run("pytest", "tests", "-n", "2", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy on harness/."""
    _install(session, "lint")  # mypy checks against torch's real types
    session.run("ruff", "check", "harness", "tests", "noxfile.py")
    session.run("mypy", "harness")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmark the gate's wall time with and without MLflow logging (a ratio, not a test)."""
    _install(session, "test")
    session.run("python", "benchmarks/bench_gate.py", *session.posargs)


@nox.session(name="bench-sparse", default=False)
def bench_sparse(session: nox.Session) -> None:
    """Latency of dense nn.Linear against sparse CSR deployment: docs/sparse.md (ratios)."""
    _install(session, "test")
    session.run("python", "benchmarks/bench_sparse.py", "--out", "docs/sparse.md", *session.posargs)


@nox.session(default=False)
def calibrate(session: nox.Session) -> None:
    """Calibrate the gate's policies on seed noise and across hardware (numeric code paths)."""
    _install(session, "test")
    session.run("python", "benchmarks/calibrate.py", *session.posargs)
    session.run("python", "benchmarks/calibrate_hw.py", *session.posargs)


@nox.session(name="bench-numerics", default=False)
def bench_numerics(session: nox.Session) -> None:
    """What portable numerics cost: training and latency, pinned / native (ratios)."""
    _install(session, "test")
    session.run("python", "benchmarks/bench_numerics.py", *session.posargs)


@nox.session(default=False)
def tolerances(session: nox.Session) -> None:
    """Derive the reference suites' tolerances from seed reruns (the noise floor)."""
    _install(session, "test")
    session.run("python", "benchmarks/tolerances.py", *session.posargs)


@nox.session(default=False)
def results(session: nox.Session) -> None:
    """Every technique x sparsity on the digits MLP: docs/results.md and docs/results.png."""
    _install(session, "test")
    session.run("python", "benchmarks/results.py", *session.posargs)
