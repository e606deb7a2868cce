"""The bootstrap interval of a dev score (the targets' average over their examples): raysft.stats.bootstrap_average,
and how the recipe keeps it through a multi-rank merge. The end-to-end check (metrics.json, the printed line) rides on
test_cli's off-a-terminal `raysft train smoke`."""

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from raysft.stats import SCORES, accuracy, bootstrap_average, macro_f1
from raysft.tasks.base import metrics
from raysft.train.recipe import OUTPUTS, evaluation_metrics, merge_results


def sample(n: int, skill: float, seed: int, num_labels: int = 3):
    """(preds, labels): right with probability ``skill``, else a uniformly random label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, n)
    preds = np.where(rng.random(n) < skill, labels, rng.integers(0, num_labels, n))
    return preds, labels


def langs(n: int, count: int = 3, seed: int = 0) -> dict:
    return {f"l{i}": sample(n, 0.3 + 0.1 * i, seed + i) for i in range(count)}


@pytest.mark.parametrize("metric", ["acc", "f1"])
def test_statistic_is_the_task_metric_and_vectorised(metric):
    for seed in range(5):
        p, y = sample(57, 0.4, seed)
        y[:3] = 1  # a class that only some rows predict
        want = metrics(torch.as_tensor(p), torch.as_tensor(y), 3)[metric]
        assert float(SCORES[metric](p, y)) == pytest.approx(want, abs=1e-6)
    # a batch of resamples (rows) scores as each row alone, including rows missing a class
    ps = np.stack([sample(40, 0.5, s)[0] for s in range(6)])
    ys = np.stack([sample(40, 0.5, s)[1] for s in range(6)])
    ps[0], ys[0] = np.where(ps[0] == 2, 0, ps[0]), np.where(ys[0] == 2, 1, ys[0])
    batch = SCORES[metric](ps, ys, axis=-1)
    assert batch.shape == (6,)
    for row in range(6):
        want = metrics(torch.as_tensor(ps[row]), torch.as_tensor(ys[row]), 3)[metric]
        assert batch[row] == pytest.approx(want, abs=1e-6)
    # along another axis too
    assert np.allclose(SCORES[metric](ps.T, ys.T, axis=0), batch)


@pytest.mark.parametrize("metric", ["acc", "f1"])
def test_interval_holds_the_estimate_and_shrinks_with_more_examples(metric):
    small = bootstrap_average(langs(60), metric)
    large = bootstrap_average(langs(2000), metric)
    for ci in (small, large):
        assert ci.low < ci.estimate < ci.high
        assert ci.estimate == pytest.approx(np.mean([SCORES[metric](p, y) for p, y in langs(len_of(ci)).values()]))
    assert (large.high - large.low) < (small.high - small.low) / 3  # about sqrt(2000 / 60) narrower
    assert small.examples == 180 and large.examples == 6000 and small.langs == 3 and small.resamples == 1000
    narrow = bootstrap_average(langs(60), metric, confidence=0.5)
    assert small.low < narrow.low < narrow.high < small.high


def len_of(ci) -> int:
    return ci.examples // ci.langs


@pytest.mark.parametrize("metric", ["acc", "f1"])
def test_deterministic_and_independent_of_language_order(metric):
    data = langs(100, count=4)
    a, b = bootstrap_average(data, metric), bootstrap_average(data, metric)
    assert a == b
    flipped = bootstrap_average(dict(reversed(data.items())), metric)
    assert (flipped.low, flipped.high) == pytest.approx((a.low, a.high), abs=1e-12)
    other = bootstrap_average(data, metric, seed=1)
    assert (other.low, other.high) != (a.low, a.high)


def test_languages_are_resampled_independently():
    """Two copies of one language under different names: independent draws average out, so the interval is about
    1/sqrt(2) as wide as one language's. The same draws for both (one seed for every language) would not narrow it."""
    one = sample(300, 0.5, 0)
    single = bootstrap_average({"a": one}, "acc", resamples=4000)
    double = bootstrap_average({"a": one, "b": one}, "acc", resamples=4000)
    ratio = (double.high - double.low) / (single.high - single.low)
    assert 0.6 < ratio < 0.82


def reference_bootstrap(data: dict, metric: str, resamples: int, confidence: float, seed: int):
    """The textbook stratified bootstrap, one resample at a time, scored by the task's own metric (torch)."""
    rng = np.random.default_rng(seed)
    dist = []
    for _ in range(resamples):
        scores = []
        for p, y in data.values():
            idx = rng.integers(0, len(y), len(y))
            scores.append(metrics(torch.as_tensor(p[idx]), torch.as_tensor(y[idx]), 3)[metric])
        dist.append(np.mean(scores))
    alpha = (1 - confidence) / 2
    return np.percentile(dist, [100 * alpha, 100 * (1 - alpha)]), np.array(dist)


@pytest.mark.parametrize("metric", ["acc", "f1"])
def test_matches_a_slow_reference_bootstrap_in_distribution(metric):
    data = langs(40, count=3, seed=7)
    (ref_low, ref_high), ref = reference_bootstrap(data, metric, resamples=2000, confidence=0.9, seed=123)
    ci = bootstrap_average(data, metric, resamples=2000, confidence=0.9)
    # Monte Carlo error of a 5th/95th percentile at 2000 resamples is a few thousandths here
    assert ci.low == pytest.approx(ref_low, abs=0.012) and ci.high == pytest.approx(ref_high, abs=0.012)
    assert ci.estimate == pytest.approx(np.mean([metrics(torch.as_tensor(p), torch.as_tensor(y), 3)[metric]
                                                 for p, y in data.values()]), abs=1e-6)


def test_edge_cases():
    assert bootstrap_average({}, "acc") is None
    perfect = bootstrap_average({"a": (np.ones(30, int), np.ones(30, int))}, "f1")
    assert perfect.low == perfect.high == perfect.estimate == 1.0
    tiny = bootstrap_average({"a": ([1], [1]), "b": sample(50, 0.5, 0)}, "acc")  # one example: no spread of its own
    assert tiny.examples == 51 and tiny.low < tiny.high
    with pytest.raises(ValueError, match="metric 'loss'"):
        bootstrap_average({"a": sample(10, 0.5, 0)}, "loss")
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_average({"a": sample(10, 0.5, 0)}, "acc", confidence=1.5)
    with pytest.raises(ValueError, match="predictions"):
        bootstrap_average({"a": (np.zeros(3, int), np.zeros(4, int))}, "acc")


@pytest.mark.parametrize("metric", ["acc", "f1"])
def test_fast_enough_for_a_sweep_trial(metric):
    """About ten targets of about 700 dev examples, 1000 resamples: a trial's interval costs well under a second
    or two (measured, not asserted tightly: the test machine is shared)."""
    data = {f"l{i}": sample(700, 0.5, i) for i in range(10)}
    bootstrap_average(data, metric, resamples=10)  # imports
    t = time.perf_counter()
    bootstrap_average(data, metric)
    assert time.perf_counter() - t < 5


def fake_results(data: dict, split: str = "dev") -> dict:
    """What recipe.evaluate returns for these (preds, labels), every language task-only."""
    return {
        "task_only": {split: {lang: metrics(torch.as_tensor(p), torch.as_tensor(y), 3) for lang, (p, y) in data.items()}},
        "composed": {split: {}},
        OUTPUTS: {split: dict(data)},
    }


def test_the_interval_is_the_same_from_one_rank_or_merged_from_two():
    """A trial on 2 workers scores some languages on each rank and merges: the same interval as one worker's."""
    data = {lang: sample(80, 0.5, i) for i, lang in enumerate(["jav", "sun", "ace", "eng"])}
    run = SimpleNamespace(
        task=SimpleNamespace(metric="f1"), target_langs=["jav", "sun", "ace"], lang_sfts={}, lang_sft_warnings=[],
        cfg=SimpleNamespace(tune=SimpleNamespace(confidence=0.95), lang_sfts=None),
    )
    order = list(data)
    one = evaluation_metrics(run, merge_results([fake_results(data)], order))
    parts = [fake_results({lang: data[lang] for lang in order[rank::2]}) for rank in range(2)]
    two = evaluation_metrics(run, merge_results(parts, order))
    assert one["avg_ci"] == two["avg_ci"] and one["avg"] == two["avg"]
    ci = one["avg_ci"]["dev"]
    assert ci["examples"] == 240 and ci["langs"] == 3  # the targets only: eng is the source
    assert ci["low"] <= one["avg"]["dev"] <= ci["high"] and ci["confidence"] == 0.95
