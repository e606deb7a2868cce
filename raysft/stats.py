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


# ------------------------------------------------------------------------------------------- bootstrap of a dev score
# A trial's dev score is an average over target languages of a metric over each language's examples: it moves with
# which examples happen to be in the dev sets. Its interval resamples the examples, each language's on its own
# (stratified: a language's size is fixed by its dev set, and the average weights languages equally, not examples), so
# the interval is about the average the objective uses and not about a pooled score.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: a trial's interval is the same at every rerun and for any number of workers
BOOTSTRAP_METHOD = "stratified percentile bootstrap over examples"


def accuracy(preds, labels, axis: int = -1):
    """The share of ``preds`` equal to ``labels`` along ``axis`` (vectorised over the other axes)."""
    import numpy as np

    return np.mean(np.asarray(preds) == np.asarray(labels), axis=axis)


def macro_f1(preds, labels, axis: int = -1):
    """Macro-F1 along ``axis``, vectorised over the other axes, with :func:`raysft.tasks.base.metrics`' semantics:
    averaged over the classes present in labels or preds of each sample (of each resample, in a bootstrap), a zero
    denominator counting as 0. Per class F1 = 2·tp / (predicted + true), the same as 2PR / (P + R)."""
    import numpy as np

    p = np.moveaxis(np.asarray(preds), axis, -1)
    y = np.moveaxis(np.asarray(labels), axis, -1)
    total = np.zeros(p.shape[:-1])
    present = np.zeros(p.shape[:-1])
    for c in np.union1d(np.unique(p), np.unique(y)):  # a class absent from the sample is absent from every resample
        is_p, is_y = p == c, y == c
        denom = is_p.sum(-1) + is_y.sum(-1)
        total += 2 * (is_p & is_y).sum(-1) / np.maximum(denom, 1)
        present += denom > 0
    return total / np.maximum(present, 1)


SCORES = {"acc": accuracy, "f1": macro_f1}  # the tasks' metrics (Task.metric) as vectorised statistics


@dataclass(frozen=True)
class BootstrapInterval:
    """The interval of an average over languages of a metric, from a stratified bootstrap of their examples."""

    estimate: float  # the average on the examples themselves
    low: float
    high: float
    confidence: float
    resamples: int
    examples: int  # over all the languages
    langs: int
    method: str = BOOTSTRAP_METHOD

    def as_dict(self) -> dict:
        """What metrics.json keeps (``avg_ci``: the estimate is ``avg`` beside it)."""
        return {"low": self.low, "high": self.high, "confidence": self.confidence, "resamples": self.resamples,
                "examples": self.examples, "langs": self.langs, "method": self.method}

    def line(self) -> str:
        """``0.612 (95% CI 0.590–0.634 over 1,000 bootstrap resamples of 2,100 examples)``"""
        return f"{self.estimate:.3f} {interval_text(self.as_dict())}"


def interval_text(ci: dict) -> str:
    """``(95% CI 0.590–0.634 over 1,000 bootstrap resamples of 2,100 examples)`` from an ``avg_ci`` entry."""
    return (f"({ci['confidence']:.0%} CI {ci['low']:.3f}–{ci['high']:.3f} over {ci['resamples']:,} bootstrap "
            f"resamples of {ci['examples']:,} examples)")


def language_distribution(preds, labels, metric: str, *, resamples: int = BOOTSTRAP_RESAMPLES, rng=None):
    """The bootstrap distribution (``resamples`` values) of ``metric`` over one language's examples, resampled as
    (prediction, label) pairs. A language with fewer than 2 examples has no spread to measure: its value repeats."""
    import numpy as np
    from scipy import stats  # imported where it is used (a heavy import)

    score = SCORES[metric]
    p, y = np.asarray(preds).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"bootstrap: {p.size} predictions but {y.size} labels")
    if p.size < 2:
        return np.full(resamples, float(score(p, y)) if p.size else float("nan"))
    res = stats.bootstrap((p, y), score, paired=True, vectorized=True, n_resamples=resamples,
                          method="percentile", random_state=rng)
    return np.asarray(res.bootstrap_distribution, dtype=float)


def bootstrap_average(samples: dict, metric: str, *, confidence: float = CONFIDENCE,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> BootstrapInterval | None:
    """The interval at ``confidence`` of the average over languages of ``metric`` (``acc`` or ``f1``).

    ``samples``: ``{lang: (preds, labels)}``. Each language is resampled on its own (``scipy.stats.bootstrap``,
    paired, percentile) with a generator seeded by ``seed`` and the language's name, so a language's draws are
    independent of the others' and do not depend on which languages are scored beside it or in which order; the
    average's distribution is the element-wise mean of the languages' and the interval its percentiles. None when
    there is no language."""
    import zlib

    import numpy as np

    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: must be between 0 and 1")
    if metric not in SCORES:
        raise ValueError(f"bootstrap: no vectorised statistic for metric {metric!r} (known: {', '.join(SCORES)})")
    if not samples:
        return None
    dists, points, examples = [], [], 0
    for lang, (preds, labels) in samples.items():
        rng = np.random.default_rng([seed, zlib.crc32(str(lang).encode())])
        dists.append(language_distribution(preds, labels, metric, resamples=resamples, rng=rng))
        points.append(float(SCORES[metric](np.asarray(preds).reshape(-1), np.asarray(labels).reshape(-1))))
        examples += int(np.asarray(labels).size)
    avg = np.mean(dists, axis=0)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(avg, [100 * alpha, 100 * (1 - alpha)])
    return BootstrapInterval(float(np.mean(points)), float(low), float(high), confidence, resamples, examples,
                             len(samples))
