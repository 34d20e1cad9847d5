"""The second-generation gate and what feeds it: statistical policies, ``class_*`` wildcards,
pruning-identified exemplars, edge-case sets, repeated k-fold and the spec keys behind them.

Everything is real: hand-built results and baselines for the gate, the real scipy tests behind
the policies, real (tiny) training on sklearn's digits for the runner and the plugin.
"""

from __future__ import annotations

import hashlib
import json
import math
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats as st

from harness import runner
from harness.baseline import Baseline, environment
from harness.data import load_dataset, make_folds
from harness.gate import Check, Rule, Status, evaluate
from harness.metrics import parse_metric
from harness.runner import CaseResult, FoldResult, MetricSummary, exemplars, run_case, run_fold
from harness.spec import RuleSpec, SpecError, SuiteSpec, load_suite, suite_from_dict
from harness.training import predict_logits

# --------------------------------------------------------------------------------------------
# hand-built results and baselines

DATASET = {"n_test": 360, "n_train": 1437}  # digits, 5 folds
HASH = "spec-hash-v2"
Values = Mapping[str, list[float] | float]  # per-fold values, or a case-level value (no folds)


def _summary(value: list[float] | float) -> MetricSummary:
    if isinstance(value, list):
        return MetricSummary.of(value)
    return MetricSummary((), float(value), 0.0)


def _result(
    values: Values,
    *,
    pie: dict[str, Any] | None = None,
    class_names: tuple[str, ...] = (),
) -> CaseResult:
    per_fold = [v for v in values.values() if isinstance(v, list)]
    k = len(per_fold[0]) if per_fold else 0
    folds = tuple(
        {name: v[i] for name, v in values.items() if isinstance(v, list)} for i in range(k)
    )
    return CaseResult(
        "tiny",
        "mag-50",
        HASH,
        "digest",
        folds,
        {name: _summary(v) for name, v in values.items()},
        0.1,
        dataset=dict(DATASET),
        class_names=class_names,
        pie=pie or {},
    )


def _baseline(values: Values) -> Baseline:
    return Baseline(
        "tiny",
        "mag-50",
        HASH,
        environment(1),
        "cafe1234",
        "2024-05-01T12:00:00Z",
        {name: _summary(v) for name, v in values.items()},
    )


def _check(spec: RuleSpec, now: Values, base: Values | None, **kw: Any) -> Check:
    rule = Rule.parse(spec)
    return rule.check(
        _result(now, **kw), None if base is None else _baseline(base), hardware_note=""
    )


def _minus(ref: list[float], worsening: list[float]) -> list[float]:
    return [r - w for r, w in zip(ref, worsening, strict=True)]


def _plus(ref: list[float], worsening: list[float]) -> list[float]:
    return [r + w for r, w in zip(ref, worsening, strict=True)]


def _by_fold(ref: list[float], now: list[float]) -> list[float]:
    return [r - n for r, n in zip(ref, now, strict=True)]


def _corrected_t(worsening: list[float], margin: float) -> tuple[float, int]:
    """Nadeau & Bengio's corrected t by hand, and its degrees of freedom."""
    d = np.asarray(worsening)
    k = d.size
    se = math.sqrt((1 / k + DATASET["n_test"] / DATASET["n_train"]) * d.var(ddof=1))
    return (d.mean() - margin) / se, k - 1


BASE = [0.90, 0.92, 0.91, 0.93, 0.89]
CONSISTENT = [0.05, 0.06, 0.05, 0.055, 0.06]  # mean 0.055, tiny spread
NOISY = [0.10, -0.05, 0.08, -0.04, 0.06]  # mean 0.03, large spread
NOISY_SMALL = [0.02, -0.01, 0.015, -0.005, 0.0]  # mean 0.004, large spread for its size
F1 = "pruned.f1_macro"


def test_significant_passes_an_unchanged_result() -> None:
    check = _check(
        RuleSpec(F1, max_drop=0.01, policy="significant"), {F1: list(BASE)}, {F1: list(BASE)}
    )
    assert check.passed is True, check.line()
    assert check.test.startswith("significant: pass, mean worsening 0 not above margin 0.01")
    assert "p=1" in check.test


def test_significant_fails_a_consistent_drop_and_names_policy_test_statistic_p() -> None:
    now = _minus(BASE, CONSISTENT)
    check = _check(RuleSpec(F1, max_drop=0.01, policy="significant"), {F1: now}, {F1: BASE})
    assert check.passed is False
    t, df = _corrected_t(_by_fold(BASE, now), 0.0)  # significance of the worsening itself
    p = st.t.sf(t, df)
    assert p < 1e-3
    line = check.line()
    assert "\n" not in line
    assert line.startswith(f"{F1}: baseline {np.mean(BASE):.4f}, now {np.mean(now):.4f}, ")
    assert "allowed >= 0.9000" in line  # the margin bound is the one shown as failed
    assert "significant at alpha 0.05" in line  # the rule
    assert "significant: FAIL" in line  # the policy's verdict
    assert "corrected t-test" in line  # the test
    assert f"t={t:.3g}" in line  # its statistic, with this run's fold sizes
    assert f"p={p:.2g}" in line  # its p-value
    assert "mean worsening 0.055 significant and above margin 0.01" in line


def test_noisy_drop_beyond_max_drop_passes_significant_but_fails_threshold() -> None:
    now = _minus(BASE, NOISY)
    assert np.mean(BASE) - np.mean(now) > 0.01
    threshold = _check(RuleSpec(F1, max_drop=0.01), {F1: now}, {F1: BASE})
    assert threshold.passed is False and threshold.test == ""
    significant = _check(RuleSpec(F1, max_drop=0.01, policy="significant"), {F1: now}, {F1: BASE})
    assert significant.passed is True, significant.line()
    t, df = _corrected_t(_by_fold(BASE, now), 0.0)
    assert st.t.sf(t, df) > 0.05
    assert "above but not significant, vs margin 0.01" in significant.test
    assert f"t={t:.3g}" in significant.test


def test_non_inferior_passes_an_unchanged_result_with_a_positive_margin() -> None:
    check = _check(
        RuleSpec(F1, max_drop=0.01, policy="non_inferior"), {F1: list(BASE)}, {F1: list(BASE)}
    )
    assert check.passed is True, check.line()
    assert check.test.startswith("non_inferior: pass")


def test_non_inferior_fails_a_noisy_small_drop_that_cannot_be_shown_non_inferior() -> None:
    now = _minus(BASE, NOISY_SMALL)
    rule = RuleSpec(F1, max_drop=0.01, policy="non_inferior")
    # the mean drop is within max_drop: threshold and significant pass ...
    assert _check(RuleSpec(F1, max_drop=0.01), {F1: now}, {F1: BASE}).passed is True
    sig = RuleSpec(F1, max_drop=0.01, policy="significant")
    assert _check(sig, {F1: now}, {F1: BASE}).passed is True
    # ... but non-inferiority (H1: worsening < margin) is not shown
    check = _check(rule, {F1: now}, {F1: BASE})
    assert check.passed is False
    t, df = _corrected_t(_by_fold(BASE, now), 0.01)
    p = st.t.cdf(t, df)
    assert p > 0.05
    line = check.line()
    assert "non_inferior at alpha 0.05" in line
    assert "non_inferior: FAIL" in line and "not shown below margin 0.01" in line
    assert "corrected t-test" in line and f"t={t:.3g}" in line and f"p={p:.2g}" in line
    assert "allowed >= 0.9000" in line


def test_policy_alpha_is_used() -> None:
    # the noisy drop: p of about 0.35 passes at 0.05 and fails at alpha 0.5
    now = _minus(BASE, NOISY)
    loose = _check(
        RuleSpec(F1, max_drop=0.01, policy="significant", alpha=0.5), {F1: now}, {F1: BASE}
    )
    assert loose.passed is False
    assert "alpha 0.5" in loose.line()


def test_vs_dense_pairs_pruned_with_dense_folds_of_the_same_run() -> None:
    # the dense folds spread widely; the pruned model is consistently 0.02 worse on each
    dense = [0.60, 0.95, 0.70, 0.90, 0.80]
    pruned = _minus(dense, [0.02, 0.021, 0.019, 0.02, 0.02])
    now = {"dense.f1_macro": dense, F1: pruned}
    # a baseline with other values is not what vs_dense compares with
    base = {"dense.f1_macro": [0.1] * 5, F1: [0.99] * 5}
    rule = Rule.parse(RuleSpec("vs_dense.f1_macro", max_drop=0.01, policy="significant"))
    check = rule.check(_result(now), _baseline(base), hardware_note="")
    assert check.passed is False, check.line()
    assert check.reference == pytest.approx(np.mean(dense))
    t, _ = _corrected_t(_by_fold(dense, pruned), 0.0)
    assert f"t={t:.3g}" in check.test and "mean worsening 0.02 " in check.test
    assert check.line().startswith("vs_dense.f1_macro: dense 0.7900, now 0.7700")
    assert "mcnemar" not in check.line()  # no per-sample counts in this result

    # unpaired, the 0.02 gap would drown in the spread of the folds: a plain mean comparison
    # passes a margin of 0.05 ...
    wide = Rule.parse(RuleSpec("vs_dense.f1_macro", max_drop=0.05, policy="significant"))
    assert wide.check(_result(now), None, hardware_note="").passed is True
    # ... and the same gap against the baseline's folds (not paired with this run) is noise
    base_same = {F1: _plus(pruned, [0.05, -0.03, 0.04, -0.02, 0.06])}
    vs_base = _check(RuleSpec(F1, max_drop=0.01, policy="significant"), now, base_same)
    assert vs_base.passed is True


def test_vs_dense_line_carries_mcnemar_when_the_result_has_counts() -> None:
    dense = list(BASE)
    pruned = _minus(dense, CONSISTENT)
    now = {"dense.f1_macro": dense, F1: pruned}
    pie = {"ids": [3, 17, 40], "mcnemar_b": 30, "mcnemar_c": 4}
    spec = RuleSpec("vs_dense.f1_macro", max_drop=0.01, policy="significant")
    rule = Rule.parse(spec)
    check = rule.check(_result(now, pie=pie), None, hardware_note="")
    assert check.passed is False
    chi2 = (abs(30 - 4) - 1) ** 2 / 34
    p = st.chi2.sf(chi2, 1)
    line = check.line()
    assert f"mcnemar chi2={chi2:.3g}, p={p:.2g}" in line
    assert line.index("corrected t-test") < line.index("mcnemar")
    # few discordant samples: the exact binomial variant
    small = rule.check(
        _result(now, pie={"ids": [], "mcnemar_b": 5, "mcnemar_c": 1}), None, hardware_note=""
    )
    p_exact = st.binomtest(5, 6, 0.5).pvalue
    assert f"mcnemar exact b=5, p={p_exact:.2g}" in small.line()
    # a rule against the baseline says nothing about dense vs pruned: no McNemar
    vs_base = _check(RuleSpec(F1, max_drop=0.01, policy="significant"), now, now, pie=pie)
    assert vs_base.passed is True and "mcnemar" not in vs_base.line()
    # threshold rules run no test at all
    plain = Rule.parse(RuleSpec("vs_dense.f1_macro", max_drop=0.01)).check(
        _result(now, pie=pie), None, hardware_note=""
    )
    assert plain.test == "" and "mcnemar" not in plain.line()


@pytest.mark.parametrize("policy", ["significant", "non_inferior"])
def test_metric_without_folds_falls_back_to_the_mean_and_says_so(policy: str) -> None:
    rule = RuleSpec("pie_rate", max_drop=0.05, policy=policy)
    worse = _check(rule, {"pie_rate": 0.20}, {"pie_rate": 0.10})
    assert worse.passed is False  # lower is better: 0.20 > 0.10 + 0.05
    assert worse.test == f"{policy} needs paired per-fold values; judged by the mean"
    assert worse.line().endswith(f"; {policy} needs paired per-fold values; judged by the mean)")
    assert "allowed <= 0.1500" in worse.line()
    within = _check(rule, {"pie_rate": 0.14}, {"pie_rate": 0.10})
    assert within.passed is True and "judged by the mean" in within.test
    # fold counts that do not pair up (another number of repeats) fall back as well
    other = _check(RuleSpec(F1, max_drop=0.01, policy=policy), {F1: BASE * 2}, {F1: BASE})
    assert other.passed is True and "judged by the mean" in other.test


def test_lower_is_better_metrics_are_mirrored() -> None:
    rate = "disagreement_rate"
    base = [0.02, 0.03, 0.02, 0.03, 0.025]
    sig = RuleSpec(rate, max_drop=0.01, policy="significant")
    rise = _check(sig, {rate: _plus(base, CONSISTENT)}, {rate: base})
    assert rise.passed is False
    assert "allowed <= 0.0350" in rise.line()
    assert "mean worsening 0.055 significant and above margin 0.01" in rise.test
    # the same change downwards is an improvement under every policy
    for policy in ("threshold", "significant", "non_inferior"):
        spec = RuleSpec(rate, max_drop=0.01, policy=policy)
        fall = _check(spec, {rate: _minus(base, CONSISTENT)}, {rate: base})
        assert fall.passed is True, fall.line()
    fall = _check(sig, {rate: _minus(base, CONSISTENT)}, {rate: base})
    assert "mean worsening -0.055" in fall.test
    # and against the dense model of the same run
    gap = "train_val_gap"
    dense = [0.01, 0.02, 0.015, 0.01, 0.02]
    now = {f"dense.{gap}": dense, f"pruned.{gap}": _plus(dense, CONSISTENT)}
    rule = Rule.parse(RuleSpec(f"vs_dense.{gap}", max_drop=0.01, policy="significant"))
    check = rule.check(_result(now), None, hardware_note="")
    assert check.passed is False and "allowed <= " in check.line()
    now[f"pruned.{gap}"] = _minus(dense, CONSISTENT)
    assert rule.check(_result(now), None, hardware_note="").passed is True


def test_policy_does_not_swallow_an_absolute_bound_equal_to_the_margin_bound() -> None:
    base = [0.9] * 5  # mean 0.9; max_drop 0.1 -> bound 0.9 - 0.1 == 0.8 == min
    now = _minus(base, [0.3, -0.1, 0.25, -0.05, 0.2])  # mean 0.78 < min 0.8, noisy
    threshold = _check(RuleSpec(F1, max_drop=0.1, min=0.79), {F1: now}, {F1: base})
    assert threshold.passed is False  # below min (and beyond max_drop)
    # significant: the drop is noise, but the absolute bound min = 0.8 still fails
    other_min = RuleSpec(F1, max_drop=0.1, min=0.79, policy="significant")
    assert _check(other_min, {F1: now}, {F1: base}).passed is False
    same_min = RuleSpec(F1, max_drop=0.1, min=0.8, policy="significant")
    assert _check(same_min, {F1: now}, {F1: base}).passed is False


# --------------------------------------------------------------------------------------------
# class_* wildcards


def test_class_wildcard_yields_one_check_per_class_and_only_the_dropped_class_fails() -> None:
    names = ("setosa", "versicolor", "virginica")
    keys = [f"pruned.recall.class_{k}" for k in range(3)]
    base = {k: [0.9, 0.92, 0.88] for k in keys}
    now = dict(base)
    now["pruned.recall.class_1"] = [0.70, 0.72, 0.69]
    verdict = evaluate(
        _result(now, class_names=names),
        _baseline(base),
        (RuleSpec("pruned.recall.class_*", max_drop=0.05),),
        threads=1,
        regen_hint="--harness-regen",
    )
    assert [c.key for c in verdict.checks] == keys
    assert [c.passed for c in verdict.checks] == [True, False, True]
    assert verdict.status is Status.REGRESSED
    assert [c.key for c in verdict.failed] == ["pruned.recall.class_1"]
    assert verdict.lines()[0].startswith("pruned.recall.class_1: baseline 0.9000, now 0.7033")


def test_class_wildcard_with_a_policy_and_vs_dense() -> None:
    rules = Rule.expand(RuleSpec("vs_dense.recall.class_*", max_drop=0.05, policy="significant"), 3)
    assert [r.key for r in rules] == [f"vs_dense.recall.class_{k}" for k in range(3)]
    assert all(r.vs_dense and r.policy == "significant" for r in rules)
    now: dict[str, list[float]] = {}
    for k in range(3):
        now[f"dense.recall.class_{k}"] = list(BASE)
        now[f"pruned.recall.class_{k}"] = list(BASE)
    now["pruned.recall.class_2"] = _minus(BASE, [0.2, 0.21, 0.2, 0.19, 0.2])
    result = _result(now, class_names=("a", "b", "c"))
    checks = [r.check(result, None, hardware_note="") for r in rules]
    assert [c.passed for c in checks] == [True, True, False]
    assert "significant: FAIL" in checks[2].line()
    # without the number of classes the key stays as written (and names no measured metric)
    (literal,) = Rule.expand(RuleSpec("pruned.recall.class_*", max_drop=0.05), None)
    assert literal.key == "pruned.recall.class_*"


# --------------------------------------------------------------------------------------------
# pruning-identified exemplars


def _fold(val_idx: list[int], dense: list[int], pruned: list[int]) -> FoldResult:
    return FoldResult(
        metrics={},
        val_idx=np.asarray(val_idx),
        dense_pred=np.asarray(dense),
        pruned_pred=np.asarray(pruned),
        confusion_dense=np.zeros((3, 3), dtype=np.int64),
        confusion_pruned=np.zeros((3, 3), dtype=np.int64),
        layer_sparsity={},
        pruned=torch.nn.Linear(2, 3),
    )


# six samples, three classes, two repeats of 2-fold CV: every sample is validated twice
Y = np.array([0, 1, 2, 1, 0, 2])
# per sample: (dense prediction, pruned prediction) in repeat 1 and in repeat 2
#   0: (0,0) (0,0)  agree                                   -> not an exemplar
#   1: (1,2) (1,2)  dense mode 1 (right), pruned mode 2       -> exemplar; b += 2
#   2: (2,1) (2,0)  pruned votes tie 0/1 -> 0 (lower class)   -> exemplar; b += 2
#   3: (0,1) (2,1)  dense votes tie 0/2 -> 0, pruned mode 1   -> exemplar; c += 2
#   4: (1,0) (0,1)  both tie 0/1 -> 0 and 0                   -> not an exemplar; c += 1, b += 1
#   5: (2,0) (1,0)  dense tie 1/2 -> 1, pruned mode 0         -> exemplar; b += 1 (repeat 1 only)
PIE_FOLDS = [
    _fold([0, 1, 2], dense=[0, 1, 2], pruned=[0, 2, 1]),  # repeat 1
    _fold([3, 4, 5], dense=[0, 1, 2], pruned=[1, 0, 0]),
    _fold([5, 3, 1], dense=[1, 2, 1], pruned=[0, 1, 2]),  # repeat 2, another order
    _fold([4, 2, 0], dense=[0, 2, 0], pruned=[1, 0, 0]),
]


def test_exemplars_by_hand() -> None:
    pie = exemplars(PIE_FOLDS, Y, 3)
    assert pie["ids"] == [1, 2, 3, 5]
    assert pie["count"] == 4
    assert pie["rate"] == pytest.approx(4 / 6)
    # modal predictions on the exemplars: dense (1, 2, 0, 1) vs truth (1, 2, 1, 2)
    assert pie["dense_accuracy"] == pytest.approx(2 / 4)
    # pruned (2, 0, 1, 0) vs truth (1, 2, 1, 2)
    assert pie["pruned_accuracy"] == pytest.approx(1 / 4)
    # McNemar over the 12 (fold, sample) pairs: b dense right / pruned wrong, c the reverse
    assert (pie["mcnemar_b"], pie["mcnemar_c"]) == (6, 3)
    json.dumps(pie)  # plain Python types: goes into results and baselines as is


def test_exemplars_with_one_repeat_are_the_disagreements() -> None:
    pie = exemplars(PIE_FOLDS[:2], Y, 3)
    assert pie["ids"] == [1, 2, 3, 4, 5]  # every sample where the single predictions differ
    assert pie["rate"] == pytest.approx(5 / 6)
    assert (pie["mcnemar_b"], pie["mcnemar_c"]) == (3, 2)  # b: samples 1, 2, 5; c: 3, 4


def test_exemplars_rate_counts_only_validated_samples_and_none_without_exemplars() -> None:
    y = np.append(Y, 1)  # sample 6 is never validated
    assert exemplars(PIE_FOLDS, y, 3)["rate"] == pytest.approx(4 / 6)
    same = [_fold([0, 1, 2], [0, 1, 2], [0, 1, 2]), _fold([3, 4, 5], [1, 1, 0], [1, 1, 0])]
    pie = exemplars(same, Y, 3)
    assert pie["ids"] == [] and pie["count"] == 0 and pie["rate"] == 0.0
    assert pie["dense_accuracy"] is None and pie["pruned_accuracy"] is None
    assert (pie["mcnemar_b"], pie["mcnemar_c"]) == (0, 0)


# --------------------------------------------------------------------------------------------
# spec: [edge], case edge, policy / alpha, [cv] repeats / seed, hashes

SUITE = """\
[suite]
name = "v2"
dataset = "sklearn:digits"
model = "harness.models:mlp"
model_args = { hidden = [32] }

[cv]
folds = 3

[train]
epochs = 2
lr = 1e-2

[[case]]
name = "mag-50"
prune = { method = "magnitude", sparsity = 0.5 }
finetune = { epochs = 1, lr = 1e-3 }
"""


def _suite(extra: str = "", text: str = SUITE, source: str = "suites/v2.toml") -> SuiteSpec:
    return suite_from_dict(tomllib.loads(text + textwrap.dedent(extra)), source)


def _with_cv(line: str, text: str = SUITE) -> str:
    return text.replace("folds = 3\n", f"folds = 3\n{line}\n")


def _case_key(extra: str) -> str:
    """``extra`` added to the (only) [[case]] table."""
    return SUITE + textwrap.dedent(extra)


def _spec_error(text: str, source: str = "suites/v2.toml") -> SpecError:
    with pytest.raises(SpecError) as info:
        suite_from_dict(tomllib.loads(text), source)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{source}: ")
    return info.value


def test_edge_sets_parse_for_the_suite_and_per_case() -> None:
    text = SUITE.replace(
        "[[case]]", '[edge]\nsets = ["gaussian_noise:0.1", "blur", "hardest:0.2"]\n\n[[case]]'
    )
    text += textwrap.dedent(
        """
        [[case]]
        name = "own-edge"
        prune = { method = "magnitude", sparsity = 0.5 }
        edge = ["extremes"]

        [[case]]
        name = "no-edge"
        prune = { method = "magnitude", sparsity = 0.5 }
        edge = []
        """
    )
    suite = suite_from_dict(tomllib.loads(text), "suites/v2.toml")
    assert suite.edge == ("gaussian_noise:0.1", "blur", "hardest:0.2")
    inherits, own, none = suite.cases
    assert inherits.edge is None and suite.edge_sets(inherits) == suite.edge
    assert own.edge == ("extremes",) and suite.edge_sets(own) == ("extremes",)
    assert none.edge == () and suite.edge_sets(none) == ()
    assert _suite().edge == ()


def _edge_error(sets: str, dataset: str = "sklearn:digits") -> SpecError:
    text = SUITE.replace("sklearn:digits", dataset).replace(
        "[[case]]", f"[edge]\nsets = {sets}\n\n[[case]]"
    )
    return _spec_error(text)


def test_edge_unknown_kind() -> None:
    err = _edge_error('["gaussian_noise", "fog:0.3"]')
    assert err.key == "edge.sets" and err.value == "fog:0.3"
    assert "unknown kind 'fog'" in str(err)


def test_edge_image_only_kind_on_tabular_data() -> None:
    err = _edge_error('["blur"]', dataset="sklearn:breast_cancer")
    assert err.key == "edge.sets" and err.value == "blur"
    assert "blur needs image or signal data (sklearn:breast_cancer is tabular)" in str(err)


@pytest.mark.parametrize(
    "sets", ['["extremes", "extremes"]', '["gaussian_noise:0.1", "gaussian_noise:0.10"]']
)
def test_edge_duplicate_metric_names(sets: str) -> None:
    err = _edge_error(sets)
    assert err.key == "edge.sets"
    assert "same metric name" in str(err)


@pytest.mark.parametrize(
    ("sets", "problem"),
    [
        ('"extremes"', "must be an array"),
        ("[1]", "must be a list of strings"),
        ('["gaussian_noise:-1"]', "sigma must be >= 0"),
        ('["shift:8"]', "must be below 8"),
    ],
)
def test_edge_other_bad_values(sets: str, problem: str) -> None:
    err = _edge_error(sets)
    assert err.key == "edge.sets" and problem in str(err)


def test_edge_unknown_key_in_the_table() -> None:
    err = _spec_error(SUITE.replace("[[case]]", '[edge]\nset = ["blur"]\n\n[[case]]'))
    assert err.key == "edge.set" and "unknown key" in str(err)


def test_case_edge_is_validated_under_the_case_key() -> None:
    err = _spec_error(_case_key('edge = ["blur", "nope"]\n'))
    assert err.key == "case[mag-50].edge" and err.value == "nope"
    err = _spec_error(_case_key('edge = ["blur:1", "blur:1.0"]\n'))
    assert err.key == "case[mag-50].edge" and "same metric name 'blur_1'" in str(err)
    # "blur" (the default sigma) and "blur:1" are two sets with two names
    assert _suite(text=_case_key('edge = ["blur", "blur:1"]\n')).cases[0].edge == ("blur", "blur:1")


def test_missing_npz_file_names_the_key(tmp_path: Path) -> None:
    suites = tmp_path / "suites"
    (suites / "edge").mkdir(parents=True)
    text = SUITE.replace("[[case]]", '[edge]\nsets = ["npz:edge/hard.npz"]\n\n[[case]]')
    path = suites / "v2.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_suite(path)
    err = info.value
    assert err.key == "edge.sets" and err.value == "npz:edge/hard.npz"
    assert "file not found" in str(err) and "\n" not in str(err)
    # relative to the suite file: once it exists there, the suite loads
    ds = load_dataset("sklearn:digits")
    np.savez(suites / "edge" / "hard.npz", X=ds.X[:20], y=ds.y[:20])
    assert load_suite(path).edge == ("npz:edge/hard.npz",)


def test_npz_file_with_wrong_features_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir()
    np.savez(tmp_path / "edge" / "bad.npz", X=np.zeros((5, 3)), y=np.zeros(5))
    path = tmp_path / "v2.toml"
    path.write_text(SUITE.replace("[[case]]", '[edge]\nsets = ["npz:edge/bad.npz"]\n\n[[case]]'))
    with pytest.raises(SpecError) as info:
        load_suite(path)
    assert info.value.key == "edge.sets" and "3 features per row" in str(info.value)


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('{ max_drop = 0.01, policy = "bayesian" }', "policy", "must be one of threshold, "),
        ('{ max_drop = 0.01, policy = "significant", alpha = 0.0 }', "alpha", "(0, 1)"),
        ('{ max_drop = 0.01, policy = "significant", alpha = 1 }', "alpha", "(0, 1)"),
        ('{ max_drop = 0.01, policy = "significant", alpha = 1.5 }', "alpha", "(0, 1)"),
        ("{ max_drop = 0.01, alpha = -0.1 }", "alpha", "(0, 1)"),
        ("{ max_drop = 0.01, policy = 1 }", "policy", "must be a string"),
        ('{ min = 0.5, policy = "significant" }', "policy", "needs max_drop"),
        ('{ max_rel_drop = 0.1, policy = "non_inferior" }', "policy", "needs max_drop"),
        ('{ policy = "significant" }', "policy", "needs max_drop"),
    ],
)
def test_policy_and_alpha_validation(body: str, key: str, problem: str) -> None:
    err = _spec_error(SUITE + f'\n[gate]\n"pruned.f1_macro" = {body}\n')
    assert err.key == f"gate.pruned.f1_macro.{key}"
    assert problem in str(err)


def test_policy_and_alpha_parse_in_suite_and_case_rules() -> None:
    suite = _suite(
        """
        [gate]
        "pruned.f1_macro" = { max_drop = 0.01, policy = "significant", alpha = 0.1 }
        "vs_dense.recall.class_*" = { max_drop = 0.05, policy = "non_inferior" }
        "pruned.accuracy" = { max_drop = 0.01 }
        """
    )
    rules = {r.metric: r for r in suite.gate}
    assert rules["pruned.f1_macro"] == RuleSpec(
        "pruned.f1_macro", max_drop=0.01, policy="significant", alpha=0.1
    )
    assert rules["vs_dense.recall.class_*"].policy == "non_inferior"
    assert rules["vs_dense.recall.class_*"].alpha == 0.05
    assert rules["pruned.accuracy"].policy == "threshold"
    case = _suite(
        text=_case_key('gate = { "pie_rate" = { max_drop = 0.02, policy = "significant" } }\n')
    )
    assert case.cases[0].gate == (RuleSpec("pie_rate", max_drop=0.02, policy="significant"),)


def test_cv_repeats_and_seed() -> None:
    suite = _suite(text=_with_cv("repeats = 3\nseed = 7"))
    assert (suite.repeats, suite.fold_seed, suite.cv_seed) == (3, 7, 7)
    default = _suite()
    assert (default.repeats, default.fold_seed, default.cv_seed) == (1, None, 0)
    for line, key, problem in (
        ("repeats = 0", "cv.repeats", "must be > 0"),
        ("repeats = -2", "cv.repeats", "must be > 0"),
        ("repeats = 1.5", "cv.repeats", "must be an integer"),
        ("seed = -1", "cv.seed", "must be >= 0"),
        ('seed = "7"', "cv.seed", "must be an integer"),
    ):
        err = _spec_error(_with_cv(line))
        assert err.key == key and problem in str(err), str(err)


def _old_digest(obj: Any) -> str:
    """The hash as it was computed before the new keys (harness.spec at the previous commit)."""

    def plain(o: Any) -> Any:
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in sorted(o.items())}
        if isinstance(o, list | tuple):
            return [plain(v) for v in o]
        return o

    text = json.dumps(plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _old_spec_hash(suite: SuiteSpec) -> str:
    case = suite.cases[0]
    dense = _old_digest(
        {
            "dataset": suite.dataset,
            "dataset_args": dict(suite.dataset_args),
            "model": suite.model,
            "model_args": dict(suite.model_args),
            "seed": suite.seed,
            "threads": suite.threads,
            "folds": suite.folds,
            "train": asdict(suite.train),
        }
    )
    return _old_digest(
        {
            "dense": dense,
            "latency": asdict(suite.latency),
            "prune": asdict(case.prune),
            "finetune": asdict(case.finetune) if case.finetune else None,
        }
    )


def test_spec_hash_of_a_suite_without_the_new_keys_is_unchanged() -> None:
    plain = _suite()
    case = plain.cases[0]
    assert plain.spec_hash(case) == _old_spec_hash(plain)  # existing baselines stay valid
    explicit = _suite(text=_with_cv("repeats = 1"))
    assert explicit.spec_hash(explicit.cases[0]) == plain.spec_hash(case)
    assert explicit.dense_key() == plain.dense_key()
    # gate policies are not part of the hash
    gated = _suite('\n[gate]\n"pruned.f1_macro" = { max_drop = 0.01, policy = "significant" }\n')
    assert gated.spec_hash(gated.cases[0]) == plain.spec_hash(case)
    # an empty edge list is no edge set
    no_edge = _suite(text=SUITE.replace("[[case]]", "[edge]\nsets = []\n\n[[case]]"))
    assert no_edge.spec_hash(no_edge.cases[0]) == plain.spec_hash(case)


def _edged_with_case_edge(case_edge: str) -> str:
    text = SUITE.replace("[[case]]", '[edge]\nsets = ["blur"]\n\n[[case]]')
    return text + f"edge = {case_edge}\n"


def test_spec_hash_changes_with_the_new_keys() -> None:
    plain = _suite()
    base_hash = plain.spec_hash(plain.cases[0])
    edged = _suite(text=SUITE.replace("[[case]]", '[edge]\nsets = ["blur"]\n\n[[case]]'))
    assert edged.spec_hash(edged.cases[0]) != base_hash
    assert edged.dense_key() == plain.dense_key()  # the dense models are the same
    other = _suite(text=SUITE.replace("[[case]]", '[edge]\nsets = ["blur:2"]\n\n[[case]]'))
    assert other.spec_hash(other.cases[0]) != edged.spec_hash(edged.cases[0])
    # a case that opts out of the suite's sets hashes like a suite without any
    opt_out = _suite(text=_edged_with_case_edge("[]"))
    assert opt_out.spec_hash(opt_out.cases[0]) == base_hash
    repeated = _suite(text=_with_cv("repeats = 2"))
    assert repeated.dense_key() != plain.dense_key()
    assert repeated.spec_hash(repeated.cases[0]) != base_hash
    seeded = _suite(text=_with_cv("seed = 3"))
    assert seeded.dense_key() != plain.dense_key()
    assert seeded.spec_hash(seeded.cases[0]) != base_hash


# --------------------------------------------------------------------------------------------
# the runner on real data

EDGE_SETS = ["gaussian_noise:0", "hardest", "blur"]
EDGE_NAMES = ["gaussian_noise_0", "hardest", "blur"]
RUN_SUITE = """\
[suite]
name = "v2-run"
dataset = "sklearn:digits"
model = "harness.models:mlp"
model_args = { hidden = [32] }
seed = 0

[cv]
folds = 2
repeats = 2

[train]
epochs = 2
lr = 1e-2

[latency]
batch = 8
warmup = 0
repeats = 1

[edge]
sets = ["gaussian_noise:0", "hardest", "blur"]

[[case]]
name = "mag-70"
prune = { method = "magnitude", sparsity = 0.7 }

[[case]]
name = "no-edge"
prune = { method = "magnitude", sparsity = 0.7 }
edge = []
"""


@pytest.fixture(scope="module")
def run_suite() -> SuiteSpec:
    return suite_from_dict(tomllib.loads(RUN_SUITE), "<v2-run>")


@pytest.fixture(scope="module")
def run_result(run_suite: SuiteSpec) -> CaseResult:
    return run_case(run_suite, run_suite.cases[0])


def test_run_case_measures_every_edge_set(run_result: CaseResult) -> None:
    k = 4  # 2 folds x 2 repeats
    for name in EDGE_NAMES:
        for model in ("dense", "pruned"):
            for metric in ("accuracy", "f1_macro"):
                key = f"{model}.edge.{name}.{metric}"
                assert parse_metric(key).name == key
                summary = run_result.metrics[key]
                assert len(summary.folds) == k
                assert all(0.0 <= v <= 1.0 for v in summary.folds), key
                assert all(key in fold for fold in run_result.folds)
    # noise with sigma 0 is the validation fold itself
    for model in ("dense", "pruned"):
        for metric in ("accuracy", "f1_macro"):
            assert (
                run_result.metrics[f"{model}.edge.gaussian_noise_0.{metric}"].folds
                == run_result.metrics[f"{model}.{metric}"].folds
            )
    # the hardest samples for the dense model are the ones it gets wrong
    hard = run_result.metrics["dense.edge.hardest.accuracy"].folds
    clean = run_result.metrics["dense.accuracy"].folds
    assert all(h < c for h, c in zip(hard, clean, strict=True))


def test_case_without_edge_sets_has_no_edge_metrics(run_suite: SuiteSpec) -> None:
    result = run_case(run_suite, run_suite.cases[1])
    assert not [k for k in result.metrics if ".edge." in k]
    assert result.spec_hash != run_suite.spec_hash(run_suite.cases[0])


def test_repeats_give_repeats_times_k_folds_and_exemplars(run_result: CaseResult) -> None:
    n = 1797
    assert len(run_result.folds) == 4
    assert len(run_result.metrics["pruned.accuracy"].folds) == 4
    assert run_result.dataset["n_test"] + run_result.dataset["n_train"] == n
    assert run_result.dataset["n_test"] in (898, 899)
    ids = run_result.pie["ids"]
    assert ids == sorted(set(ids)) and all(0 <= i < n for i in ids)
    rate = run_result.metrics["pie_rate"]
    assert rate.folds == () and 0.0 <= rate.mean <= 1.0
    assert rate.mean == pytest.approx(len(ids) / n)
    assert run_result.metrics["pie_count"].mean == len(ids)
    assert run_result.metrics["pie_count"].folds == ()
    for model in ("dense", "pruned"):
        present = f"{model}.pie_accuracy" in run_result.metrics
        assert present is bool(ids)
        if present:
            assert 0.0 <= run_result.metrics[f"{model}.pie_accuracy"].mean <= 1.0
    # McNemar: b - c = (dense right) - (pruned right) over all (fold, sample) pairs
    ds = load_dataset("sklearn:digits")
    sizes = [len(f.val_idx) for f in make_folds(ds, 2, seed=0, repeats=2)]
    assert sum(sizes) == 2 * n
    dense = run_result.metrics["dense.accuracy"].folds
    pruned = run_result.metrics["pruned.accuracy"].folds
    diff = sum(s * (d - p) for s, d, p in zip(sizes, dense, pruned, strict=True))
    assert run_result.pie["mcnemar_b"] - run_result.pie["mcnemar_c"] == round(diff)
    json.dumps(run_result.to_dict())


def test_folds_and_exemplars_agree_with_run_fold(
    run_suite: SuiteSpec, run_result: CaseResult
) -> None:
    ds = load_dataset("sklearn:digits")
    folds = make_folds(ds, 2, seed=run_suite.cv_seed, repeats=2)
    # the second repeat is another split of the same samples
    assert not np.array_equal(np.sort(folds[0].val_idx), np.sort(folds[2].val_idx))
    results = []
    for fold, metrics in zip(folds, run_result.folds, strict=True):
        fr = run_fold(run_suite, run_suite.cases[0], ds, fold)
        pruned_pred = predict_logits(fr.pruned, fold.X_val).argmax(1)
        assert np.array_equal(pruned_pred, fr.pruned_pred)
        assert (fr.dense_pred == fold.y_val).mean() == metrics["dense.accuracy"]
        assert (pruned_pred == fold.y_val).mean() == metrics["pruned.accuracy"]
        expected = float((fr.dense_pred != pruned_pred).mean())
        assert metrics["disagreement_rate"] == expected
        assert fr.metrics["disagreement_rate"] == expected
        results.append(fr)
    pie = exemplars(results, ds.y, ds.n_classes)
    assert {k: pie[k] for k in ("ids", "mcnemar_b", "mcnemar_c")} == run_result.pie


def _deterministic(result: CaseResult) -> dict[str, MetricSummary]:
    return {k: v for k, v in result.metrics.items() if not parse_metric(k).hardware_bound}


def test_two_runs_give_identical_metrics(run_suite: SuiteSpec, run_result: CaseResult) -> None:
    runner._DENSE_CACHE.clear()  # train the dense models again too
    again = run_case(run_suite, run_suite.cases[0])
    assert _deterministic(again) == _deterministic(run_result)
    assert "speedup" in run_result.metrics and "speedup" not in _deterministic(run_result)
    assert again.pie == run_result.pie
    assert again.dataset == run_result.dataset


# --------------------------------------------------------------------------------------------
# end to end through the plugin

NO_MLFLOW = "--harness-no-mlflow"
EDGE_RULE = "pruned.edge.gaussian_noise_0.1.f1_macro"


def test_plugin_edge_metrics_exemplars_in_the_baseline_and_the_gate(
    tiny_project: pytest.Pytester,
) -> None:
    p = tiny_project
    suite = p.path / "suites" / "tiny.toml"
    text = suite.read_text()
    text = text.replace(
        '"pruned.accuracy" = { max_drop = 0.01 }\n',
        '"pruned.accuracy" = { max_drop = 0.01 }\n'
        '"pie_rate" = { max_drop = 0.01 }\n'
        f'"{EDGE_RULE}" = {{ max_drop = 0.01 }}\n'
        "\n[edge]\n"
        'sets = ["gaussian_noise:0.1", "hardest"]\n',
    )
    suite.write_text(text)
    res = p.runpytest("suites", NO_MLFLOW, "--harness-regen", "-k", "mag-50")
    res.assert_outcomes(passed=1)

    path = p.path / "baselines" / "tiny" / "mag-50.json"
    data = json.loads(path.read_text())
    for name in ("gaussian_noise_0.1", "hardest"):
        for model in ("dense", "pruned"):
            for metric in ("accuracy", "f1_macro"):
                assert len(data["metrics"][f"{model}.edge.{name}.{metric}"]["folds"]) == 2
    count = data["metrics"]["pie_count"]["mean"]
    assert data["metrics"]["pie_rate"]["mean"] == pytest.approx(count / 1797)
    if count:
        ids = data["pie"]["ids"]
        assert len(ids) == count and ids == sorted(ids)
    else:
        assert "pie" not in data

    res = p.runpytest("suites", NO_MLFLOW, "-k", "mag-50")
    res.assert_outcomes(passed=1)

    edited = data["metrics"][EDGE_RULE]
    edited["folds"] = [v + 0.1 for v in edited["folds"]]  # a consistent edit: folds and mean
    edited["mean"] += 0.1
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    res = p.runpytest("suites", NO_MLFLOW, "-k", "mag-50")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "tiny::mag-50: regressed",
            f"{EDGE_RULE}: baseline *, now *, allowed >= * (max_drop 0.01 vs baseline)",
        ]
    )
    res.stdout.no_fnmatch_line("pie_rate:*")
    res.stdout.no_fnmatch_line("pruned.f1_macro:*")
