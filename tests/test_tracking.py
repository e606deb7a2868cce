"""Tracking (MLflow) and export: URI rules, the buffered writer, plots; against a real `mlflow server` on 127.0.0.1 a
smoke sweep killed and resumed (one parent, 3 child runs, all ended, with per-language metrics and artifacts),
`raysft train`'s run, compare, export → apply → evaluate (the logged test score exactly), and every bad input."""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from raysft.cli import main
from raysft.errors import RaysftError
from tests.conftest import REPO, needs_data
from tests.test_tune import trial_results

ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60",
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
    "PYTHONUNBUFFERED": "1",
}
ENV.pop("MLFLOW_TRACKING_URI", None)
LANGS = ("jav", "sun")
ARTIFACTS = {"task_sft.safetensors", "metrics.json", "config.yaml", "config.json", "plots/layers.png", "plots/languages.png"}


# ------------------------------------------------------------------------------------------------ fast: no server
def test_tracking_uri_default_env_and_flag(tmp_path, monkeypatch):
    from raysft.tracking.store import resolve_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_uri(None)
    assert uri.uri == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db" and not uri.explicit
    assert not (tmp_path / "runs").exists()  # nothing written until a run is logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_uri(None).uri == "http://127.0.0.1:5999" and resolve_uri(None).explicit
    assert resolve_uri("http://10.0.0.1:5000").uri == "http://10.0.0.1:5000"
    for bad, message in (("./mlruns", "file store"), ("file:///tmp/mlruns", "file store"), ("ftp://x/y", "unknown scheme")):
        with pytest.raises(RaysftError, match=message):
            resolve_uri(bad)


def test_read_commands_on_a_missing_local_store_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for args in (["compare", "smoke"], ["export", "smoke", "--best", "--out", "x"], ["ui"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "no tracking store at" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_sqlite_store_refused_on_a_multi_node_cluster():
    from raysft.tracking.store import TrackingURI, check_cluster

    check_cluster(TrackingURI("sqlite:////tmp/x/mlflow.db", False), 1)
    check_cluster(TrackingURI("http://head:5000", True), 3)
    with pytest.raises(RaysftError, match=r"3 nodes: on the head node run `mlflow server.*--tracking-uri http://"):
        check_cluster(TrackingURI("sqlite:////tmp/x/mlflow.db", False), 3)


def test_writer_keeps_writes_while_the_store_is_down_and_writes_them_in_order_after():
    from raysft.tracking.writer import Writer

    class Refused(Exception):
        error_code = "INVALID_PARAMETER_VALUE"

    done, warnings, state = [], [], {"down": False}

    def op(c, name):
        if state["down"]:
            raise ConnectionError("Connection refused")
        done.append(name)

    def bad(c):
        raise Refused("value changed")

    w = Writer("http://127.0.0.1:1", warn=warnings.append)
    w._client = object()
    w.submit("a", op, "a")
    state["down"] = True
    w.submit("b", op, "b")
    w.submit("c", op, "c")  # within the backoff: not even tried
    assert done == ["a"] and len(w.pending) == 2 and len(warnings) == 1 and "does not answer" in warnings[0]
    state["down"] = False
    w.submit("bad", bad)
    w.submit("d", op, "d")
    assert done == ["a"]  # still waiting for the backoff
    assert w.drain(attempts=1)
    assert done == ["a", "b", "c", "d"] and not w.pending
    assert any("refused" in m for m in warnings) and "answers again" in warnings[-1]


def test_layer_plot_counts_attention_and_feed_forward_from_the_delta_file(tmp_path):
    from raysft.sft.delta import SparseDelta
    from raysft.tracking import record

    delta = SparseDelta(
        diffs={
            "embeddings.word_embeddings.weight": (torch.tensor([1, 5]), torch.ones(2)),
            "encoder.layer.0.attention.self.query.weight": (torch.tensor([0, 2, 3]), torch.ones(3)),
            "encoder.layer.0.intermediate.dense.weight": (torch.tensor([7]), torch.ones(1)),
            "encoder.layer.1.output.dense.bias": (None, torch.ones(4)),
        },
        abs={"classifier.out_proj.weight": torch.zeros(3, 4)},
        meta={"kind": "task"},
    )
    delta.save(tmp_path / "d.safetensors")
    counts = record.entries_by_component(tmp_path / "d.safetensors")
    assert counts == {
        "embeddings": {"embeddings": 2},
        "layer.0": {"attention": 3, "feed_forward": 1},
        "layer.1": {"feed_forward": 4},
    }
    png = record.layer_plot(counts, tmp_path / "layers.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_final_metrics_names():
    from raysft.tracking import record

    m = {
        "method": "lt-sft", "k": 10, "n": 100, "metric": "f1", "target_langs": ["jav", "sun"],
        "dev": {lang: {"acc": 0.5, "f1": 0.25} for lang in ("jav", "sun", "eng")},
        "test": {lang: {"acc": 0.75, "f1": 0.5} for lang in ("jav", "sun", "eng")},
        "avg": {"dev": 0.25, "test": 0.5}, "timings": {"dense_s": 1.0, "sparse_s": 2.0},
        "losses": {"dense": [1.0, 0.5], "sparse": [0.4, 0.3, 0.2]}, "delta_bytes": 80,
    }
    out = record.final_metrics(m, {"dense_cache": "reused"})
    latest = {k: v for k, v, _ in out}
    for lang in ("jav", "sun", "eng"):
        assert latest[f"acc/dev/{lang}"] == 0.5 and latest[f"f1/test/{lang}"] == 0.5
    assert latest["f1/dev/avg"] == 0.25 and latest["objective"] == 0.25 and latest["trained_entries"] == 10
    assert latest["dense_cache_hit"] == 1.0 and latest["delta_bytes"] == 80 and latest["time/sparse_s"] == 2.0
    assert [(v, s) for k, v, s in out if k == "loss/sparse"] == [(0.4, 0), (0.3, 1), (0.2, 2)]
    assert ("objective", 0.25, 2) in out  # the final objective at the last sparse step


# ----------------------------------------------------------------------------------------- slow: a real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 (sqlite + artifacts in ``root``), in its own process group: stopped by its id."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = root, port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 180) -> "Server":
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db", "--artifacts-destination", str(self.root / "artifacts")],
            env={**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=self.root, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
            assert time.time() < deadline, f"mlflow server not healthy in {timeout} s"
            time.sleep(1)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group started here
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    needs_data()
    srv = Server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server(mlflow_server):
    return mlflow_server.url


def _client(url):
    from mlflow import MlflowClient

    return MlflowClient(url)


def _runs(url, experiment="smoke"):
    c = _client(url)
    exp = c.get_experiment_by_name(experiment)
    return list(c.search_runs([exp.experiment_id])) if exp else []


def _artifacts(c, run_id):
    out = set()
    for f in c.list_artifacts(run_id):
        out |= {g.path for g in c.list_artifacts(run_id, f.path)} if f.is_dir else {f.path}
    return out


# a non-terminal phase line of `raysft tune` for a trial's workers at work: "[  20s] 1a2b3c4d sc-sft: loading · …"
TRAINING_PHASE = re.compile(r"^\[\s*[^\]]+\] \S+ \S+: (loading|mask|dense|select|sparse)\b")


def tune_cmd(*args):
    return [sys.executable, "-m", "raysft.cli", "tune", "smoke", *args]


@pytest.fixture(scope="module")
def sweep(mlflow_server, tmp_path_factory):
    """3 trials, 2 at once, through the faults the tracking side must survive, one after the other:
    1. the driver is killed (SIGKILL) after the first trial ends;
    2. ``--resume``: once a trial's workers load its data, the tracking server goes away for the rest of this invocation,
       which goes on, finishes the trials and says to resume to log what it could not;
    3. the server is back: ``--resume`` again logs what was missed (no trial left to run).
    Returns (storage, the MLflow runs before 2, 2's stdout, every trial's Tune results before 2, 3's stdout)."""
    server = mlflow_server.url
    storage = tmp_path_factory.mktemp("tune")
    # Every trial scores test here (by default only the trials leading their kind do, which depends on the scores):
    # the tests below check that each child run logs every dev and test metric.
    args = ("--trials", "3", "--storage", str(storage), "--set", "tune.scheduler=none",
            "--set", "tune.test_every_trial=true", "--tracking-uri", server)
    proc = subprocess.Popen(tune_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO)
    deadline, lines = time.time() + 600, []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("trial "):
            break
        assert time.time() < deadline, "".join(lines)[-3000:]
    time.sleep(3)  # let Tune write its experiment state
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r.info.run_id: r for r in _runs(server)}
    results_before = trial_results(storage / "smoke")

    proc = subprocess.Popen(tune_cmd(*args, "--resume"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, cwd=REPO)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        # Gone for the rest of this invocation, from the first trial's workers loading its data: its MLflow run is
        # open (Tune opened it at the trial's start) and its results are still ahead. (Stopping at a "trial" line
        # was too late: two trials that end together are both logged before their lines are read.)
        if TRAINING_PHASE.search(line) and mlflow_server.proc is not None:
            mlflow_server.stop()
    assert proc.wait(timeout=600) == 0, "".join(lines)[-3000:]
    mlflow_server.start()
    late = subprocess.run(tune_cmd(*args, "--resume"), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert late.returncode == 0, late.stdout[-3000:] + late.stderr[-3000:]
    return storage, before, "".join(lines), results_before, late.stdout


@pytest.mark.slow
def test_resume_reruns_no_finished_trial_and_runs_exactly_the_requested_count(sweep):
    storage, _, _, before, _ = sweep
    done_before = {t for t, r in before.items() if r and r[-1].get("phase") == "final"}
    assert len(done_before) >= 1  # the driver was killed after a trial had finished
    after = trial_results(storage / "smoke")
    assert len(after) == 3  # exactly the requested count
    for t in done_before:  # finished trials were not rerun: the same single final report
        assert [r for r in after[t] if r.get("phase") == "final"] == [before[t][-1]]
    assert all(r[-1]["phase"] == "final" for r in after.values())


@pytest.mark.slow
def test_sweep_one_parent_three_ended_children_with_metrics_and_artifacts(server, sweep):
    from raysft.tracking.store import TrackingURI
    from raysft.tracking.trial import trial_of_run

    storage, before, stdout, _, _ = sweep
    c = _client(server)
    runs = _runs(server)
    parents = [r for r in runs if r.data.tags.get("raysft.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("raysft.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3, [(r.info.run_name, r.info.status) for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["raysft.invocations"] == "3"
    assert json.loads((storage / "smoke" / "raysft-tracking.json").read_text())["parent_run_id"] == parent.info.run_id
    assert len({r.data.tags["trial_id"] for r in children}) == 3
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        m, p = r.data.metrics, r.data.params
        for lang in (*LANGS, "eng"):
            for name in ("acc", "f1"):
                assert 0.0 <= m[f"{name}/dev/{lang}"] <= 1.0 and 0.0 <= m[f"{name}/test/{lang}"] <= 1.0
        for key in ("f1/dev/avg", "f1/test/avg", "objective", "trained_entries", "delta_bytes", "time/dense_s",
                    "time/sparse_s", "dense_cache_hit", "time/total_s", "peak_memory_bytes"):
            assert key in m, key
        assert m["peak_memory_bytes"] > 50e6  # a worker process holding torch and a model
        # the run spans the trial: created when Tune started it, ended when it completed
        assert r.info.end_time - r.info.start_time >= 1000 * m["time/total_s"] * 0.9
        assert len(c.get_metric_history(r.info.run_id, "loss/sparse")) > 1
        assert p["method"] == "sc-sft" and int(p["k"]) == m["trained_entries"] and "sparse.lr" in p and p["seed"] == "0"
        assert {"budget/embeddings", "budget/layer.0", "budget/layer.1"} <= set(p)
        assert ARTIFACTS <= _artifacts(c, r.info.run_id)
        # config.json: the trial's full resolved config, read back as `raysft train --from-run` reads it
        trial = trial_of_run(TrackingURI(server, True), r.info.run_id, "smoke")
        assert trial.trial_id == r.data.tags["trial_id"] and trial.method == "sc-sft" and trial.seed == 0
        assert trial.cfg.sparse.lr == float(p["sparse.lr"]) and trial.cfg.tune.scheduler == "none"  # sampled, --set
        budget = trial.cfg.method_settings("sc-sft").model_dump()["budget"]
        assert {f"budget/{g}": v for g, v in budget.items()} == pytest.approx(
            {k: float(v) for k, v in p.items() if k.startswith("budget/")})
    assert sorted(r.data.metrics["dense_cache_hit"] for r in children) == [0.0, 1.0, 1.0]
    pm = parent.data.metrics  # the sweep's summary, from the last invocation's grid (every trial)
    assert pm["trials"] == 3 and pm["trials_final"] == 3 and pm["method/sc-sft/trials"] == 3
    # dense_computed/dense_reused are the cache actor's counts for the last invocation alone (it ran no trial here)
    assert "dense_computed" in pm and pm["best/objective"] == max(r.data.metrics["objective"] for r in children)
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("### Sweep `smoke`: sc-sft") and "**3 trials**: 3 evaluated in full" in note
    assert parent.data.tags["raysft.best_trial"] in {r.data.tags["trial_id"] for r in children}


@pytest.mark.slow
def test_from_run_rewrites_a_trials_delta_bitwise(server, sweep, tmp_path, capsys):
    """`raysft train smoke --from-run RUN_ID` on this sweep's trials (one computed θ1, one took it from the
    dense-phase cache; the driver was killed and the sweep resumed): the rerun in this process writes the trial's
    delta (its child run's artifact) bitwise. What may differ and does not change the delta: a cached θ1 (the same
    dense settings and seed), dev passes mid sparse phase (no RNG drawn); the rerun takes the trial's torch threads
    (a 1-CPU Ray worker has one), so no float sum is split otherwise."""
    from raysft.cli import main
    from raysft.sft.delta import SparseDelta
    from tests.test_parity import assert_bitwise

    c = _client(server)
    children = [r for r in _runs(server) if r.data.tags.get("raysft.kind") == "trial" and r.info.status == "FINISHED"]
    by_hit = {r.data.metrics.get("dense_cache_hit"): r for r in children}
    picks = [by_hit[h] for h in sorted(by_hit, key=str)][:2]
    assert picks, [(r.info.run_name, r.info.status) for r in _runs(server)]
    threads = torch.get_num_threads()
    try:
        for r in picks:
            run_id, tid = r.info.run_id, r.data.tags["trial_id"]
            assert r.data.metrics["threads"] == 1.0  # a 1-CPU Ray Train worker: one torch thread
            (tmp_path / tid).mkdir()
            want = c.download_artifacts(run_id, "task_sft.safetensors", str(tmp_path / tid))
            logged = json.loads(Path(c.download_artifacts(run_id, "metrics.json", str(tmp_path / tid))).read_text())
            torch.set_num_threads(2)  # the rerun sets the trial's count, whatever this process had
            out = tmp_path / f"rerun-{tid}"
            main(["train", "smoke", "--from-run", run_id, "--out", str(out), "-q", "--no-track",
                  "--tracking-uri", server])
            printed = capsys.readouterr()
            assert f"reproducing trial {tid} (run {run_id}" in printed.out and "1 torch thread" in printed.out, printed
            assert torch.get_num_threads() == 1
            rerun = json.loads((out / "metrics.json").read_text())
            # a trial that took θ1 from the cache ran no dense phase of its own: every phase it ran, the rerun ran alike
            assert logged["phases"] == {p: rerun["phases"][p] for p in logged["phases"]}
            assert_bitwise(SparseDelta.load(out / "task_sft.safetensors"), SparseDelta.load(want), f"trial {tid}")
            assert rerun["k"] == logged["k"] and rerun["avg"]["dev"] == logged["avg"]["dev"]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_resumed_sweep_adds_runs_under_the_same_parent(server, sweep):
    _, before, stdout, _, _ = sweep
    after = {r.info.run_id: r for r in _runs(server)}
    parent_before = [r for r in before.values() if r.data.tags.get("raysft.kind") == "sweep"]
    kids_before = [r for r in before.values() if r.data.tags.get("raysft.kind") == "trial"]
    assert len(parent_before) == 1 and len(kids_before) >= 1
    assert 1 <= sum(r.info.status == "FINISHED" for r in kids_before) < 3
    assert set(before) <= set(after)  # the same parent and the same child runs, continued
    assert f"resumed parent run {parent_before[0].info.run_id}" in " ".join(stdout.split())
    assert len(after) == 4


@pytest.mark.slow
def test_compare_reads_back_the_top_trials(server, sweep, capsys):
    main(["compare", "smoke", "--tracking-uri", server, "--top", "2"])
    out = capsys.readouterr().out
    assert "top runs by objective" in out and "jav" in out and "sun" in out and "sc-sft" in out
    assert "2 runs shown" in out


@pytest.mark.slow
def test_export_apply_evaluate_reproduces_the_logged_test_score(server, sweep, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raysft.config import Config
    from raysft.sft.delta import SparseDelta
    from raysft.train.loop import predict
    from raysft.train.recipe import eval_loaders, prepare

    import yaml

    main(["export", "smoke", "--best", "--out", str(tmp_path / "exp"), "--tracking-uri", server])
    exp = tmp_path / "exp"
    info = json.loads((exp / "export.json").read_text())
    card = (exp / "README.md").read_text()
    assert {"task_sft.safetensors", "README.md", "metrics.json", "config.yaml"} <= {p.name for p in exp.iterdir()}
    for text in ("tiny:xlmr-L2-H32", "sc-sft", "| jav |", "| sun |", "raysft apply --base", "budget/layer.0"):
        assert text in card, text
    main(["apply", "--base", "tiny:xlmr", "--sft", str(exp / "task_sft.safetensors"), "--out", str(tmp_path / "model")])
    capsys.readouterr()

    logged = _client(server).get_run(info["run_id"]).data.metrics
    cfg = Config.model_validate(yaml.safe_load((exp / "config.yaml").read_text()))
    torch.set_num_threads(1)  # as the trial's Train worker
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    run = prepare(cfg)
    run = dataclasses.replace(run, tokenizer=tokenizer, cfg=cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"splits": ["test"]})}))
    loaders = eval_loaders(run)
    for lang in (*LANGS, "eng"):
        preds, labels = predict(model, loaders[(lang, "test")])
        scores = run.task.metrics(preds, labels)
        assert scores["f1"] == logged[f"f1/test/{lang}"] and scores["acc"] == logged[f"acc/test/{lang}"], lang
    # the saved folder predicts exactly what the composed model (base + delta in place) predicts
    batch = next(iter(loaders[("jav", "test")]))
    batch.pop("labels")
    SparseDelta.load(exp / "task_sft.safetensors", run.space).apply(run.space)
    run.model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, run.model(**batch).logits)


@pytest.mark.slow
def test_train_logs_one_run(server, tmp_path, capsys):
    main(["train", "smoke", "--method", "bitfit", "--out", str(tmp_path / "out"), "--quiet", "--tracking-uri", server,
          "--experiment", "train-test"])
    assert "logged run" in capsys.readouterr().out
    runs = _runs(server, "train-test")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.tags["raysft.kind"] == "train" and r.data.params["method"] == "bitfit"
    # its real start and end: the run spans the training (metrics.json is written when training ends, before the run
    # is logged)
    written = (tmp_path / "out" / "metrics.json").stat().st_mtime * 1000
    assert r.info.start_time < written and r.info.end_time <= written + 1000
    assert r.data.metrics["time/total_s"] * 1000 == pytest.approx(r.info.end_time - r.info.start_time, abs=5)
    assert r.data.metrics["peak_memory_bytes"] > 50e6
    assert all(f"f1/{s}/{lang}" in r.data.metrics for s in ("dev", "test") for lang in LANGS)
    assert ARTIFACTS <= _artifacts(_client(server), r.info.run_id)


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["compare", "nosuch"], "no experiment 'nosuch'"),
    (["compare", "smoke", "--metric", "bogus"], "no run in experiment 'smoke' has the metric 'bogus'"),
    (["export", "smoke", "--run-id", "0123456789abcdef0123456789abcdef", "--out", "{tmp}/x"], "no run '0123456789abcdef"),
    (["export", "smoke", "--best", "--out", "{tmp}/full"], "exists and is not empty"),
    (["export", "smoke", "--out", "{tmp}/y"], "exactly one of --run-id ID and --best"),
    (["export", "nosuch", "--best", "--out", "{tmp}/z"], "no experiment 'nosuch'"),
    (["apply", "--base", "tiny:xlmr-L4-H64", "--sft", "{delta}", "--out", "{tmp}/m"], "was made for base model tiny:xlmr-L2-H32"),
])
def test_bad_input_one_line_exit_2(server, sweep, args, message, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    delta = next(Path(sweep[0]).rglob("task_sft.safetensors"))
    args = [a.format(tmp=tmp_path, delta=delta) for a in args]
    if args[0] in ("compare", "export"):
        args += ["--tracking-uri", server]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "full" / "keep.txt").exists() and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_sweep_goes_on_when_the_tracking_server_goes_away_and_resume_logs_what_was_missed(server, sweep):
    """The sweep fixture's second invocation lost its tracking server after its first trial line: it went on, every
    result is on storage, and it said how to log the rest; the third (server back) logged it and ran no trial."""
    storage, _, away, _, late = sweep
    out = " ".join(away.split())
    assert "does not answer" in out and "the sweep goes on" in out and "--resume` to log them" in out, out[-2000:]
    finals = [json.loads(f.read_text().splitlines()[-1]) for f in (storage / "smoke").glob("*/result.json")]
    assert len(finals) == 3 and all(f["phase"] == "final" for f in finals)  # every result is on storage
    assert "sc-sft: starting" not in late  # nothing left to run: the third invocation only logged
    runs = _runs(server)
    parents = [r for r in runs if r.data.tags.get("raysft.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("raysft.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 3
    for r in children:  # what the server missed was logged: every child ended, with its test scores
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert all(f"f1/test/{lang}" in r.data.metrics for lang in LANGS)


def test_sweep_summary_counts_methods_dense_reuse_and_describes_the_best():
    from raysft.tracking import record

    trials = [
        {"trial_id": "a", "method": "sc-sft", "state": "final", "objective": 0.41, "avg/test": 0.39},
        {"trial_id": "b", "method": "sc-sft", "state": "stopped", "objective": 0.55},  # stopped: never the best
        {"trial_id": "c", "method": "lt-sft", "state": "final", "objective": 0.47, "avg/test": 0.40},
        {"trial_id": "d", "method": "lt-sft", "state": "failed"},
    ]
    metrics, tags, note = record.sweep_summary(trials, {"computed": 1, "reused": 3}, 600.0, "sa-cpu", "f1",
                                               sections=["#### Best vs default\n\nthe place for issue 10"])
    m = {k: v for k, v, _ in metrics}
    assert (m["trials"], m["trials_final"], m["trials_stopped"], m["trials_failed"]) == (4, 2, 1, 1)
    assert m["dense_computed"] == 1 and m["dense_reused"] == 3 and m["dense_reuse_rate"] == 0.75
    assert m["method/sc-sft/trials"] == 2 and m["method/sc-sft/best_objective"] == 0.41
    assert m["method/lt-sft/best_objective"] == 0.47 and m["best/objective"] == 0.47 and m["best/avg_test"] == 0.40
    assert tags == {"raysft.best_trial": "c", "raysft.best_method": "lt-sft"}
    assert note.startswith("### Sweep `sa-cpu`: lt-sft, sc-sft")
    assert "**4 trials**: 2 evaluated in full, 1 stopped early, 1 failed · 10.0 min · dense phases computed 1, reused 3" in note
    assert "trial `c` (lt-sft), dev f1 **0.4700**, test 0.4000" in note
    assert "| lt-sft | 2 | 1 | 0.4700 |" in note and "| sc-sft | 2 | 1 | 0.4100 |" in note
    assert "#### Best vs default\n\nthe place for issue 10" in note and "--pareto" in note


def test_pareto_front_and_axis_names():
    from raysft.results.pareto import pareto_front, pareto_metric

    # (delta bytes ↓, score ↑): c is dominated by a (smaller and better), e ties a and is not strictly better
    points = [(100, 0.5), (1000, 0.7), (400, 0.45), (5000, 0.69), (100, 0.5)]
    assert pareto_front(points, (False, True)) == [0, 1, 4]
    assert pareto_front([(1, 1), (2, 2), (3, 3)], (True, True)) == [2]
    assert [pareto_metric(a, "f1") for a in ("f1", "score", "acc", "k", "bytes", "time", "memory", "loss/dense")] == [
        "objective", "objective", "acc/dev/avg", "trained_entries", "delta_bytes", "time/total_s", "peak_memory_bytes",
        "loss/dense"]


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """One sqlite store for the quick tests below (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def test_compare_pareto_plots_the_front_of_logged_runs(local_store, tmp_path, capsys):
    """Runs logged into a store (as a sweep's trials are): the front printed, the PNG written."""
    from mlflow import MlflowClient

    from raysft.cli import main
    from raysft.tracking import record

    uri = local_store
    c = MlflowClient(uri)
    exp = c.create_experiment("pareto")
    runs = {"trial-a": ("lt-sft", 0.50, 1000), "trial-b": ("sc-sft", 0.60, 4000), "trial-c": ("rand-sft", 0.40, 4000),
            "trial-d": ("full", 0.61, 90000)}
    for name, (method, score, size) in runs.items():
        run_id = c.create_run(exp, run_name=name, tags={"raysft.kind": "trial"}).info.run_id
        for ms, ps, tg in record.as_entities({"method": method, "metric": "f1"},
                                             [("objective", score, 0), ("delta_bytes", float(size), 0)]):
            c.log_batch(run_id, metrics=ms, params=ps, tags=tg)
        c.set_terminated(run_id, "FINISHED")
    plot = tmp_path / "front.png"
    main(["compare", "pareto", "--tracking-uri", uri, "--pareto", "f1,delta_bytes", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert "3 of 4 runs" in out and "trial-a" in out and "trial-b" in out and "trial-d" in out and "trial-c" not in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    with pytest.raises(SystemExit) as exc:
        main(["compare", "pareto", "--tracking-uri", uri, "--pareto", "f1,nosuchmetric"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "has the metric 'nosuchmetric'" in err and len(err.strip().splitlines()) == 1


def test_lang_run_carries_the_jobs_real_start_and_end(local_store, tmp_path):
    """`raysft lang` logs each language's run after its job ended: the run shows the job's own start and end."""
    from mlflow import MlflowClient

    from raysft.config import load_config
    from raysft.tracking.runs import log_lang_run
    from raysft.tracking.store import resolve_uri

    sft = tmp_path / "jav.safetensors"
    sft.write_bytes(b"0" * 64)
    now = time.time()
    metrics = {"language": "jav", "method": "lt-sft", "k": 10, "n": 100, "corpus": "nusax_mt", "corpus_lines": 50,
               "train_lines": 45, "head_fresh": True, "mlm_loss": {"before": 5.0, "head_only": 4.0, "after": 3.5},
               "timings": {"dense_s": 30.0, "sparse_s": 20.0}, "losses": {"dense": [5.0, 4.0]}, "delta_bytes": 81,
               "started_at": now - 600.0, "ended_at": now - 60.0, "peak_memory_bytes": 123_000_000}
    uri = resolve_uri(local_store)
    _, run_id = log_lang_run(uri, "smoke-lang", load_config("smoke"), metrics, sft)
    r = MlflowClient(uri.uri).get_run(run_id)
    assert r.info.start_time == int((now - 600.0) * 1000) and r.info.end_time == int((now - 60.0) * 1000)
    assert r.data.metrics["time/total_s"] == 540.0 and r.data.metrics["peak_memory_bytes"] == 123_000_000
