"""The reference suites: every technique and case option is exercised by a reference case whose
baseline is committed and matches the case's spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.baseline import BaselineStore
from harness.pruning import get, names
from harness.spec import CaseSpec, SuiteSpec, load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "suites").glob("*.toml"))


def _cases() -> list[tuple[SuiteSpec, CaseSpec]]:
    return [
        (suite, case) for path in SUITES for suite in [load_suite(path)] for case in suite.cases
    ]


@pytest.mark.parametrize("suite_case", _cases(), ids=lambda sc: f"{sc[0].name}::{sc[1].name}")
def test_every_reference_case_has_a_committed_baseline_of_its_spec(
    suite_case: tuple[SuiteSpec, CaseSpec],
) -> None:
    suite, case = suite_case
    baseline = BaselineStore(ROOT / "baselines").load(suite.name, case.name)
    assert baseline is not None, f"no baseline for {suite.name}::{case.name}"
    assert baseline.spec_hash == suite.spec_hash(case)
    assert "pruned.energy_nj" in baseline.metrics and "energy_reduction" in baseline.metrics


def test_every_technique_is_used_by_a_reference_case() -> None:
    used = {case.prune.method for _, case in _cases()}
    assert set(names()) <= used, f"no reference case for {sorted(set(names()) - used)}"


def test_structured_techniques_also_run_on_the_mnist1d_cnn() -> None:
    cnn = {case.prune.method for suite, case in _cases() if suite.name == "mnist1d-cnn"}
    structured = {n for n in names() if get(n).structured and n != "student"}
    assert structured <= cnn, f"not on the CNN: {sorted(structured - cnn)}"


def test_every_case_option_is_used_by_a_reference_case() -> None:
    cases = [case for _, case in _cases()]
    assert {c.prune.schedule for c in cases} >= {"oneshot", "iterative", "agp"}
    assert any(c.distill is not None for c in cases)
    assert {c.deploy for c in cases} >= {"csr", "onnx", "int8"}  # "2:4" needs CUDA to mean it
    patterned = {c.prune.method for c in cases if c.prune.pattern is not None}
    assert {"magnitude", "wanda", "sparsegpt"} <= patterned
    onnx = [c for c in cases if c.deploy == "onnx"]
    assert all(any(r.metric == "deploy_rel_diff" for r in c.gate) for c in onnx)
    assert any(get(c.prune.method).at_init for c in cases)


def test_every_committed_baseline_was_recorded_in_portable_numerics() -> None:
    for suite, case in _cases():
        baseline = BaselineStore(ROOT / "baselines").load(suite.name, case.name)
        assert baseline is not None
        hardware = baseline.env["hardware"]
        assert baseline.env["numerics"] == "portable", f"{suite.name}::{case.name}"
        assert hardware["numerics"]["level"] == "x86-64-v3"
        assert hardware["numerics"]["user_set"] == [] and not hardware["numerics"]["late"]
