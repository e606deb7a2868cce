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
    test: str = TEST_NAME  # which test gave the interval (the racing scheduler's pooled one names itself)

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
                f"({self.test}, n={self.n}, better at {self.wins})")


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


# ------------------------------------------------------------------------------------ pooled noise (racing's test)
POOLED_TEST_NAME = "paired t-test over seeds, pooled block-ANOVA error"


@dataclass(frozen=True)
class PooledNoise:
    """The seed-to-seed noise of a sweep's scores: the error variance of an additive configuration × seed model."""

    variance: float | None  # the residual mean square (None when there are no residual degrees of freedom)
    df: int  # its degrees of freedom: observations − rank of the additive model
    n: int  # (configuration, seed) scores used


def pooled_noise(scores: dict) -> PooledNoise:
    """The pooled noise of ``scores`` (``{(configuration, seed): score}``): the residual variance of the
    randomized-block model ``score = configuration effect + seed effect + error``, fitted by least squares over
    every (configuration, seed) score seen, balanced or not.

    Why: a race compares configurations after 1–3 seeds, where a per-pair t-test has 0–2 degrees of freedom and
    almost never rules anything out. Under the additive model every configuration shares one error variance (what
    a seed moves beyond its common effect on all configurations, which pairing cancels), so all the scores together
    estimate it with many more degrees of freedom: the error term of a randomized-block ANOVA (seeds are the
    blocks), generalised to missing cells by the least-squares fit. Its degrees of freedom are the observations
    minus the model's rank (configurations + seeds − connected groups): a configuration seen at one seed only fits
    its own effect exactly and adds none, so the estimate needs configurations seen at two seeds or more. The
    assumption it adds over a per-pair test: the noise is the same for every configuration (homoscedastic)."""
    import numpy as np

    cells = [(c, s, float(v)) for (c, s), v in scores.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    n = len(cells)
    if n == 0:
        return PooledNoise(None, 0, 0)
    configs = {c: i for i, c in enumerate(dict.fromkeys(c for c, _, _ in cells))}
    seeds = {s: i for i, s in enumerate(dict.fromkeys(s for _, s, _ in cells))}
    x = np.zeros((n, len(configs) + len(seeds)))
    y = np.array([v for _, _, v in cells])
    for row, (c, s, _) in enumerate(cells):
        x[row, configs[c]] = 1.0
        x[row, len(configs) + seeds[s]] = 1.0
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    df = n - int(rank)
    if df < 1:
        return PooledNoise(None, 0, n)
    resid = y - x @ coef
    return PooledNoise(float(resid @ resid) / df, df, n)


def pooled_paired_test(gains: list[float], noise: PooledNoise, confidence: float = CONFIDENCE) -> PairedTest:
    """A − B over the seeds both have (``gains``), tested against the pooled noise instead of the pairs' own
    spread: each difference's variance is twice the error variance, so the mean gain's standard error is
    ``sqrt(2 · variance / n)`` and its interval uses Student's t at ``noise.df`` degrees of freedom. No interval
    without a noise estimate or a pair."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: must be between 0 and 1")
    vals = [float(g) for g in gains if g is not None and math.isfinite(g)]
    n = len(vals)
    if n == 0:
        return PairedTest(0, None, None, None, None, None, confidence, test=POOLED_TEST_NAME)
    mean = sum(vals) / n
    wins = sum(g > 0 for g in vals)
    if noise.variance is None or noise.df < 1:
        return PairedTest(n, mean, None, None, None, None, confidence, wins, POOLED_TEST_NAME)
    from scipy import stats  # imported where it is used (a heavy import)

    se = math.sqrt(2 * noise.variance / n)
    if se == 0:  # no noise at all: any difference is beyond it
        return PairedTest(n, mean, mean, mean, 0.0 if mean else 1.0,
                          math.copysign(math.inf, mean) if mean else 0.0, confidence, wins, POOLED_TEST_NAME)
    t = mean / se
    half = float(stats.t.ppf(0.5 + confidence / 2, noise.df)) * se
    p = float(2 * stats.t.sf(abs(t), noise.df))
    return PairedTest(n, mean, mean - half, mean + half, p, t, confidence, wins, POOLED_TEST_NAME)


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
