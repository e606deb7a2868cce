"""`raysft train smoke --from-run RUN_ID` end to end: a real smoke sweep (2 trials, one Ray Train worker each, a few
steps per phase) tracked in a sqlite store, then each finished trial rerun in this process from its child run; the
rerun writes the trial's delta (its child run's artifact) bitwise.

What may differ between the two and does not change the delta: the trial may take θ1 from the sweep's dense-phase
cache (the same dense settings and seed, so the same θ1 as its own dense phase); it scores dev mid sparse phase (no
RNG drawn); the rerun uses the trial's torch threads (the worker's metrics.json records them; a 1-CPU Ray worker has
one), so no float sum is split otherwise.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from raysft.cli import main
from tests.conftest import REPO, needs_data

pytestmark = pytest.mark.slow

ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
ENV.pop("MLFLOW_TRACKING_URI", None)
STEPS = ["dense.max_steps=3", "sparse.max_steps=3", "data.max_eval_examples=8", "tune.scheduler=none"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished smoke sweep: its sqlite store's URI and its trials' child runs."""
    from mlflow import MlflowClient

    data = needs_data()
    root = tmp_path_factory.mktemp("from-run-e2e")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sets = [a for s in [f"data.dir={data}", *STEPS] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "raysft.cli", "tune", "smoke", "--trials", "2", "--storage", str(root / "tune"),
           "--tracking-uri", uri, *sets]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("smoke")
    children = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("raysft.kind") == "trial"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children), \
        [(r.info.run_name, r.info.status) for r in children]
    return uri, root, children


def test_from_run_writes_the_trials_delta_bitwise(sweep, capsys, monkeypatch):
    from mlflow import MlflowClient

    from raysft.sft.delta import SparseDelta
    from tests.test_parity import assert_bitwise

    uri, root, children = sweep
    c = MlflowClient(uri)
    # one trial computed θ1, the other took it from the dense-phase cache: both rerun bitwise
    assert sorted(r.data.metrics.get("dense_cache_hit") for r in children) == [0.0, 1.0]
    threads = torch.get_num_threads()
    try:
        for r in children:
            run_id, tid = r.info.run_id, r.data.tags["trial_id"]
            assert r.data.metrics["threads"] == 1.0  # a 1-CPU Ray Train worker: one torch thread
            (root / tid).mkdir()
            want = c.download_artifacts(run_id, "task_sft.safetensors", str(root / tid))
            logged = json.loads(open(c.download_artifacts(run_id, "metrics.json", str(root / tid))).read())
            assert logged["threads"] == 1
            torch.set_num_threads(2)  # the rerun sets the trial's count, whatever this process had
            out = root / f"rerun-{tid}"
            main(["train", "smoke", "--from-run", run_id, "--out", str(out), "-q", "--tracking-uri", uri])
            printed = capsys.readouterr()
            assert f"reproducing trial {tid} (run {run_id}" in printed.out and "1 torch thread" in printed.out, printed
            assert torch.get_num_threads() == 1
            rerun = json.loads((out / "metrics.json").read_text())
            # a trial that took θ1 from the cache ran no dense phase of its own: every phase it ran, the rerun ran alike
            assert rerun["threads"] == 1 and logged["phases"] == {p: rerun["phases"][p] for p in logged["phases"]}
            assert set(rerun["phases"]) - set(logged["phases"]) <= {"dense"}
            assert_bitwise(SparseDelta.load(out / "task_sft.safetensors"), SparseDelta.load(want), f"trial {tid}")
            assert rerun["k"] == logged["k"] and rerun["avg"]["dev"] == logged["avg"]["dev"]
    finally:
        torch.set_num_threads(threads)
