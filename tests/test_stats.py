"""The paired test behind every verdict (raysft/stats.py), against numbers computed by hand: with 3 seeds (2 degrees of
freedom) Student's t has a closed form, so neither the expected p-value nor the interval comes from scipy."""

import math

import pytest

from raysft.stats import CONFIDENCE, TEST_NAME, paired_test

# sa-cpu's confirm (dev, per seed: searched − default): 0.6304 − 0.6224, 0.6338 − 0.6062, 0.5728 − 0.5388
SA_CPU = [0.0080, 0.0276, 0.0340]


def _by_hand_df2(gains: list[float], confidence: float):
    """mean, t, two-sided p and the interval for n = 3 (df = 2), where P(T ≤ t) = 1/2 + t / (2·√(t² + 2)) and its
    quantile is q(P) = (2P − 1) / √(2P(1 − P))."""
    n = len(gains)
    mean = sum(gains) / n
    sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1))
    se = sd / math.sqrt(n)
    t = mean / se
    p = 1 - abs(t) / math.sqrt(t * t + 2)
    upper = (1 + confidence) / 2
    q = (2 * upper - 1) / math.sqrt(2 * upper * (1 - upper))
    return mean, t, p, mean - q * se, mean + q * se


@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.8])
def test_three_seeds_match_the_t_test_by_hand(confidence):
    mean, t, p, low, high = _by_hand_df2(SA_CPU, confidence)
    r = paired_test(SA_CPU, confidence)
    assert (r.n, r.wins, r.confidence) == (3, 3, confidence)
    assert r.mean == pytest.approx(mean, abs=1e-12) and r.statistic == pytest.approx(t, rel=1e-9)
    assert r.p == pytest.approx(p, rel=1e-9) and r.low == pytest.approx(low, rel=1e-9)
    assert r.high == pytest.approx(high, rel=1e-9)


def test_sa_cpu_confirm_is_not_beyond_noise_at_95_percent():
    """The old rule (mean > sd) called this "holds"; the t-test at 95 % does not: the interval includes 0."""
    r = paired_test(SA_CPU)
    assert r.mean == pytest.approx(0.0232) and r.statistic == pytest.approx(2.966, abs=1e-3)
    assert r.p == pytest.approx(0.0973, abs=1e-4)
    assert r.low == pytest.approx(-0.01045, abs=1e-5) and r.high == pytest.approx(0.05685, abs=1e-5)
    assert not r.significant and not r.ruled_out
    assert paired_test(SA_CPU, 0.9).significant  # at 90 % it is (p < 0.10): the confidence is what decides


def test_significant_and_ruled_out_are_the_whole_interval_on_one_side():
    up = paired_test([0.020, 0.022, 0.019, 0.021])
    assert up.significant and not up.ruled_out and up.low > 0 and up.p < 0.05
    down = paired_test([-0.020, -0.022, -0.019, -0.021])
    assert down.ruled_out and not down.significant and down.high < 0 and down.wins == 0
    assert down.p == pytest.approx(up.p) and down.statistic == pytest.approx(-up.statistic)


def test_fewer_than_two_pairs_have_no_interval_and_no_test():
    one = paired_test([0.03])
    assert (one.n, one.mean, one.low, one.high, one.p, one.statistic, one.wins) == (1, 0.03, None, None, None, None, 1)
    assert not one.significant and not one.ruled_out
    assert one.ci() == "95% CI needs 2 seeds" and one.line() == "+0.030 at 1 seed (95% CI needs 2 seeds)"
    none = paired_test([None, math.nan, math.inf])  # runs without a score are no pair
    assert none.n == 0 and none.mean is None and none.line() == "no seed where both finished"


def test_no_spread_gives_a_degenerate_interval_without_scipy_warnings():
    same = paired_test([0.01, 0.01, 0.01])
    assert (same.low, same.high, same.p, same.statistic) == (0.01, 0.01, 0.0, math.inf) and same.significant
    zero = paired_test([0.0, 0.0])
    assert (zero.p, zero.statistic) == (1.0, 0.0) and not zero.significant and not zero.ruled_out


def test_the_line_names_the_test_and_the_confidence():
    r = paired_test(SA_CPU)
    assert r.line() == f"+0.023, 95% CI [-0.010, +0.057], t=2.97, p=0.097 ({TEST_NAME}, n=3, better at 3)"
    assert paired_test(SA_CPU, 0.9).ci().startswith("90% CI [")
    assert CONFIDENCE == 0.95


def test_a_higher_confidence_widens_the_interval_and_bad_confidences_are_refused():
    wide, narrow = paired_test(SA_CPU, 0.99), paired_test(SA_CPU, 0.5)
    assert wide.low < narrow.low < narrow.high < wide.high and wide.p == narrow.p
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="between 0 and 1"):
            paired_test(SA_CPU, bad)
