"""Provenance: the environment a result was computed in, stored with it and its baseline."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import numerics

_PACKAGES = ("numpy", "scikit-learn", "scipy", "torch-pruning", "prune-harness")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    """The environment stored with a result and its baseline. ``hardware`` (architecture, CPU,
    instruction-set level, numerics, torch build, threads) decides whether quality metrics are
    expected to be bit-identical (:func:`harness.numerics.reproducible`); ``machine``, ``cpu``,
    ``cpu_count`` and ``threads`` whether latencies compare
    (:func:`harness.baseline.same_hardware`)."""
    import torch

    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = _cpu_name()
    git_version = getattr(torch.version, "git_version", "") or ""
    build = f"{torch.__version__} ({git_version[:12]})" if git_version else torch.__version__
    hardware = numerics.fingerprint(cpu=cpu, torch_build=build, threads=threads)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "numerics": hardware["numerics"]["mode"],
        "hardware": hardware,
        "packages": versions,
    }
