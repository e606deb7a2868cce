"""The statistics behind every verdict: a paired test over seeds (is configuration A better than B?).

Pure Python + scipy (no Ray, no MLflow, no torch). Why a paired t-test (``scipy.stats.ttest_1samp`` on the per-seed
differences) rather than the almost-stochastic-order test (ASO, Dror et al. 2019) that some NLP papers
use: our comparisons have 2–5 seeds per configuration, where ASO's violation ratio rests on a handful of points and
its implementation (``deepsig``) is a small, rarely released package; the t-test is in scipy, gives the confidence
interval of the mean gain that every verdict prints, and with paired differences (the seed fixes data order, head
init and dropout draws of both runs) its normality assumption is about one number per seed. Its weakness is the
same as any test's at 3 seeds: wide intervals. That is the truth about 3 seeds, and the interval says it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95  # the default confidence of every verdict
TEST_NAME = "paired t-test over seeds"


@dataclass(frozen=True)
class PairedTest:
    """A − B at each seed both finished: the mean gain, its confidence interval and the two-sided p-value."""

    n: int  # seeds (pairs)
    mean: float | None  # the mean paired gain
    low: float | None  # its two-sided confidence interval at ``confidence`` (None with fewer than 2 pairs)
    high: float | None
    p: float | None  # two-sided p-value for a mean gain of 0 (None with fewer than 2 pairs)
    statistic: float | None  # the t statistic
    confidence: float = CONFIDENCE
    wins: int = 0  # seeds at which A is better

    @property
    def significant(self) -> bool:
        """A beats B beyond the seeds' noise: the whole interval lies above 0."""
        return self.low is not None and self.low > 0

    @property
    def ruled_out(self) -> bool:
        """A is worse than B beyond the seeds' noise: the whole interval lies below 0."""
        return self.high is not None and self.high < 0

    def ci(self) -> str:
        """``95% CI [0.010, 0.040]`` (or why there is none)."""
        if self.low is None or self.high is None:
            return f"{self.confidence:.0%} CI needs 2 seeds"
        return f"{self.confidence:.0%} CI [{self.low:+.3f}, {self.high:+.3f}]"

    def line(self) -> str:
        """``+0.021, 95% CI [+0.004, +0.038], t=5.31, p=0.034 (paired t-test over seeds, n=3, better at 3)``"""
        if self.mean is None:
            return "no seed where both finished"
        if self.p is None:
            return f"{self.mean:+.3f} at 1 seed ({self.ci()})"
        return (f"{self.mean:+.3f}, {self.ci()}, t={self.statistic:.2f}, p={self.p:.3f} "
                f"({TEST_NAME}, n={self.n}, better at {self.wins})")


def paired_test(gains: list[float], confidence: float = CONFIDENCE) -> PairedTest:
    """The paired t-test of ``gains`` (A − B per seed): mean, two-sided interval at ``confidence`` and p-value."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: must be between 0 and 1")
    vals = [float(g) for g in gains if g is not None and math.isfinite(g)]
    n = len(vals)
    if n == 0:
        return PairedTest(0, None, None, None, None, None, confidence)
    mean = sum(vals) / n
    wins = sum(g > 0 for g in vals)
    if n < 2:
        return PairedTest(n, mean, None, None, None, None, confidence, wins)
    from scipy import stats  # imported where it is used (a heavy import)

    if max(vals) == min(vals):  # no spread: t is infinite (or undefined at 0); scipy warns and returns nan
        p = 0.0 if mean else 1.0
        t = math.copysign(math.inf, mean) if mean else 0.0
        return PairedTest(n, mean, mean, mean, p, t, confidence, wins)
    res = stats.ttest_1samp(vals, 0.0)
    ci = res.confidence_interval(confidence_level=confidence)
    return PairedTest(n, mean, float(ci.low), float(ci.high), float(res.pvalue), float(res.statistic), confidence, wins)
