"""Racing (tune.seeds > 1): the pooled noise test (raysft.stats), the racing scheduler's decisions on fake trials,
a racing trial's per-seed bookkeeping and resume (raysft.sweep.racing), the sweep's verdict over per-seed rows
(raysft.outcome), confirm's fresh seeds; and one short racing sweep end to end (slow)."""

import math
import re
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

from raysft.outcome import rows_of, seed_scores, versus_default
from raysft.stats import POOLED_TEST_NAME, PooledNoise, pooled_noise, pooled_paired_test
from raysft.sweep.confirm import confirm_seeds
from raysft.sweep.racing import Race, race_decision, racing_seeds
from tests.conftest import REPO, needs_data


# ------------------------------------------------------------------------------------------------- the pooled test
def test_pooled_noise_of_a_complete_block_design_is_the_anova_error_term():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 3)) + np.arange(4)[:, None] * 0.1 + np.arange(3)[None, :] * 0.5  # configs × seeds
    scores = {(f"c{i}", s): float(y[i, s]) for i in range(4) for s in range(3)}
    noise = pooled_noise(scores)
    # randomized-block ANOVA by hand: residual = y − row mean − column mean + grand mean, df (C−1)(S−1)
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    assert noise.df == 3 * 2 and noise.n == 12
    assert noise.variance == pytest.approx((resid ** 2).sum() / 6)


def test_pooled_noise_needs_configurations_at_two_seeds_and_handles_missing_cells():
    assert pooled_noise({}).variance is None
    # every configuration at the first seed, the default at two: each parameter fits one cell exactly, no df
    assert pooled_noise({("d", 0): 0.5, ("d", 1): 0.6, ("a", 0): 0.4, ("b", 0): 0.7}) == PooledNoise(None, 0, 4)
    # two configurations at two seeds: one df; a third at one seed adds a cell and a parameter, no df
    two = {("d", 0): 0.5, ("d", 1): 0.6, ("a", 0): 0.4, ("a", 1): 0.42}
    assert pooled_noise(two).df == 1
    noise = pooled_noise({**two, ("b", 0): 0.9, ("x", 1): float("nan")})
    assert noise.df == 1 and noise.n == 5
    # the one residual: the interaction (0.42 − 0.4) − (0.6 − 0.5) = −0.08, spread over the 4 cells as ±0.02
    assert noise.variance == pytest.approx(4 * 0.02 ** 2)


def test_pooled_paired_test_uses_the_pooled_variance_and_its_df():
    from scipy import stats

    noise = PooledNoise(0.0004, 6, 12)
    t = pooled_paired_test([-0.05, -0.07], noise, 0.95)
    se = math.sqrt(2 * 0.0004 / 2)
    half = stats.t.ppf(0.975, 6) * se
    assert (t.n, t.test) == (2, POOLED_TEST_NAME)
    assert t.low == pytest.approx(-0.06 - half) and t.high == pytest.approx(-0.06 + half)
    assert t.p == pytest.approx(2 * stats.t.sf(0.06 / se, 6)) and t.ruled_out and not t.significant
    assert POOLED_TEST_NAME in t.line()
    assert pooled_paired_test([-0.05], PooledNoise(None, 0, 3)).low is None  # no noise estimate: no interval
    assert pooled_paired_test([], noise).n == 0


# ------------------------------------------------------------------------------------------- the scheduler's rules
def fake_trial(trial_id: str, default: bool = False):
    sample = {"method": "sc-sft", **({"default": True} if default else {})}
    return SimpleNamespace(trial_id=trial_id, config={"sample": sample})


def report(race_scores: dict[int, float]) -> dict:
    return {"phase": "final", "objective": sum(race_scores.values()) / len(race_scores),
            "seeds_done": len(race_scores), **{f"seed_dev/{s}": v for s, v in race_scores.items()}}


def test_racing_scheduler_stops_a_clearly_worse_configuration_after_round_two():
    from ray.tune.schedulers import TrialScheduler

    from raysft.sweep.scheduler import RacingScheduler

    sched = RacingScheduler(0.95)
    d, good, bad = fake_trial("d", default=True), fake_trial("good"), fake_trial("bad")
    seed_effect = {0: 0.0, 1000: 0.05}
    base = {"d": 0.50, "good": 0.51, "bad": 0.30}
    wobble = {("d", 0): 0.002, ("d", 1000): -0.002, ("good", 0): -0.003, ("good", 1000): 0.001,
              ("bad", 0): 0.001, ("bad", 1000): 0.0}

    def score(c, s):
        return base[c] + seed_effect[s] + wobble[(c, s)]

    actions = {}
    # round 1: every configuration at seed 0: no noise estimate, nothing is stopped
    for t in (d, good, bad):
        actions[(t.trial_id, 0)] = sched.on_trial_result(None, t, report({0: score(t.trial_id, 0)}))
    assert set(actions.values()) == {TrialScheduler.CONTINUE}
    # round 2: the default and the good one at seed 1000, then the bad one: paired by seed, it is ruled out
    for t in (d, good):
        assert sched.on_trial_result(None, t, report({s: score(t.trial_id, s) for s in (0, 1000)})) == "CONTINUE"
    assert sched.on_trial_result(None, bad, report({s: score("bad", s) for s in (0, 1000)})) == TrialScheduler.STOP
    assert "bad" in sched.stopped and "worse than the default d" in sched.reasons["bad"]
    assert "good" not in sched.stopped


def test_a_default_is_never_stopped():
    from ray.tune.schedulers import TrialScheduler

    from raysft.sweep.scheduler import RacingScheduler

    sched = RacingScheduler(0.95)
    best = fake_trial("best")
    sched.on_trial_result(None, best, report({0: 0.90, 1000: 0.95}))
    sched.on_trial_result(None, fake_trial("other"), report({0: 0.88, 1000: 0.941}))
    d = fake_trial("d", default=True)
    # far below the leader at both seeds: a searched trial would stop, a default continues
    assert sched.on_trial_result(None, d, report({0: 0.2, 1000: 0.25})) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, d, report({0: 0.2, 1000: 0.25, 2000: 0.2})) == TrialScheduler.CONTINUE
    assert race_decision({"d": {0: 0.1}}, "d", {"d"}).stop is False


def test_an_unpaired_seed_does_not_decide():
    noisy = {"d": {0: 0.50, 1000: 0.55}, "a": {0: 0.52, 1000: 0.561}, "b": {0: 0.49, 1000: 0.538}}
    # "late" is far worse at a seed the default has not finished (2000): nothing pairs it, it continues
    scores = {**noisy, "late": {2000: 0.1}}
    decision = race_decision(scores, "late", {"d"})
    assert not decision.stop
    # once the default has that seed, the same score is paired and rules it out
    scores["d"] = {**scores["d"], 2000: 0.52}
    scores["a"] = {**scores["a"], 2000: 0.53}
    decided = race_decision(scores, "late", {"d"})
    assert decided.stop and decided.against == "d" and decided.test.n == 1


def test_worse_than_the_leader_beyond_noise_stops_too_and_the_leader_is_never_a_stopped_one():
    scores = {"d": {0: 0.30, 1000: 0.35}, "lead": {0: 0.60, 1000: 0.66}, "mid": {0: 0.45, 1000: 0.50},
              "other": {0: 0.31, 1000: 0.353}}
    decision = race_decision(scores, "mid", {"d"})
    assert decision.stop and decision.against == "lead"  # above the default, below the leader
    # with the leader already stopped (it cannot be, but the rule holds), "mid" is compared with the default only
    assert not race_decision(scores, "mid", {"d"}, stopped={"lead"}).stop


# -------------------------------------------------------------------------------- a racing trial's bookkeeping
def metrics_json(dev, test, cache="computed"):
    return {"avg": {"dev": dev, "test": test}, "k": 10, "delta_bytes": 100, "distributed": {"dense_cache": cache}}


def test_racing_seeds_and_confirms_fresh_seeds_avoid_them():
    assert racing_seeds(0, 1) == [0]  # one seed: the sweep of before
    assert racing_seeds(7, 3) == [7, 1007, 2007]
    assert confirm_seeds(0, 3) == [1000, 2000, 3000]  # unchanged without racing
    assert not set(confirm_seeds(7, 3, racing=3)) & set(racing_seeds(7, 3))
    assert confirm_seeds(7, 2, racing=3) == [3007, 4007]


def test_race_reports_the_seed_average_and_every_seed_and_resumes_at_its_next_seed():
    race = Race(racing_seeds(0, 3))
    assert race.todo() == [0, 1000, 2000]
    race.record(0, metrics_json(0.5, 0.4), "/ckpt/s0")
    r = race.report(0)
    assert (r["objective"], r["seeds_done"], r["seed"], r["phase"]) == (0.5, 1, 0, "final")
    race.record(1000, metrics_json(0.6, None, "reused"), "/ckpt/s1000")
    r = race.report(1000)
    assert r["objective"] == pytest.approx(0.55) and r["avg/test"] == 0.4  # the seeds that scored test
    assert (r["seed_dev/0"], r["seed_dev/1000"], r["seed_test/0"]) == (0.5, 0.6, 0.4) and "seed_test/1000" not in r
    assert r["checkpoint_path"] == "/ckpt/s1000" and r["dense_cache"] == "reused"
    assert seed_scores(r) == {0: 0.5, 1000: 0.6} and seed_scores(r, "test") == {0: 0.4}
    # each seed's per-language scores (the task metric), for `raysft report`'s per-language intervals
    race.record(2000, {**metrics_json(0.7, 0.5), "metric": "acc", "test": {"aym": {"acc": 0.45, "f1": 0.3}},
                       "dev": {"aym": {"acc": 0.7, "f1": 0.6}, "bzd": {"acc": float("nan")}}})
    last = race.report(2000)
    assert (last["seed_lang/test/aym/2000"], last["seed_lang/dev/aym/2000"]) == (0.45, 0.7)
    assert "seed_lang/dev/bzd/2000" not in last and not any(k.startswith("seed_lang/") and k.endswith("/0") for k in last)
    assert seed_scores(last, "test") == {0: 0.4, 2000: 0.5}  # the per-language keys are not seeds' averages
    race.done.pop(2000)
    # a retried or resumed trial reads its checkpoint: it continues at its next seed, with its seeds' scores
    again = Race.from_json(race.to_json(), racing_seeds(0, 3))
    assert again.todo() == [2000] and again.report(1000) == r
    assert Race.from_json(race.to_json(), racing_seeds(0, 1)).todo() == []  # the seeds it still runs only


# ------------------------------------------------------------------------------------------- the sweep's verdict
def tune_trial(trial_id, default, scores, seeds_done=None):
    race = Race(sorted(scores))
    for s, (dev, test) in scores.items():
        race.record(s, metrics_json(dev, test))
    last = race.report(max(scores)) if scores else {}
    return SimpleNamespace(trial_id=trial_id, config={"sample": {"method": "sc-sft", **({"default": True} if default else {})}},
                           last_result={**last, "trial_id": trial_id}, status="TERMINATED", error=None)


def test_the_verdict_pairs_the_best_surviving_configuration_with_the_default_by_seed():
    trials = [
        tune_trial("d", True, {0: (0.50, 0.40), 1000: (0.55, 0.42), 2000: (0.52, 0.41)}),
        tune_trial("good", False, {0: (0.53, 0.43), 1000: (0.59, 0.46), 2000: (0.56, 0.44)}),
        # the best mean, but stopped after one seed: fewer seeds rank after the survivor
        tune_trial("lucky", False, {0: (0.70, 0.5)}),
    ]
    rows = rows_of(trials)
    assert sorted((r.id, r.seed) for r in rows) == sorted(
        [("d", 0), ("d", 1000), ("d", 2000), ("good", 0), ("good", 1000), ("good", 2000), ("lucky", 0)])
    o = versus_default(rows, 0.95)
    assert o.best.id == "good" and o.default.id == "d" and o.best.dev == pytest.approx((0.53 + 0.59 + 0.56) / 3)
    v = o.verdict()
    assert v.seeds == (0, 1000, 2000) and v.dev.n == 3 and v.test.n == 3
    assert v.dev.mean == pytest.approx((0.03 + 0.04 + 0.04) / 3) and v.significant
    line = o.line()
    assert "mean of 3 vs 3 seeds" in line and re.search(r"95% CI \[\+0\.\d{3}, \+0\.\d{3}\]", line), line


def test_one_seed_per_trial_is_the_verdict_of_before():
    trials = [tune_trial("d", True, {}), tune_trial("a", False, {})]
    for t, dev in zip(trials, (0.5, 0.6)):
        t.last_result = {"objective": dev, "phase": "final", "trial_id": t.trial_id}
    o = versus_default(rows_of(trials))
    assert o.best.id == "a" and o.best.seed is None and "one seed cannot tell" in o.line()


# ---------------------------------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_a_racing_sweep_runs_the_default_at_every_seed_and_prints_its_verdict_with_a_ci(tmp_path):
    from tests.test_tune import ENV, trial_results, tune_cmd

    needs_data()
    started = time.perf_counter()
    proc = subprocess.run(
        tune_cmd("--trials", "2", "--storage", str(tmp_path), "--set", "tune.seeds=2", "--no-track"),
        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=1500,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    finals = {}
    for folder, reports in trial_results(tmp_path / "smoke").items():
        sample = (tmp_path / "smoke" / folder / "params.json").read_text()
        finals[folder] = (reports[-1], '"default": true' in sample)
        assert [r["seeds_done"] for r in reports] == list(range(1, len(reports) + 1))  # one report per seed
    defaults = [r for r, default in finals.values() if default]
    assert defaults and all(r["seeds_done"] == 2 and set(seed_scores(r)) == {0, 1000} for r in defaults)
    assert "dense phases computed 2," in out  # θ1 once per seed, shared by every configuration at that seed
    out = out.replace("\n", " ")  # the console wraps long lines at spaces
    assert re.search(r"paired over seeds: dev .*95% CI \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", out), out[-3000:]
    print(f"racing sweep: {time.perf_counter() - started:.0f}s")


def test_compare_reads_a_racing_sweeps_runs_per_seed():
    """`raysft compare` builds best vs default from MLflow runs: a racing trial's run logged each seed's scores
    (seed_dev/<seed>), so the verdict pairs them by seed as the sweep did, instead of one seed-averaged row."""
    from raysft.results.ranking import RunRow, outcome_of_runs

    def run(trial, default, devs):
        metrics = {"objective": sum(devs.values()) / len(devs), **{f"seed_dev/{s}": v for s, v in devs.items()},
                   **{f"seed_test/{s}": v - 0.01 for s, v in devs.items()}}
        return RunRow(run_id=f"{trial}-run", name=trial, kind="trial", trial_id=trial, status="FINISHED",
                      params={"method": "sc-sft", "seed": "0"}, metrics=metrics, score=metrics["objective"],
                      tags={"raysft.default": "true"} if default else {})

    rows = [run("d", True, {0: 0.60, 1000: 0.62, 2000: 0.61}), run("a", False, {0: 0.65, 1000: 0.672, 2000: 0.659})]
    verdict = outcome_of_runs(rows).verdict()
    assert verdict.best == "a" and verdict.default == "d" and verdict.seeds == (0, 1000, 2000)
    assert verdict.dev.n == 3 and verdict.dev.mean == pytest.approx(0.0503, abs=1e-4) and verdict.significant
