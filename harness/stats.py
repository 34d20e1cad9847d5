"""Noise-aware statistics for the gate: paired fold differences, bootstrap CIs, McNemar.

The gate compares a candidate (a pruned model, or the current run) with a reference (the dense
model, or the baseline) on the same stratified k folds. The per-fold differences are paired but
not independent: the training sets of k-fold cross-validation overlap, so the plain paired t-test
underestimates the variance and raises false alarms (Dietterich 1998). :func:`corrected_ttest`
uses the variance correction of Nadeau & Bengio (2003); :func:`bootstrap_ci` gives a
distribution-free interval of the mean difference; :func:`mcnemar` compares two classifiers on
the same test samples (McNemar 1947). :func:`decide` turns per-fold worsening into a pass/fail
decision under one of :data:`POLICIES`.

Float noise: differences within ``TOL = 1e-12 * max(1, max|d_i|)`` of each other are treated as
identical, and a mean within ``TOL`` of the margin as equal to it (the gate uses the same
``1e-12`` tolerance for its bounds), so an unchanged model whose metrics are recomputed with
rounding noise behaves like one whose metrics are bit-identical.

References
----------
.. [1] C. Nadeau and Y. Bengio, "Inference for the Generalization Error", Machine Learning 52,
   239-281 (2003).
.. [2] Q. McNemar, "Note on the sampling error of the difference between correlated proportions
   or percentages", Psychometrika 12, 153-157 (1947).
.. [3] T. G. Dietterich, "Approximate Statistical Tests for Comparing Supervised Classification
   Learning Algorithms", Neural Computation 10, 1895-1923 (1998).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

EPS = 1e-12  # relative float tolerance; the same value as harness.gate.EPS
POLICIES = ("threshold", "significant", "non_inferior")
ALTERNATIVES = ("greater", "less")
CI_LEVEL = 0.95  # confidence of the CIs reported by corrected_ttest and decide
MCNEMAR_EXACT_BELOW = 25  # b + c below this: exact binomial test


@dataclass(frozen=True)
class TestResult:
    """The outcome of one statistical test.

    Attributes
    ----------
    test : str
        ``"corrected t-test"``, ``"bootstrap"`` or ``"mcnemar"``.
    statistic : float
        The test statistic: t for the corrected t-test (``±inf`` when all differences are
        identical), the continuity-corrected chi-square for McNemar, or ``b`` (the count in the
        reference's favour) for McNemar's exact binomial variant.
    p_value : float
        The p-value of the test.
    ci : tuple of float or None
        Two-sided confidence interval (95%) of the mean difference where it applies, else None.
    label : str
        How :meth:`describe` names the statistic (``"t"``, ``"chi2"``, ``"exact b"``).
    """

    __test__ = False  # not a pytest test class

    test: str
    statistic: float
    p_value: float
    ci: tuple[float, float] | None
    label: str = "statistic"

    def describe(self) -> str:
        """One line, e.g. ``"corrected t-test t=2.31, p=0.041, 95% CI [0.004, 0.031]"``."""
        text = f"{self.test} {self.label}={_g(self.statistic)}, p={self.p_value:.2g}"
        if self.ci is not None:
            text += f", {CI_LEVEL:.0%} CI [{_g(self.ci[0])}, {_g(self.ci[1])}]"
        return text


@dataclass(frozen=True)
class PolicyDecision:
    """A gate decision on per-fold worsening.

    Attributes
    ----------
    failed : bool
        Whether the candidate fails the policy.
    reason : str
        One line: the policy, the test, its statistic, p-value and CI, the margin and alpha, and
        the bootstrap CI of the mean worsening.
    result : TestResult or None
        The test behind the decision; None for ``"threshold"`` (no test) and for non-finite input.
    """

    failed: bool
    reason: str
    result: TestResult | None


def corrected_ttest(
    diffs: Sequence[float],
    *,
    n_train: int,
    n_test: int,
    margin: float = 0.0,
    alternative: str,
) -> TestResult:
    """Corrected resampled t-test of paired per-fold differences (Nadeau & Bengio 2003).

    With ``k`` differences ``d_i``,

    ``t = (mean(d) - margin) / sqrt((1/k + n_test/n_train) * var(d, ddof=1))``, ``df = k - 1``.

    The ``n_test/n_train`` term corrects the variance for the overlap of the training sets across
    folds, which makes the uncorrected paired t-test too liberal (Dietterich 1998). With it set
    to zero the statistic is the one-sample t-test of ``d - margin``.

    Zero-variance rule: when all differences are identical (within ``1e-12 * max(1, max|d|)``)
    the t statistic is undefined. Then ``p = 0.0`` if the sign of ``mean(d) - margin`` strictly
    supports H1 (positive for ``"greater"``, negative for ``"less"``), else ``p = 1.0``; a mean
    equal to the margin supports neither alternative (``t = 0``, ``p = 1``), otherwise
    ``t = ±inf``. Deterministic training makes identical folds common, and an unchanged model
    (all differences 0, margin >= 0) is then never significantly worse.

    Parameters
    ----------
    diffs : sequence of float
        Paired per-fold differences, at least two, all finite.
    n_train, n_test : int
        Training and test set sizes of one fold (positive).
    margin : float, default 0.0
        The value of the mean difference under H0.
    alternative : {"greater", "less"}
        H1: ``mean(d) > margin`` or ``mean(d) < margin``.

    Returns
    -------
    TestResult
        ``test="corrected t-test"``, the t statistic, the one-sided p-value and the two-sided 95%
        confidence interval of ``mean(d)`` with the corrected standard error.

    Raises
    ------
    ValueError
        Fewer than two differences, a non-finite difference or margin, ``n_train`` or ``n_test``
        not positive, or an unknown ``alternative``.

    References
    ----------
    C. Nadeau and Y. Bengio, "Inference for the Generalization Error", Machine Learning 52 (2003).
    """
    d = _finite(diffs, "diffs")
    if d.size < 2:
        raise ValueError(f"the corrected t-test needs at least 2 folds, got {d.size}")
    _sizes(n_train, n_test)
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if not math.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin}")
    k = d.size
    mean = float(np.mean(d))
    effect = mean - margin
    tol = _tol(d)
    if _identical(d, tol):
        if abs(effect) <= tol:
            return TestResult("corrected t-test", 0.0, 1.0, (mean, mean), "t")
        supports = effect > 0 if alternative == "greater" else effect < 0
        t = math.copysign(math.inf, effect)
        return TestResult("corrected t-test", t, 0.0 if supports else 1.0, (mean, mean), "t")
    se = math.sqrt((1.0 / k + n_test / n_train) * float(np.var(d, ddof=1)))
    t = effect / se
    df = k - 1
    p = float(_st.t.sf(t, df) if alternative == "greater" else _st.t.cdf(t, df))
    half = float(_st.t.ppf(0.5 + CI_LEVEL / 2, df)) * se
    return TestResult("corrected t-test", float(t), p, (mean - half, mean + half), "t")


def bootstrap_ci(
    diffs: Sequence[float],
    *,
    confidence: float = 0.95,
    seed: int = 0,
    n_resamples: int = 2000,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean difference.

    Uses :func:`scipy.stats.bootstrap` (``method="percentile"``) with a generator seeded by
    ``seed``, so the interval is deterministic. It makes no normality assumption but, with the
    few folds of cross-validation, it ignores the correlation between folds and tends to be
    narrow: report it next to the corrected t-test (Nadeau & Bengio 2003), don't test with it.

    Parameters
    ----------
    diffs : sequence of float
        Per-fold differences, at least one, all finite.
    confidence : float, default 0.95
        Confidence level, in (0, 1).
    seed : int, default 0
        Seed of the resampling generator.
    n_resamples : int, default 2000
        Number of bootstrap resamples (positive).

    Returns
    -------
    (low, high) : tuple of float
        The interval; ``(x, x)`` when all differences equal ``x`` (within
        ``1e-12 * max(1, max|d|)``), including a single difference.

    Raises
    ------
    ValueError
        No differences, a non-finite difference, ``confidence`` outside (0, 1) or
        ``n_resamples`` not positive.
    """
    d = _finite(diffs, "diffs")
    if d.size < 1:
        raise ValueError("bootstrap_ci needs at least 1 difference, got none")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if _identical(d, _tol(d)):
        mean = float(np.mean(d))
        return (mean, mean)
    res = _st.bootstrap(
        (d,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def mcnemar(b: int, c: int) -> TestResult:
    """McNemar's test of two classifiers on the same test samples (McNemar 1947).

    Only the discordant samples count: ``b`` the reference classified correctly and the
    candidate did not, ``c`` the reverse. Under H0 (equal error rates) ``b ~ Binomial(b + c,
    1/2)``. Dietterich (1998) recommends the test for comparing classifiers evaluated once.

    * ``b + c < 25``: exact two-sided binomial test, ``scipy.stats.binomtest(b, b + c, 0.5)``;
      the statistic is ``b`` (labelled ``"exact b"``).
    * otherwise: chi-square with continuity correction, ``(|b - c| - 1)^2 / (b + c)`` with one
      degree of freedom (labelled ``"chi2"``); the correction stops at zero, so ``b == c``
      gives statistic 0 and p 1 rather than ``1 / (b + c)``.
    * ``b + c == 0``: no evidence either way, statistic 0 and p 1.

    Parameters
    ----------
    b, c : int
        Discordant counts, not negative.

    Returns
    -------
    TestResult
        ``test="mcnemar"``, two-sided p-value, ``ci=None``.

    Raises
    ------
    ValueError
        ``b`` or ``c`` negative or not an integer.
    """
    for name, v in (("b", b), ("c", c)):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer count, got {v!r}")
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return TestResult("mcnemar", 0.0, 1.0, None, "chi2")
    if n < MCNEMAR_EXACT_BELOW:
        p = float(_st.binomtest(b, n, 0.5).pvalue)
        return TestResult("mcnemar", float(b), min(p, 1.0), None, "exact b")
    chi2 = max(abs(b - c) - 1, 0) ** 2 / n
    return TestResult("mcnemar", float(chi2), float(_st.chi2.sf(chi2, 1)), None, "chi2")


def decide(
    policy: str,
    worsening: Sequence[float],
    *,
    margin: float,
    alpha: float,
    n_train: int,
    n_test: int,
    seed: int = 0,
) -> PolicyDecision:
    """Decide whether a candidate regressed, from its per-fold worsening.

    ``worsening[i]`` is how much worse the candidate is than the reference on fold ``i``, in the
    metric's bad direction (positive = worse): ``reference - now`` for a higher-is-better metric,
    ``now - reference`` for a lower-is-better one.

    Policies (:data:`POLICIES`):

    ``"threshold"``
        Fail when ``mean(worsening) > margin`` (beyond float tolerance); no test. The same rule
        as the gate's ``max_drop`` applied to the mean over folds.
    ``"significant"``
        Fail when the mean worsening exceeds the margin and is significant: corrected t-test
        (Nadeau & Bengio 2003) with H1 ``mean > 0``, fail if ``mean > margin`` and
        ``p < alpha``. A drop beyond the margin that the folds cannot tell from noise passes;
        the burden of proof is on a regression.
    ``"non_inferior"``
        Fail unless non-inferiority is shown: corrected t-test with H1 ``mean < margin``, pass
        only if ``p < alpha``. The burden of proof is on the candidate; with few or noisy folds
        it fails. All-identical worsening below the margin passes (zero-variance rule of
        :func:`corrected_ttest`), so an unchanged model passes when ``margin > 0``; with
        ``margin <= 0`` an unchanged model cannot show non-inferiority and fails.

    Every reason also carries the percentile bootstrap 95% CI of the mean worsening
    (:func:`bootstrap_ci` with ``seed``). A non-finite worsening (a metric that came out NaN)
    fails under every policy, as it does in the gate.

    Parameters
    ----------
    policy : {"threshold", "significant", "non_inferior"}
    worsening : sequence of float
        Per-fold worsening, paired by fold; at least two values for the tested policies.
    margin : float
        Allowed mean worsening (finite).
    alpha : float
        Significance level, in (0, 1).
    n_train, n_test : int
        Training and test set sizes of one fold (positive), for the variance correction.
    seed : int, default 0
        Seed of the bootstrap.

    Returns
    -------
    PolicyDecision

    Raises
    ------
    ValueError
        Unknown policy, alpha outside (0, 1), non-finite margin, ``n_train`` or ``n_test`` not
        positive, no worsening values, or fewer than two folds for a tested policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    _decision_args(alpha, margin, n_train, n_test)
    w = np.asarray(worsening, dtype=float).ravel()
    if w.size == 0:
        raise ValueError("no worsening values")
    if policy != "threshold" and w.size < 2:
        raise ValueError(f"policy {policy!r} needs at least 2 folds, got {w.size}")
    if not np.all(np.isfinite(w)):
        return PolicyDecision(
            True, f"{policy}: FAIL, non-finite worsening {w.tolist()} (margin {margin:g})", None
        )
    folds: list[float] = w.tolist()
    mean = float(np.mean(w))
    low, high = bootstrap_ci(folds, confidence=CI_LEVEL, seed=seed)
    boot = f"bootstrap {CI_LEVEL:.0%} CI [{_g(low)}, {_g(high)}]"
    if policy == "threshold":
        failed = mean - margin > _tol(w)
        op = ">" if failed else "<="
        verdict = "FAIL" if failed else "pass"
        reason = f"threshold: {verdict}, mean worsening {_g(mean)} {op} margin {margin:g} (no test)"
        return PolicyDecision(failed, f"{reason}; {boot}", None)
    if policy == "significant":
        res = corrected_ttest(
            folds, n_train=n_train, n_test=n_test, margin=0.0, alternative="greater"
        )
        beyond = mean - margin > _tol(w)
        failed = beyond and res.p_value < alpha
        why = (
            "significant and above"
            if failed
            else "above but not significant, vs"
            if beyond
            else "not above"
        )
    else:
        res = corrected_ttest(
            folds, n_train=n_train, n_test=n_test, margin=margin, alternative="less"
        )
        failed = not res.p_value < alpha
        why = "not shown below" if failed else "significantly below"
    verdict = "FAIL" if failed else "pass"
    reason = (
        f"{policy}: {verdict}, mean worsening {_g(mean)} {why} margin {margin:g} "
        f"({res.describe()}; alpha {alpha:g}; {boot})"
    )
    if policy == "non_inferior" and margin <= 0 and failed:
        reason += "; non-inferiority needs margin > 0"
    return PolicyDecision(failed, reason, res)


def noise_floor(
    worsening: Sequence[float],
    control: Sequence[float],
    *,
    margin: float,
    alpha: float,
    n_train: int,
    n_test: int,
) -> PolicyDecision:
    """Judge a rule against a baseline from other hardware, with the dense model as the control.

    The dense model of a case is trained from the same data, seed and spec in the baseline's run
    and in this one, so on the same machine its metrics are bit-identical; on another machine
    they differ by exactly what the machine does to training. ``control[i]`` is that difference
    on fold ``i`` for the same metric of the dense model (this run minus the baseline's). Its
    root mean square ``s`` estimates the per-fold hardware noise, and the allowance on the mean
    is that of the corrected resampled t-test (Nadeau & Bengio 2003):

    ``fail if mean(worsening) > margin + t_{1-alpha, k-1} * s * sqrt(1/k + n_test/n_train)``.

    With no hardware noise (``s = 0``) this is the plain threshold at ``margin``, so detection is
    not given away where the machine changes nothing; where it changes a lot, the allowance grows
    with it. The bootstrap CI of the mean worsening is reported as for :func:`decide`.

    Raises
    ------
    ValueError
        Fewer than two folds, lengths that differ, non-finite control values or margin, alpha
        outside (0, 1), or ``n_train`` / ``n_test`` not positive.
    """
    _decision_args(alpha, margin, n_train, n_test)
    w = np.asarray(worsening, dtype=float).ravel()
    c = _finite(control, "control")
    if w.size < 2 or w.size != c.size:
        raise ValueError(
            f"noise_floor needs >= 2 paired folds, got {w.size} worsening, {c.size} control"
        )
    if not np.all(np.isfinite(w)):
        reason = f"noise_floor: FAIL, non-finite worsening {w.tolist()} (margin {margin:g})"
        return PolicyDecision(True, reason, None)
    k = w.size
    noise = float(np.sqrt(np.mean(c**2)))
    t_crit = float(_st.t.ppf(1.0 - alpha, k - 1))
    allowance = t_crit * noise * math.sqrt(1.0 / k + n_test / n_train)
    mean = float(np.mean(w))
    failed = mean - (margin + allowance) > _tol(w)
    low, high = bootstrap_ci(w.tolist(), confidence=CI_LEVEL)
    reason = (
        f"noise_floor: {'FAIL' if failed else 'pass'}, mean worsening {_g(mean)} "
        f"{'>' if failed else '<='} margin {margin:g} + hardware noise allowance {_g(allowance)}"
        f" (dense model's per-fold RMS change {_g(noise)}, t={_g(t_crit)}, alpha {alpha:g}; "
        f"bootstrap {CI_LEVEL:.0%} CI [{_g(low)}, {_g(high)}])"
    )
    return PolicyDecision(failed, reason, None)


def _finite(values: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a.tolist()}")
    return a


def _decision_args(alpha: float, margin: float, n_train: int, n_test: int) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not math.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin}")
    _sizes(n_train, n_test)


def _sizes(n_train: int, n_test: int) -> None:
    if not (n_train > 0 and n_test > 0):
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")


def _tol(d: np.ndarray) -> float:
    return EPS * max(1.0, float(np.max(np.abs(d)))) if d.size else EPS


def _identical(d: np.ndarray, tol: float) -> bool:
    return bool(np.ptp(d) <= tol)


def _g(x: float) -> str:
    return f"{x:.3g}"
