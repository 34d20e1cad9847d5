"""Provenance: the environment a result was computed in (stored with it and its baseline), the
git commit, and the source tags of tracked runs. torch is imported only by :func:`environment`."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import numerics

_PACKAGES = ("numpy", "scikit-learn", "scipy", "torch-pruning", "prune-harness")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's vendor, family, model and stepping (``AuthenticAMD 26/2/1``), or ``""`` where
    ``/proc/cpuinfo`` does not say. Virtual machines often report a bare ``model name`` (``AMD
    EPYC``) for CPUs of different generations, whose kernels time differently: latencies compare
    only between machines whose ids agree (:func:`harness.baseline.same_hardware`)."""
    fields: dict[str, str] = {}
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if not key and fields:
                break  # the first processor's block is enough
            if key in ("vendor_id", "cpu family", "model", "stepping"):
                fields.setdefault(key, value.strip())
    except OSError:
        return ""
    if "vendor_id" not in fields:
        return ""
    numbers = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return f"{fields['vendor_id']} {numbers}"


def environment(threads: int, *, device: str = "cpu") -> dict[str, Any]:
    """The environment stored with a result and its baseline. ``hardware`` (architecture, CPU,
    instruction-set level, numerics, torch build, threads) decides whether quality metrics are
    expected to be bit-identical (:func:`harness.numerics.reproducible`); ``machine``, ``cpu``,
    ``cpu_id``, ``cpu_count`` and ``threads`` whether latencies compare
    (:func:`harness.baseline.same_hardware`). ``device`` names the accelerator models ran on
    (``cuda NVIDIA H200``; recorded in ``hardware`` when it is not the CPU)."""
    import torch

    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = cpu_name()
    git_version = getattr(torch.version, "git_version", "") or ""
    build = f"{torch.__version__} ({git_version[:12]})" if git_version else torch.__version__
    hardware = numerics.fingerprint(cpu=cpu, torch_build=build, threads=threads, device=device)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "cpu": cpu,
        **({"cpu_id": ident} if (ident := cpu_id()) else {}),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        **({"device": device} if device != "cpu" else {}),
        "numerics": hardware["numerics"]["mode"],
        "hardware": hardware,
        "packages": versions,
    }


def git(*args: str) -> str | None:
    """Output of a git command in the working directory, or None."""
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def git_commit() -> str:
    return os.environ.get("GITHUB_SHA") or git("rev-parse", "HEAD") or "unknown"


def source_tags() -> dict[str, str]:
    """Git commit and branch (MLflow's own tag names) and, in GitHub Actions, the run's URL."""
    tags = {"mlflow.source.git.commit": git_commit()}
    branch = (
        os.environ.get("GITHUB_HEAD_REF")
        or os.environ.get("GITHUB_REF_NAME")
        or git("rev-parse", "--abbrev-ref", "HEAD")
    )
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    if os.environ.get("GITHUB_ACTIONS") == "true":
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
        repo, run = os.environ.get("GITHUB_REPOSITORY", ""), os.environ.get("GITHUB_RUN_ID", "")
        if repo and run:
            tags["harness.ci_run_url"] = f"{server}/{repo}/actions/runs/{run}"
    return tags
