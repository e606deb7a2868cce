"""`raysft tune` refuses, in its driver and before Ray starts, what would fail or repeat in every trial; `--dry-run`
prints what the sweep would run, with the searcher's own draws, and starts nothing."""


import pytest

from raysft.cli import main
from raysft.config import load_config
from raysft.sweep.preflight import distinct_configurations, first_samples
from raysft.sweep.space import parse_space
from raysft.sweep.report import pareto_front
from tests.conftest import needs_data


def run_tune(capsys, tmp_path, *args):
    import ray

    with pytest.raises(SystemExit) as exc:
        main(["tune", "smoke", "--storage", str(tmp_path / "s"), "--no-track", *args])
    err = capsys.readouterr().err
    assert not ray.is_initialized()  # refused before any Ray (so before any trial)
    assert not (tmp_path / "s").exists()  # nothing written
    return exc.value.code, err


@pytest.mark.parametrize("model,message", [
    ("/nonexistent/models/xlmr", "model path '/nonexistent/models/xlmr' does not exist"),
    ("xlm-roberta-base", "model 'xlm-roberta-base' is neither a local folder nor reachable on the Hugging Face hub"),
])
def test_an_unloadable_model_is_one_line_exit_2_before_any_trial(model, message, capsys, tmp_path, monkeypatch):
    needs_data()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id offline
    code, err = run_tune(capsys, tmp_path, "--set", f"model={model}")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_a_range_the_model_cannot_take_is_refused_before_any_trial(capsys, tmp_path):
    needs_data()
    space = "{rank_strategy: {dist: categorical, choices: [energy, uniform]}, " \
            "rank: {dist: int, low: 4, high: 512, log: true, when: {rank_strategy: uniform}}}"
    code, err = run_tune(capsys, tmp_path, "--set", "tune.methods=[deft-x]", "--set", f"methods.deft-x.space={space}")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "methods.deft-x.space.rank = 512" in err and "set methods.deft-x.rank <= 32" in err
    code, err = run_tune(capsys, tmp_path, "--set", "methods.sc-sft.space={budget: {dist: dirichlet, layers: 4}}")
    assert code == 2 and "layer.2" in err and "does not have" in err, err


def test_a_sweep_with_nothing_to_sample_is_refused(capsys, tmp_path):
    needs_data()
    code, err = run_tune(capsys, tmp_path, "--set", "tune.methods=[lt-sft]", "--set", "methods.lt-sft.space={}",
                         "--trials", "3")
    assert code == 2 and "method lt-sft has no `space:` to search" in err and "--trials 1" in err, err
    assert len(err.strip().splitlines()) == 1
    two = "methods.deft-x.space={rank_strategy: {dist: categorical, choices: [energy, uniform]}}"
    code, err = run_tune(capsys, tmp_path, "--set", "tune.methods=[deft-x]", "--set", two, "--trials", "3")
    assert code == 2 and "only 2 distinct configuration(s)" in err, err


def test_distinct_configurations_follow_the_conditions():
    spaces = {
        "deft-x": parse_space("deft-x", {
            "rank_strategy": {"dist": "categorical", "choices": ["energy", "uniform"]},
            "rank": {"dist": "int", "low": 4, "high": 6, "when": {"rank_strategy": "uniform"}},
        }),
        "lt-sft": {},
        "sc-sft": parse_space("sc-sft", {"budget": {"dist": "dirichlet", "layers": 2}}),
    }
    assert distinct_configurations(["deft-x"], spaces) == 1 + 3
    assert distinct_configurations(["deft-x", "lt-sft"], spaces) == 5
    assert distinct_configurations(["sc-sft"], spaces) == float("inf")


def test_tune_metric_is_gone(capsys, tmp_path):
    code, err = run_tune(capsys, tmp_path, "--set", "tune.metric=test")
    assert code == 2 and "unknown config key 'tune.metric'" in err, err


def test_dry_run_prints_the_searchers_first_draws_and_resources_and_starts_nothing(capsys, tmp_path):
    import ray

    from raysft.sweep.space import describe
    from raysft.sweep.study import make_searcher

    needs_data()
    main(["tune", "smoke", "--dry-run", "--storage", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert not ray.is_initialized() and not (tmp_path / "s").exists()
    assert "dry run, nothing started" in out and "K = 2,640" in out
    assert "1 Ray Train worker(s) × (1 CPU) + a driver" in out and "2 CPU, 0 GPU locally" in out
    # The trials it lists are those the sweep's OptunaSearch suggests first (same sampler, same seed).
    cfg = load_config("smoke")
    spaces = {m: cfg.method_space(m) for m in cfg.tune.methods}
    searcher = make_searcher(cfg, spaces, cfg.tune.trials)[0]
    expected = [searcher.suggest(f"t{i}")["sample"] for i in range(4)]
    assert first_samples(cfg, 4) == expected
    listed = [line.split(maxsplit=1)[1] for line in out.splitlines() if line.startswith("    ") and "sc-sft" in line]
    assert listed == [describe(s) for s in expected] and len(set(listed)) == 4
    # and the spaces themselves, one line per swept method: what a reader checks before paying for a sweep
    spaces_lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert set(cfg.tune.methods) <= set(spaces_lines)
    assert "budget vectors {dirichlet, shape, even}" in spaces_lines["sc-sft"], spaces_lines


def test_pareto_front():
    points = [("a", 0.60, 100), ("b", 0.55, 50), ("c", 0.50, 80), ("d", 0.60, 120), ("e", 0.40, 10)]
    assert pareto_front(points) == [("e", 0.40, 10), ("b", 0.55, 50), ("a", 0.60, 100)]
