"""`raysft tune`: a real Ray Tune sweep (Optuna + ASHA, one Ray Train run per trial) on the smoke space, the shared
dense phase, and the bad inputs refused before any trial starts (a sweep resumed after its driver is killed: the
sweep fixture of tests/test_tracking.py)."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysft.cli import main
from tests.conftest import REPO, needs_data

pytestmark = pytest.mark.slow

ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60",
    "TUNE_GLOBAL_CHECKPOINT_S": "1",  # experiment state saved often: a killed driver loses little
    "PYTHONUNBUFFERED": "1",
}


def dense_faults_env(folder: Path) -> dict[str, str]:
    """The environment that makes the sweep's trials take the faults listed in ``folder`` when they claim a dense
    phase (:mod:`tests.dense_faults`, reaching every Ray worker through a worker process setup hook)."""
    return {"RAY_RUNTIME_ENV_HOOK": "tests.dense_faults.runtime_env_hook", "RAYSFT_TEST_DENSE_FAULTS": str(folder),
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def tune_cmd(*args):
    return [sys.executable, "-m", "raysft.cli", "tune", "smoke", *args]


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """trial folder -> every result it reported (result.json lines)."""
    out = {}
    for f in sorted(experiment.glob("*/result.json")):
        out[f.parent.name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def jav_lang_sft(folder: Path) -> Path:
    """A small language SFT for jav on the smoke model (sun and eng get none): trials compose it in their workers."""
    import torch

    from raysft.models import load_for_classification
    from raysft.sft.delta import SparseDelta, base_metadata
    from raysft.sft.groups import ParamSpace

    space = ParamSpace(load_for_classification("tiny:xlmr", 3))
    g = torch.Generator().manual_seed(5)
    diffs = {p.name: (torch.arange(0, p.numel, 5), torch.randn(len(range(0, p.numel, 5)), generator=g) * 0.2)
             for p in space.maskable}
    SparseDelta(diffs, {}, {"kind": "lang", "language": "jav", **base_metadata(space)}).save(folder / "jav.safetensors")
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A smoke sweep of 3 trials composing a language SFT, then (--confirm 1 --seeds 1) the default and the best
    searched trial rerun at a new seed. Returns (storage, the sweep's stdout up to its confirm, the whole stdout,
    the MLflow URI)."""
    needs_data()
    storage = tmp_path_factory.mktemp("tune")
    langs = jav_lang_sft(tmp_path_factory.mktemp("langs"))
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    proc = subprocess.run(
        tune_cmd("--trials", "3", "--storage", str(storage), "--set", "tune.scheduler=none", "--set", f"lang_sfts={langs}",
                 "--tracking-uri", uri, "--confirm", "1", "--seeds", "1"),
        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return storage, proc.stdout[:proc.stdout.index("confirm: 2 configurations")], proc.stdout, uri


def test_sweep_finishes_with_per_language_dev_scores(sweep):
    storage, stdout, _, _ = sweep
    results = trial_results(storage / "smoke")
    assert len(results) == 3
    for reports in results.values():
        final = reports[-1]
        assert final["phase"] == "final"
        for lang in ("jav", "sun"):
            assert 0.0 <= final[f"f1/dev/{lang}"] <= 1.0
        assert 0.0 <= final["objective"] <= 1.0
    assert stdout.count("trial ") >= 3 and "top trials" in stdout
    # captured (not a terminal): one line per phase change of every trial, as it happens, with the time left
    phases = [line for line in stdout.splitlines() if line.startswith("[") and " sc-sft: " in line]
    for phase in ("starting", "workers", "loading", "sparse (", "eval (", "final, dev"):
        assert sum(f"sc-sft: {phase}" in line for line in phases) == 3, (phase, stdout[-3000:])
    assert sum(bool(re.search(r"sc-sft: dense \(\d+ steps\)", line)) for line in phases) == 1  # computed once
    assert sum("sc-sft: dense (reused)" in line for line in phases) == 2
    assert phases[0].split(" sc-sft: ")[1].startswith("starting") and "of 3" not in phases[0] and "0/3 done" in phases[0]


def test_trials_score_task_only_and_composed_in_their_workers(sweep):
    """Each trial's metrics.json (from its Train workers) has jav composed with its language SFT, sun task-only and
    named as missing, and the objective on the composed score."""
    storage, _, _, _ = sweep
    finals = [json.loads(p.read_text()) for p in storage.rglob("metrics.json")]
    assert len(finals) >= 5  # 3 trials, 2 confirm runs
    for m in finals:
        assert set(m["composed"]["dev"]) == {"jav"} and set(m["task_only"]["dev"]) == {"jav", "sun", "eng"}
        assert m["lang_sft_missing"] == ["sun"] and m["lang_sfts"] == ["jav"]
        assert m["dev"]["jav"] == m["composed"]["dev"]["jav"] and m["dev"]["sun"] == m["task_only"]["dev"]["sun"]


def test_trials_time_their_parts(sweep):
    """Each trial's metrics.json splits its time (the time/* metrics): set-up, θ1 computed or read, the optimizer
    steps inside each phase, checkpoints, the evaluation's data and passes; they fit inside their phases."""
    storage, _, _, _ = sweep
    finals = [json.loads(p.read_text()) for p in storage.rglob("metrics.json") if p.parent.name == "final"]
    assert len(finals) == 5  # 3 trials, 2 confirm runs: the same workers
    for m in finals:
        t = m["timings"]
        for key in ("start_s", "load_s", "data_s", "base_s", "sparse_steps_s", "checkpoint_s", "eval_data_s",
                    "eval_dev_s", "eval_test_s"):
            assert t[key] >= 0, key
        assert t["load_s"] > 0 and 0 < t["sparse_steps_s"] <= t["sparse_s"]
        assert t["sparse_steps_s"] + t["checkpoint_s"] + t.get("dev_s", 0.0) <= t["sparse_s"]
        assert 0 < t["eval_dev_s"] + t["eval_test_s"] + t["eval_data_s"] <= t["eval_s"]
        passes = m["distributed"]["eval_pass_s"]
        assert {k.split("/")[1] for k in passes} == {"jav", "sun", "eng"}
        clock = m["distributed"]["clock"]
        assert clock["worker_started"] < clock["final_report"]
        if m["distributed"]["dense_cache"] == "computed":
            assert 0 < t["dense_steps_s"] <= t["dense_s"] and "theta1_read_s" not in t
        else:
            assert 0 < t["theta1_read_s"] <= t["dense_s"] and "dense_steps_s" not in t


def test_only_trials_that_led_their_kind_score_the_test_sets(sweep):
    """tune.test_every_trial false (the default): a trial scores test only when its dev led its kind (the defaults,
    or the searched trials) among the finished trials. So the best default and the best searched trial (what best vs
    default reports) have test scores; a trial without one lost on dev to a trial of its kind."""
    storage, _, _, _ = sweep
    trials = []
    for folder, reports in trial_results(storage / "smoke").items():
        sample = json.loads((storage / "smoke" / folder / "params.json").read_text())["sample"]
        final = reports[-1]
        trials.append((bool(sample.get("default")), final["objective"], final.get("avg/test")))
    for kind in (True, False):
        mine = [t for t in trials if t[0] == kind]
        assert mine
        assert max(mine, key=lambda t: t[1])[2] is not None  # the leader of its kind scored test
        for _, dev, test in mine:
            if test is None:
                assert any(d > dev and t is not None for _, d, t in mine)
            else:
                assert 0.0 <= test <= 1.0
    ids = [reports[-1]["trial_id"] for reports in trial_results(storage / "smoke").values()]
    metrics = [json.loads((storage / f"train-{i}" / "final" / "metrics.json").read_text()) for i in ids]
    for m in metrics:  # the workers say which they did; a trial that skipped test spent no time on it
        assert m["distributed"]["test_scored"] == bool(m["test"])
        if not m["test"]:
            assert m["timings"]["eval_test_s"] == 0 and not m["avg"].get("test")


def test_dense_phase_computed_once_for_trials_that_share_it(sweep):
    storage, stdout, _, _ = sweep
    assert "dense phases computed 1, reused 2" in stdout
    finals = [r[-1] for r in trial_results(storage / "smoke").values()]
    assert sorted(f["dense_cache"] for f in finals) == ["computed", "reused", "reused"]
    # one θ1 per seed: the sweep's, and the one its two confirm runs at seed 1000 share
    assert len(list((storage / "dense").glob("*/theta1.safetensors"))) == 2


@pytest.mark.slow
def test_sweep_runs_the_default_first_and_confirm_logs_distinct_seeds(sweep):
    """The sweep (3 trials, --confirm 1 --seeds 1): the first trial Tune starts is the default, labelled in the
    table, the MLflow child run and the parent's best-vs-default; the confirm runs use a new seed, and their mean
    lands on the parent run. Then `raysft confirm --seeds 2` keeps those runs, runs the second seed only and tests
    the pair."""
    from mlflow import MlflowClient

    storage, _, stdout, uri = sweep
    out = " ".join(stdout.split())
    assert "1 at the defaults (sc-sft)" in out and "sc-sft (default)" in out and "vs default" in out
    trials = sorted((storage / "smoke").glob("run_trial_*"), key=lambda p: int(p.name.split("_")[3]))
    first = json.loads((trials[0] / "params.json").read_text())["sample"]
    assert first["default"] is True and first["settings"] == {} and first["overrides"] == {}
    assert "default" not in json.loads((trials[1] / "params.json").read_text())["sample"]

    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("smoke").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("raysft.kind") == "sweep")
    trial_runs = [r for r in runs if r.data.tags.get("raysft.kind") == "trial"]
    defaults = [r for r in trial_runs if r.data.tags.get("raysft.default") == "true"]
    assert len(trial_runs) == 3 and len(defaults) == 1
    assert parent.data.tags["raysft.default_trial"] == defaults[0].data.tags["trial_id"]
    assert parent.data.metrics["default/dev"] == defaults[0].data.metrics["objective"]
    assert "best_vs_default/dev" in parent.data.metrics and "vs default" in parent.data.tags["raysft.best_vs_default"]

    confirm = [r for r in runs if r.data.tags.get("raysft.kind") == "confirm"]
    assert len(confirm) == 2  # (default + the best searched trial) x 1 seed
    by_config: dict[str, list[int]] = {}
    for r in confirm:
        seed = int(r.data.tags["raysft.confirm_seed"])
        assert int(r.data.params["seed"]) == seed and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        by_config.setdefault(r.data.tags["raysft.confirm_config"], []).append(seed)
    assert len(by_config) == 2 and defaults[0].data.tags["trial_id"] in by_config
    assert set(by_config) <= {t.data.tags["trial_id"] for t in trial_runs}
    assert all(s == [1000] for s in by_config.values())  # new: not the sweep's seed 0
    assert parent.data.tags["raysft.confirm_seeds"] == "1000" and "confirm/default/dev_mean" in parent.data.metrics
    confirm_reports = trial_results(next((storage).glob("smoke-confirm-*"))).values()
    finals = [r[-1] for r in confirm_reports]
    assert len(finals) == 2 and all(f["phase"] == "final" for f in finals)
    # no searcher or scheduler ranks a confirm run: only its final evaluation scores dev (no per-epoch dev passes)
    # (a checkpoint's objective is NaN: not measured)
    assert all(math.isnan(r["objective"]) for reports in confirm_reports for r in reports[:-1])
    assert any(len(reports) > 1 for reports in confirm_reports)  # it did report (checkpoints) before the end
    assert "confirm: mean ± sd" in out and "one seed cannot tell" in out
    confirm_out = out[out.index("confirm: 2 configurations"):]
    assert ": sparse (" in confirm_out and ": eval (" in confirm_out  # the confirm runs' phases are shown as they run

    # `raysft confirm` again with a second seed: the 2 runs that finished are kept, only the 2 missing ones run
    proc = subprocess.run(
        [sys.executable, "-m", "raysft.cli", "confirm", "smoke", "--top", "1", "--seeds", "2", "--tracking-uri", uri],
        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=1200,
    )
    again = " ".join(proc.stdout.split())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 of 4 runs already finished under this sweep (kept); 2 to run" in again, again[-2000:]
    confirm = [r for r in c.search_runs([parent.info.experiment_id]) if r.data.tags.get("raysft.kind") == "confirm"]
    seeds = sorted(int(r.data.tags["raysft.confirm_seed"]) for r in confirm)
    assert seeds == [1000, 1000, 2000, 2000]  # no pair ran twice
    summary = c.get_run(parent.info.run_id)
    assert summary.data.tags["raysft.confirm_seeds"] == "1000,2000"
    assert again.count("1000,2000") == 2  # each configuration's mean ± sd is over both seeds
    assert "paired t-test over seeds, n=2" in " ".join(again.split())


def test_ctrl_c_stops_the_sweep_and_skips_its_confirm(tmp_path):
    """The first Ctrl-C stops the trials; the driver says the sweep was interrupted and starts no confirm run."""
    needs_data()
    storage = tmp_path / "tune"
    args = ("--trials", "3", "--storage", str(storage), "--max-concurrent", "1", "--set", "tune.scheduler=none",
            "--confirm", "1", "--seeds", "1", "--no-track")
    proc = subprocess.Popen(tune_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO)
    deadline = time.time() + 600
    lines = []
    for line in proc.stdout:  # the first finished trial, then Ctrl-C while the second runs
        lines.append(line)
        if line.startswith("trial "):
            break
        assert time.time() < deadline
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: the sweep stopped early and nothing was confirmed" in out
    assert "confirm:" not in out and not list(storage.glob("smoke-confirm-*"))
    results = trial_results(storage / "smoke")
    assert 1 <= sum(1 for r in results.values() if r and r[-1].get("phase") == "final") < 3


@pytest.mark.parametrize("args,message", [
    (["--trials", "0"], "--trials 0"),
    (["--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    (["--set", "methods.sc-sft.space={sparse.lr: {dist: float, low: 1, high: 0}}"], "empty range"),
    (["--set", "methods.sc-sft.space={budget: {dist: dirichlet, groups: [embeddings, decoder]}}"], "unknown group 'decoder'"),
    (["--set", "tune.methods=[magic]"], "unknown method 'magic'"),
])
def test_bad_sweep_input_exit_2_before_any_trial(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["tune", "smoke", "--storage", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s" / "smoke").exists()


def test_resources_no_node_can_hold_are_refused(capsys, tmp_path):
    import ray

    try:
        with pytest.raises(SystemExit) as exc:
            main(["tune", "smoke", "--storage", str(tmp_path / "s"), "--set", "tune.cpus_per_worker=512"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "no node can hold a worker with 512 CPU" in err, err
        assert not (tmp_path / "s" / "smoke").exists()
    finally:
        ray.shutdown()


def test_shared_dense_phase_survives_a_stopped_and_a_killed_computing_trial_under_asha(tmp_path):
    """Three concurrent trials share one dense phase under ASHA. The first trial to claim it is terminated at once
    (SIGTERM, as Ray ends a trial the scheduler stops: no exception, no word to the cache), the next claimant is
    killed (its process exits). Nobody renews the lease, it expires, and a waiting trial (or the retried one) takes
    the dense phase over. The sweep finishes, θ1 is computed once, and waiters get θ1 while the computing trial is
    still running (it is published at the end of the dense phase, not when the trial ends)."""
    needs_data()
    storage, hooks = tmp_path / "tune", tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "actions").write_text("stop\nkill\n")
    args = ("--trials", "3", "--max-concurrent", "3", "--storage", str(storage), "--no-track",
            "--set", "tune.dense_lease_s=10", "--set", "tune.report_every=5", "--set", "tune.cpus_per_worker=0.5")
    proc = subprocess.run(tune_cmd(*args), capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**ENV, **dense_faults_env(hooks)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (hooks / "done").read_text().split() == ["stop", "kill"]
    assert "3 trials" in proc.stdout
    assert len(list((storage / "dense").glob("*/theta1.safetensors"))) == 1
    results = {t: r for t, r in trial_results(storage / "smoke").items() if r}
    finals = {t: r[-1] for t, r in results.items() if r[-1].get("phase") == "final"}
    computing = [t for t, f in finals.items() if f["dense_cache"] == "computed"]
    assert len(computing) == 1  # ASHA does not stop the computing trial: it reaches every rung first
    waiters = set(results) - set(computing)
    assert waiters and all(finals[t]["dense_cache"] == "reused" for t in waiters if t in finals)
    # Waiters had θ1 before the computing trial's last report: they did not wait for the whole trial.
    for t in waiters:
        assert results[t][0]["dense_ready_at"] < results[computing[0]][-1]["timestamp"]


def test_multi_objective_sweep_finishes_and_reports_its_pareto_front(tmp_path):
    """(dev ↑, K ↓) with K searched: every report, intermediate ones included, carries both metrics (the first
    intermediate report used to crash the sweep), and the end of the sweep prints the Pareto front."""
    needs_data()
    storage = tmp_path / "tune"
    space = "{sft.density: {dist: float, low: 0.01, high: 0.3, log: true}, sparse.lr: {dist: float, low: 1.0e-4, high: 1.0e-2, log: true}}"
    args = ("--trials", "2", "--max-concurrent", "2", "--storage", str(storage), "--no-track",
            "--set", "tune.multi_objective=true", "--set", f"methods.sc-sft.space={space}", "--set", "tune.report_every=10")
    proc = subprocess.run(tune_cmd(*args), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = trial_results(storage / "smoke")
    assert len(results) == 2  # the default, then one searched K
    for reports in results.values():
        assert reports[-1]["phase"] == "final" and len(reports) >= 2  # intermediate reports, then the final one
        assert all("k" in r and "objective" in r for r in reports)
    points = {(round(r[-1]["objective"], 4), r[-1]["k"]) for r in results.values()}
    assert len({k for _, k in points}) == 2  # K was searched
    lines = proc.stdout[proc.stdout.index("Pareto front"):].splitlines()
    n_front = int(lines[0].split("), ")[1].split(" of ")[0])
    front = lines[1 : 1 + n_front]
    assert 1 <= n_front <= 2 and all("→ dev" in line and "at K=" in line for line in front)
    # Every trial on the front is undominated.
    for line in front:
        score, k = float(line.split("→ dev ")[1].split()[0]), int(line.split("K=")[1].replace(",", ""))
        assert not any(s > score and kk <= k or s >= score and kk < k for s, kk in points)
