"""Sweeps that beat their default: the presets' spaces, the default trials enqueued first (and labelled), TPE's
start-up sized to the sweep, best vs default (one pure function), and the confirm step's seeds (a real sweep with its
confirm: tests/test_tune.py)."""

import json
import math

import optuna
import pytest

from raysft.config import load_config, trial_config
from raysft.outcome import Row, Verdict, confirm_summary, confirm_verdict, spread, versus_default
from raysft.sft.mask import expand_budget
from raysft.stats import paired_test
from raysft.sweep.confirm import confirm_samples, confirm_seeds
from raysft.sweep.space import (
    DEFAULT_ATTR,
    BudgetFamilies,
    Candidates,
    CategoricalDist,
    FloatDist,
    IntDist,
    default_params,
    describe,
    sample,
)
from raysft.sweep.study import default_lookup, make_searcher, startup_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
HIDDEN = {"sa": 768, "nli": 768, "sa-cpu": 384, "nli-cpu": 384, "smoke": 32}


def _spaces(cfg, methods=None):
    return {m: cfg.method_space(m) for m in (methods or cfg.tune.methods)}


# ------------------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", ["nli", "sa", "nli-cpu", "sa-cpu", "smoke"])
def test_every_preset_searches_what_its_methods_need(name):
    cfg = load_config(name)
    assert cfg.tune.methods and cfg.tune.trials >= 3
    sc, dx, rs = (cfg.method_space(m) for m in ("sc-sft", "deft-x", "rand-sft"))
    budget = sc["budget"]
    assert isinstance(budget, BudgetFamilies) and set(budget.families) == {"dirichlet", "shape"} and budget.fixed
    assert isinstance(dx["rank_strategy"], CategoricalDist) and set(dx["rank_strategy"].choices) == {"energy", "uniform"}
    assert isinstance(dx["energy"], FloatDist) and dx["energy"].when == {"rank_strategy": "energy"}
    assert isinstance(dx["rank"], IntDist) and dx["rank"].high == HIDDEN[name] and dx["rank"].when == {"rank_strategy": "uniform"}
    assert isinstance(rs["variant"], Candidates) and "searched" in rs["variant"].choices
    lr = rs["sparse.lr"]
    assert lr.log and lr.high / lr.low >= 100  # lower density wants a much higher lr: a wide log range
    if name != "smoke":
        for m in ("lt-sft", "sc-sft", "deft-x"):
            space = cfg.method_space(m)
            assert space["sparse.lr"].low < cfg.sparse.lr < space["sparse.lr"].high  # centred where runs learn
        assert "budget" in rs
        # the report's two Rand-SFT variants (Table 3), apart: embeddings frozen at its K; 100x fewer at lr 2e-3
        small, frozen = (rs["variant"].choices[v] for v in ("report-k141557", "report-frozen-embeddings"))
        assert small["sft.k"] == 141557 and small["sparse.lr"] == 2e-3 and "sft.freeze_embeddings" not in small
        assert frozen["sft.freeze_embeddings"] is True and "sft.k" not in frozen
        assert frozen.get("sparse.lr", cfg.sparse.lr) == (2e-5 if name in ("nli", "sa") else cfg.sparse.lr)
    if name in ("nli", "sa"):
        assert cfg.tune.gpus_per_worker == 1 and cfg.tune.max_concurrent is None  # concurrency from the cluster
        assert cfg.sparse.lr == 2e-5 and cfg.sft.k == 14155776 and cfg.sparse.epochs == 5  # the papers' defaults


@pytest.mark.parametrize("name", ["nli", "sa", "nli-cpu", "sa-cpu", "smoke"])
def test_the_swept_methods_defaults_are_what_the_default_trial_records(name):
    """Every searched key of every swept method is expressed at its default in the enqueued trial (so the searcher
    learns what the default trial really ran)."""
    cfg = load_config(name)
    for m in cfg.tune.methods:
        space = cfg.method_space(m)
        params = default_params(m, space, default_lookup(cfg, m), several_methods=True)
        assert params["method"] == m
        for key, dist in space.items():
            if dist.when and any(default_lookup(cfg, m)(k) != v for k, v in dist.when.items()):
                continue
            assert any(p == f"{m}.{key}" or p.startswith(f"{m}.{key}/") or p.startswith(f"{m}.{key}_u/")
                       for p in params), (m, key, params)


# ------------------------------------------------------------------------------------------------------ defaults
def test_default_trials_come_first_labelled_and_reproduce_the_config():
    cfg = load_config("sa-cpu", ["tune.methods=[lt-sft, sc-sft, deft-x]"])
    spaces = _spaces(cfg)
    searcher, n_defaults, n_startup = make_searcher(cfg, spaces, trials=12)
    assert (n_defaults, n_startup) == (3, 5)  # 3 defaults + tune.n_startup_trials 2, then TPE
    study = searcher._ot_study
    base = cfg.model_dump(mode="json")
    seen = []
    for i in range(5):
        trial = study.ask()
        s = sample(trial, cfg.tune.methods, spaces)
        seen.append(s)
        if i < 3:
            assert s["default"] is True and s["method"] == cfg.tune.methods[i]
            assert trial.user_attrs[DEFAULT_ATTR] == s["method"]
            assert s["settings"] == {} and s["overrides"] == {}  # the config exactly as it is
            assert trial_config(base, s) == trial_config(base, {"method": s["method"], "settings": {}, "overrides": {}})
            assert trial.params[f"{s['method']}.sparse.lr"] == cfg.sparse.lr
            if s["method"] == "sc-sft":  # the default vector is one of the fixed candidates: recorded as that one
                assert trial.params["sc-sft.budget/family"] == "sa-best"
        else:
            assert "default" not in s and (s["settings"] or s["overrides"])
        study.tell(trial, 0.5 + 0.01 * i)
    assert len({json.dumps(s, sort_keys=True) for s in seen[3:]}) == 2  # searched trials differ


def test_a_method_with_nothing_to_sample_runs_once_as_its_default_never_again():
    """lt-sft without a space beside a searched sc-sft: lt-sft's default runs, then every searched trial is sc-sft
    (a searched lt-sft trial would repeat its default exactly)."""
    cfg = load_config("sa-cpu", ["tune.methods=[lt-sft, sc-sft]", "methods.lt-sft.space={}"])
    spaces = _spaces(cfg)
    assert not spaces["lt-sft"] and spaces["sc-sft"]
    searcher, n_defaults, _ = make_searcher(cfg, spaces, trials=8)
    study = searcher._ot_study
    seen = []
    for i in range(8):
        trial = study.ask()
        s = sample(trial, cfg.tune.methods, spaces)
        seen.append(s)
        study.tell(trial, 0.5 + 0.01 * i)
    assert [s["method"] for s in seen[:2]] == ["lt-sft", "sc-sft"] and all(s.get("default") for s in seen[:2])
    assert all(s["method"] == "sc-sft" and not s.get("default") for s in seen[2:])
    assert len({json.dumps(s, sort_keys=True) for s in seen}) == 8  # no trial repeats another


def test_a_default_budget_outside_the_candidates_is_recorded_as_the_dirichlet_draw_that_gives_it_back():
    cfg = load_config("smoke")
    spaces = _spaces(cfg)
    searcher, n_defaults, _ = make_searcher(cfg, spaces, trials=3)
    trial = searcher._ot_study.ask()
    s = sample(trial, ["sc-sft"], spaces)
    assert n_defaults == 1 and s["default"] is True and trial.params["sc-sft.budget/family"] == "dirichlet"
    groups = ["embeddings", "layer.0", "layer.1"]
    x = {g: -math.log(trial.params[f"sc-sft.budget.dirichlet_u/{g}"]) for g in groups}
    want = expand_budget(cfg.method_settings("sc-sft").budget, groups)
    assert all(abs(x[g] / sum(x.values()) - want[g]) < 1e-12 for g in groups)


def test_trial_config_leaves_the_base_alone():
    """The tracking callback builds every trial's config from one base: a trial's overrides must not leak into the
    next (a default trial was logged with the previous trial's sparse.lr)."""
    cfg = load_config("smoke")
    base = cfg.model_dump(mode="json")
    before = json.dumps(base, sort_keys=True)
    c = trial_config(base, {"method": "sc-sft", "settings": {"budget": {"layer.0": 1.0}}, "overrides": {"sparse.lr": 7e-4}})
    assert c.sparse.lr == 7e-4 and json.dumps(base, sort_keys=True) == before
    assert trial_config(base, {"method": "sc-sft", "settings": {}, "overrides": {}, "default": True}).sparse.lr == cfg.sparse.lr


def test_startup_is_sized_to_the_sweep():
    cfg = load_config("smoke", ["tune.methods=[lt-sft, sc-sft]", "tune.n_startup_trials=null"])
    assert startup_trials(cfg, 2) == (2, 3)  # fewer trials than methods: only defaults (and a floor of 1 random)
    assert startup_trials(cfg, 11) == (2, 5)  # 9 searched: a third random, then TPE
    assert startup_trials(cfg, 100) == (2, 12)  # at most 10 random
    off = load_config("smoke", ["tune.run_defaults=false", "tune.n_startup_trials=4"])
    assert startup_trials(off, 8) == (0, 4)


def test_candidates_set_several_keys_and_gate_later_ones():
    cfg = load_config("sa-cpu")
    spaces = _spaces(cfg, ["rand-sft"])
    fixed = {"rand-sft.variant": "report-k141557", "rand-sft.sparse.head_lr": 1e-3, "rand-sft.sparse.epochs": 5,
             "rand-sft.budget/family": "sa-best"}
    s = sample(optuna.trial.FixedTrial(fixed), ["rand-sft"], spaces)
    assert s["overrides"]["sft.k"] == 141557 and s["overrides"]["sparse.lr"] == 2e-3  # not sampled: gated by `when`
    c = trial_config(cfg.model_dump(mode="json"), s)
    assert (c.sft.k, c.sft.density, c.sft.freeze_embeddings, c.sparse.lr, c.sparse.epochs) == (141557, None, False, 2e-3, 5)
    assert c.method_settings("rand-sft").budget == cfg.method_space("rand-sft")["budget"].fixed["sa-best"]
    searched = sample(optuna.trial.FixedTrial({**fixed, "rand-sft.variant": "searched", "rand-sft.sparse.lr": 3e-3,
                                               "rand-sft.budget/family": "shape", "rand-sft.budget.shape/embeddings_share": 0.05,
                                               "rand-sft.budget.shape/peak": 6.0, "rand-sft.budget.shape/width": 2.0}),
                      ["rand-sft"], spaces)
    c = trial_config(cfg.model_dump(mode="json"), searched)
    assert c.sparse.lr == 3e-3 and c.sft.density == 0.05 and c.sft.k is None
    assert abs(sum(c.method_settings("rand-sft").budget.values()) - 1) < 1e-9


@pytest.mark.parametrize("name", ["sa", "nli"])
def test_rand_sft_starts_from_its_whole_model_default_then_searches_per_group_budgets(name):
    """Rand-SFT's default draws one uniform random mask over the whole model (no budget vector): the space names
    that rule (`global: null`), so the paper presets can sweep Rand-SFT from its default like every other method."""
    cfg = load_config(name)
    assert "rand-sft" in cfg.tune.methods and cfg.method_settings("rand-sft").budget is None
    spaces = _spaces(cfg)
    params = default_params("rand-sft", spaces["rand-sft"], default_lookup(cfg, "rand-sft"), several_methods=True)
    assert params["rand-sft.budget/family"] == "global" and params["rand-sft.variant"] == "searched"
    pick = {"method": "rand-sft", "rand-sft.variant": "searched", "rand-sft.sparse.lr": 3e-3, "rand-sft.sparse.epochs": 5}
    whole = sample(optuna.trial.FixedTrial({**pick, "rand-sft.budget/family": "global"}), cfg.tune.methods, spaces)
    assert whole["settings"]["budget"] is None and "budget global" in describe(whole)
    c = trial_config(cfg.model_dump(mode="json"), whole)
    assert c.method_settings("rand-sft").budget is None and c.sparse.lr == 3e-3
    best = f"{name}-best"
    per_group = sample(optuna.trial.FixedTrial({**pick, "rand-sft.budget/family": best}), cfg.tune.methods, spaces)
    assert per_group["settings"]["budget"] == spaces["rand-sft"]["budget"].fixed[best]


# ------------------------------------------------------------------------------------------------------ outcome
def test_best_vs_default_uses_finished_trials_only():
    rows = [
        Row("a", "lt-sft", 0.600, 0.575, default=True),
        Row("b", "sc-sft", 0.590, 0.560, default=True),
        Row("c", "sc-sft", 0.621, 0.580),
        Row("d", "deft-x", 0.700, None, final=False),  # stopped early: an intermediate score
        Row("e", "lt-sft", 0.610, 0.590),
    ]
    o = versus_default(rows)
    assert (o.best.id, o.default.id) == ("c", "a")
    assert o.line().startswith("best dev 0.621 vs default 0.600 (+0.021) · test 0.580 vs 0.575 (+0.005)")
    assert o.metrics() == pytest.approx({"default/dev": 0.6, "default/test": 0.575, "best_searched/dev": 0.621,
                                         "best_searched/test": 0.58, "best_vs_default/dev": 0.021,
                                         "best_vs_default/test": 0.005})
    losing = versus_default([Row("a", "lt-sft", 0.6, 0.5, default=True), Row("c", "sc-sft", 0.487, 0.45)])
    assert losing.beats_default is False and "(-0.113)" in losing.line()
    assert "no default trial" in versus_default([Row("c", "sc-sft", 0.5)]).line()


def test_confirm_summary_and_verdict():
    rows = [("d1", s, Row(f"d{s}", "lt-sft", dev, 0.5, default=True)) for s, dev in ((1, 0.60), (2, 0.61), (3, 0.59))]
    rows += [("t1", s, Row(f"t{s}", "sc-sft", dev, 0.55)) for s, dev in ((1, 0.640), (2, 0.655), (3, 0.628))]
    summary = confirm_summary(rows)
    assert [c.label for c in summary] == ["t1", "d1"] and summary[0].seeds == [1, 2, 3] and not summary[0].failed
    assert summary[1].dev.mean == pytest.approx(0.60) and summary[1].dev.sd == pytest.approx(0.01)
    assert str(summary[1].dev) == "0.600 ± 0.010"
    v = confirm_verdict(summary)
    want = paired_test([0.040, 0.045, 0.038])
    assert v.significant and (v.best, v.default, v.seeds) == ("t1", "d1", (1, 2, 3))
    assert v.dev.mean == pytest.approx(want.mean) and v.dev.p == pytest.approx(want.p) and v.dev.low > 0
    assert v.line() == (f"t1 vs default d1, dev {want.line()} · test {paired_test([0.05, 0.05, 0.05]).line()} "
                        "→ beats the default beyond the seeds' noise")
    assert "holds" not in v.line()
    noisy = confirm_summary([("d", 1, Row("a", "m", 0.60, default=True)), ("d", 2, Row("b", "m", 0.64, default=True)),
                             ("t", 1, Row("c", "m", 0.63)), ("t", 2, Row("d", "m", 0.62))])
    assert "NOT beyond the seeds' noise (the 95% CI includes 0)" in confirm_verdict(noisy).line()
    assert spread([None]).mean is None
    # sa-cpu's confirm (dev): seed 3000 pulled both runs down by ~0.06; paired, the searched config won at each seed,
    # which mean > sd called "holds"; the t-test at 95 % does not (p 0.097, the interval includes 0)
    seeds = {1000: (0.6224, 0.6304), 2000: (0.6062, 0.6338), 3000: (0.5388, 0.5728)}
    real = confirm_summary([(label, s, Row(f"{label}{s}", "deft-x", pair[i], default=label == "d")) for s, pair in seeds.items()
                            for i, label in enumerate(("d", "t"))])
    verdict = confirm_verdict(real)
    assert verdict.line() == ("t vs default d, dev +0.023, 95% CI [-0.010, +0.057], t=2.97, p=0.097 "
                              "(paired t-test over seeds, n=3, better at 3) → NOT beyond the seeds' noise "
                              "(the 95% CI includes 0)")
    assert confirm_verdict(real, 0.9).significant  # at the confidence the config states
    one = confirm_summary([("d", 1, Row("a", "m", 0.6, default=True)), ("t", 1, Row("b", "m", 0.7))])
    assert confirm_verdict(one).line() == ("t vs default d, dev +0.100 at 1 seed (95% CI needs 2 seeds) → one seed "
                                           "cannot tell (no CI): rerun both with new seeds (raysft confirm) to test it")
    assert "nothing to compare" in confirm_verdict(confirm_summary(rows[:3])).line()


def test_a_single_seed_sweep_says_one_seed_cannot_tell():
    o = versus_default([Row("a", "lt-sft", 0.600, 0.575, default=True), Row("c", "sc-sft", 0.621, 0.580)])
    assert o.line() == ("best dev 0.621 vs default 0.600 (+0.021) · test 0.580 vs 0.575 (+0.005) [sc-sft c vs lt-sft "
                        "default a] → one seed cannot tell (no CI): rerun both with new seeds (raysft confirm) to test it")
    v = o.verdict()
    assert (v.dev.n, v.dev.low, v.dev.p, v.significant) == (1, None, None, False)
    # rows at different seeds are no pair: nothing to test
    apart = versus_default([Row("a", "lt-sft", 0.6, default=True, seed=1), Row("c", "sc-sft", 0.7, seed=2)])
    assert apart.verdict().dev.n == 0 and "no seed at which both finished" in apart.line()


def test_the_verdict_records_its_numbers_and_reads_back_whole():
    real = confirm_summary([(label, s, Row(f"{label}{s}", "m", dev, test=dev, default=label == "d"))
                            for s, (d, t) in {1: (0.60, 0.64), 2: (0.61, 0.655), 3: (0.59, 0.628)}.items()
                            for label, dev in (("d", d), ("t", t))] + [("t", 4, Row("x", "m", None, final=False))])
    v = confirm_verdict(real)
    m = v.metrics("confirm_verdict")
    assert m["confirm_verdict/n_seeds"] == 3 and m["confirm_verdict/significant"] == 1
    assert (m["confirm_verdict/dev_effect"], m["confirm_verdict/dev_ci_low"], m["confirm_verdict/dev_ci_high"],
            m["confirm_verdict/dev_p"]) == (v.dev.mean, v.dev.low, v.dev.high, v.dev.p)
    tags = v.tags("confirm_verdict")
    assert tags["raysft.confirm_verdict.test"] == "paired t-test over seeds" and tags["raysft.confirm_verdict"] == v.line()
    assert tags["raysft.confirm_verdict.significant"] == "true" and tags["raysft.confirm_verdict.seeds"] == "1,2,3"
    assert Verdict.from_json(tags["raysft.confirm_verdict.json"]) == v and v.failed == (("t", 4),)
    one = versus_default([Row("a", "m", 0.6, default=True), Row("c", "m", 0.7)]).verdict().metrics("verdict")
    assert one["verdict/n_seeds"] == 1 and math.isnan(one["verdict/dev_ci_low"]) and math.isnan(one["verdict/dev_p"])


def test_confirm_seeds_are_new_and_each_configuration_gets_each():
    seeds = confirm_seeds(0, 3)
    assert len(set(seeds)) == 3 and not {0, 1} & set(seeds)  # the sweep's seed (and seed + 1, its sparse order)
    picks = [("d1", {"method": "lt-sft", "settings": {}, "overrides": {}, "default": True}),
             ("t7", {"method": "sc-sft", "settings": {"budget": {"layer.0": 1.0}}, "overrides": {"sparse.lr": 1e-4}})]
    samples = confirm_samples(picks, seeds)
    # seed-major: the configurations at one seed, then the next seed (complete pairs first)
    assert [(s["confirm"]["config"], s["overrides"]["seed"]) for s in samples] == [(c, s) for s in seeds for c, _ in picks]
    assert [bool(s.get("default")) for s in samples] == [True, False] * 3
    assert all(s["overrides"]["sparse.lr"] == 1e-4 for s in samples[1::2])


def test_a_confirm_whose_pairs_all_finished_runs_nothing_and_summarises_them(tmp_path):
    """`raysft confirm` again after every (configuration, seed) pair finished: no Ray, the same summary; pairs of
    other configurations or seeds (an earlier, larger confirm) are left out of it."""
    from raysft.sweep.confirm import run_confirm

    picks = [("d1", {"method": "lt-sft", "default": True}), ("t2", {"method": "sc-sft"})]
    done = [(label, seed, Row(f"{label}-{seed}", m, dev, test=dev + 0.01, default=label == "d1"))
            for label, m, base in (("d1", "lt-sft", 0.60), ("t2", "sc-sft", 0.63))
            for seed, dev in ((1000, base), (2000, base + 0.002))]
    done.append(("t9", 1000, Row("x", "lt-sft", 0.99)))  # another configuration: not this confirm's
    done.append(("d1", 3000, Row("y", "lt-sft", 0.10, default=True)))  # a seed this confirm does not ask for
    summary, verdict, grid = run_confirm({}, picks, [1000, 2000], root=str(tmp_path), name="c", done=done)
    assert grid is None and not any(tmp_path.iterdir())
    assert [(c.label, c.dev.n, round(c.dev.mean, 3)) for c in summary] == [("t2", 2, 0.631), ("d1", 2, 0.601)]
    assert verdict.dev.n == 2 and verdict.significant  # +0.030 at both seeds: no spread, the interval is that point


# ------------------------------------------------------------------------------------------------------ bookkeeping
def _result(sample: dict, metrics: dict | None, error: Exception | None = None):
    """A Tune Result as confirm reads it (config, metrics, error): metrics None is a run that never reported."""
    from types import SimpleNamespace

    return SimpleNamespace(config={"sample": sample}, metrics=metrics, error=error)


def _confirm_grid(picks, seeds, dev, broken):
    """The results of a confirm, in Tune's (seed-major) order: ``dev[(label, seed)]`` the run's score; ``broken``:
    (label, seed) → "never" (no report at all) or "failed" (an error after an intermediate report)."""
    grid = []
    for i, sample in enumerate(confirm_samples(picks, seeds)):
        key = (sample["confirm"]["config"], sample["confirm"]["seed"])
        if broken.get(key) == "never":
            grid.append(_result(sample, None, RuntimeError("worker died before its first report")))
        elif broken.get(key) == "failed":
            grid.append(_result(sample, {"trial_id": f"r{i}", "objective": float("nan"), "phase": "sparse"},
                                RuntimeError("OOM")))
        else:
            grid.append(_result(sample, {"trial_id": f"r{i}", "objective": dev[key], "avg/test": dev[key] - 0.01,
                                         "phase": "final"}))
    return grid


PICKS = [("d1", {"method": "lt-sft", "settings": {}, "overrides": {}, "default": True}),
         ("t7", {"method": "sc-sft", "settings": {}, "overrides": {"sparse.lr": 1e-4}})]
SEEDS = [1000, 2000, 3000, 4000]
# every (configuration, seed) has its own score: a row labelled with another pair's key shows up at once
DEV = {("d1", 1000): 0.601, ("d1", 2000): 0.602, ("d1", 3000): 0.603, ("d1", 4000): 0.604,
       ("t7", 1000): 0.641, ("t7", 2000): 0.652, ("t7", 3000): 0.633, ("t7", 4000): 0.644}
BROKEN = {("d1", 1000): "never", ("t7", 2000): "failed"}


def test_a_confirm_with_a_failed_and_a_never_reporting_run_keeps_every_label():
    """The default's first run never reports and the searched configuration's second fails: zipping the trials with
    the rows of those that reported labelled every later run with its neighbour's (configuration, seed)."""
    from raysft.sweep.confirm import confirm_rows

    grid = _confirm_grid(PICKS, SEEDS, DEV, BROKEN)
    rows = confirm_rows(grid)
    assert len(rows) == 8  # every run is there, the broken ones too
    for label, seed, row in rows:
        if (label, seed) in BROKEN:
            assert not row.final and row.seed == seed and row.default == (label == "d1")
        else:
            assert row.final and row.dev == DEV[(label, seed)] and row.default == (label == "d1"), (label, seed)
            assert row.method == ("lt-sft" if label == "d1" else "sc-sft") and row.seed == seed
    summary = {c.label: c for c in confirm_summary(rows)}
    assert summary["d1"].seeds == [2000, 3000, 4000] and summary["d1"].failed == [1000]
    assert summary["t7"].seeds == [1000, 3000, 4000] and summary["t7"].failed == [2000]
    assert summary["d1"].dev.mean == pytest.approx(0.603) and summary["t7"].dev.mean == pytest.approx(0.6393333)
    v = confirm_verdict(list(summary.values()))
    # paired only where both finished: seeds 3000 and 4000
    assert v.seeds == (3000, 4000) and v.dev.mean == pytest.approx(paired_test([0.030, 0.040]).mean)
    assert v.failed == (("d1", 1000), ("t7", 2000))
    assert v.line().endswith("· left out of the test, failed or never reported: d1 seed 1000, t7 seed 2000")


def test_the_confirm_table_and_run_confirm_show_the_failed_runs(monkeypatch, tmp_path):
    from rich.console import Console

    import raysft.sweep.confirm as confirm
    from raysft.cli import confirm_table

    grid = _confirm_grid(PICKS, SEEDS, DEV, BROKEN)
    monkeypatch.setattr(confirm, "_confirm_trials", lambda *a, **k: grid)  # no Ray: the fake results above

    class Tracking:
        def log_confirm(self, summary, verdict, seeds):
            self.logged = (summary, verdict, seeds)

    tracking = Tracking()
    summary, verdict, _ = confirm.run_confirm({"tune": {"confidence": 0.9}}, PICKS, SEEDS, root=str(tmp_path),
                                              name="c", tracking=tracking)
    assert tracking.logged == (summary, verdict, SEEDS) and verdict.confidence == 0.9
    console = Console(width=200, record=True)
    console.print(confirm_table(summary, "f1"))
    text = console.export_text()
    assert "2000,3000,4000 · failed 1000" in text and "1000,3000,4000 · failed 2000" in text
    assert "failed: the run failed or never reported; it is left out of the mean and of the test" in text


def test_confirm_picks_take_each_sample_from_its_own_trial():
    from types import SimpleNamespace

    from raysft.sweep.confirm import confirm_picks

    def trial(tid, sample, result):
        return SimpleNamespace(trial_id=tid, config={"sample": sample}, last_result=result)

    s = {t: {"method": "sc-sft", "settings": {}, "overrides": {"sparse.lr": lr}} for t, lr in (("a", 1e-4), ("c", 3e-4))}
    trials = [
        trial("d", {"method": "lt-sft", "settings": {}, "overrides": {}, "default": True},
              {"trial_id": "d", "objective": 0.60, "phase": "final"}),
        trial("x", {"method": "deft-x", "settings": {}, "overrides": {}}, {}),  # never reported
        trial("a", s["a"], {"trial_id": "a", "objective": 0.62, "phase": "final"}),
        trial("b", {"method": "deft-x", "settings": {}, "overrides": {}}, {"trial_id": "b", "objective": 0.7, "phase": "sparse"}),
        trial("c", s["c"], {"trial_id": "c", "objective": 0.65, "phase": "final"}),
    ]
    assert confirm_picks(trials, 2) == [("d", trials[0].config["sample"]), ("c", s["c"]), ("a", s["a"])]


@pytest.mark.parametrize("args,message", [
    (["tune", "smoke", "--confirm", "1", "--seeds", "0"], "--confirm 1 --seeds 0"),
    (["tune", "smoke", "--confirm", "-1"], "--confirm -1"),
    (["confirm", "smoke", "--top", "0"], "--top 0"),
])
def test_bad_confirm_input_exit_2_before_anything_runs(args, message, capsys, tmp_path):
    from raysft.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*args, "--storage", str(tmp_path / "s")] if args[0] == "tune" else args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_asha_records_a_default_trials_scores_but_never_stops_it():
    """The defaults are the baseline: ASHA stopped sc-sft's default at its first rung in a sa-cpu sweep here."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from raysft.sweep.scheduler import DefaultsFinishASHA

    asha = DefaultsFinishASHA(metric="objective", mode="max", grace_period=1, reduction_factor=2, max_t=100)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"sample": {"method": "lt-sft", **({"default": True} if i < 2 else {})}})
              for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)
    actions = {t.trial_id: asha.on_trial_result(None, t, {"training_iteration": 1, "objective": score})
               for t, score in zip(trials, [0.60, 0.10, 0.20, 0.70])}
    assert actions["t1"] == TrialScheduler.CONTINUE  # a default below the rung's cut still runs on
    assert actions["t2"] == TrialScheduler.STOP  # a searched one below it is stopped, against the default's 0.60
    assert actions["t3"] == TrialScheduler.CONTINUE
    assert asha._num_stopped == 1



def test_a_trial_line_prints_its_best_vs_default_whole():
    """The watcher prints each finished trial's line as text: Rich took "[sc-sft c vs lt-sft default a]" for a tag."""
    from rich.console import Console

    from raysft.sweep.watch import SweepWatch

    console = Console(record=True, width=400)
    line = "trial c: sc-sft → dev 0.6210 · " + versus_default([Row("a", "lt-sft", 0.6, default=True),
                                                             Row("c", "sc-sft", 0.621)]).line()
    SweepWatch(console, 1, 1, live=False).update({}, [{"trial_id": "c", "phase": "done", "line": line}])
    assert "[sc-sft c vs lt-sft default a] → one seed cannot tell (no CI)" in console.export_text()
