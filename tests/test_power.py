"""RAPL energy counters: discovery, wrap-around and the per-sample figure, on a powercap tree laid
out as Linux publishes it (this machine has none, so a directory stands in for /sys)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from harness.power import measure_energy, rapl_counter


def _domain(root: Path, name: str, energy: int, wrap: int = 262143328850) -> Path:
    d = root / name
    d.mkdir()
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{wrap}\n")
    (d / "name").write_text("package-0\n")
    return d


def test_no_powercap_means_no_counter(tmp_path: Path) -> None:
    assert rapl_counter(tmp_path / "missing") is None
    assert rapl_counter(tmp_path) is None  # present but empty


def test_packages_summed_subdomains_and_unreadable_ignored(tmp_path: Path) -> None:
    p0 = _domain(tmp_path, "intel-rapl:0", 1_000)
    p1 = _domain(tmp_path, "intel-rapl:1", 5_000)
    _domain(tmp_path, "intel-rapl:0:0", 7)  # core subdomain: inside package 0 already
    bad = tmp_path / "intel-rapl:2"
    bad.mkdir()  # no energy_uj (as when only root may read it)
    counter = rapl_counter(tmp_path)
    assert counter is not None and len(counter.domains) == 2
    start = counter.read()
    (p0 / "energy_uj").write_text("3000\n")
    (p1 / "energy_uj").write_text("5500\n")
    assert counter.joules_since(start) == pytest.approx((2_000 + 500) / 1e6)


def test_wrap_around(tmp_path: Path) -> None:
    d = _domain(tmp_path, "intel-rapl:0", 990, wrap=999)  # counter wraps after 999 uJ
    counter = rapl_counter(tmp_path)
    assert counter is not None
    start = counter.read()
    (d / "energy_uj").write_text("10\n")
    assert counter.joules_since(start) == pytest.approx((1000 - 990 + 10) / 1e6)


def test_measure_energy_divides_by_samples(tmp_path: Path) -> None:
    """A counter that advances 1 uJ per clock tick: energy per sample = ticks / samples."""
    d = _domain(tmp_path, "intel-rapl:0", 0)
    counter = rapl_counter(tmp_path)
    assert counter is not None
    ticks = iter(range(10**6))

    def clock() -> float:
        t = next(ticks)
        (d / "energy_uj").write_text(f"{t * 8}\n")  # 8 uJ per tick
        return float(t)

    model = nn.Linear(3, 2)
    X = np.zeros((5, 3), dtype=np.float32)
    (uj,) = measure_energy([model], X, batch=4, counter=counter, seconds=3, rounds=1, clock=clock)
    # t0 = tick 0; ticks 1 and 2 run a batch each (8 samples), tick 3 ends the window; the
    # counter read at the end shows 3 ticks * 8 uJ = 24 uJ -> 3 uJ per sample
    assert uj == pytest.approx(24 / 8)
