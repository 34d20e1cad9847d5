"""harness.stats: the corrected t-test, bootstrap CIs, McNemar and the gate policies."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from harness import stats
from harness.stats import POLICIES, bootstrap_ci, corrected_ttest, decide, mcnemar

D = [0.01, 0.02, 0.015, 0.03, 0.005]  # k = 5 folds
N_TRAIN, N_TEST = 800, 200  # 5-fold CV on 1000 samples

folds = st.lists(
    st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False), min_size=2, max_size=8
)
margins = st.floats(-0.5, 0.5, allow_nan=False, allow_infinity=False)
alphas = st.sampled_from([0.01, 0.05, 0.1, 0.2])
policies = st.sampled_from(POLICIES)
sizes = st.tuples(st.integers(1, 10_000), st.integers(1, 10_000))
SETTINGS = settings(max_examples=60, deadline=None)


# --- corrected t-test ------------------------------------------------------------------------


def _by_hand(d: list[float], margin: float, n_train: int, n_test: int) -> float:
    k = len(d)
    mean = sum(d) / k
    var = sum((x - mean) ** 2 for x in d) / (k - 1)
    return (mean - margin) / math.sqrt((1 / k + n_test / n_train) * var)


def test_corrected_t_known_example() -> None:
    # mean 0.016, var(ddof=1) = 0.00037 / 4 = 9.25e-5, (1/5 + 200/800) = 0.45
    t_hand = (0.016 - 0.005) / math.sqrt(0.45 * 9.25e-5)
    assert _by_hand(D, 0.005, N_TRAIN, N_TEST) == pytest.approx(t_hand, rel=1e-12)
    res = corrected_ttest(D, n_train=N_TRAIN, n_test=N_TEST, margin=0.005, alternative="greater")
    assert res.test == "corrected t-test"
    assert res.statistic == pytest.approx(t_hand, rel=1e-12)
    assert res.p_value == pytest.approx(sps.t.sf(t_hand, 4), rel=1e-12)
    less = corrected_ttest(D, n_train=N_TRAIN, n_test=N_TEST, margin=0.005, alternative="less")
    assert less.statistic == res.statistic
    assert less.p_value == pytest.approx(sps.t.cdf(t_hand, 4), rel=1e-12)
    assert res.p_value + less.p_value == pytest.approx(1.0)
    # the CI is the two-sided 95% interval of the mean with the corrected standard error
    se = math.sqrt(0.45 * 9.25e-5)
    half = sps.t.ppf(0.975, 4) * se
    assert res.ci == pytest.approx((0.016 - half, 0.016 + half), rel=1e-12)


@SETTINGS
@given(folds, margins, sizes)
def test_corrected_t_formula(d: list[float], margin: float, nn: tuple[int, int]) -> None:
    if np.ptp(d) <= 1e-9:
        return  # the zero-variance rule applies (tested below)
    n_train, n_test = nn
    res = corrected_ttest(d, n_train=n_train, n_test=n_test, margin=margin, alternative="greater")
    t = _by_hand(d, margin, n_train, n_test)
    assert res.statistic == pytest.approx(t, rel=1e-9, abs=1e-9)
    assert res.p_value == pytest.approx(sps.t.sf(res.statistic, len(d) - 1), rel=1e-9, abs=1e-12)


@SETTINGS
@given(folds, margins, st.sampled_from(["greater", "less"]))
def test_without_correction_is_ttest_1samp(d: list[float], margin: float, alt: str) -> None:
    """n_test/n_train -> 0 leaves the plain one-sample t-test of d against the margin."""
    if np.ptp(d) <= 1e-9:
        return
    res = corrected_ttest(d, n_train=10**15, n_test=1, margin=margin, alternative=alt)
    ref = sps.ttest_1samp(d, popmean=margin, alternative=alt)
    assert res.statistic == pytest.approx(float(ref.statistic), rel=1e-6, abs=1e-9)
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-6, abs=1e-9)


def test_correction_widens_the_test() -> None:
    plain = corrected_ttest(D, n_train=10**15, n_test=1, alternative="greater")
    corrected = corrected_ttest(D, n_train=N_TRAIN, n_test=N_TEST, alternative="greater")
    assert 0 < corrected.statistic < plain.statistic
    assert corrected.p_value > plain.p_value


@pytest.mark.parametrize(
    ("value", "margin", "alternative", "t", "p"),
    [
        (0.0, 0.0, "greater", 0.0, 1.0),  # at the margin: supports neither H1
        (0.0, 0.0, "less", 0.0, 1.0),
        (0.0, 0.01, "greater", -math.inf, 1.0),
        (0.0, 0.01, "less", -math.inf, 0.0),  # unchanged model, margin > 0: non-inferior
        (0.1, 0.01, "greater", math.inf, 0.0),
        (0.1, 0.01, "less", math.inf, 1.0),
        (0.01, 0.01, "greater", 0.0, 1.0),
    ],
)
def test_zero_variance_rule(
    value: float, margin: float, alternative: str, t: float, p: float
) -> None:
    res = corrected_ttest(
        [value] * 5, n_train=N_TRAIN, n_test=N_TEST, margin=margin, alternative=alternative
    )
    assert (res.statistic, res.p_value, res.ci) == (t, p, (value, value))


def test_zero_variance_tolerates_float_noise() -> None:
    # 0.8 - 0.79 is 0.010000000000000009: equal to the margin 0.01 up to rounding
    noisy = [0.8 - 0.79, 0.01, 0.5 - 0.49]
    res = corrected_ttest(noisy, n_train=4, n_test=1, margin=0.01, alternative="greater")
    assert (res.statistic, res.p_value) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"diffs": [0.1]}, "at least 2 folds"),
        ({"diffs": []}, "at least 2 folds"),
        ({"n_train": 0}, "n_train and n_test must be positive"),
        ({"n_test": -1}, "n_train and n_test must be positive"),
        ({"alternative": "two-sided"}, "alternative"),
        ({"diffs": [0.1, math.nan]}, "finite"),
        ({"margin": math.inf}, "margin"),
    ],
)
def test_ttest_bad_input(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "diffs": D,
        "n_train": N_TRAIN,
        "n_test": N_TEST,
        "alternative": "greater",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        corrected_ttest(**args)  # type: ignore[arg-type]


def test_describe() -> None:
    res = corrected_ttest(D, n_train=N_TRAIN, n_test=N_TEST, alternative="greater")
    text = res.describe()
    assert re.fullmatch(
        r"corrected t-test t=[-\d.e+]+, p=[\d.e-]+, 95% CI \[[-\d.e]+, [-\d.e]+\]", text
    ), text
    example = stats.TestResult("corrected t-test", 2.3108, 0.0412, (0.0041, 0.0312), "t")
    assert example.describe() == "corrected t-test t=2.31, p=0.041, 95% CI [0.0041, 0.0312]"
    assert mcnemar(3, 10).describe() == f"mcnemar exact b=3, p={mcnemar(3, 10).p_value:.2g}"
    assert mcnemar(10, 30).describe().startswith("mcnemar chi2=9.03, p=")


# --- McNemar ---------------------------------------------------------------------------------


@given(st.integers(0, 24), st.integers(0, 24))
def test_mcnemar_small_is_exact_binomial(b: int, c: int) -> None:
    if not 0 < b + c < 25:
        return
    res = mcnemar(b, c)
    assert res.test == "mcnemar"
    assert res.statistic == b
    assert res.p_value == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
    assert res.ci is None


@given(st.integers(0, 500), st.integers(0, 500))
def test_mcnemar_large_is_corrected_chi_square(b: int, c: int) -> None:
    if b + c < 25:
        return
    res = mcnemar(b, c)
    chi2 = (abs(b - c) - 1) ** 2 / (b + c) if b != c else 0.0  # correction stops at zero
    assert res.statistic == pytest.approx(chi2, rel=1e-12)
    assert res.p_value == pytest.approx(sps.chi2.sf(chi2, 1), rel=1e-12)


def test_mcnemar_edges() -> None:
    assert (mcnemar(0, 0).statistic, mcnemar(0, 0).p_value) == (0.0, 1.0)
    assert mcnemar(12, 12).p_value == 1.0  # exact, b + c = 24
    assert mcnemar(20, 5).statistic == pytest.approx(14**2 / 25)  # chi-square from b + c = 25
    assert mcnemar(0, 10).p_value == pytest.approx(2 * 0.5**10)
    assert mcnemar(30, 0).p_value < 1e-6
    for b, c in ((-1, 3), (3, -1), (1.5, 2)):
        with pytest.raises(ValueError, match="non-negative integer"):
            mcnemar(b, c)  # type: ignore[arg-type]


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_contains_mean_and_is_deterministic() -> None:
    low, high = bootstrap_ci(D, seed=3)
    assert low < float(np.mean(D)) < high
    assert min(D) <= low and high <= max(D)
    assert bootstrap_ci(D, seed=3) == (low, high)
    assert bootstrap_ci(D, seed=4) != (low, high)
    ref = sps.bootstrap(
        (np.asarray(D),),
        np.mean,
        confidence_level=0.95,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert (low, high) == (ref.low, ref.high)
    # the same resamples: a lower confidence gives a nested interval
    l90, h90 = bootstrap_ci(D, seed=3, confidence=0.9)
    assert low <= l90 <= h90 <= high


@SETTINGS
@given(folds, st.integers(0, 2**31))
def test_bootstrap_properties(d: list[float], seed: int) -> None:
    low, high = bootstrap_ci(d, seed=seed, n_resamples=500)
    assert min(d) - 1e-12 <= low <= high <= max(d) + 1e-12
    assert bootstrap_ci(d, seed=seed, n_resamples=500) == (low, high)


def test_bootstrap_degenerate_and_bad_input() -> None:
    assert bootstrap_ci([0.02] * 5) == (0.02, 0.02)
    assert bootstrap_ci([0.02]) == (0.02, 0.02)
    for kwargs, match in (
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
        ({"n_resamples": 0}, "n_resamples"),
    ):
        with pytest.raises(ValueError, match=match):
            bootstrap_ci(D, **kwargs)
    with pytest.raises(ValueError, match="at least 1"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.1, math.inf])


# --- policies --------------------------------------------------------------------------------


def _decide(
    policy: str, w: list[float], margin: float, alpha: float = 0.05
) -> stats.PolicyDecision:
    return decide(policy, w, margin=margin, alpha=alpha, n_train=N_TRAIN, n_test=N_TEST)


@SETTINGS
@given(policies, st.integers(2, 10), st.floats(1e-9, 0.5), alphas)
def test_unchanged_model_never_fails(policy: str, k: int, margin: float, alpha: float) -> None:
    """(1) Identical zero worsening passes every policy when margin > 0."""
    decision = _decide(policy, [0.0] * k, margin, alpha)
    assert not decision.failed, decision.reason


@pytest.mark.parametrize("policy", ["threshold", "significant"])
def test_unchanged_model_margin_zero(policy: str) -> None:
    assert not _decide(policy, [0.0] * 5, 0.0).failed


def test_non_inferior_margin_zero_cannot_be_shown() -> None:
    """Documented: with margin 0 an unchanged model cannot show non-inferiority."""
    decision = _decide("non_inferior", [0.0] * 5, 0.0)
    assert decision.failed
    assert decision.result is not None and decision.result.p_value == 1.0
    assert "needs margin > 0" in decision.reason


@SETTINGS
@given(folds, margins, margins, alphas)
def test_significant_is_monotone_in_margin(
    w: list[float], m1: float, m2: float, alpha: float
) -> None:
    """(2) A larger margin never turns a pass into a fail."""
    low, high = sorted((m1, m2))
    if not _decide("significant", w, low, alpha).failed:
        assert not _decide("significant", w, high, alpha).failed


@SETTINGS
@given(st.lists(st.floats(-1, 1), min_size=1, max_size=8), margins)
def test_threshold_fails_iff_mean_above_margin(w: list[float], margin: float) -> None:
    """(3) Beyond the float tolerance 1e-12 * max(1, max|w|), as in the gate."""
    mean = float(np.mean(w))
    decision = _decide("threshold", w, margin)
    assert decision.failed == (mean - margin > 1e-12 * max(1.0, max(abs(x) for x in w)))
    assert decision.result is None
    if abs(mean - margin) > 1e-9:
        assert decision.failed == (mean > margin)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("w", [[0.1] * 5, [0.1, 0.11, 0.09, 0.1, 0.12]])
def test_clear_worsening_fails_everywhere(policy: str, w: list[float]) -> None:
    """(4) All folds far worse than the margin fail every policy."""
    decision = _decide(policy, w, 0.01)
    assert decision.failed, decision.reason


@SETTINGS
@given(policies, folds, margins, alphas, st.integers(0, 100))
def test_decisions_are_deterministic(
    policy: str, w: list[float], margin: float, alpha: float, seed: int
) -> None:
    """(5) The same input gives the same decision, reason and result."""

    def run() -> stats.PolicyDecision:
        return decide(
            policy, w, margin=margin, alpha=alpha, n_train=N_TRAIN, n_test=N_TEST, seed=seed
        )

    assert run() == run()


@pytest.mark.parametrize("policy", POLICIES)
def test_reason_is_one_line_with_everything(policy: str) -> None:
    decision = _decide(policy, D, 0.005)
    reason = decision.reason
    assert "\n" not in reason
    assert reason.startswith(f"{policy}: ")
    assert "margin 0.005" in reason
    assert "bootstrap 95% CI [" in reason
    if policy == "threshold":
        assert decision.result is None and "no test" in reason
    else:
        assert decision.result is not None and decision.result.test == "corrected t-test"
        assert decision.result.describe() in reason
        assert "alpha 0.05" in reason


def test_significant_and_non_inferior_disagree_on_noise() -> None:
    """Noisy folds around zero: not significantly worse, but not shown non-inferior either."""
    w = [0.02, -0.015, 0.01, -0.02, 0.012]
    assert not _decide("significant", w, 0.005).failed
    assert _decide("non_inferior", w, 0.005).failed


def test_non_finite_worsening_fails() -> None:
    for policy in POLICIES:
        decision = _decide(policy, [0.0, math.nan, 0.0], 0.01)
        assert decision.failed and decision.result is None
        assert "non-finite" in decision.reason


@pytest.mark.parametrize(
    ("policy", "w", "kwargs", "match"),
    [
        ("bogus", D, {}, "unknown policy"),
        ("significant", [0.1], {}, "at least 2 folds"),
        ("non_inferior", [0.1], {}, "at least 2 folds"),
        ("threshold", [], {}, "no worsening"),
        ("threshold", D, {"alpha": 0.0}, "alpha"),
        ("significant", D, {"alpha": 1.0}, "alpha"),
        ("significant", D, {"n_train": 0}, "n_train"),
        ("threshold", D, {"n_test": 0}, "n_test"),
        ("threshold", D, {"margin": math.nan}, "margin"),
    ],
)
def test_decide_bad_input(
    policy: str, w: list[float], kwargs: dict[str, float], match: str
) -> None:
    args: dict[str, float] = {"margin": 0.01, "alpha": 0.05, "n_train": 4, "n_test": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        decide(policy, w, **args)  # type: ignore[arg-type]


def test_threshold_single_fold() -> None:
    assert _decide("threshold", [0.02], 0.01).failed
    assert not _decide("threshold", [0.005], 0.01).failed


def test_simulated_error_rates() -> None:
    """5 folds, 300 trials: few false alarms under noise, reliable detection of a true drop."""
    rng = np.random.default_rng(0)

    def rate(mu: float) -> float:
        fails = 0
        for _ in range(300):
            w = rng.normal(mu, 0.01, size=5).tolist()
            d = decide("significant", w, margin=0.0, alpha=0.05, n_train=4, n_test=1)
            fails += d.failed
        return fails / 300

    assert rate(0.0) < 0.1
    assert rate(0.03) > 0.8
