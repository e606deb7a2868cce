"""Cluster operations: cluster.yaml / cluster-local.yaml through Ray's own validator and the choices that matter;
the storage rules; and a real multi-node cluster on this machine.

The multi-node part (marked ``multinode`` + ``slow``; run it alone with ``pytest -m multinode tests/test_cluster.py``):
a head node and two worker nodes, each a ``ray start --block`` process in its own process group, the head with the
``raysft_driver`` resource and no CPU (as cluster.yaml's head: trial drivers only), the workers with 2 CPUs; an
``mlflow server`` on 127.0.0.1; the environment cluster.yaml sets on every node (RAYSFT_STORAGE,
MLFLOW_TRACKING_URI). Then: ``raysft doctor`` passes; a smoke sweep submitted with ``ray job submit`` (no storage or
tracking flags: they come from the node's environment) lands in MLflow, drivers on the head and Train workers on the
worker nodes; a node whose storage folder is its own (a private tmpfs in its own mount namespace) makes
``raysft doctor`` fail on the storage line; the server stopped makes it fail on the tracking line.

Isolation: the cluster lives in its own --temp-dir (its ray_current_cluster file is written there, never in
/tmp/ray, so a plain ``ray.init()`` elsewhere on this machine never joins it); every port is picked free; only the
process groups started here are stopped (never ``ray stop``); this pytest process never connects to the cluster.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from raysft.errors import RaysftError
from tests.conftest import REPO, needs_data

CLUSTER_FILES = {"aws": REPO / "cluster.yaml", "local": REPO / "cluster-local.yaml"}
BIN = Path(sys.executable).parent


def _load(kind):
    return yaml.safe_load(CLUSTER_FILES[kind].read_text())


NODE_SH = REPO / "deploy" / "node.sh"


def _node_calls(cfg, key: str) -> list[tuple[str, str, dict[str, str], list[str]]]:
    """(command, role, {--option: value}, extra `ray start` args) of every deploy/node.sh call under ``key``."""
    out = []
    for cmd in cfg.get(key, []):
        words = shlex.split(cmd)
        if len(words) < 4 or not words[1].endswith("deploy/node.sh"):
            continue
        opts, extra, rest = {}, [], words[4:]
        if "--" in rest:
            rest, extra = rest[: rest.index("--")], rest[rest.index("--") + 1:]
        for name, value in zip(rest[::2], rest[1::2]):
            opts[name] = value
        out.append((words[2], words[3], opts, extra))
    return out


def _setup_and_start(c):
    """The shared steps: every node's setup and start go through deploy/node.sh (and nothing else)."""
    assert c.get("setup_commands", []) == [], "setup is deploy/node.sh setup <role>, shared by both cluster files"
    calls = {k: _node_calls(c, k) for k in ("head_setup_commands", "worker_setup_commands",
                                            "head_start_ray_commands", "worker_start_ray_commands")}
    for key, found in calls.items():
        assert len(found) == len(c[key]) == 1, f"{key}: one deploy/node.sh call, got {c[key]}"
    (hs,), (ws,), (hst,), (wst,) = calls.values()
    assert hs[:2] == ("setup", "head") and ws[:2] == ("setup", "worker")
    assert hst[:2] == ("start", "head") and wst[:2] == ("start", "worker")
    assert hs[2] == ws[2], "head and workers get the same install and environment"
    assert hst[2]["--port"] == wst[2]["--port"] and hst[2]["--mlflow-port"] == hs[2]["--mlflow-port"]
    return hs[2], hst[2], hst[3]


def test_node_script_pins_ray_and_starts_what_the_cluster_needs():
    import ray

    text = NODE_SH.read_text()
    assert f'RAY_VERSION="{ray.__version__}"' in text, "node.sh pins the Ray raysft is tested with"
    assert '"ray[default,tune,train]==$RAY_VERSION"' in text and 'pip install -q -e "$REPO"' in text
    assert text.count("--disable-usage-stats") == 2 and "RAY_USAGE_STATS_ENABLED=0" in text
    assert '--resources="{\\"raysft_driver\\": $drivers}"' in text, "trial drivers go to the head (raysft_driver)"
    assert "mlflow server --host 0.0.0.0" in text and "sqlite:///$dir/mlflow.db" in text, "sqlite on the head's disk"
    assert "MLFLOW_TRACKING_URI=http://$head_ip:$mlflow_port" in text
    subprocess.run(["bash", "-n", str(NODE_SH)], check=True)  # it parses
    bad = subprocess.run(["bash", str(NODE_SH), "setup", "nobody"], capture_output=True, text=True)
    assert bad.returncode == 2 and "head or worker" in bad.stderr


# ------------------------------------------------------------------------------------------------- fast: the files
@pytest.mark.parametrize("kind", sorted(CLUSTER_FILES))
def test_cluster_file_validates_with_rays_own_validator(kind):
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(_load(kind))  # merged with the provider's defaults, as `ray up` does
    validate_config(full)  # ray-schema.json + Ray's own consistency checks
    assert full["head_node_type"] in full["available_node_types"]


def _check_repo_mounts(c: dict, root: str) -> None:
    """The nodes get what they install and run (package, presets, node.sh, the files pip builds from), mounted part by
    part: `ray up` hashes every file of a mounted folder, so mounting `.` would read the user's in-repo virtualenv
    (and fail where its python is not readable, as CI's was)."""
    mounts = {remote: local for remote, local in c["file_mounts"].items() if remote.startswith(root + "/")}
    assert root not in c["file_mounts"] and "." not in c["file_mounts"].values(), "the repository root is not mounted whole"
    assert set(mounts) == {f"{root}/{part}" for part in ("raysft", "search_spaces", "deploy", "pyproject.toml", "README.md")}
    for remote, local in mounts.items():
        assert local == "./" + remote.rsplit("/", 1)[1] and (REPO / local).exists(), (remote, local)


def test_aws_cluster_choices():
    import ray

    c = _load("aws")
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert c["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{py}-gpu", "image tag must match the installed Ray"
    assert not {"head_image", "worker_image"} & set(c["docker"]), "one image: the same versions on every node"
    setup, start, extra = _setup_and_start(c)
    assert "--venv" not in setup and setup["--pip-extra"] == "boto3", "the image's python, with Ray kept at its version"
    _check_repo_mounts(c, "/home/ray/raysft-repo")
    assert all(
        cmd.startswith("bash /home/ray/raysft-repo/deploy/node.sh") for cmd in c["head_setup_commands"])
    assert "--object-manager-port=8076" in extra

    head = c["available_node_types"][c["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "the head is a CPU node"
    assert head["resources"]["raysft_driver"] >= 1, "trial drivers are placed on the head through raysft_driver"
    workers = {n: t for n, t in c["available_node_types"].items() if n != c["head_node_type"]}
    gpu = [t for t in workers.values() if t["node_config"]["InstanceType"].startswith("g5.")]  # A10G
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu), workers
    assert c["idle_timeout_minutes"] > 0 and c["provider"]["cache_stopped_nodes"] is False

    from raysft.cluster.storage import is_remote_uri

    assert is_remote_uri(setup["--storage"]) and setup["--storage"].startswith("s3://"), setup
    assert start["--mlflow-artifacts"].startswith("s3://"), "artifacts on shared storage"
    assert int(start["--drivers"]) >= 1 and setup["--mlflow-port"] == "5000"


def test_local_cluster_choices():
    import ray

    c = _load("local")
    assert c["provider"]["type"] == "local" and c["provider"]["worker_ips"]
    _check_repo_mounts(c, "~/raysft-repo")
    setup, start, _ = _setup_and_start(c)
    assert setup["--venv"] == "~/raysft-venv" and "--reuse-site" not in setup, "a real install from the index"
    mount = re.search(r"mount -t nfs4 \S+ (\S+)", " ".join(c["initialization_commands"])).group(1)
    assert setup["--storage"].startswith(mount + "/"), "storage lives on the NFS folder every node mounts"
    assert start["--mlflow-artifacts"].startswith(mount + "/") and int(start["--drivers"]) >= 1
    assert ray.__version__ in NODE_SH.read_text()


# ------------------------------------------------------------------------------------- fast: the storage rules
def test_storage_shared_only_on_a_network_file_system_or_one_machine(tmp_path):
    from raysft.cluster.storage import machines, mount_of, node_local_problem

    shared, scratch = tmp_path.resolve() / "shared", tmp_path.resolve() / "shared" / "tmp"
    scratch.mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"overlay / overlay rw 0 0\nserver:/export {shared} nfs4 rw 0 0\ntmpfs {scratch} tmpfs rw 0 0\n")
    assert mount_of(shared / "sweeps" / "not-yet", str(mounts)) == (str(shared), "nfs4")  # its nearest parent's
    assert mount_of(scratch / "x", str(mounts)) == (str(scratch), "tmpfs")
    assert mount_of(tmp_path / "runs", str(mounts)) == ("/", "overlay")
    assert node_local_problem(tmp_path, 1) is None  # one machine: its disk is shared by its nodes
    message = node_local_problem(tmp_path, 3, "RAYSFT_STORAGE")
    assert "spans 3 machines" in message and "s3://" in message and "(RAYSFT_STORAGE)" in message
    nodes = [{"NodeManagerAddress": "10.0.0.1", "Alive": True}, {"NodeManagerAddress": "10.0.0.1", "Alive": True},
             {"NodeManagerAddress": "10.0.0.2", "Alive": True}, {"NodeManagerAddress": "10.0.0.3", "Alive": False}]
    assert machines(nodes) == ["10.0.0.1", "10.0.0.2"]
    loopback = [{"NodeManagerAddress": ip, "Alive": True} for ip in ("127.0.0.1", "127.0.0.2", "127.1.2.3")]
    assert machines(loopback) == ["127.0.0.1"]  # nodes on loopback addresses are one machine (test_ray_up.py)
    head = {"NodeManagerAddress": "192.0.2.2", "Alive": True, "Resources": {"node:__internal_head__": 1.0}}
    assert machines([head, *loopback]) == ["192.0.2.2"]  # ... the head's: they reached it through loopback


def test_storage_from_the_environment_and_refused_across_machines(tmp_path, monkeypatch):
    from raysft.cluster.storage import storage_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYSFT_STORAGE", raising=False)
    assert storage_uri(None, 1) == str(tmp_path.resolve() / "runs" / "tune")
    monkeypatch.setenv("RAYSFT_STORAGE", "s3://bucket/sweeps")
    assert storage_uri(None, 4) == "s3://bucket/sweeps"
    assert storage_uri(str(tmp_path / "flag"), 1) == str(tmp_path / "flag"), "--storage wins over the environment"
    monkeypatch.setenv("RAYSFT_STORAGE", str(tmp_path / "env"))
    assert storage_uri(None, 1) == str(tmp_path / "env")
    with pytest.raises(RaysftError, match=r"\(RAYSFT_STORAGE\).*spans 2 machines: give --storage s3://"):
        storage_uri(None, 2)
    monkeypatch.delenv("RAYSFT_STORAGE")
    with pytest.raises(RaysftError, match=r"\(the default\).*spans 2 machines"):
        storage_uri(None, 2)


def test_trial_drivers_go_to_the_head_only_where_it_advertises_raysft_driver():
    from raysft.config import load_config
    from raysft.cluster.resources import default_max_concurrent, driver_resources, resources_per_trial

    assert driver_resources({"CPU": 8}) == {"CPU": 1}  # a local Ray: as before
    assert driver_resources({"CPU": 8, "raysft_driver": 4}) == {"CPU": 0, "raysft_driver": 1}
    cfg = load_config("smoke", ["tune.num_workers=2", "tune.cpus_per_worker=1"])
    assert resources_per_trial(cfg, {"raysft_driver": 4}) == {"CPU": 2, "raysft_driver": 1, "GPU": 0}
    # 8 worker CPUs hold 4 trials, but the head hosts 3 drivers
    assert default_max_concurrent(cfg, {"CPU": 8, "raysft_driver": 3}) == 3
    assert default_max_concurrent(cfg, {"CPU": 8}) == 2  # each trial: 1 driver CPU + 2 worker CPUs


def test_doctor_without_a_cluster_fails_on_the_ray_line(capsys):
    from raysft.cli import main

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--address", f"127.0.0.1:{port}"])
    out = capsys.readouterr().out
    assert exc.value.code == 1
    assert re.search(rf"ray\s+FAIL\s+cannot reach the Ray cluster at 127.0.0.1:{port}", out), out
    assert re.search(r"storage\s+SKIP", out) and "0 of 7 checks passed" in out.replace("\n", " "), out


# ------------------------------------------------------------------------------- slow: a real multi-node cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head and worker nodes on this machine, each a `ray start --block` in its own process group."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.temp_dir = root / "ray"  # short: Ray's socket paths must stay under 107 bytes
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, name: str, *args: str, head: bool = False, wrap: list[str] | None = None) -> None:
        cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
               f"--dashboard-agent-listen-port={_free_port()}", "--min-worker-port=0", "--max-worker-port=0", *args]
        if head:
            cmd += ["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={_free_port()}"]
        else:
            cmd += [f"--address={self.address}"]
        log = open(self.root / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen((wrap or []) + cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()

    def nodes(self) -> list[dict]:
        """The alive nodes, asked in a subprocess (this pytest process never joins the cluster)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() "
                "if n['Alive']]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else []

    def wait_for(self, count: int, timeout: float = 180) -> list[dict]:
        deadline = time.time() + timeout
        while True:
            for name, p in self.procs.items():
                assert p.poll() is None, f"node {name} exited: " + (self.root / f"{name}.log").read_text()[-3000:]
            nodes = self.nodes()
            if len(nodes) == count:
                return nodes
            assert time.time() < deadline, f"{len(nodes)} of {count} nodes after {timeout} s"
            time.sleep(2)

    def stop_node(self, name: str) -> None:
        p = self.procs.pop(name)
        try:
            os.killpg(p.pid, signal.SIGTERM)  # `ray start --block` and its raylet, workers, GCS: the group it leads
            p.wait(timeout=20)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # what SIGTERM left (the group outlives its leader)
        except ProcessLookupError:
            pass
        p.wait()

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "head"] + (["head"] if "head" in self.procs else []):
            self.stop_node(name)


def _can_private_mount() -> bool:
    """Whether this user may give a process its own mount namespace with a tmpfs (root, or user namespaces)."""
    if not shutil.which("unshare"):
        return False
    d = tempfile.mkdtemp()
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", f"mount -t tmpfs none {d}"],
                           capture_output=True, timeout=10)
        return r.returncode == 0
    finally:
        os.rmdir(d)


@pytest.fixture(scope="module")
def cluster():
    """Head (raysft_driver 2, 0 CPU) + 2 workers (2 CPU) + an MLflow server; the environment of cluster.yaml."""
    data = needs_data()
    from tests.test_tracking import Server

    root = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))  # short path: Ray's sockets live under it
    storage = root / "storage"
    storage.mkdir()
    server = Server(root, _free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update({
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120", "RAY_raylet_start_wait_time_s": "180",
        "PYTHONUNBUFFERED": "1", "RAYSFT_DATA_DIR": str(data),
        # what cluster.yaml writes to ~/.raysft_env on every node:
        "RAYSFT_STORAGE": str(storage), "MLFLOW_TRACKING_URI": server.url,
    })
    c = LocalCluster(root, env)
    c.storage, c.server = storage, server
    try:
        c.start_node("head", "--num-cpus=0", '--resources={"raysft_driver": 2}', head=True)
        server.start()  # meanwhile the head comes up
        c.wait_for(1)
        for i in (1, 2):
            c.start_node(f"worker-{i}", "--num-cpus=2")
            c.wait_for(1 + i)  # one at a time: two raylets registering at once time out on a busy machine
        yield c
    finally:
        c.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def doctor(c, *args, space=("smoke",)):
    cmd = [sys.executable, "-m", "raysft.cli", "doctor", *space, "--address", c.address, "--timeout", "120", *args]
    r = subprocess.run(cmd, env=c.env, capture_output=True, text=True, timeout=400)
    print(r.stdout[-6000:])
    return r


def rows(stdout: str) -> dict[str, str]:
    """check → PASS/FAIL/SKIP from the doctor's table."""
    return dict(re.findall(r"^\s*(ray|resources|versions|storage|tracking|model|data)\s+(PASS|FAIL|SKIP)\b", stdout,
                           re.M))


@pytest.mark.slow
@pytest.mark.multinode
def test_doctor_passes_on_a_healthy_cluster(cluster):
    r = doctor(cluster)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    assert rows(r.stdout) == {k: "PASS" for k in ("ray", "resources", "versions", "storage", "tracking", "model", "data")}
    text = " ".join(r.stdout.split())
    assert "3 nodes on 1 machine(s)" in text and f"{cluster.storage} (RAYSFT_STORAGE): written and read back" in text
    assert f"{cluster.server.url} (MLFLOW_TRACKING_URI) answers from every node" in text, text
    assert "sees 3 of 3 nodes' probes" in text and not list(cluster.storage.iterdir()), "probes seen, then removed"
    assert "7 of 7 checks passed" in text
    # The cluster's address file is in its own temp dir; /tmp/ray's (followed by a plain ray.init()) is not ours.
    assert (cluster.temp_dir / "ray_current_cluster").is_file()
    default = Path("/tmp/ray/ray_current_cluster")
    assert not default.exists() or str(cluster.port) not in default.read_text()


@pytest.mark.slow
@pytest.mark.multinode
def test_sweep_submitted_with_ray_job_submit_lands_in_mlflow(cluster):
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    nodes = {n["id"]: n for n in cluster.nodes()}
    head = next(i for i, n in nodes.items() if n["resources"].get("raysft_driver"))
    started = time.time()
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--", "raysft", "tune", "smoke",
         "--trials", "2", "--set", "tune.scheduler=none", "--set", "dense.max_steps=3", "--set", "sparse.max_steps=3",
         "--set", "data.max_eval_examples=8", "--set", "eval.splits=[dev]"],
        env=cluster.env, capture_output=True, text=True, timeout=600, cwd=cluster.root,
    )
    wall = time.time() - started
    out = submit.stdout + submit.stderr
    assert submit.returncode == 0 and "succeeded" in out, out[-5000:]
    # One line per trial (wrapped at 80 columns in a job's log).
    assert len(re.findall(r"^trial \w+: sc-sft [^→]* → dev \d\.\d{4}", out, re.M)) == 2, out[-5000:]
    assert f"results in {cluster.storage}/smoke" in out, "the storage came from RAYSFT_STORAGE on the head"

    # Placement, from Ray's state API (the actors of the finished job are still listed): trial drivers
    # (ImplicitFunc) on the head, Train workers on the worker nodes.
    code = ("import json; from ray.util.state import list_actors; print(json.dumps([(a.class_name, a.node_id) for a in "
            f"list_actors(address={cluster.dashboard!r}, limit=10000, detail=True, raise_on_missing_output=False)]))")
    listed = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-3000:]
    where: dict[str, list[str]] = {}
    for class_name, node_id in json.loads(listed.stdout.strip().splitlines()[-1]):
        where.setdefault(class_name, []).append(node_id)
    drivers, workers = where.get("ImplicitFunc", []), where.get("RayTrainWorker", [])
    assert len(drivers) >= 2 and set(drivers) == {head}, where
    assert workers and head not in workers and set(workers) <= set(nodes), where

    # MLflow, through the server on the head: one parent run, two finished child runs with per-language metrics.
    c = MlflowClient(cluster.server.url)
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("raysft.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("raysft.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 2, [(r.info.run_id, r.data.tags.get("raysft.kind")) for r in runs]
    assert parents[0].data.tags["raysft.storage"] == f"{cluster.storage}/smoke"
    placed = {}
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"acc/dev/jav", "acc/dev/sun", "objective"} <= set(r.data.metrics), sorted(r.data.metrics)
        local = c.download_artifacts(r.info.run_id, "metrics.json", str(cluster.root / r.info.run_id))
        placed[r.info.run_id] = json.loads(Path(local).read_text())["distributed"]["node_ids"]
        assert head not in placed[r.info.run_id]
    label = {head: "head", **{i: f"worker {i[:8]}" for i in nodes if i != head}}
    print(f"\nsweep via ray job submit: {wall:.0f} s; nodes: " + ", ".join(
        f"{label[i]} {n['resources'].get('CPU', 0):g} CPU" for i, n in nodes.items()))
    print("trial drivers on: " + ", ".join(label.get(i, i[:8]) for i in drivers))
    print("train workers on: " + ", ".join(label.get(i, i[:8]) for i in workers))
    for r in children:
        print(f"mlflow run {r.info.run_id[:8]} {r.info.status} trial {r.data.tags.get('trial_id', '?')} "
              f"objective {r.data.metrics['objective']:.4f} acc/dev/jav {r.data.metrics['acc/dev/jav']:.3f} "
              f"acc/dev/sun {r.data.metrics['acc/dev/sun']:.3f} workers on {[label.get(i, i[:8]) for i in placed[r.info.run_id]]}")


@pytest.mark.slow
@pytest.mark.multinode
def test_doctor_fails_on_the_storage_line_when_a_node_has_its_own_storage(cluster):
    if not _can_private_mount():
        pytest.skip("no private mount namespace here (needs root or user namespaces): cannot make node-local storage")
    # A fourth node whose view of the storage folder is its own tmpfs: what a local disk on another machine is.
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs none {cluster.storage} && exec "$@"', "sh"]
    cluster.start_node("node-local", "--num-cpus=1", wrap=wrap)
    try:
        cluster.wait_for(4)
        r = doctor(cluster, space=())
        assert r.returncode == 1, r.stdout[-4000:] + r.stderr[-3000:]
        result = rows(r.stdout)
        assert result["storage"] == "FAIL" and result["tracking"] == "PASS" and result["ray"] == "PASS", result
        text = " ".join(r.stdout.split())
        assert f"{cluster.storage} (RAYSFT_STORAGE) is node-local on" in text, text
        assert "sees 1 of 4 nodes' probes" in text and "sees 3 of 4 nodes' probes" in text, text
    finally:
        cluster.stop_node("node-local")
    deadline = time.time() + 120
    while len(cluster.nodes()) != 3:
        assert time.time() < deadline, "the node-local node is still alive 120 s after it was stopped"
        time.sleep(2)


@pytest.mark.slow
@pytest.mark.multinode
def test_doctor_fails_on_the_tracking_line_when_the_server_is_down(cluster):
    cluster.server.stop()
    r = doctor(cluster, space=())
    assert r.returncode == 1, r.stdout[-4000:] + r.stderr[-3000:]
    result = rows(r.stdout)
    assert result["tracking"] == "FAIL" and result["storage"] == "PASS", result
    text = " ".join(r.stdout.split())
    assert f"the tracking store {cluster.server.url} (MLFLOW_TRACKING_URI) does not answer from 3 of 3 nodes" in text, text
    assert "Connection refused" in text
