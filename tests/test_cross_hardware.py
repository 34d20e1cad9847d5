"""The gate against a baseline from other hardware: the one-line note, the noise-floor policy
(the dense model as the control), and a real baseline recorded under another numeric path."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as st

from harness import numerics, stats
from harness.baseline import Baseline, environment
from harness.gate import CROSS_HARDWARE_PREFIX, evaluate
from harness.results import CaseResult, MetricSummary, Remedy, Status
from harness.spec import RuleSpec

HINT = "`pytest x --harness-regen`"
FOLDS = 5
N_TEST, N_TRAIN = 360, 1437


def _metrics(values: dict[str, list[float]]) -> dict[str, MetricSummary]:
    return {k: MetricSummary.of(v) for k, v in values.items()}


def _env(**numerics_: Any) -> dict[str, Any]:
    env = environment(1)
    hw = dict(env["hardware"])
    if numerics_:
        hw["numerics"] = {**hw["numerics"], **numerics_}
    return {**env, "hardware": hw}


def _other_machine() -> dict[str, Any]:
    """A baseline recorded natively on another CPU (what another laptop gives)."""
    env = _env(mode="native", level="x86-64-v4", variables={})
    env["hardware"] = {**env["hardware"], "cpu": "Other CPU 9000", "isa": "x86-64-v4"}
    return {**env, "cpu": "Other CPU 9000"}


def _result(values: dict[str, list[float]]) -> CaseResult:
    return CaseResult(
        "s",
        "c",
        "hash",
        "digest",
        tuple({k: v[i] for k, v in values.items()} for i in range(FOLDS)),
        _metrics(values),
        1.0,
        dataset={"n_test": N_TEST, "n_train": N_TRAIN},
        env=_env(),
    )


def _baseline(values: dict[str, list[float]], env: dict[str, Any]) -> Baseline:
    return Baseline("s", "c", "hash", env, "cafe", "2026-01-01T00:00:00Z", _metrics(values))


def _judge(now: dict[str, list[float]], base: dict[str, list[float]], env: dict[str, Any]) -> Any:
    rules = (
        RuleSpec("pruned.f1_macro", max_drop=0.01),
        RuleSpec("vs_dense.f1_macro", max_drop=0.05),
    )
    return evaluate(_result(now), _baseline(base, env), rules)


BASE = {"dense.f1_macro": [0.95] * FOLDS, "pruned.f1_macro": [0.94] * FOLDS}


def test_noise_floor_without_hardware_noise_is_the_threshold() -> None:
    for drop in (0.005, 0.0099, 0.0101, 0.03):
        worsening = [drop + d for d in (-0.004, 0.002, 0.001, 0.0, 0.001)]
        decision = stats.noise_floor(
            worsening, [0.0] * FOLDS, margin=0.01, alpha=0.05, n_train=N_TRAIN, n_test=N_TEST
        )
        threshold = stats.decide(
            "threshold", worsening, margin=0.01, alpha=0.05, n_train=N_TRAIN, n_test=N_TEST
        )
        assert decision.failed is threshold.failed, (drop, decision.reason)


def test_noise_floor_allowance_is_the_corrected_t_bound_of_the_dense_noise() -> None:
    control = [0.01, -0.02, 0.015, 0.0, -0.005]
    rms = math.sqrt(sum(c * c for c in control) / FOLDS)
    allowance = st.t.ppf(0.95, FOLDS - 1) * rms * math.sqrt(1 / FOLDS + N_TEST / N_TRAIN)
    just_inside = [0.01 + allowance - 1e-6] * FOLDS
    just_outside = [0.01 + allowance + 1e-6] * FOLDS
    kw = {"margin": 0.01, "alpha": 0.05, "n_train": N_TRAIN, "n_test": N_TEST}
    inside = stats.noise_floor(just_inside, control, **kw)
    assert inside.failed is False
    assert f"hardware noise allowance {allowance:.3g}" in inside.reason
    assert stats.noise_floor(just_outside, control, **kw).failed is True
    assert stats.noise_floor([math.nan] * FOLDS, control, **kw).failed is True
    with pytest.raises(ValueError, match="paired folds"):
        stats.noise_floor([0.0] * 4, control, **kw)


def test_same_machine_baseline_is_judged_exactly() -> None:
    now = {**BASE, "pruned.f1_macro": [0.925] * FOLDS}  # 1.5 points below
    verdict = _judge(now, BASE, environment(1))
    assert verdict.status is Status.REGRESSED
    assert not any(n.startswith(CROSS_HARDWARE_PREFIX) for n in verdict.notes)
    assert verdict.remedy is Remedy.IF_INTENDED
    assert verdict.lines(HINT)[1] == f"if the change is intended, rewrite the baseline with {HINT}"


def test_other_hardware_is_named_and_noise_within_the_floor_passes() -> None:
    # the machine moved the dense model by about a point per fold; the pruned model by 1.5
    dense_now = [0.95 + d for d in (0.012, -0.01, 0.008, -0.012, 0.01)]
    now = {"dense.f1_macro": dense_now, "pruned.f1_macro": [0.925] * FOLDS}
    verdict = _judge(now, BASE, _other_machine())
    assert verdict.status is Status.PASS, verdict.lines()
    (note,) = [n for n in verdict.notes if n.startswith(CROSS_HARDWARE_PREFIX)]
    assert "native numerics" in note or "numerics native" in note
    assert "noise_floor" in note and "--harness-regen" not in note
    rule = next(c for c in verdict.checks if c.key == "pruned.f1_macro")
    assert "cross-hardware: noise_floor" in rule.rule and "hardware noise allowance" in rule.test
    dense_rule = next(c for c in verdict.checks if c.key == "vs_dense.f1_macro")
    assert "cross-hardware" not in dense_rule.rule  # same-run rules stay as they are


def test_other_hardware_still_catches_a_drop_beyond_the_noise() -> None:
    dense_now = [0.95 + d for d in (0.002, -0.001, 0.001, -0.002, 0.001)]
    now = {"dense.f1_macro": dense_now, "pruned.f1_macro": [0.915] * FOLDS}  # 2.5 points
    verdict = _judge(now, BASE, _other_machine())
    assert verdict.status is Status.REGRESSED
    assert [c.key for c in verdict.failed] == ["pruned.f1_macro"]
    assert any("larger than hardware noise explains" in n for n in verdict.notes)
    assert verdict.remedy is Remedy.IF_INTENDED_CROSS
    assert any(
        line.endswith(
            f"if it is intended, rewrite the baseline with {HINT} (portable numerics "
            "keep it valid on every AVX2 machine)"
        )
        for line in verdict.lines(HINT)
    )


def test_an_old_baseline_without_fingerprint_is_other_hardware() -> None:
    old = {k: v for k, v in environment(1).items() if k not in ("hardware", "numerics")}
    verdict = _judge(BASE, BASE, old)
    assert verdict.status is Status.PASS
    assert any("without a hardware fingerprint" in n for n in verdict.notes)


def _record_and_check(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key in (*numerics.PINS, numerics.ENV_PINNED, numerics.ENV_MODE):
        monkeypatch.delenv(key, raising=False)
    # the baseline: an "old CPU" (no AVX2 kernels in ATen, oneDNN at SSE4.1, MKL compatible)
    old_cpu = {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_CBWR": "COMPATIBLE",
    }
    for key, value in old_cpu.items():
        monkeypatch.setenv(key, value)
    regen = pytester.runpytest_subprocess(
        "suites",
        "--harness-regen",
        "--harness-no-mlflow",
        "--harness-numerics",
        "native",
        "-p",
        "no:cacheprovider",
    )
    assert regen.ret == 0, regen.stdout.str()
    for key in old_cpu:
        monkeypatch.delenv(key)
    return pytester.runpytest_subprocess(
        "suites", "--harness-no-mlflow", "-p", "no:cacheprovider", "-n", "2"
    )


@pytest.mark.slow
@pytest.mark.skipif(
    numerics.host_level() not in ("x86-64-v3", "x86-64-v4"), reason="needs x86-64 with AVX2"
)
def test_a_baseline_from_another_numeric_path_passes_in_portable_mode(
    tiny_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester = tiny_project
    result = _record_and_check(pytester, monkeypatch)
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "prune-harness: numerics portable (x86-64-v3)" in out
    line = next(x for x in out.splitlines() if CROSS_HARDWARE_PREFIX in x)
    assert line.startswith("2 case(s): hardware differs from the baseline's (numerics native")
    assert "ATEN_CPU_CAPABILITY=default" in line
    assert "--harness-regen" not in out
    data = json.loads(Path(pytester.path, "baselines/tiny/mag-50.json").read_text())
    assert data["env"]["numerics"] == "native"
    assert data["env"]["hardware"]["numerics"]["user_set"] == [
        "ATEN_CPU_CAPABILITY",
        "MKL_CBWR",
        "ONEDNN_MAX_CPU_ISA",
    ]
    assert os.environ.get("ATEN_CPU_CAPABILITY") != "default"


def _portable_elsewhere() -> dict[str, Any]:
    """A baseline recorded in portable numerics on another CPU model."""
    env = environment(1)
    return {**env, "hardware": {**env["hardware"], "cpu": "Other CPU 9000"}}


def test_portable_on_another_cpu_is_exact_when_the_bits_match() -> None:
    now = {**BASE, "pruned.f1_macro": [0.925] * FOLDS}  # dense identical, pruned 1.5 points
    verdict = _judge(now, BASE, _portable_elsewhere())
    assert verdict.status is Status.REGRESSED  # the noise floor is zero: the plain threshold
    assert not any(n.startswith(CROSS_HARDWARE_PREFIX) for n in verdict.notes)
    assert verdict.remedy is Remedy.IF_INTENDED
    assert verdict.lines(HINT)[1] == f"if the change is intended, rewrite the baseline with {HINT}"


def test_portable_on_another_cpu_names_pins_that_did_not_hold() -> None:
    dense_now = [0.95 + d for d in (0.012, -0.01, 0.008, -0.012, 0.01)]
    now = {"dense.f1_macro": dense_now, "pruned.f1_macro": [0.935] * FOLDS}
    verdict = _judge(now, BASE, _portable_elsewhere())
    assert verdict.status is Status.PASS, verdict.lines()
    (note,) = [n for n in verdict.notes if n.startswith(CROSS_HARDWARE_PREFIX)]
    assert "a code path the pins do not cover" in note
