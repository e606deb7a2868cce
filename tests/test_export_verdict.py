"""`raysft export --best` exports what the latest sweep's verdict supports, and its model card states that verdict (the
test, the seeds, the effect and its interval). A sqlite MLflow store written here (no Ray, no training): a sweep
parent with three finished trials (the default d1, t7, and t9, the best on dev at the sweep's seed) and the verdict
that raysft confirm records on the parent (SweepTracking.log_confirm)."""

import json
import shutil

import pytest
import torch
import yaml

from raysft.cli import main
from raysft.outcome import Row, confirm_summary, confirm_verdict, versus_default
from raysft.sft.delta import SparseDelta
from raysft.tracking import record
from raysft.tracking.runs import SweepTracking
from raysft.tracking.store import TrackingURI, connect, ensure_experiment

TRIALS = {"d1": (True, 0.600), "t7": (False, 0.640), "t9": (False, 0.660)}  # trial → (default, dev at the sweep's seed)
SEEDS = [1000, 2000, 3000]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The store, written once (creating an MLflow database takes seconds); each test gets a copy of its database
    (the artifacts stay where they are, read only)."""
    d = tmp_path_factory.mktemp("store")
    return d, _write_store(d)


@pytest.fixture
def store(template, tmp_path):
    """(tracking URI, tracking of the sweep's parent run, {trial id: run id})."""
    d, (exp, parent, runs) = template
    shutil.copy(d / "mlflow.db", tmp_path / "mlflow.db")
    uri = TrackingURI(f"sqlite:///{tmp_path}/mlflow.db", True)
    return uri.uri, SweepTracking(uri, "smoke", exp, parent, True, {}, str(tmp_path), str(tmp_path / "tune")), runs


def _write_store(tmp_path):
    uri = TrackingURI(f"sqlite:///{tmp_path}/mlflow.db", True)
    c = connect(uri)
    exp = ensure_experiment(c, uri, "smoke")
    parent = c.create_run(exp, tags={"raysft.kind": "sweep", "raysft.storage": str(tmp_path / "tune")}).info.run_id
    runs = {}
    for tid, (default, dev) in TRIALS.items():
        tags = {"raysft.kind": "trial", "trial_id": tid, "mlflow.parentRunId": parent}
        if default:
            tags["raysft.default"] = "true"
        run = c.create_run(exp, tags=tags).info.run_id
        method = "lt-sft" if default else "sc-sft"
        for key, v in (("method", method), ("seed", "0"), ("task", "sa"), ("model", "tiny:xlmr-L2-H32")):
            c.log_param(run, key, v)
        c.log_metric(run, record.DEFAULT_METRIC, dev)
        c.log_metric(run, "avg/test", dev - 0.01)
        d = tmp_path / "artifacts" / tid
        d.mkdir(parents=True)
        SparseDelta(diffs={"encoder.layer.0.output.dense.bias": (None, torch.ones(4))}, abs={},
                    meta={"kind": "task", "method": method, "base_model": "tiny:xlmr-L2-H32", "task": "sa", "k": 4}
                    ).save(d / record.DELTA_FILE)
        (d / record.METRICS_FILE).write_text(json.dumps({"trial": tid}))
        (d / record.CONFIG_FILE).write_text(yaml.safe_dump({"name": "smoke"}))
        for f in d.iterdir():
            c.log_artifact(run, str(f))
        c.set_terminated(run, "FINISHED")
        runs[tid] = run
    return exp, parent, runs


def _confirm(tracking, gains: list[float], failed=False):
    """Record raysft confirm's verdict for t7 against d1 with these per-seed dev gains."""
    rows = [("d1", s, Row(f"d{s}", "lt-sft", 0.6 + i / 100, 0.6, default=True)) for i, s in enumerate(SEEDS)]
    rows += [("t7", s, Row(f"t{s}", "sc-sft", 0.6 + i / 100 + g, 0.61)) for i, (s, g) in enumerate(zip(SEEDS, gains))]
    if failed:
        rows.append(("t7", 4000, Row("x", "sc-sft", None, final=False)))
    summary = confirm_summary(rows)
    verdict = confirm_verdict(summary)
    tracking.log_confirm(summary, verdict, SEEDS)
    return verdict


def _export(uri, out, *args):
    main(["export", "smoke", "--best", "--out", str(out), "--tracking-uri", uri, *args])
    return json.loads((out / "export.json").read_text()), (out / "README.md").read_text()


def test_a_significant_verdict_exports_its_configuration_and_the_card_states_it(store, tmp_path, capsys):
    uri, tracking, runs = store
    verdict = _confirm(tracking, [0.040, 0.045, 0.038], failed=True)
    assert verdict.significant
    info, card = _export(uri, tmp_path / "out")
    out = capsys.readouterr().out
    # t7, not t9 (the best at one seed): the verdict decides, not the ranking
    assert info["run_id"] == runs["t7"] and info["selected_as"] == "better than the default"
    assert f"exporting trial t7: it beats the default beyond the seeds' noise (confirm: dev +0.041, " \
           f"{verdict.dev.ci()}, p={verdict.dev.p:.3f})" in out
    assert info["verdict"]["source"] == "confirm" and info["verdict"]["seeds"] == SEEDS
    for text in ("## Verdict", "Exported as the configuration that beats the default beyond the seeds' noise.",
                 "| test | paired t-test over seeds (scipy.stats.ttest_1samp on the per-seed differences), two-sided, "
                 "95% confidence |", "| compared | trial `t7` − default trial `d1` |", "| seeds | 1000, 2000, 3000 (3 paired) |",
                 f"| dev gain (decides) | +0.0410, 95% CI [{verdict.dev.low:+.4f}, {verdict.dev.high:+.4f}], t = ",
                 "better at 3 of 3 seeds |", "| left out | `t7` seed 4000 (failed or never reported) |",
                 "Verdict: beats the default beyond the seeds' noise."):
        assert text in card, text
    # the parent run holds the verdict's numbers
    parent = connect(TrackingURI(uri, True)).get_run(tracking.parent_run_id).data
    assert parent.metrics["confirm_verdict/dev_ci_low"] == pytest.approx(verdict.dev.low)
    assert parent.metrics["confirm_verdict/n_seeds"] == 3 and parent.tags["raysft.confirm_verdict.significant"] == "true"
    assert parent.tags["raysft.confirm_verdict.test"] == "paired t-test over seeds"


def test_without_a_significant_verdict_the_default_is_exported_with_one_line(store, tmp_path, capsys):
    uri, tracking, runs = store
    verdict = _confirm(tracking, [0.03, -0.02, 0.01])
    assert not verdict.significant
    info, card = _export(uri, tmp_path / "out")
    lines = capsys.readouterr().out.strip().splitlines()
    assert info["run_id"] == runs["d1"] and info["selected_as"] == "default"
    assert lines[0] == (f"no configuration beats the default beyond the seeds' noise (confirm: t7 vs default d1, dev "
                        f"+0.007, {verdict.dev.ci()}, p={verdict.dev.p:.3f}): exporting the default, trial d1; "
                        "--allow-unconfirmed exports the best unconfirmed one")
    assert "Exported as the default configuration: no searched configuration is shown to beat it" in card
    assert "Verdict: NOT beyond the seeds' noise (the 95% CI includes 0)." in card

    # --allow-unconfirmed: the best by the metric, said to be unconfirmed, in the line and the card
    info, card = _export(uri, tmp_path / "any", "--allow-unconfirmed")
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert info["run_id"] == runs["t9"] and info["selected_as"] == "unconfirmed"
    assert line.startswith("exporting the best run by objective, t9, unconfirmed (confirm: t7 vs default d1, dev +0.007")
    assert "Exported as the best run by objective, with --allow-unconfirmed: no verdict shows it beats the default." in card


def test_a_single_seed_sweep_verdict_exports_the_default_and_says_why(store, tmp_path, capsys):
    """No confirm: the sweep's own verdict (one seed) cannot tell, and the line names the fix."""
    uri, tracking, runs = store
    outcome = versus_default([Row(t, "m", dev, default=default) for t, (default, dev) in TRIALS.items()])
    c = connect(TrackingURI(uri, True))
    for k, v in outcome.verdict().tags(record.SWEEP_VERDICT).items():
        c.set_tag(tracking.parent_run_id, k, v)
    info, card = _export(uri, tmp_path / "out")
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert info["run_id"] == runs["d1"]
    assert line.startswith("no configuration beats the default beyond the seeds' noise (sweep: one seed cannot tell "
                           "(no CI); run raysft confirm smoke): exporting the default, trial d1")
    assert "| dev gain (decides) | +0.0600 at 1 seed (no interval: one seed cannot tell) |" in card
    assert "| seeds | the sweep's seed (1 paired) |" in card


def test_no_verdict_at_all_exports_the_default(store, tmp_path, capsys):
    uri, _, runs = store
    info, card = _export(uri, tmp_path / "out")
    assert info["run_id"] == runs["d1"] and "verdict" not in info
    assert "(no verdict recorded: run raysft confirm smoke)" in capsys.readouterr().out
    assert "No verdict concerns this run" in card


@pytest.mark.parametrize("args,message", [
    (["--best", "--confirmed"], "--confirmed is gone: --best now exports"),
    (["--run-id", "abc", "--allow-unconfirmed"], "--allow-unconfirmed goes with --best"),
])
def test_bad_export_flags_one_line_exit_2(store, tmp_path, capsys, args, message):
    uri, _, _ = store
    with pytest.raises(SystemExit) as exc:
        main(["export", "smoke", "--out", str(tmp_path / "x"), "--tracking-uri", uri, *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_compare_prints_best_vs_default_and_the_confirm_verdict(store, capsys):
    uri, tracking, _ = store
    verdict = _confirm(tracking, [0.03, -0.02, 0.01])
    main(["compare", "smoke", "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert ("best dev 0.660 vs default 0.600 (+0.060) · test 0.650 vs 0.590 (+0.060) [sc-sft t9 vs lt-sft default d1] "
            "→ one seed cannot tell (no CI)") in out
    assert f"confirm of sweep {tracking.parent_run_id[:8]}: {verdict.line()}" in out


def test_the_sweeps_parent_run_records_its_verdict(store):
    """SweepTracking.finish: best vs default and its verdict (one seed: no interval) as metrics and tags."""
    from types import SimpleNamespace

    uri, tracking, _ = store
    tracking.base = {"name": "smoke", "task": "sa", "tune": {"confidence": 0.9}}
    grid = [SimpleNamespace(config={"sample": {"method": "sc-sft", "default": True} if t == "d1" else {"method": "sc-sft"}},
                            metrics={"trial_id": t, "objective": dev, "avg/test": dev - 0.01, "phase": "final"}, error=None)
            for t, (_, dev) in TRIALS.items()]
    tracking.finish(grid, {"computed": 1, "reused": 2}, 10.0)
    run = connect(TrackingURI(uri, True)).get_run(tracking.parent_run_id).data
    assert run.metrics["verdict/n_seeds"] == 1 and run.metrics["verdict/dev_effect"] == pytest.approx(0.06)
    assert "verdict/dev_ci_low" not in run.metrics  # one seed: no interval to log
    assert run.tags["raysft.verdict.best"] == "t9" and run.tags["raysft.verdict.significant"] == "false"
    assert run.tags["raysft.verdict.confidence"] == "0.9"
    assert run.tags["raysft.best_vs_default"].endswith("→ one seed cannot tell (no CI): rerun both with new seeds "
                                                       "(raysft confirm) to test it")


def test_a_new_sweep_states_its_confidence_and_is_the_one_export_reads(store, tmp_path, capsys):
    """The parent run logs tune.confidence (what compare states its line at); a newer sweep, not yet confirmed, is
    the latest: an older sweep's confirm does not vouch for it."""
    from raysft.config import load_config

    uri, tracking, runs = store
    _confirm(tracking, [0.040, 0.045, 0.038])  # the older sweep: t7 beats its default
    (tmp_path / "tune2").mkdir()
    new = SweepTracking.start(load_config("smoke", ["tune.confidence=0.9"]), tracking_uri=uri, experiment="smoke",
                              experiment_dir=str(tmp_path / "tune2"), storage_root=str(tmp_path), resume=False, nodes=1)
    c = connect(TrackingURI(uri, True))
    assert c.get_run(new.parent_run_id).data.params["tune.confidence"] == "0.9"
    with pytest.raises(SystemExit) as exc:  # the new sweep has no trials yet: no default to fall back on
        main(["export", "smoke", "--best", "--out", str(tmp_path / "x"), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no verdict recorded: run raysft confirm smoke" in err and "has no finished default" in err
