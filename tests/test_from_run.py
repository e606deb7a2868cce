"""`raysft train SPACE --from-run RUN_ID`: a sweep trial's child run, logged by the tracking code's own functions into a
sqlite store, is read back into the trial's Config, method and seed; refusals are one line and exit code 2. No Ray
and no training: the training call is replaced by one that records its arguments."""

from __future__ import annotations

import json

import pytest

from raysft.cli import main

SAMPLED = {"method": "sc-sft", "settings": {"budget": {"embeddings": 0.2, "layer.0": 0.3, "layer.1": 0.5}},
           "overrides": {"sparse.lr": 0.00123456789}}


class Captured(Exception):
    pass


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A sweep of the smoke space (with --set overrides) tracked in a sqlite store under tmp_path: its parent run and
    one trial's child run, opened as the tracking callback opens it."""
    from raysft.config import load_config, trial_config
    from raysft.tracking.record import now_ms
    from raysft.tracking.runs import SweepTracking
    from raysft.tracking.store import client
    from raysft.tracking.trial import open_trial_run

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as every command resolves it

    def sweep(sets: list[str], trial_id: str, folder: str):
        cfg = load_config("smoke", sets)
        tracking = SweepTracking.start(cfg, tracking_uri=None, experiment=None, experiment_dir=str(tmp_path / folder),
                                       storage_root=str(tmp_path), resume=False, nodes=1)
        trial_cfg = trial_config(tracking.base, SAMPLED)  # what the trial driver trains
        c = client(uri)
        run_id = open_trial_run(c, tracking.experiment_id, tracking.parent_run_id, trial_id, trial_cfg, SAMPLED, now_ms())
        return tracking, trial_cfg, run_id, c

    return sweep


@pytest.fixture
def captured(monkeypatch):
    """The training call records (config, method) and stops the command there."""
    import raysft.train.recipe as recipe

    calls = []

    def prepare(cfg, method, **kwargs):
        calls.append((cfg, method))
        raise Captured

    monkeypatch.setattr(recipe, "prepare", prepare)
    return calls


def _exit_2(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_child_run_logs_the_resolved_config_params_and_tags(store, tmp_path):
    from raysft.config import Config

    tracking, trial_cfg, run_id, c = store(["seed=7", "sparse.epochs=1"], "abc12345", "sweep")
    run = c.get_run(run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["raysft.kind"] == "trial" and tags["trial_id"] == "abc12345" and tags["raysft.space"] == "smoke"
    assert tags["mlflow.parentRunId"] == tracking.parent_run_id
    assert params["method"] == "sc-sft" and params["seed"] == "7" and params["budget/layer.1"] == "0.5"
    (tmp_path / "dl").mkdir()
    path = c.download_artifacts(run_id, "config.json", str(tmp_path / "dl"))
    logged = Config.model_validate(json.loads(open(path).read()))
    assert logged == trial_cfg and logged.sparse.lr == 0.00123456789 and logged.sparse.epochs == 1


def test_from_run_trains_the_trials_config_method_and_seed(store, captured, capsys, tmp_path):
    tracking, trial_cfg, run_id, _ = store(["seed=7", "sparse.epochs=1"], "abc12345", "sweep")
    capsys.readouterr()  # the store's creation
    for given in (run_id, run_id[:8]):  # the full id, or a prefix as raysft compare shows it
        with pytest.raises(Captured):
            main(["train", "smoke", "--from-run", given, "--out", str(tmp_path / "out"), "-q"])
        cfg, method = captured.pop()
        assert cfg == trial_cfg and method == "sc-sft" and cfg.seed == 7
        assert cfg.sparse.lr == 0.00123456789 and cfg.sparse.epochs == 1  # sampled value and the sweep's --set
        assert cfg.method_settings("sc-sft").model_dump()["budget"] == SAMPLED["settings"]["budget"]
        out = capsys.readouterr()
        assert f"reproducing trial abc12345 (run {run_id}" in out.out and "sc-sft, seed 7" in out.out
        assert "Ray Train workers" not in out.err


@pytest.fixture(autouse=True)
def keep_threads():
    """``--from-run`` sets this process's torch threads (the CLI owns its process): the tests' process gets its own
    back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_from_run_warns_when_the_trial_ran_several_workers(store, captured, capsys, tmp_path):
    _, trial_cfg, run_id, c = store(["tune.num_workers=2"], "def67890", "sweep2")
    c.log_metric(run_id, "threads", 1.0)
    capsys.readouterr()  # the store's creation
    with pytest.raises(Captured):
        main(["train", "smoke", "--from-run", run_id, "--out", str(tmp_path / "out"), "-q"])
    assert captured[0][0] == trial_cfg
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ran on 2 Ray Train workers" in err[0], err


def test_from_run_trains_with_the_trials_torch_threads(store, captured, capsys, tmp_path):
    """The worker's torch threads, from the child run's metric ``threads`` (what the tracking callback logs from the
    trial's metrics.json) or else from its metrics.json artifact, are this process's before training."""
    import torch

    from raysft.tracking import record

    assert ("threads", 1.0, 0) in record.final_metrics({"k": 3, "threads": 1})  # metrics.json → the run's metric
    _, _, metric_run, c = store([], "thr00001", "sweep")
    c.log_metric(metric_run, "threads", 1.0)
    _, _, json_run, c = store([], "thr00002", "sweep3")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "metrics.json").write_text(json.dumps({"method": "sc-sft", "threads": 1}))
    c.log_artifact(json_run, str(tmp_path / "m" / "metrics.json"))
    capsys.readouterr()  # the stores' creation
    for run_id, tid in ((metric_run, "thr00001"), (json_run, "thr00002")):
        torch.set_num_threads(2)
        with pytest.raises(Captured):
            main(["train", "smoke", "--from-run", run_id, "--out", str(tmp_path / "out"), "-q"])
        assert torch.get_num_threads() == 1
        out = capsys.readouterr()
        assert f"reproducing trial {tid} (run {run_id}" in out.out and "sc-sft, seed 0, 1 torch thread" in out.out, out
        assert not out.err.strip(), out.err


def test_from_run_keeps_the_process_threads_when_the_trial_did_not_record_them(store, captured, capsys, tmp_path):
    import torch

    _, _, run_id, _ = store([], "old00002", "sweep")
    capsys.readouterr()  # the store's creation
    torch.set_num_threads(2)
    with pytest.raises(Captured):
        main(["train", "smoke", "--from-run", run_id, "--out", str(tmp_path / "out"), "-q"])
    assert torch.get_num_threads() == 2
    out = capsys.readouterr()
    assert "reproducing trial old00002" in out.out and "torch thread" not in out.out
    err = out.err.strip().splitlines()
    assert len(err) == 1 and "does not record its torch threads" in err[0] and "keeps this process's 2" in err[0], err


def test_from_run_reads_a_config_yaml_of_a_run_logged_before_config_json(store, captured, tmp_path):
    import yaml

    tracking, trial_cfg, _, c = store([], "old00001", "sweep")
    run = c.create_run(tracking.experiment_id, run_name="trial-old00001",
                       tags={"mlflow.parentRunId": tracking.parent_run_id, "trial_id": "old00001", "raysft.kind": "trial"})
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(trial_cfg.model_dump(mode="json"), sort_keys=False))
    c.log_artifact(run.info.run_id, str(f))
    with pytest.raises(Captured):
        main(["train", "smoke", "--from-run", run.info.run_id, "--out", str(tmp_path / "out"), "-q"])
    assert captured[0] == (trial_cfg, "sc-sft")


def test_from_run_refusals_are_one_line_exit_2(store, captured, capsys, tmp_path, monkeypatch):
    tracking, _, run_id, c = store([], "abc12345", "sweep")
    capsys.readouterr()  # the store's creation
    out = ["--out", str(tmp_path / "out")]
    assert "no run '" + "0" * 32 + "'" in _exit_2(["train", "smoke", "--from-run", "0" * 32, *out], capsys)
    assert "no run 'zzzz'" in _exit_2(["train", "smoke", "--from-run", "zzzz", *out], capsys)
    err = _exit_2(["train", "smoke", "--from-run", tracking.parent_run_id, *out], capsys)
    assert "is a sweep's parent run, not a sweep trial's child run" in err
    other = c.create_run(tracking.experiment_id, run_name="x").info.run_id
    assert "is a run raysft did not log, not a sweep trial's child run" in _exit_2(["train", "smoke", "--from-run", other, *out], capsys)
    err = _exit_2(["train", "sa-cpu", "--from-run", run_id, *out], capsys)
    assert "is trial abc12345 of space 'smoke' (experiment 'smoke'), not of 'sa-cpu'" in err
    err = _exit_2(["train", "smoke", "--from-run", run_id, "--method", "lt-sft", *out], capsys)
    assert "leave out --method" in err
    err = _exit_2(["train", "smoke", "--from-run", run_id, "--set", "seed=3", "--method", "lt-sft", *out], capsys)
    assert "leave out --method and --set" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}")
    assert "no tracking store at" in _exit_2(["train", "smoke", "--from-run", run_id, *out], capsys)
    assert not captured and not (tmp_path / "out").exists()
