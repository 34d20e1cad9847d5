"""Sessions: ``gate`` (the reference suites against baselines/), ``tests``, ``lint``.

They share one virtual environment, built by the ``env`` session (``.nox/env``: torch's CPU
build, the package with its test and lint extras), which each of them requires: the README's two
commands build it once. The benchmark sessions use it too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nox

nox.options.sessions = ["gate", "tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")
SHARED = "env"  # the session whose virtual environment every other session runs in
HERE = Path(__file__).resolve().parent


@nox.session(name=SHARED, default=False)
def env(session: nox.Session) -> None:
    """Build (or bring up to date) the one environment the other sessions share."""
    # torch pinned (constraints.txt): the CPU build, never a multi-GB CUDA one.
    _install(session, *CONSTRAINTS, "torch==2.13.0", "-e", ".[test,lint]")


def _install(session: nox.Session, *args: str) -> None:
    """``uv pip install`` where uv is installed (``pip install uv``; `.ci/run` does), else
    ``pip install``; pip again, with a warning, if uv fails.

    uv built this environment in 18 s where pip took about 150 s (a cold cache each, 2 cores;
    docs/scale.md). uv reads none of pip's configuration, so the index, extra indexes, local
    wheel directories, constraint files and certificates pip is configured with on this machine
    (``pip config list``: files and ``PIP_*`` variables) are handed to it, and it resolves across
    all indexes as pip does (``--index-strategy unsafe-best-match``)."""
    uv = _uv()
    if uv is not None:
        bindir = "Scripts" if sys.platform == "win32" else "bin"
        python = str(Path(session.virtualenv.location) / bindir / "python")
        options, env = _pip_config_for_uv()
        try:
            session.run(
                uv, "pip", "install", "--python", python, *options, *args, env=env, external=True
            )
            return
        except nox.command.CommandFailed:
            session.warn("uv could not install the environment: pip instead")
    session.install(*args)


def _uv() -> str | None:
    """The uv executable: on PATH, or the ``uv`` package of nox's own Python."""
    import shutil

    found = shutil.which("uv")
    if found is not None:
        return found
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return str(find_uv_bin())
    except FileNotFoundError:
        return None


def _pip_config_for_uv() -> tuple[list[str], dict[str, str]]:
    """pip's configured indexes, wheel directories, constraints and certificate as uv options
    and environment variables."""
    import subprocess

    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    values: dict[str, list[str]] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = key.rpartition(".")[2]  # global.find-links, install.constraint, :env:.index-url
        values.setdefault(name, []).extend(value.strip().strip("'\"").split())
    options = ["--index-strategy", "unsafe-best-match"]
    for name, flag in (
        ("index-url", "--index-url"),
        ("extra-index-url", "--extra-index-url"),
        ("find-links", "--find-links"),
        ("constraint", "--constraint"),
    ):
        for value in dict.fromkeys(values.get(name, ())):  # in order, once each
            options += [flag, value]
    env = {}
    if values.get("cert"):
        env["SSL_CERT_FILE"] = values["cert"][-1]
    return options, env


# Variables that change a numeric code path (harness.numerics.VARIABLES). The harness's own
# tests check the pins it sets, and the reference baselines were recorded under those pins
# alone: both sessions run without the ones a machine image or user set (OPENBLAS_CORETYPE on
# some CI images), so that the gate compares bit for bit. A user's own `pytest` keeps them: a
# run records them in its hardware fingerprint and says which one differs from the baseline's.
NUMERICS_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "OPENBLAS_CORETYPE",
)


def _run(session: nox.Session, *args: str, clean_numerics: bool = False) -> None:
    """Run a command of the shared environment (its bin directory first on PATH)."""
    root = HERE / ".nox" / SHARED
    bindir = root / ("Scripts" if sys.platform == "win32" else "bin")
    if not bindir.is_dir():
        session.error(f"the shared environment {root} is missing: run `nox -s {SHARED}`")
    path = os.pathsep.join([str(bindir), os.environ.get("PATH", "")])
    program, *rest = args
    env = {**os.environ, "PATH": path, "VIRTUAL_ENV": str(root)}
    if clean_numerics:
        for name in NUMERICS_VARIABLES:
            env.pop(name, None)
    session.run(str(bindir / program), *rest, env=env, include_outer_env=False)


def shared(**kwargs: Any) -> Callable[[Callable[[nox.Session], None]], Any]:
    """``@nox.session`` for a session that runs in the shared environment."""
    return nox.session(venv_backend="none", requires=[SHARED], **kwargs)


@shared()
def gate(session: nox.Session) -> None:
    """Run the reference suites through the gate (MLflow: SQLite store mlflow.db by default)."""
    _run(
        session,
        "pytest",
        "suites",
        "-n",
        "2",
        "--dist",
        "load",  # cases balanced over the workers; dense models shared through the disk cache
        "-p",
        "no:cacheprovider",
        "--harness-report",
        "harness-report",
        *session.posargs,
        clean_numerics=True,
    )


@shared()
def tests(session: nox.Session) -> None:
    """Run the harness's own tests (unit, property-based, pytester end-to-end, xdist)."""
    # loadgroup: the tests marked with one xdist_group (the Ray cluster's) run on one worker, so
    # one cluster runs at a time; the others are balanced as with --dist load
    _run(
        session,
        "pytest",
        "tests",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        *session.posargs,
        clean_numerics=True,
    )


@shared()
def lint(session: nox.Session) -> None:
    """ruff and mypy on harness/."""
    _run(session, "ruff", "check", "harness", "tests", "noxfile.py")
    _run(session, "mypy", "harness")


@shared(default=False)
def bench(session: nox.Session) -> None:
    """The gate's cost and scaling, as ratios: vs a hand-written loop, caches, xdist, executors."""
    _run(session, "python", "benchmarks/bench_gate.py", *session.posargs)


@shared(name="bench-sparse", default=False)
def bench_sparse(session: nox.Session) -> None:
    """Latency of dense nn.Linear against sparse CSR deployment: docs/sparse.md (ratios)."""
    _run(
        session, "python", "benchmarks/bench_sparse.py", "--out", "docs/sparse.md", *session.posargs
    )


@shared(default=False)
def calibrate(session: nox.Session) -> None:
    """Calibrate the gate's policies on seed noise and across hardware (numeric code paths)."""
    _run(session, "python", "benchmarks/calibrate.py", *session.posargs)
    _run(session, "python", "benchmarks/calibrate_hw.py", *session.posargs)


@shared(name="bench-numerics", default=False)
def bench_numerics(session: nox.Session) -> None:
    """What portable numerics cost: training and latency, pinned / native (ratios)."""
    _run(session, "python", "benchmarks/bench_numerics.py", *session.posargs)


@shared(default=False)
def tolerances(session: nox.Session) -> None:
    """Derive the reference suites' tolerances from seed reruns (the noise floor)."""
    _run(session, "python", "benchmarks/tolerances.py", *session.posargs)


@shared(default=False)
def results(session: nox.Session) -> None:
    """Every technique x sparsity on the digits MLP: docs/results.md and docs/results.png."""
    _run(session, "python", "benchmarks/results.py", *session.posargs)
